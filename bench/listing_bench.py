"""Directory listing benchmark (issue 13 item 9): what listing a huge directory costs the
server, and the other clients meanwhile.

    python bench/listing_bench.py [--entries N] [--fids F] [--count C] [--dir DIR]
                                  [--baseline GIT_REF] [--json FILE]

A real `nine serve --no-auth` exports a directory of N empty files (100,000; made once
in DIR and kept).  F connections (20) each walk to it, open it and list it whole with
Treaddir (count C bytes, 128 KiB as the kernel asks at its default msize), all at once;
meanwhile a probe, a process of its own, sends Tgetattr on another connection every
10 ms and times each answer.  Printed: the server's RSS before the F connections, once
every fid is open, the most sampled during the listings (every 20 ms) and its VmHWM;
the listings' wall time; the probes' median, 99th percentile and worst latency, and
how many took over 100 ms and over 1 s.
Every listing is checked to hold N + 2 distinct names (an error exits 1).

--baseline REF runs the same measurement first against the server of git REF (its
`nine` package extracted to a temporary directory), then against the working tree, and
prints both (same machine, same directory, one after the other).
"""

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import nine.protocol as P  # noqa: E402

MSIZE = 1024 * 1024 + 24


# --- 9P over a blocking socket ------------------------------------------------------------

class Conn:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)), timeout=600)
        self.buf = b""
        r = self.rpc(P.Tversion(msize=MSIZE, version=P.V9P2000L, tag=P.NOTAG))
        assert isinstance(r, P.Rversion), r
        r = self.rpc(P.Tattach(fid=0, afid=P.NOFID, uname="root", aname="", n_uname=0, tag=1))
        assert isinstance(r, P.Rattach), r

    def frame(self):
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack_from("<I", self.buf)[0]
                if len(self.buf) >= n:
                    f, self.buf = self.buf[:n], self.buf[n:]
                    return f
            d = self.s.recv(1 << 20)
            if not d:
                raise EOFError("the server closed the connection")
            self.buf += d

    def rpc(self, msg, raw=False):
        self.s.sendall(P.encode(msg, P.V9P2000L))
        f = self.frame()
        return f if raw else P.decode(f, P.V9P2000L)

    def close(self):
        self.s.close()


def entries(frame):
    """(names, offset of the last entry) of an Rreaddir frame, without a full decode."""
    if frame[4] != P.BY_NAME["Rreaddir"].mtype:
        raise RuntimeError("Treaddir failed: %r" % P.decode(frame, P.V9P2000L))
    n = struct.unpack_from("<I", frame, 7)[0]
    pos, end, names, off = 11, 11 + n, [], 0
    while pos < end:
        off, ln = struct.unpack_from("<QxH", frame, pos + 13)
        names.append(frame[pos + 24:pos + 24 + ln])
        pos += 24 + ln
    return names, off


def list_all(addr, count, fid, go, out):
    c = Conn(addr)
    try:
        r = c.rpc(P.Twalk(fid=0, newfid=fid, wnames=["big"], tag=1))
        assert isinstance(r, P.Rwalk) and len(r.wqids) == 1, r
        r = c.rpc(P.Tlopen(fid=fid, flags=P.L_O_RDONLY, tag=1))
        assert isinstance(r, P.Rlopen), r
        go.wait()
        seen, off = [], 0
        while True:
            names, last = entries(c.rpc(P.Treaddir(fid=fid, offset=off, count=count, tag=1),
                                        raw=True))
            if not names:
                break
            seen.extend(names)
            off = last
        out.append(seen)
    finally:
        c.close()


# --- the probe (its own process: this one's threads would delay it) ---------------------

def probe(addr, period):
    """Tgetattr every period seconds until stdin closes; prints the latencies (JSON)."""
    c = Conn(addr)
    r = c.rpc(P.Twalk(fid=0, newfid=1, wnames=["probe"], tag=1))
    assert isinstance(r, P.Rwalk), r
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    lat = []
    msg = P.encode(P.Tgetattr(fid=1, request_mask=P.GETATTR_BASIC, tag=1), P.V9P2000L)
    while not stop.is_set():
        t0 = time.perf_counter()
        c.s.sendall(msg)
        c.frame()
        lat.append(time.perf_counter() - t0)
        time.sleep(period)
    print(json.dumps(lat), flush=True)


# --- one measurement ----------------------------------------------------------------------

