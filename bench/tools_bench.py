"""Benchmarks of nine ptail and nine ptop (issue 15) on a local tree.

    python bench/tools_bench.py [--leaves N] [--fanout F] [--seconds S] [--rate R]
                                [--refreshes K] [--quick]

A local tree (`nine tree --leaves N --fanout F --leaf-export DIR`, every process on this
machine, authenticated with a key made for the run) is started once.

(a) tail -f of one log on every host.  For S seconds, R times a second, one line
    (`bench K`) is appended to every host's log, straight into the leaves' export
    directories; each tool's output lines are timestamped as they arrive.
      ptail --fold 1   nine ptail -f -n 0 --fold 1: the N copies of a line printed once
                       (the fold window, 1 s, is part of its latency)
      ptail            nine ptail -f -n 0: one line per host
      clush            clush -R exec -w node[1-N] tail -n 0 -f DIR/%h/log: one local tail
                       per host under ClusterShell, lines printed as they come (clush
                       -bL gathers the output until the commands end: a tail -f prints
                       nothing)
    Printed: write-to-print latency (median, 95th percentile, max over every printed
    host line), the lines printed and expected, and CPU seconds per second of run:
    "root" (the root mux, i.e. the `nine tree` process, or clush itself), "tree" (every
    mux and leaf) or "tails" (clush's tail processes), and the tool.
(b) nine ptop -b -d 1 (the default view: topk of the process tables, the header's sum,
    min, max and histogram reads) for K refreshes: seconds per refresh, bytes received
    per refresh, CPU seconds per refresh of the root mux and of the whole tree.

--quick: a smoke run (4 leaves, 3 s, 3 refreshes).  No timing is checked; lines that
never arrive are counted.
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from nine.auth.key import make_key  # noqa: E402
from nine.netwait import free_port  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def cpu_of(pids):
    """CPU seconds (user + system) the processes have used."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / HZ


def session(sid):
    """The processes of session sid."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid:
                    out.append(int(d))
            except OSError:
                pass
    return out


class Tree:
    """`nine tree` in a session of its own."""

    def __init__(self, tmp, leaves, fanout, env):
        self.data = os.path.join(tmp, "data")
        os.mkdir(self.data)
        self.addr = "127.0.0.1:%d" % free_port()
        self.err = open(os.path.join(tmp, "tree.err"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nine", "tree", "--leaves", str(leaves), "--fanout",
             str(fanout), "--leaf-export", self.data, "--listen", self.addr],
            env=env, stdout=subprocess.PIPE, stderr=self.err, start_new_session=True)
        head = [self.proc.stdout.readline().decode() for _ in range(2)]
        if not head[1].startswith("leaves:"):
            raise SystemExit("nine tree did not start: %r" % head)
        self.levels = head[0].split(", ")[1].split(" levels")[0]
        self.names = sorted(re.findall(r"(node\d+)=", head[1]))

    def cpu(self):
        """(root mux, every mux and leaf) CPU seconds."""
        return cpu_of([self.proc.pid]), cpu_of(session(self.proc.pid))

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.err.close()


class Lines:
    """A process's stdout lines, timestamped as they arrive."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.got = []
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()

    def _pump(self):
        for line in iter(self.proc.stdout.readline, b""):
            self.got.append((time.monotonic(), line.decode(errors="replace").rstrip("\n")))

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)
        self.t.join(5)


LINE = re.compile(r"^(node\d+|node\[[^\]]*\] \((\d+)\)): bench (\d+)$")


