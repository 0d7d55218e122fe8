"""Authentication and TLS benchmark (issue 12): what securing the links costs.

    python bench/auth_bench.py [--quick] [--rounds R] [--conns N] [--big MIB]
                               [--leaves L] [--reads K] [--json FILE]

Every server is a real `nine serve` or `nine mux` process on loopback TCP, started here
with a key made for the run (--auth key=FILE) and a test PKI (nine.auth.tls.make_test_pki:
every process shows the certificate for 127.0.0.1, this client the one named "client").
The client (nine.client.Client) runs in this process.  Each measurement is taken R times,
the configurations interleaved round by round (a busy machine slows all of them alike);
medians are printed, and ratios of medians.

(a) authentication per connection: connect + Tversion + (the method's conversation:
    Tauth, its reads and writes) + Tattach, then close, N times in turn, against
      --no-auth       a server that believes every claim
      key             the shared-key method (nine.auth.key)
      munge           MUNGE (nine.auth.munge): a munged at the default socket, else a
                      munged of the run's own (tests/munged.py; the server then runs in a
                      mount namespace where that munged's socket is at the default path);
                      skipped when neither can run
      key + TLS       the key method over a TLS link (the handshake's cost per connection)
(b) TLS on the data path, same authentication (key) both ways:
      bulk read       one Client.read_file of a MIB MiB file from a leaf (msize 1 MiB),
                      plain TCP vs TLS: MB/s and the ratio
      group read      a `nine mux` over L leaves (each a `nine serve` with a file v),
                      every link TLS or none: ms per read of an open group of the L
                      files (Client.gopen, equiv; the mux's group service reads the
                      members), and ms per gopen + read + close

--quick: a smoke run (1 round, few connections, a 4 MiB file, 2 leaves).  The results
are checked (file contents, equivalence classes); a mismatch prints ERROR and exits 1.
"""

import argparse
import datetime
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import gevent  # noqa: E402

from nine.auth import client_method, munge  # noqa: E402
from nine.auth import tls  # noqa: E402
from nine.auth.key import make_key  # noqa: E402
from nine.client import Client  # noqa: E402

MSIZE = 1024 * 1024 + 24
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
_N = itertools.count()