def status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def measure(pythonpath, directory, entries_n, fids, count, errors, label):
    tmp = tempfile.mkdtemp(prefix="listing-bench-")
    afile = os.path.join(tmp, "addr")
    env = dict(os.environ, PYTHONPATH=pythonpath)
    srv = subprocess.Popen([sys.executable, "-m", "nine", "serve", "--no-auth", "-q",
                            "--listen", "127.0.0.1:0", "--address-file", afile,
                            "--export", directory], env=env, cwd=tmp,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=open(os.path.join(tmp, "log"), "wb"))
    pr = None
    try:
        addr = None
        for _ in range(3000):
            if srv.poll() is not None:
                raise RuntimeError("the server exited: " + open(os.path.join(tmp, "log")).read())
            if os.path.exists(afile) and open(afile).read().strip():
                addr = open(afile).read().strip()
                break
            time.sleep(0.02)
        pr = subprocess.Popen([sys.executable, __file__, "--probe", addr],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert pr.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        rss0 = status(srv.pid, "VmRSS")
        go = threading.Event()
        out = []
        ts = [threading.Thread(target=list_all, args=(addr, count, 100 + i, go, out))
              for i in range(fids)]
        for t in ts:
            t.start()
        time.sleep(0.5)                     # every fid open before they start
        rss_open = status(srv.pid, "VmRSS")
        samples = []
        t0 = time.perf_counter()
        go.set()
        while any(t.is_alive() for t in ts):
            samples.append(status(srv.pid, "VmRSS"))
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        for t in ts:
            t.join()
        hwm = status(srv.pid, "VmHWM")
        time.sleep(0.2)
        lat, _ = pr.communicate("", timeout=60)
        lat = json.loads(lat.strip().splitlines()[-1])
    finally:
        if pr is not None and pr.poll() is None:
            pr.kill()
        srv.terminate()
        srv.wait(10)
    if len(out) != fids:
        errors.append("%s: %d of %d listings finished" % (label, len(out), fids))
    for names in out:
        if len(names) != entries_n + 2 or len(set(names)) != len(names):
            errors.append("%s: a listing held %d names (%d distinct), not %d" % (
                label, len(names), len(set(names)), entries_n + 2))
    lat_ms = sorted(x * 1000 for x in lat)
    return {
        "server": label, "entries": entries_n, "fids": fids, "count": count,
        "rss_before_mb": round(rss0 / 2**20, 1),
        "rss_fids_open_mb": round(rss_open / 2**20, 1),
        "rss_max_sampled_mb": round(max(samples + [rss0]) / 2**20, 1),
        "vmhwm_mb": round(hwm / 2**20, 1),
        "wall_s": round(wall, 2),
        "probes": len(lat_ms),
        "probe_median_ms": round(statistics.median(lat_ms), 2),
        "probe_p99_ms": round(lat_ms[int(len(lat_ms) * 0.99) - 1] if len(lat_ms) > 1
                              else lat_ms[-1], 1),
        "probe_max_ms": round(lat_ms[-1], 1),
        "probes_over_100ms": sum(1 for x in lat_ms if x > 100),
        "probes_over_1s": sum(1 for x in lat_ms if x > 1000),
    }


def make_dir(path, n):
    big = os.path.join(path, "big")
    os.makedirs(big, exist_ok=True)
    have = len(os.listdir(big))
    if have != n:
        for name in os.listdir(big):
            os.unlink(os.path.join(big, name))
        for i in range(n):
            os.close(os.open(os.path.join(big, "entry-%07d" % i), os.O_CREAT | os.O_WRONLY))
    open(os.path.join(path, "probe"), "wb").close()


def baseline_tree(ref):
    d = tempfile.mkdtemp(prefix="listing-bench-%s-" % ref.replace("/", "_"))
    arch = subprocess.run(["git", "-C", ROOT, "archive", ref, "nine"], check=True,
                          capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", d], input=arch, check=True)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100000)
    ap.add_argument("--fids", type=int, default=20)
    ap.add_argument("--count", type=int, default=128 * 1024)
    ap.add_argument("--dir", help="where the directory is made (kept for the next run)")
    ap.add_argument("--baseline", help="a git ref whose server is measured first")
    ap.add_argument("--json", help="write the results there too")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.probe:
        return probe(a.probe, 0.01)
    directory = a.dir or os.path.join(tempfile.gettempdir(), "nine-listing-bench-%d" % a.entries)
    make_dir(directory, a.entries)
    errors, results = [], []
    if a.baseline:
        results.append(measure(baseline_tree(a.baseline), directory, a.entries, a.fids,
                               a.count, errors, a.baseline))
    results.append(measure(ROOT, directory, a.entries, a.fids, a.count, errors,
                           "working tree"))
    keys = [k for k in results[0] if k not in ("server",)]
    print("%-22s" % "" + "".join("%18s" % r["server"][:17] for r in results))
    for k in keys:
        print("%-22s" % k + "".join("%18s" % r[k] for r in results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    for e in errors:
        print("ERROR:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