def tail_run(name, argv, tree, env, seconds, rate, nine=True):
    """One tool following every host's log while lines are written: its figures (CPU:
    nine's root mux, its muxes and leaves, the ptail process; or clush, its tails)."""
    logs = [os.path.join(tree.data, n, "log") for n in tree.names]
    for p in logs:
        open(p, "w").close()
    tool = Lines(argv, env)
    time.sleep(3.0)                      # the tool is following

    def cpu():
        pids = session(tool.proc.pid)
        if nine:
            return tree.cpu() + (cpu_of(pids),)
        own = cpu_of([tool.proc.pid])
        return own, cpu_of(pids) - own, own
    before = cpu()
    written = {}
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < seconds:
        written[k] = time.monotonic()
        for p in logs:
            with open(p, "a") as f:
                f.write("bench %d\n" % k)
        k += 1
        time.sleep(max(0.0, t0 + k / rate - time.monotonic()))
    run = time.monotonic() - t0
    time.sleep(3.0)                      # stragglers (and the last fold windows)
    after = cpu()
    lat, printed = [], 0
    for t, line in tool.got:
        m = LINE.match(line)
        if m is None:
            continue
        copies = int(m.group(2) or 1)
        printed += copies
        lat.extend([t - written[int(m.group(3))]] * copies)
    tool.stop()
    span = run + 3.0
    lat.sort()
    return {"name": name, "expected": k * len(logs), "printed": printed,
            "median": statistics.median(lat) if lat else float("nan"),
            "p95": lat[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
            "max": lat[-1] if lat else float("nan"),
            "root": (after[0] - before[0]) / span, "tree": (after[1] - before[1]) / span,
            "tool": (after[2] - before[2]) / span}


def ptop_run(tree, env, refreshes):
    root0, tree0 = tree.cpu()
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "nine", "ptop", "-a", tree.addr, "-b", "-n",
                        str(refreshes), "-d", "1"], env=env, capture_output=True,
                       text=True, timeout=60 + 5 * refreshes)
    took = time.monotonic() - t0
    root1, tree1 = tree.cpu()
    heads = re.findall(r"^nine ptop: \S+, (\S+) s, (\d+) bytes$", p.stdout, re.M)
    if p.returncode != 0 or len(heads) != refreshes:
        raise SystemExit("ptop failed: %s%s" % (p.stdout[-2000:], p.stderr[-2000:]))
    secs = [float(s) for s, _ in heads]
    nbytes = [int(b) for _, b in heads]
    return {"refreshes": refreshes, "took": took,
            "first_s": secs[0], "s": statistics.median(secs[1:] or secs),
            "first_bytes": nbytes[0], "bytes": statistics.median(nbytes[1:] or nbytes),
            "root": (root1 - root0) / refreshes, "tree": (tree1 - tree0) / refreshes}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--leaves", type=int, default=16)
    ap.add_argument("--fanout", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0, help="writing time per tool")
    ap.add_argument("--rate", type=float, default=5.0, help="lines per second per host")
    ap.add_argument("--refreshes", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.leaves, a.fanout, a.seconds, a.refreshes = 4, 2, 3.0, 3
    tmp = tempfile.mkdtemp(prefix="nine-tools-bench-")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["NINE_KEY"] = os.path.join(tmp, "key")
    make_key(env["NINE_KEY"])
    tree = Tree(tmp, a.leaves, a.fanout, env)
    try:
        print("tree: %d leaves, fanout %d, %s levels of muxes; %d CPUs, load %.1f" % (
            len(tree.names), a.fanout, tree.levels, os.cpu_count(), os.getloadavg()[0]))
        print("\n(a) tail -f of one log on every host: %g lines/s per host for %g s" % (
            a.rate, a.seconds))
        nine = [sys.executable, "-m", "nine", "ptail", "-a", tree.addr, "-f", "-n", "0"]
        runs = [("ptail --fold 1", nine + ["--fold", "1", "log"], True),
                ("ptail", nine + ["log"], True)]
        if shutil.which("clush"):
            runs.append(("clush", ["clush", "-R", "exec", "-w", ",".join(tree.names),
                                   "tail", "-n", "0", "-f",
                                   os.path.join(tree.data, "%h", "log")], False))
        print("%-15s %9s %9s %9s %15s %8s %8s %8s" % (
            "tool", "median s", "p95 s", "max s", "printed/sent", "root", "tree", "tool"))
        for name, argv, is_nine in runs:
            r = tail_run(name, argv, tree, env, a.seconds, a.rate, is_nine)
            print("%-15s %9.3f %9.3f %9.3f %15s %8.3f %8.3f %8.3f" % (
                r["name"], r["median"], r["p95"], r["max"],
                "%d/%d" % (r["printed"], r["expected"]), r["root"],
                r["tree"], r["tool"]))
        print("(CPU seconds per second of run; root: the root mux, tree: every mux and "
              "leaf, tool: ptail;\n for clush, root and tool: clush itself, tree: its "
              "tail processes)")
        print("\n(b) nine ptop -b -d 1, %d refreshes" % a.refreshes)
        r = ptop_run(tree, env, a.refreshes)
        print("first refresh %.3f s, %d bytes; then per refresh %.3f s (median), %d bytes "
              "(median)" % (r["first_s"], r["first_bytes"], r["s"], r["bytes"]))
        print("CPU per refresh: root mux %.3f s, whole tree %.3f s (%d hosts)" % (
            r["root"], r["tree"], len(tree.names)))
    finally:
        tree.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
