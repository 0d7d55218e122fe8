#!/usr/bin/env python3
"""The seed's distributed debugger, end to end, through group file operations.

    python3 examples/debugger.py                  # 32 processes over 8 leaves, 2 mux levels
    python3 examples/debugger.py --procs 64 --leaves 16 --classes 5

What it does (the slide "Example Code: Distributed Debugger"):
  0. starts a tree (`nine tree`'s machinery: leaf servers with --proc, muxes of fanout 4
     above them, the root in this process) and N copies of tests/progs/dbg.c, process i
     belonging to leaf i mod M and running with seed i mod K;
  1. defines the groups: mkdir /groups/ctl, /groups/mem, /groups/wait and one symlink per
     process in each, to /nodes/LEAF/proc/PID/{ctl,mem,wait};
  2. ctl_gfd = gopen("/groups/ctl"); write(ctl_gfd, "stop")
  3. lseek(mem_gfd, step); write(mem_gfd, int3)        a breakpoint in every process
  4. write(ctl_gfd, "start")
  5. WaitForAll: a group read of the wait files returns when every process has hit it
  6. lseek(mem_gfd, &value); gbindaggr(mem_gfd, READ, equiv); read(mem_gfd, 8)
and checks that the classes are the values the processes really hold: each process's
mem is also read on its own (one plain 9P read each), and the classes must be exactly
{seed * 1000 + 7: the processes started with that seed}.

The group operations cross the root once per child mux: each mux hands its members on
to a private group on each leaf, reads merge at every level.
"""

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from nine.client import Client  # noqa: E402

DBG_C = os.path.join(os.path.dirname(HERE), "tests", "progs", "dbg.c")


def build(outdir):
    """Compile dbg.c (non-PIE, so nm's addresses are the run-time ones)."""
    exe = os.path.join(outdir, "dbg")
    subprocess.run(["gcc", "-O1", "-g", "-no-pie", "-o", exe, DBG_C], check=True)
    syms = {}
    out = subprocess.run(["nm", exe], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return exe, syms


class Target:
    def __init__(self, exe, seed, leaf, label):
        self.p = subprocess.Popen([exe, str(seed)], stdout=subprocess.PIPE)
        pid, value, step = self.p.stdout.readline().split()
        self.pid = int(pid)
        self.value_addr = int(value, 16)
        self.step_addr = int(step, 16)
        self.seed = seed
        self.leaf = leaf
        self.label = label

    def path(self, name):
        return "/nodes/%s/proc/%d/%s" % (self.leaf, self.pid, name)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            pass


def start_targets(exe, n, leaves, classes):
    return [Target(exe, i % classes, leaves[i % len(leaves)], "p%d" % i) for i in range(n)]


def make_groups(c, targets, prefix="dbg"):
    """Step 1: one group directory per file kind, one symlink per process."""
    names = {}
    for kind in ("ctl", "mem", "wait"):
        d = "/groups/%s-%s" % (prefix, kind)
        c.mkdir(d)
        for t in targets:
            # relative targets are resolved from the group's directory (/groups/NAME)
            c.symlink("../.." + t.path(kind), "%s/%s" % (d, t.label))
        names[kind] = d
    return names


def debug(c, targets, log=print, prefix="dbg", timeout=60.0):
    """Steps 1-6 through the client `c` (attached to the root).  Returns
    (classes {value: set(labels)}, wait classes {event line: set(labels)}, times)."""
    times = {}
    t0 = time.monotonic()
    groups = make_groups(c, targets, prefix)
    ctl = c.gopen(groups["ctl"], "w", sync="timeout", timeout=timeout)
    mem = c.gopen(groups["mem"], "rw", sync="timeout", timeout=timeout)
    wait = c.gopen(groups["wait"], "r", aggregator="equiv", sync="timeout", timeout=timeout)
    times["open"] = time.monotonic() - t0
    try:
        assert ctl.served and mem.served and wait.served, "the root offers no group service"
        step = {t.step_addr for t in targets}
        var = {t.value_addr for t in targets}
        assert len(step) == 1 and len(var) == 1, "one executable: one address each"
        step, var = step.pop(), var.pop()

        def timed(name, fn, *a):
            t = time.monotonic()
            r = fn(*a)
            times[name] = time.monotonic() - t
            return r

        def ok(g, what):
            if g.failed:
                raise RuntimeError("%s failed for %s" % (what, g.failed))

        timed("stop", ctl.write, b"stop\n")                         # 2. stop all
        ok(ctl, "stop")
        log("stopped %d processes" % len(targets))
        mem.lseek(step)                                             # 3. breakpoint
        timed("breakpoint", mem.write, b"\xcc")
        ok(mem, "breakpoint")
        log("breakpoint at step()=%#x in every process" % step)
        timed("start", ctl.write, b"start\n")                       # 4. continue all
        ok(ctl, "start")
        events = timed("waitforall", wait.classes)                  # 5. WaitForAll
        ok(wait, "wait")
        for line, ms in events.items():
            log("wait: %s: %s" % (line.decode().strip(), _fold(ms)))
        mem.lseek(var)                                              # 6. read the variable
        mem.bindaggr("read", "equiv", format="i64")
        t = time.monotonic()
        raw = mem.classes(8)
        times["read"] = time.monotonic() - t
        ok(mem, "read")
        classes = {struct.unpack("<q", k)[0]: ms for k, ms in raw.items()}
        log(mem.aggregator().render(mem.last).decode().rstrip())
        return classes, events, times
    finally:
        for g in (ctl, mem, wait):
            g.close()


def check(c, targets, classes):
    """The classes must be the values the processes hold: read each one on its own."""
    want = {}
    for t in targets:
        with c.open(t.path("mem"), "r") as f:
            f.seek(t.value_addr)
            v = struct.unpack("<q", f.read(8))[0]
        assert v == t.seed * 1000 + 7, (t.label, v)
        want.setdefault(v, set()).add(t.label)
    return want == classes, want


def _fold(ms):
    from nine.group.aggregate import fold
    return fold(ms)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=32)
    ap.add_argument("--leaves", type=int, default=8)
    ap.add_argument("--fanout", type=int, default=4)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--addr", default="127.0.0.1:0", help="where the root listens")
    args = ap.parse_args(argv)
    if shutil.which("gcc") is None:
        sys.exit("needs gcc")
    from nine.launch import Topology, Tree
    tmp = tempfile.mkdtemp(prefix="nine-dbg-")
    targets = []
    tree = None
    try:
        exe, _ = build(tmp)
        topo = Topology.local(args.leaves, fanout=args.fanout, listen=args.addr,
                              leaf_args="--proc")
        tree = Tree(topo)
        root = tree.start()
        srv = root.server.listen(args.addr)
        addr = "%s:%d" % srv.address[:2]
        print("tree: %d leaves, %d levels of muxes, root on %s" % (
            args.leaves, len(tree.levels), addr))
        leaves = [n for n, _ in topo.leaves]
        targets = start_targets(exe, args.procs, leaves, args.classes)
        print("%d processes of dbg, process i on leaf i mod %d, seed i mod %d" % (
            len(targets), len(leaves), args.classes))
        c = Client(addr)
        classes, events, times = debug(c, targets)
        good, want = check(c, targets, classes)
        print("times: " + ", ".join("%s %.3fs" % kv for kv in times.items()))
        if not good:
            print("MISMATCH: group read %r, processes hold %r" % (classes, want))
            return 1
        print("ok: %d classes, as the processes hold" % len(classes))
        return 0
    finally:
        for t in targets:
            t.kill()
        if tree is not None:
            tree.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
