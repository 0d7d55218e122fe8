"""CPU cost of a hot group read in a tree of real `nine serve` processes.

    python bench/group_cpu.py [--leaves 16,64] [--fanout 8] [--reads 200] [--agg concat]
                              [--profile DIR]

For each K it starts `nine tree --leaves K --fanout F` (local leaves on loopback, each a
`nine serve` process exporting a directory of one small file `v`; `nine mux` processes
of F children above them, levels added until the root has at most F children; the root
mux runs in the `nine tree` process), opens a group at the root (Client.gopen: members
(NAME, /nodes/NAME/files/v), one per leaf, the root's group service doing the work),
reads it a few times to warm up, then times --reads group reads of every member's whole
file.  The CPU time of every process of the tree and of this client between the first
and the last timed read (the scheduler's nanosecond count, /proc/PID/task/*/schedstat;
the (system) column is psutil's, in 10 ms clock ticks) is summed and divided by reads x
K: the CPU that one member costs per group read, printed with its split by process kind
(leaves, muxes, root, client) and the wall time per group read.

This is the cost the field notes measured on namespace hosts (about 0.45-0.5 ms per
member) without the hosts: every process here shares this machine's cores, so the
wall time is not a tree's, but the CPU sum is.

--profile DIR: every leaf, mux and root process runs under cProfile, timed in CPU time
(a sitecustomize.py put on their PYTHONPATH), and writes DIR/K<k>-<kind>-<pid>.prof
when it stops; the client writes DIR/K<k>-client.prof.  Profiling slows every call: the
CPU figures of such a run are not the real ones.  Read them with python3 -m pstats, or
pstats.Stats(*files) for a kind.
"""

import argparse
import cProfile
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from nine.client import Client  # noqa: E402

WARMUP = 10

SITECUSTOMIZE = '''"""bench/group_cpu.py --profile: cProfile this nine process until it exits."""
import atexit, cProfile, os, sys, time
_d = os.environ.get("NINE_BENCH_PROFILE_DIR")
if _d and sys.argv[1:2] in (["serve"], ["mux"], ["tree"]):
    _p = cProfile.Profile(time.process_time)     # CPU, not wall time (the cores are shared)
    _p.enable()

    def _dump():
        _p.disable()
        kind = {"serve": "leaf", "mux": "mux", "tree": "root"}[sys.argv[1]]
        _p.dump_stats(os.path.join(_d, "%s-%s-%d.prof" % (
            os.environ.get("NINE_BENCH_PROFILE_TAG", ""), kind, os.getpid())))
    atexit.register(_dump)
'''


def cpu(p):
    """(user, system, total) CPU seconds of process p: user and system in clock ticks
    (10 ms steps: too coarse for a short run of many processes), total from the
    scheduler's nanosecond count of its threads (/proc/PID/task/*/schedstat) where
    there is one, else user + system."""
    t = p.cpu_times()
    try:
        total = 0
        for tid in os.listdir("/proc/%d/task" % p.pid):
            with open("/proc/%d/task/%s/schedstat" % (p.pid, tid)) as f:
                total += int(f.read().split()[0])
        total /= 1e9
    except (OSError, ValueError, IndexError):
        total = t.user + t.system
    return t.user, t.system, total


