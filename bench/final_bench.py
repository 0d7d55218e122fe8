"""FiNAL composition benchmark: how the cost of composing grows with the number of children.

    python bench/final_bench.py [--sizes 64,256,1024,10000] [--latency-ms 1]

Children are IN-PROCESS LIGHT TREES (nine.synth.files: /proc/{cpuinfo, 1/cmdline, PID/})
with no network between the composition and them: the figures are the composition's own
cost (parsing, checking, handles, merging, caching, qid mapping), not a network's.  For each
N it prints:

  compose      parse + check + build handles for N children, and attach the root
  simple root  first listing of the merged root of the per-server view (simple *:/proc
               at /proc: proc/ has one entry per child; contacts no child)
  merge proc/  first listing of proc/ of the merge view (every child's /proc is listed,
               one greenlet per child on first contact)
  cpuinfo/     then the first listing of proc/cpuinfo/ (N per-server entries, from the
               cached proc/ listing)
  relist       proc/ again after invalidate() (children attached now: no greenlets)
  mem/child    tracemalloc (in a second pass, not timed): bytes held per child after
               composing the per-server view and listing its root (A), and after the
               merge view's proc/ and proc/cpuinfo/ listings (B: qid map entries, cached
               listings, attached child roots, synthetic qids)

With --latency-ms L > 0 it also times proc/ of the merge view over children whose every
readdir sleeps L ms (gevent.sleep, as a remote child would wait), to show that the
children are asked concurrently: sequential asking would take about 2*N*L.
"""

import argparse
import gc
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gevent  # noqa: E402

from nine.final import compose  # noqa: E402
from nine.server.qidmap import QidMap  # noqa: E402
from nine.protocol import L_O_RDONLY  # noqa: E402
from nine.server.node import Context, Node  # noqa: E402
from nine.synth.files import Dir, File, SynthFS  # noqa: E402

CTX = Context(uname="root", uid=0, gid=0)


def child_tree(i):
    name = "node%05d" % i
    return SynthFS(Dir("", [Dir("proc", [
        File("cpuinfo", read=lambda ctx: ("cpu of %s\n" % name).encode()),
        Dir("1", [File("cmdline", read=lambda ctx: b"init")]),
        Dir(str(1000 + i), [File("cmdline", read=lambda ctx: b"daemon")]),
    ])])).attach


class Slow(Node):
    def __init__(self, node, delay):
        self.n, self.delay = node, delay
        self.name, self.qid = node.name, node.qid
        self.may_block = True

    def clone(self, ctx):
        return Slow(self.n.clone(ctx), self.delay)

    def walk(self, ctx, names):
        return [Slow(n, self.delay) for n in self.n.walk(ctx, names)]

    def open(self, ctx, flags):
        self.n.open(ctx, flags)

    def readdir(self, ctx, off, count):
        gevent.sleep(self.delay)
        return self.n.readdir(ctx, off, count)

    def close(self, ctx):
        self.n.close(ctx)


def listing(root, names):
    n = root.walk(CTX, names)[-1] if names else root.clone(CTX)
    n.open(CTX, L_O_RDONLY)
    count, off = 0, 0
    while True:
        ents = n.readdir(CTX, off, 1 << 16)
        if not ents:
            break
        count += len(ents)
        off = ents[-1].offset
    n.close(CTX)
    return count


def timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def run(n, latency):
    kids = {"node%05d" % i: child_tree(i) for i in range(n)}
    gc.collect()

    # times (tracemalloc off)
    t_comp, comp = timed(lambda: compose("simple *:/proc at /proc", kids, QidMap()))
    t_att, root = timed(lambda: comp(CTX))
    t_root, cnt = timed(lambda: listing(root, ["proc"]))
    assert cnt == n and not comp.contacts
    comp = compose("merge *:/proc at /proc", kids, QidMap(), ttl=60)
    root = comp(CTX)
    t_proc, cnt = timed(lambda: listing(root, ["proc"]))
    assert cnt == n + 2, cnt            # 1, cpuinfo, and one pid per child
    t_cpu, cnt = timed(lambda: listing(root, ["proc", "cpuinfo"]))
    assert cnt == n
    comp.invalidate()
    t_re, _ = timed(lambda: listing(root, ["proc"]))
    comp = root = None
    gc.collect()

    # memory (the same steps again, under tracemalloc)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    comp = compose("simple *:/proc at /proc", kids, QidMap())
    root = comp(CTX)
    listing(root, ["proc"])
    mem_a = tracemalloc.get_traced_memory()[0] - base
    comp = root = None
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    comp = compose("merge *:/proc at /proc", kids, QidMap(), ttl=60)
    root = comp(CTX)
    listing(root, ["proc"])
    listing(root, ["proc", "cpuinfo"])
    gc.collect()
    mem_b = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    comp = root = None

    line = ("%6d  %8.1f  %9.1f  %9.1f  %9.1f  %9.1f  %7.0f B  %7.0f B" % (
        n, (t_comp + t_att) * 1e3, t_root * 1e3, t_proc * 1e3, t_cpu * 1e3, t_re * 1e3,
        mem_a / n, mem_b / n))
    if latency > 0:
        d = latency / 1000.0
        slow = {k: (lambda ctx, a=a: Slow(a(ctx), d)) for k, a in kids.items()}
        comp = compose("merge *:/proc at /proc", slow, QidMap())
        t_slow, cnt = timed(lambda: listing(comp(CTX), ["proc"]))
        line += "  %9.1f (seq. >= %.0f)" % (t_slow * 1e3, 2 * n * d * 1e3)
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,256,1024,10000")
    ap.add_argument("--latency-ms", type=float, default=1.0)
    a = ap.parse_args()
    print("FiNAL composition over N in-process light child trees (nine.synth.files, no "
          "network);\ntimes in ms, first listings (cold), Python %s" % sys.version.split()[0])
    hdr = "%6s  %8s  %9s  %9s  %9s  %9s  %9s  %9s" % (
        "N", "compose", "simple/", "merge/", "cpuinfo/", "relist", "mem A", "mem B")
    if a.latency_ms > 0:
        hdr += "  %9s" % ("slow %gms" % a.latency_ms)
    print(hdr)
    for n in (int(x) for x in a.sizes.split(",")):
        run(n, a.latency_ms)


if __name__ == "__main__":
    main()