class Proc:
    """`nine ARGS` listening on a loopback port it picks; .addr once wait() returns."""

    def __init__(self, tmp, args, prefix=()):
        self.afile = os.path.join(tmp, "addr%d" % next(_N))
        self.log = self.afile + ".log"
        with open(self.log, "wb") as log:
            self.p = subprocess.Popen(
                list(prefix) + [sys.executable, "-m", "nine"] + args +
                ["-q", "--listen", "127.0.0.1:0", "--address-file", self.afile],
                env=ENV, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.addr = None

    def wait(self, timeout=60):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.p.poll() is not None:
                with open(self.log, errors="replace") as f:
                    raise RuntimeError("%s exited with %d: %s" % (
                        " ".join(self.p.args), self.p.returncode, f.read()[-2000:]))
            try:
                with open(self.afile) as f:
                    self.addr = f.read().strip()
                if self.addr:
                    return self.addr
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise RuntimeError("%s did not start serving" % " ".join(self.p.args))

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


# --- what is measured -------------------------------------------------------------------

def conn_rate(addr, auth, ctx, n):
    """Connections per second: Client(...) (connect, version, authenticate, attach) and
    close, n times in turn."""
    t0 = time.perf_counter()
    for _ in range(n):
        Client(addr, auth=auth, tls=ctx).close()
    return n / (time.perf_counter() - t0)


def bulk_mbps(addr, auth, ctx, size, digest, errors, what):
    c = Client(addr, auth=auth, tls=ctx, msize=MSIZE)
    try:
        t0 = time.perf_counter()
        data = c.read_file("/big")
        dt = time.perf_counter() - t0
    finally:
        c.close()
    if len(data) != size or hashlib.sha256(data).digest() != digest:
        errors.append("%s: the file read is not the file written" % what)
    return size / dt / 1e6


def group_ms(addr, auth, ctx, members, want, reads, errors, what):
    """(ms per read of an open group, ms per gopen + read + close), medians."""
    c = Client(addr, auth=auth, tls=ctx, msize=MSIZE)
    try:
        g = c.gopen(None, "r", members=members, aggregator="equiv")
        if not g.served:
            errors.append("%s: the mux's group service did not take the group" % what)
        got = g.classes()           # the first read (the mux opens the members)
        ts = []
        for _ in range(reads):
            t0 = time.perf_counter()
            got = g.classes()
            ts.append(time.perf_counter() - t0)
        g.close()
        if got != want:
            errors.append("%s: classes %r, want %r" % (what, got, want))
        ots = []
        for _ in range(max(1, reads // 4)):
            t0 = time.perf_counter()
            h = c.gopen(None, "r", members=members, aggregator="equiv")
            got = h.classes()
            h.close()
            ots.append(time.perf_counter() - t0)
        if got != want:
            errors.append("%s (open): classes %r, want %r" % (what, got, want))
    finally:
        c.close()
    return statistics.median(ts) * 1e3, statistics.median(ots) * 1e3


# --- munge ------------------------------------------------------------------------------

def munge_setup():
    """((server argv prefix, client method, stop) or None, a note) for the munge row."""
    if munge.available():
        return ((), client_method("munge"), lambda: None), "munged at the default socket"
    if shutil.which("munged") is None:
        return None, "skipped: munged is not installed"
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        from munged import Munged, can_use_default
    except ImportError as ex:
        return None, "skipped: tests/munged.py cannot be loaded: %s" % ex
    if not can_use_default():
        return None, "skipped: no munged at the default socket, and no mount namespace " \
            "to put one there"
    m = Munged().start()
    return ((m.at_default([]), munge.MungeClient(socket=m.socket), m.stop),
            "a munged of this run's own (its socket bind-mounted at the default path for "
            "the server)")


# --- the run ----------------------------------------------------------------------------

def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (see above)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--conns", type=int, default=200,
                    help="connections per method and round (default 200)")
    ap.add_argument("--big", type=int, default=64, metavar="MIB",
                    help="size of the bulk-read file in MiB (default 64)")
    ap.add_argument("--leaves", type=int, default=8, help="leaves under the mux (default 8)")
    ap.add_argument("--reads", type=int, default=40,
                    help="timed group reads per round (default 40)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.conns, a.big, a.leaves, a.reads = 1, 10, 4, 2, 4
    if min(a.rounds, a.conns, a.big, a.leaves, a.reads) < 1:
        ap.error("every count must be at least 1")

    main_greenlet = gevent.getcurrent()
    gevent.signal_handler(signal.SIGTERM,
                          lambda: main_greenlet.throw(SystemExit(128 + signal.SIGTERM)))
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "gevent": gevent.__version__,
            "openssl": ssl.OPENSSL_VERSION, "rounds": a.rounds,
            "conns": a.conns, "big_mib": a.big, "leaves": a.leaves, "reads": a.reads}
    print("nine auth/TLS benchmark, %s, %s, cpu count %d, Python %s, gevent %s, %s" % (
        info["date"], info["host"], info["cpus"], info["python"], info["gevent"],
        info["openssl"]))
    print("`nine serve`/`nine mux` processes on loopback TCP, the client here; %d "
          "interleaved round%s, medians\n" % (a.rounds, "s" if a.rounds != 1 else ""),
          flush=True)

    tmp = tempfile.mkdtemp(prefix="nine-auth-bench-")
    procs, stops, errors = [], [], []
    try:
        keyfile = os.path.join(tmp, "key")
        make_key(keyfile)
        key = client_method("key=" + keyfile)
        ca, certs = tls.make_test_pki(os.path.join(tmp, "pki"), ["127.0.0.1", "client"])
        cert, pkey = certs["127.0.0.1"]
        tls_args = ["--tls-cert", cert, "--tls-key", pkey, "--tls-ca", ca]
        cctx = tls.client_context(*certs["client"], ca)
        auth_args = ["--auth", "key=" + keyfile]

        export = os.path.join(tmp, "export")
        os.makedirs(export)
        size = a.big << 20
        big = os.urandom(size)
        with open(os.path.join(export, "big"), "wb") as f:
            f.write(big)
        digest = hashlib.sha256(big).digest()
        del big

        def leaf(args, prefix=()):
            p = Proc(tmp, ["serve", "--export", export] + args, prefix)
            procs.append(p)
            return p

        servers = {"--no-auth": (leaf(["--no-auth"]), None, None),
                   "key": (leaf(auth_args), key, None)}
        setup, munge_note = munge_setup()
        if setup is not None:
            prefix, mclient, stop = setup
            stops.append(stop)
            servers["munge"] = (leaf(["--auth", "munge"], prefix), mclient, None)
        servers["key + TLS"] = (leaf(auth_args + tls_args), key, cctx)

        # the trees of (b): L leaves with a file v ("value i%2") under a mux, each way
        want = {}
        members = []
        trees = {}
        for way, extra in (("plain", []), ("TLS", tls_args)):
            kids = []
            for i in range(a.leaves):
                d = os.path.join(tmp, "%s-n%d" % (way, i))
                os.makedirs(d)
                with open(os.path.join(d, "v"), "wb") as f:
                    f.write(b"value %d\n" % (i % 2))
                kids.append(Proc(tmp, ["serve", "--export", d] + auth_args + extra))
            procs.extend(kids)
            trees[way] = kids
        for p in procs:
            p.wait()
        for way, extra in (("plain", []), ("TLS", tls_args)):
            kids = trees[way]
            trees[way] = Proc(tmp, ["mux"] + auth_args + ["--child-auth", "key=" + keyfile] +
                              extra + sum((["--child", "n%d=%s" % (i, k.addr)]
                                           for i, k in enumerate(kids)), []))
            procs.append(trees[way])
        trees = {way: m.wait() for way, m in trees.items()}
        for i in range(a.leaves):
            members.append(("n%d" % i, "/n%d/v" % i))
            want.setdefault(b"value %d\n" % (i % 2), set()).add("n%d" % i)
        bulk = {"plain": servers["key"][0].addr, "TLS": servers["key + TLS"][0].addr}

        rates = {k: [] for k in servers}
        mbps = {w: [] for w in bulk}
        gread = {w: [] for w in trees}
        gopen = {w: [] for w in trees}
        t_all = time.perf_counter()
        for r in range(a.rounds):
            print("round %d/%d ..." % (r + 1, a.rounds), end=" ", flush=True)
            for name, (p, auth, ctx) in servers.items():
                conn_rate(p.addr, auth, ctx, max(1, a.conns // 10))      # warm up
                rates[name].append(conn_rate(p.addr, auth, ctx, a.conns))
            for way, addr in bulk.items():
                mbps[way].append(bulk_mbps(addr, key, cctx if way == "TLS" else None,
                                           size, digest, errors, "bulk " + way))
            for way, addr in trees.items():
                g, o = group_ms(addr, key, cctx if way == "TLS" else None, members, want,
                                a.reads, errors, "group " + way)
                gread[way].append(g)
                gopen[way].append(o)
            print("done", flush=True)
        elapsed = time.perf_counter() - t_all
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for p in procs:
            p.stop()
        for stop in stops:
            stop()
        shutil.rmtree(tmp, ignore_errors=True)

    base = med(rates["--no-auth"])
    print("\n(a) authentication per connection: connect + Tversion + authentication + "
          "Tattach + close,\n    %d in turn per round; munge: %s" % (a.conns, munge_note))
    print("  %-12s %10s %9s %14s" % ("method", "conns/s", "ms/conn", "time vs none"))
    res_a = {}
    for name in rates:
        v = med(rates[name])
        res_a[name] = {"conns_per_s": v, "ms_per_conn": 1e3 / v, "time_ratio": base / v}
        print("  %-12s %10.0f %9.2f %13.2fx" % (name, v, 1e3 / v, base / v))
    res_a["tls_over_key"] = med(rates["key"]) / med(rates["key + TLS"])
    print("  TLS handshake: a key + TLS connection takes %.2fx the time of a key one" %
          res_a["tls_over_key"])

    print("\n(b) TLS on the data path (key authentication both ways)")
    pm, tm = med(mbps["plain"]), med(mbps["TLS"])
    print("  bulk read of %d MiB (msize 1 MiB): plain %.0f MB/s, TLS %.0f MB/s: TLS "
          "gives %.2fx the throughput (%.2fx the time)" % (a.big, pm, tm, tm / pm, pm / tm))
    pg, tg = med(gread["plain"]), med(gread["TLS"])
    po, to = med(gopen["plain"]), med(gopen["TLS"])
    print("  group read, mux of %d leaves: plain %.2f ms, TLS %.2f ms per read of an open "
          "group: %.2fx" % (a.leaves, pg, tg, tg / pg))
    print("  group gopen + read + close:        plain %.2f ms, TLS %.2f ms: %.2fx"
          % (po, to, to / po))
    print("\n%.1f s of measurement" % elapsed)
    results = {"info": info, "auth": res_a,
               "bulk": {"plain_mbps": pm, "tls_mbps": tm, "tls_throughput_ratio": tm / pm},
               "group": {"plain_ms": pg, "tls_ms": tg, "tls_ratio": tg / pg,
                         "open_plain_ms": po, "open_tls_ms": to, "open_tls_ratio": to / po},
               "raw": {"conns_per_s": rates, "mbps": mbps, "group_ms": gread,
                       "gopen_ms": gopen}}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    for e in errors:
        print("ERROR: " + e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
