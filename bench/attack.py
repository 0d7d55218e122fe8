"""Hostile load against `nine serve` (issue 13): each attack of the attack pass, re-run
against a server of its own, with a well-behaved client probing it meanwhile.

    python bench/attack.py [--quick] [--only NAME,...] [--json FILE]

Every server is a `nine serve` process on loopback TCP, exporting a directory with a
small file and a FIFO, authentication on (a key made for the run, $NINE_KEY).  The
attackers are plain sockets in this process, from loopback addresses 127.0.0.2 and up
(at most 200 connections from each, under the per-address limit, except where that
limit is the attack); the probe is another process (nine.client.Client, from
127.0.0.1) that every 50 ms connects, makes its Tversion, authenticates, attaches,
stats and reads the small file, and closes.  For each attack:

  attack NAME: RSS peak X MB (bound Y MB), after W MB, probe worst Z ms, server up (N log lines)

RSS: the server's resident memory (psutil), sampled every 20 ms during the attack (peak)
and once the server is idle again (after); the bound is the server's RSS before the
attack plus what the attack may cost (BOUNDS: proportional to what the attackers hold
that the server must keep, never to what their headers claim).  Probe worst: the
slowest probe cycle that began during the attack.  Server up: the process lives and a
probe cycle after the attack succeeded.  Log lines: what the server wrote to stderr
during the attack (its limits log one line per kind and address, then one saying how
many more were suppressed).

The attacks (N: connections or requests; --quick divides them, and shortens timeouts):
  header-flood        N connections each send a 7-byte header claiming a 1 MiB frame,
                      before Tversion (closed at once: at most 8 KiB before Tversion)
  header-flood-v      the same after Tversion (held: the buffer grows with the bytes)
  blocked-10k, -65k   one connection with N reads blocked on the FIFO, then closed
                      (server run with --max-requests and --max-requests-total
                      70000: by default it stops reading at 1024); the teardown time
                      is reported
  requests-total      N reads blocked on the FIFO, 1000 on each connection: beyond the
                      server-wide limit (--max-requests-total, 8192) they are not read
  big-listing         20 connections list a directory of N entries whole at once
                      (Treaddir of 128 KiB)
  uname-cache         Tauth with N distinct 60 KB user names (never authenticated)
  fids                N fids on one connection (beyond 65536: EMFILE)
  per-peer            N connections from one address (beyond 256: closed)
  slowloris           N connections each hold half a frame, a byte more every second
                      (closed after --frame-timeout, here 5 s)
  idle                N connections that make their Tversion and never attach
                      (closed after --attach-timeout, here 5 s)
  fd-exhaustion       a server with 1024 descriptors (ulimit -n) and no connection
                      limits: N idle connections exhaust them; the probe must still get in
                      (the oldest unattached connections make room)

Exit status 1 when a server went down or an RSS peak broke its bound (the probe's
latency is reported, not judged: it depends on the machine's load).
"""

import argparse
import json
import os
import resource
import shutil
import socket
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
from nine.netwait import free_port, wait_port  # noqa: E402

SMALL = b"a small file\n"
MSIZE = 1024 * 1024 + 24
PER_SOURCE = 200                # attacking connections per source address
MB = 1e6

#: MB an attack may add to the server's RSS (the bound over its RSS before), by
#: attack name: a function of N (connections or requests held)
BOUNDS = {
    "header-flood": lambda n: 20,                       # all closed at once
    "header-flood-v": lambda n: 20 + n * 40e3 / MB,     # a connection: ~25 KB
    "blocked-10k": lambda n: 40 + n * 12e3 / MB,        # a blocked read: ~8 KB
    "blocked-65k": lambda n: 40 + n * 12e3 / MB,
    # beyond the server-wide limit (8192; with --quick 1000) requests are not read
    "requests-total": lambda n: 40 + min(n, 8192 + 20 * 8) * 12e3 / MB,
    "big-listing": lambda n: 40,                        # a batch's buffer per listing
    "uname-cache": lambda n: 20,                        # nothing kept per name
    "fids": lambda n: 20 + min(n, 65536) * 1.5e3 / MB,  # a fid: ~1 KB
    "per-peer": lambda n: 20 + 256 * 40e3 / MB,
    "slowloris": lambda n: 20 + n * 40e3 / MB,
    "idle": lambda n: 20 + n * 40e3 / MB,
    "fd-exhaustion": lambda n: 20 + min(n, 1024) * 40e3 / MB,
}


