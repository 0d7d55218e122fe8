"""Light leaf servers for the benchmarks (mux_bench.py, group_bench.py): a nine Server
per leaf on its own loopback port, many per process, in worker processes so that the
leaves do not share the measuring process's CPU.

A bench script defines make(i) -> Server (not listening yet) and, for its workers,
calls worker_main(indices, make) when run with its hidden --leaf-worker option;
Leaves(n, nworkers, worker_args, make) starts the workers (or, nworkers = 0, serves
the leaves in this process)."""

import os
import resource
import signal
import subprocess
import sys
import time

from gevent.socket import wait_read


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def start_leaves(indices, make):
    """Start make(i) on a free loopback port per index: [(i, "127.0.0.1:PORT")], servers."""
    out, keep = [], []
    for i in indices:
        srv = make(i)
        ss = srv.listen("127.0.0.1:0")
        keep.append(srv)
        out.append((i, "%s:%d" % ss.address[:2]))
    return out, keep


def worker_main(indices, make):
    """A leaf worker process: prints 'INDEX ADDR' lines and 'ready', then serves until
    its stdin reaches EOF (the parent stops it so; Ctrl-C is the parent's)."""
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    addrs, keep = start_leaves(indices, make)
    w = sys.stdout
    for i, a in addrs:
        w.write("%d %s\n" % (i, a))
    w.write("ready\n")
    w.flush()
    wait_read(sys.stdin.fileno())        # the hub serves the leaves meanwhile
    os._exit(0)


class Leaves:
    """n light leaf servers in nworkers worker processes (0: in this process).
    worker_args(k, nworkers) -> the command line of worker k."""

    def __init__(self, n, nworkers, worker_args, make, name=str):
        self.n = n
        self.name = name
        self.procs = []
        self.keep = []
        addrs = {}
        t0 = time.perf_counter()
        try:
            if nworkers == 0:
                got, self.keep = start_leaves(range(n), make)
                addrs.update(got)
            else:
                nw = min(nworkers, n)
                for k in range(nw):
                    self.procs.append(subprocess.Popen(
                        worker_args(k, nw), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        text=True))
                for p in self.procs:
                    for line in p.stdout:
                        line = line.strip()
                        if line == "ready":
                            break
                        i, a = line.split()
                        addrs[int(i)] = a
                    else:
                        raise RuntimeError("leaf worker exited with %s" % p.wait())
        except BaseException:
            self.stop()
            raise
        self.addrs = [addrs[i] for i in range(n)]
        self.start_s = time.perf_counter() - t0

    def children(self, n=None):
        return [(self.name(i), self.addrs[i]) for i in range(self.n if n is None else n)]

    def pids(self):
        return [p.pid for p in self.procs]

    def cpu(self):
        """CPU seconds (user + system) used so far by the worker processes."""
        tck = os.sysconf("SC_CLK_TCK")
        total = 0
        for p in self.procs:
            try:
                with open("/proc/%d/stat" % p.pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                return None
        return total / tck

    def stop(self):
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        for s in self.keep:
            s.stop()
        self.keep = []


# ---------------------------------------------------------------------------------------
# simulated link latency (--latency of group_bench.py)

DELAY_ENV = "NINE_BENCH_LINK_DELAY_US"
SIMNET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "simnet")


class DelayLine:
    """Every reply a server of this process sends goes out `delay` seconds after it was
    made, as over a network link with that round trip: the server keeps serving
    meanwhile and its own work is unchanged.  One FIFO and one hub timer per process:
    a delayed reply costs an append, not a greenlet or a timer of its own."""

    def __init__(self, delay):
        from collections import deque
        self.delay = delay
        self.q = deque()
        self.timer = None

    def push(self, send, data):
        due = time.monotonic() + self.delay
        self.q.append((due, send, data))
        if self.timer is None:
            self._arm(due)

    def _arm(self, due):
        import gevent
        self.timer = gevent.get_hub().loop.timer(max(0.0, due - time.monotonic()))
        self.timer.start(self._fire)

    def _fire(self):
        self.timer.close()
        self.timer = None
        q = self.q
        now = time.monotonic()
        while q and q[0][0] <= now:
            _, send, data = q.popleft()
            try:
                send(data)
            except Exception:
                pass
        if q:
            self._arm(q[0][0])


_installed = None


def install_delay(us):
    """Make every nine Server of this process (made before or after) send its replies
    through one DelayLine of `us` microseconds."""
    global _installed
    if _installed is not None:
        return
    from nine.server import core
    line = DelayLine(us / 1e6)
    base = core.Connection

    class DelayedConnection(base):
        def send_raw(self, data, _send=base.send_raw, _line=line):
            _line.push(lambda d, self=self: _send(self, d), data)
    core.Server.connection_class = DelayedConnection
    _installed = us


def delay_child_processes(us):
    """The `nine mux` processes this process starts from now on delay their replies too
    (through bench/simnet/sitecustomize.py, found on PYTHONPATH)."""
    os.environ[DELAY_ENV] = str(int(us))
    pp = os.environ.get("PYTHONPATH", "")
    if SIMNET not in pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = SIMNET + (os.pathsep + pp if pp else "")
