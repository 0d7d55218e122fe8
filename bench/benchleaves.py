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