# --- the attackers' 9P ----------------------------------------------------------------
def connect(port, source, timeout=30):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def sources(n):
    """Source addresses for n connections, PER_SOURCE each."""
    return ["127.0.0.%d" % (2 + i // PER_SOURCE) for i in range(n)]


def is_closed(sock):
    """Has the server closed sock (not waiting)?  What it sent is read and dropped."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


class Raw:
    """9P frame by frame over a plain socket, authenticating its attach with the run's
    key (nine.auth.client_method: $NINE_KEY)."""

    def __init__(self, port, source="127.0.0.2"):
        self.sock = connect(port, source, timeout=120)
        self.buf = b""

    def send(self, msgs):
        self.sock.sendall(b"".join(P.encode(m) for m in msgs))

    def recv(self):
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack_from("<I", self.buf)[0]
                if len(self.buf) >= n:
                    frame, self.buf = self.buf[:n], self.buf[n:]
                    return P.decode(frame)
            d = self.sock.recv(1 << 20)
            if not d:
                raise EOFError("the server closed the connection")
            self.buf += d

    def rpc(self, msg):
        self.send([msg])
        return self.recv()

    def version(self, msize=MSIZE):
        return self.rpc(P.Tversion(msize=msize, version="9P2000.L", tag=P.NOTAG))

    def attach(self, fid=0, uname="root"):
        from nine.auth import client_method
        afid = 0xFFFFFF00
        r = self.rpc(P.Tauth(afid=afid, uname=uname, aname="", n_uname=P.NONUNAME, tag=1))
        if isinstance(r, P.Rauth):
            client_method().authenticate(_AuthFid(self, afid), uname, P.NONUNAME, "")
        else:
            afid = P.NOFID
        r = self.rpc(P.Tattach(fid=fid, afid=afid, uname=uname, aname="",
                               n_uname=P.NONUNAME, tag=1))
        if not isinstance(r, P.Rattach):
            raise RuntimeError("attach refused: %r" % r)
        if afid != P.NOFID:
            self.rpc(P.Tclunk(fid=afid, tag=1))

    def close(self):
        self.sock.close()


class _AuthFid:
    """The auth fid's read and write, for a ClientMethod."""

    def __init__(self, raw, afid):
        self.raw, self.afid = raw, afid

    def read(self, n):
        return bytes(self.raw.rpc(P.Tread(fid=self.afid, offset=0, count=n, tag=1)).data)

    def write(self, data):
        return self.raw.rpc(P.Twrite(fid=self.afid, offset=0, data=data, tag=1)).count


# --- the attacks: each returns what it saw, in words ----------------------------------
def header_flood(srv, n, after_version=False):
    socks = []
    hdr = struct.pack("<IBH", 1 << 20, P.BY_NAME["Twrite"].mtype, 1)
    version = P.encode(P.Tversion(msize=MSIZE, version="9P2000.L", tag=P.NOTAG))
    for src in sources(n):
        s = connect(srv.port, src)
        if after_version:
            s.sendall(version)
            s.recv(100)
        s.sendall(hdr)
        socks.append(s)
    time.sleep(1.0)
    closed = sum(is_closed(s) for s in socks)
    for s in socks:
        s.close()
    return "%d of %d connections closed by the server" % (closed, n)


def open_fifo(port, src=None):
    """A Raw connection, attached, with the FIFO open for reading on fid 1."""
    c = Raw(port, src) if src is not None else Raw(port)
    c.version()
    c.attach()
    c.rpc(P.Twalk(fid=0, newfid=1, wnames=["fifo"], tag=1))
    r = c.rpc(P.Tlopen(fid=1, flags=P.L_O_RDONLY, tag=1))
    if not isinstance(r, P.Rlopen):
        raise RuntimeError("cannot open the FIFO: %r" % r)
    return c


def blocked_reads(srv, n):
    c = open_fifo(srv.port)
    tags = list(range(2, n + 2))
    for i in range(0, n, 5000):
        c.send([P.Tread(fid=1, offset=0, count=64, tag=t) for t in tags[i:i + 5000]])
    # answered once every read before it was taken in (and is blocked)
    r = c.rpc(P.Tgetattr(fid=0, request_mask=1, tag=n + 2))
    if not isinstance(r, P.Rgetattr):
        raise RuntimeError("getattr after the reads: %r" % r)
    t0 = time.monotonic()
    c.close()
    srv.wait_idle()
    srv.teardown = (t0, time.monotonic())
    return "%d reads blocked, then their connection closed: %.2f s to end them" % (
        n, srv.teardown[1] - t0)


def requests_total(srv, n, per=1000):
    """n reads blocked on the FIFO, `per` on each connection (under the per-connection
    limit, 1024): beyond the server-wide limit (--max-requests-total) they are not read
    (backpressure)."""
    conns = []
    for i, src in enumerate(sources((n + per - 1) // per)):
        c = open_fifo(srv.port, src)
        k = min(per, n - i * per)
        c.send([P.Tread(fid=1, offset=0, count=64, tag=t) for t in range(2, k + 2)])
        conns.append(c)
    time.sleep(2.0)
    for c in conns:
        c.close()
    srv.wait_idle()
    return "%d reads sent on %d connections, held 2 s, then closed" % (n, len(conns))


def big_listing(srv, n, fids=20):
    """`fids` connections list the directory `big` (N entries) whole at once, Treaddir
    of 128 KiB (as the kernel asks)."""
    counts = [0] * fids
    errors = []

    def lister(i):
        try:
            c = Raw(srv.port, "127.0.0.2")
            c.version()
            c.attach()
            c.rpc(P.Twalk(fid=0, newfid=1, wnames=["big"], tag=1))
            r = c.rpc(P.Tlopen(fid=1, flags=P.L_O_RDONLY, tag=1))
            if not isinstance(r, P.Rlopen):
                raise RuntimeError("cannot open big: %r" % r)
            offset = 0
            while True:
                r = c.rpc(P.Treaddir(fid=1, offset=offset, count=128 * 1024, tag=1))
                if not isinstance(r, P.Rreaddir):
                    raise RuntimeError("readdir: %r" % r)
                ents = P.unpack_dirents(r.data)
                if not ents:
                    break
                counts[i] += len(ents)
                offset = ents[-1][1]
            c.close()
        except Exception as ex:     # noqa: BLE001 (reported)
            errors.append("%s: %s" % (type(ex).__name__, ex))
    ts = [threading.Thread(target=lister, args=(i,)) for i in range(fids)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError("%d listings failed: %s" % (len(errors), errors[0]))
    if any(c != n + 2 for c in counts):
        raise RuntimeError("listings of %s entries, not %d" % (sorted(set(counts)), n + 2))
    return "%d connections listed %d entries each, at once" % (fids, n + 2)


def uname_cache(srv, n):
    c = Raw(srv.port)
    c.version()
    batch = 10                  # under the auth fids one connection may hold (16)
    for i in range(0, n, batch):
        k = range(i, min(i + batch, n))
        c.send([P.Tauth(afid=100 + j, uname="u%06d" % j + "x" * 60000, aname="",
                        n_uname=P.NONUNAME, tag=j % 1000) for j in k])
        for _ in k:
            c.recv()
        c.send([P.Tclunk(fid=100 + j, tag=j % 1000) for j in k])
        for _ in k:
            c.recv()
    c.close()
    return "%d user names of 60 KB offered (Tauth, then clunked)" % n


def fids(srv, n):
    c = Raw(srv.port)
    c.version()
    c.attach()
    made = refused = 0
    for i in range(1, n + 1, 2000):
        k = range(i, min(i + 2000, n + 1))
        c.send([P.Twalk(fid=0, newfid=f, wnames=[], tag=f % 60000) for f in k])
        for _ in k:
            r = c.recv()
            if isinstance(r, P.Rwalk):
                made += 1
            else:
                refused += 1
                last = r
    c.close()
    why = " (Rlerror %s)" % os.strerror(last.ecode) if refused else ""
    return "%d fids made, %d refused%s" % (made, refused, why)


def per_peer(srv, n):
    socks = [connect(srv.port, "127.0.0.2") for _ in range(n)]
    version = P.encode(P.Tversion(msize=MSIZE, version="9P2000.L", tag=P.NOTAG))
    served = 0
    for s in socks:
        try:
            s.sendall(version)
            served += len(s.recv(100)) > 0
        except OSError:
            pass
    for s in socks:
        s.close()
    return "%d of %d connections from one address served, the others closed" % (served, n)


def _hold(srv, socks, deadline, trickle):
    """Hold socks until the server closed them all or deadline: the seconds it took."""
    t0 = time.monotonic()
    open_ = list(socks)
    while open_ and time.monotonic() < deadline:
        time.sleep(1.0)
        still = []
        for s in open_:
            if is_closed(s):
                continue
            if trickle:
                try:
                    s.send(b"x")
                except OSError:
                    continue
            still.append(s)
        open_ = still
    for s in socks:
        s.close()
    return time.monotonic() - t0, len(open_)


def slowloris(srv, n):
    version = P.encode(P.Tversion(msize=MSIZE, version="9P2000.L", tag=P.NOTAG))
    half = struct.pack("<IBH", 4000, P.BY_NAME["Twrite"].mtype, 1) + b"\0" * 1993
    socks = []
    for src in sources(n):
        s = connect(srv.port, src)
        s.sendall(version)
        s.recv(100)
        s.sendall(half)
        socks.append(s)
    took, left = _hold(srv, socks, time.monotonic() + srv.timeout + 10, True)
    return "%d connections holding half a frame (a byte more every second): %s" % (
        n, "all closed within %.0f s (--frame-timeout %g)" % (took, srv.timeout)
        if not left else "%d still open after %.0f s" % (left, took))


def idle(srv, n):
    version = P.encode(P.Tversion(msize=MSIZE, version="9P2000.L", tag=P.NOTAG))
    socks = []
    for src in sources(n):
        s = connect(srv.port, src)
        s.sendall(version)
        s.recv(100)
        socks.append(s)
    took, left = _hold(srv, socks, time.monotonic() + srv.timeout + 10, False)
    return "%d connections that never attach: %s" % (
        n, "all closed within %.0f s (--attach-timeout %g)" % (took, srv.timeout)
        if not left else "%d still open after %.0f s" % (left, took))


def fd_exhaustion(srv, n):
    socks = [connect(srv.port, src) for src in sources(n)]
    time.sleep(3.0)
    closed = sum(is_closed(s) for s in socks)
    for s in socks:
        s.close()
    return "%d idle connections against %d descriptors: %d closed by the server to " \
           "make room" % (n, srv.nofile, closed)


MANY_REQUESTS = ["--max-requests", "70000", "--max-requests-total", "70000"]

# (name, attack, N, N with --quick, `nine serve` options, (options with --quick))
ATTACKS = [
    ("header-flood", header_flood, 1000, 200, [], None),
    ("header-flood-v", lambda s, n: header_flood(s, n, True), 1000, 200, [], None),
    ("blocked-10k", blocked_reads, 10000, 2000, MANY_REQUESTS, None),
    ("blocked-65k", blocked_reads, 65000, 0, MANY_REQUESTS, None),
    ("requests-total", requests_total, 20000, 3000, [], ["--max-requests-total", "1000"]),
    ("big-listing", big_listing, 100000, 5000, [], None),
    ("uname-cache", uname_cache, 1500, 200, [], None),
    ("fids", fids, 100000, 1500, [], ["--max-fids", "1000"]),
    ("per-peer", per_peer, 1000, 300, [], None),
    ("slowloris", slowloris, 1000, 200, ["--frame-timeout", "5", "--attach-timeout", "60"],
     ["--frame-timeout", "1", "--attach-timeout", "60"]),
    ("idle", idle, 1000, 200, ["--attach-timeout", "5"], ["--attach-timeout", "1"]),
    ("fd-exhaustion", fd_exhaustion, 1200, 300,
     ["--max-connections", "0", "--max-per-peer", "0", "nofile=1024"],
     ["--max-connections", "0", "--max-per-peer", "0", "nofile=256"]),
]


# --- the server, the probe, the sampler -------------------------------------------------
class Server:
    """`nine serve` over export (opts: its options; nofile=N: its descriptor limit)."""

    def __init__(self, export, opts, logpath):
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.nofile = None
        self.timeout = None
        args = []
        for o in opts:
            if o.startswith("nofile="):
                self.nofile = int(o[7:])
            else:
                args.append(o)
        for i, o in enumerate(args):
            if o in ("--frame-timeout", "--attach-timeout") and self.timeout is None:
                self.timeout = float(args[i + 1])
        self.log = open(logpath, "w+")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        nofile = self.nofile

        def limit():        # hard too: a RealFS raises the soft limit to the hard one
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nine", "serve", "--listen", self.addr, "--export",
             export, "-q"] + args, env=env, stdout=subprocess.DEVNULL, stderr=self.log,
            preexec_fn=limit)
        wait_port(self.port, 30, proc=self.proc)
        import psutil
        self.ps = psutil.Process(self.proc.pid)
        self.teardown = None

    def rss(self):
        return self.ps.memory_info().rss

    def alive(self):
        return self.proc.poll() is None

    def cpu(self):
        t = self.ps.cpu_times()
        return t.user + t.system

    def wait_idle(self, limit=120):
        """Until the server's CPU time stops growing (it has finished what it does)."""
        deadline = time.monotonic() + limit
        last = self.cpu()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.cpu()
            if now - last < 0.02:
                return
            last = now

    def log_lines(self, since):
        self.log.flush()
        self.log.seek(since)
        return [line for line in self.log.read().splitlines() if line.strip()]

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Probe:
    """The well-behaved client: a process (this script, --probe) whose cycles are
    collected here as (start, seconds, ok)."""

    def __init__(self, addr):
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # the probe stands for a client on another host: on this machine it runs at a
        # higher priority (nice -10, when allowed) so that the attackers' own CPU (they
        # share this machine's cores with the server) does not delay it; the server
        # runs at the normal priority
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--probe",
                                      addr], env=env, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=_raise_priority)
        self.cycles = []
        self.failures = []          # why cycles failed
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.proc.stdout:
            t0, dt, ok = line.rstrip("\n").split(" ", 2)
            self.cycles.append((float(t0), float(dt), ok == "ok"))
            if ok != "ok":
                self.failures.append(ok)

    def wait_cycles(self, since, n=1, limit=60):
        """Until n cycles began after `since` and ended: whether they all succeeded."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            after = [c for c in self.cycles if c[0] >= since]
            if len(after) >= n:
                return all(c[2] for c in after[:n])
            time.sleep(0.05)
        return False

    def worst(self, t0, t1):
        """The slowest cycle that began in [t0, t1] (seconds), and how many failed."""
        during = [c for c in self.cycles if t0 <= c[0] <= t1]
        return max([c[1] for c in during] or [0.0]), sum(not c[2] for c in during)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def _raise_priority():
    try:
        os.nice(-10)
    except OSError:
        pass


def probe_main(addr, every=0.05):
    """--probe ADDR: a cycle every `every` seconds, one line each: start, seconds, ok."""
    from nine.client import Client
    steps_file = os.environ.get("NINE_PROBE_STEPS")     # a diagnosis: each step's time
    while True:
        t0 = time.monotonic()
        marks = [t0]
        try:
            c = Client(addr, timeout=60)
            marks.append(time.monotonic())
            try:
                c.stat("small")
                marks.append(time.monotonic())
                ok = c.read_file("small") == SMALL
                marks.append(time.monotonic())
            finally:
                c.close()
            why = "ok" if ok else "failed: other bytes"
        except Exception as ex:
            why = "failed: %s: %s" % (type(ex).__name__, ex)
        dt = time.monotonic() - t0
        if steps_file:
            with open(steps_file, "a") as f:
                f.write("%.4f %.4f attach %s\n" % (t0, dt, " ".join(
                    "%.4f" % (b - a) for a, b in zip(marks, marks[1:]))))
        print("%.4f %.4f %s" % (t0, dt, why.replace("\n", " ")), flush=True)
        time.sleep(max(0.0, every - dt))


class Sampler:
    """The server's RSS every 20 ms: the peak."""

    def __init__(self, srv):
        self.srv = srv
        self.peak = srv.rss()
        self.stopped = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stopped.wait(0.02):
            try:
                self.peak = max(self.peak, self.srv.rss())
            except Exception:
                return

    def stop(self):
        self.stopped.set()
        self.t.join()
        return self.peak


def run(name, attack, n, opts, export, tmp):
    srv = Server(export, opts, os.path.join(tmp, name + ".log"))
    probe = Probe(srv.addr)
    try:
        if not probe.wait_cycles(0, 3):
            raise RuntimeError("the probe does not get through before the attack")
        time.sleep(0.3)
        base = srv.rss()
        bound = base + BOUNDS[name](n) * MB
        logged = srv.log.tell()
        sampler = Sampler(srv)
        t0 = time.monotonic()
        try:
            detail = attack(srv, n)
        except (OSError, EOFError, RuntimeError) as ex:
            detail = "attack failed: %s" % ex
        t1 = time.monotonic()
        srv.wait_idle()
        peak = sampler.stop()
        up = srv.alive() and probe.wait_cycles(time.monotonic(), 2)
        after = srv.rss() if srv.alive() else 0
        worst, failed = probe.worst(t0, t1)
        lines = srv.log_lines(logged)
        res = dict(attack=name, n=n, rss_before_mb=base / MB, rss_peak_mb=peak / MB,
                   rss_bound_mb=bound / MB, rss_after_mb=after / MB,
                   probe_worst_ms=worst * 1e3, probe_failed=failed, up=up,
                   log_lines=len(lines), detail=detail, seconds=t1 - t0)
        if srv.teardown:
            tw, _ = probe.worst(*srv.teardown)
            res["probe_worst_teardown_ms"] = tw * 1e3
        res["log"] = lines[:6]
        res["probe_failures"] = probe.failures[:3]
        return res
    finally:
        probe.stop()
        srv.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer connections "
                    "and requests, shorter timeouts, no blocked-65k")
    ap.add_argument("--only", help="comma-separated attack names")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory (the "
                    "servers' logs: NAME.log)")
    ap.add_argument("--probe", metavar="ADDR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        try:
            probe_main(args.probe)
        except (KeyboardInterrupt, BrokenPipeError):
            pass
        return 0
    only = set(args.only.split(",")) if args.only else None
    if only and only - {a[0] for a in ATTACKS}:
        ap.error("unknown attacks: %s" % ", ".join(sorted(only - {a[0] for a in ATTACKS})))
    tmp = tempfile.mkdtemp(prefix="nine-attack-")
    try:
        key = os.path.join(tmp, "key")
        subprocess.run([sys.executable, "-m", "nine", "key", key], check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT)
        os.environ["NINE_KEY"] = key
        export = os.path.join(tmp, "export")
        os.mkdir(export)
        with open(os.path.join(export, "small"), "wb") as f:
            f.write(SMALL)
        os.mkfifo(os.path.join(export, "fifo"))
        if not only or "big-listing" in only:
            big = os.path.join(export, "big")
            os.mkdir(big)
            for i in range(next(a[3 if args.quick else 2] for a in ATTACKS
                                if a[0] == "big-listing")):
                os.close(os.open(os.path.join(big, "entry-%07d" % i),
                                 os.O_CREAT | os.O_WRONLY))
        results = []
        bad = 0
        print("nine serve under attack: %d cores, load %.1f%s" % (
            os.cpu_count(), os.getloadavg()[0], " (--quick)" if args.quick else ""),
            flush=True)
        for name, attack, n, nq, opts, qopts in ATTACKS:
            if only and name not in only:
                continue
            if args.quick:
                n, opts = nq, qopts if qopts is not None else opts
                if not n:
                    continue
            r = run(name, attack, n, opts, export, tmp)
            results.append(r)
            ok = r["up"] and r["rss_peak_mb"] <= r["rss_bound_mb"]
            bad += not ok
            print("attack %s: RSS peak %.0f MB (bound %.0f MB), after %.0f MB, probe worst "
                  "%.0f ms, server %s (%d log lines)%s" % (
                      name, r["rss_peak_mb"], r["rss_bound_mb"], r["rss_after_mb"],
                      r["probe_worst_ms"], "up" if r["up"] else "DOWN", r["log_lines"],
                      "" if ok else "  ERROR"), flush=True)
            extra = ""
            if "probe_worst_teardown_ms" in r:
                extra = "; probe worst during the teardown %.0f ms" % r[
                    "probe_worst_teardown_ms"]
            if r["probe_failed"]:
                extra += "; %d probe cycles failed (%s)" % (r["probe_failed"],
                                                            r["probe_failures"][0])
            print("    %s (before: %.0f MB; %.1f s)%s" % (r["detail"], r["rss_before_mb"],
                                                       r["seconds"], extra))
            for line in r["log"][:3]:
                print("    log: %s" % line[:150])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return 1 if bad else 0
    finally:
        if args.keep:
            print("logs kept in %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