class TreeRun:
    """`nine tree` in a subprocess, its processes sorted by kind."""

    def __init__(self, k, fanout, workdir, env):
        self.export = os.path.join(workdir, "leaves")
        width = len(str(k))
        self.names = ["node%0*d" % (width, i + 1) for i in range(k)]
        for i, name in enumerate(self.names):
            os.makedirs(os.path.join(self.export, name))
            with open(os.path.join(self.export, name, "v"), "w") as f:
                f.write("version 1.2.%d-bench\n" % (i * 4 // k))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nine", "tree", "--leaves", str(k), "--fanout", str(fanout),
             "--listen", "127.0.0.1:0", "--leaf-export", self.export],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        self.addr = None
        for line in self.proc.stdout:
            m = re.search(r"root on (\S+)", line)
            if m:
                self.addr = m.group(1)
                break
        if self.addr is None:
            raise RuntimeError("nine tree did not start: %s" % self.proc.stderr.read())
        root = psutil.Process(self.proc.pid)
        self.kinds = {"root": [root], "leaves": [], "muxes": []}
        for c in root.children(recursive=True):
            argv = c.cmdline()
            kind = "leaves" if "serve" in argv else "muxes" if "mux" in argv else None
            if kind:
                self.kinds[kind].append(c)
        self.kinds["client"] = [psutil.Process()]

    def cpu(self):
        """{kind: (user, system, total)} summed over its processes."""
        out = {}
        for kind, ps in self.kinds.items():
            ts = [cpu(p) for p in ps]
            out[kind] = tuple(sum(t[i] for t in ts) for i in range(3))
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run(k, args, env):
    workdir = tempfile.mkdtemp(prefix="nine-group-cpu-")
    env = dict(env, NINE_BENCH_PROFILE_TAG="K%d" % k)
    tree = TreeRun(k, args.fanout, workdir, env)
    try:
        c = Client(tree.addr)
        g = c.gopen(None, members=[(n, "/nodes/%s/files/v" % n) for n in tree.names],
                    aggregator=args.agg)
        assert g.served, "the root's group service is not in use"
        for _ in range(WARMUP):
            g.read()
            g.lseek(0)
        prof = cProfile.Profile(time.process_time) if args.profile else None
        if prof:
            prof.enable()
        before = tree.cpu()
        t0 = time.perf_counter()
        for _ in range(args.reads):
            out = g.read()
            g.lseek(0)
        wall = time.perf_counter() - t0
        after = tree.cpu()
        if prof:
            prof.disable()
            prof.dump_stats(os.path.join(args.profile, "K%d-client.prof" % k))
        if g.failed:
            print("ERROR: members failed: %s" % g.failed, file=sys.stderr)
        n = args.reads * k
        split = {kind: after[kind][2] - before[kind][2] for kind in after}
        split = {kind: v / n * 1e3 for kind, v in split.items()}
        system = sum(after[kind][1] - before[kind][1] for kind in after) / n * 1e3
        sys_split = {kind: (after[kind][1] - before[kind][1]) / n * 1e3 for kind in after}
        g.close()
        c.close()
        return {"k": k, "processes": {kd: len(ps) for kd, ps in tree.kinds.items()},
                "ms_per_member": sum(split.values()), "split": split, "system": system,
                "sys_split": sys_split,
                "wall_ms": wall / args.reads * 1e3, "bytes": len(out)}
    finally:
        tree.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leaves", default="16,64", help="values of K (default 16,64)")
    ap.add_argument("--fanout", type=int, default=8)
    ap.add_argument("--reads", type=int, default=200, help="timed group reads (default 200)")
    ap.add_argument("--agg", default="concat", help="aggregator (default concat)")
    ap.add_argument("--profile", metavar="DIR", help="cProfile the leaves, muxes and client")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    keydir = None
    if not env.get("NINE_KEY"):
        from nine.auth.key import make_key
        keydir = tempfile.mkdtemp(prefix="nine-group-cpu-key-")
        make_key(os.path.join(keydir, "key"))
        env["NINE_KEY"] = os.environ["NINE_KEY"] = os.path.join(keydir, "key")
    if args.profile:
        args.profile = os.path.abspath(args.profile)
        os.makedirs(args.profile, exist_ok=True)
        site = tempfile.mkdtemp(prefix="nine-group-cpu-site-")
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(SITECUSTOMIZE)
        env["PYTHONPATH"] = site + os.pathsep + env["PYTHONPATH"]
        env["NINE_BENCH_PROFILE_DIR"] = args.profile
    print("group read CPU per member, %d reads, aggregator %s, fanout %d, %d cpus%s" % (
        args.reads, args.agg, args.fanout, os.cpu_count(),
        " (PROFILED: not real figures)" if args.profile else ""))
    print("%5s %-22s %9s %9s %9s %9s %9s %9s %9s" % (
        "K", "processes", "ms/member", "(system)", "leaves", "muxes", "root", "client",
        "wall ms"))
    try:
        for k in [int(x) for x in args.leaves.split(",")]:
            r = run(k, args, env)
            p = r["processes"]
            s = r["split"]
            print("%5d %-22s %9.4f %9.4f %9.4f %9.4f %9.4f %9.4f %9.2f" % (
                k, "%d leaves %d muxes" % (p["leaves"], p["muxes"]), r["ms_per_member"],
                r["system"], s["leaves"], s["muxes"], s["root"], s["client"], r["wall_ms"]))
            print("%5s %-22s %9s %9s %9.4f %9.4f %9.4f %9.4f   (system, clock ticks)" % (
                "", "", "", "", *(r["sys_split"][kd] for kd in ("leaves", "muxes", "root",
                                                               "client"))))
            sys.stdout.flush()
    finally:
        if keydir:
            shutil.rmtree(keydir, ignore_errors=True)


if __name__ == "__main__":
    main()
