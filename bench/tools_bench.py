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

--hosts [K] (default K 64; needs root): the same on K namespace hosts (interop/hosts.py,
each with its address, sshd and /srv), the tree launched over ssh (nine.launch.ssh:
a leaf per host exporting /srv/data, muxes on hosts at --fanout, the root a daemon on
this machine), against clush over the hosts' sshd, the peer measured in the same run:

(a) every host's /srv/data/log gets --rate lines per second (default 10; one writer
    here appends `bench N` to every host's file, N naming its write time) for
    --seconds (default 20), followed by
      ptail --fold 1   nine ptail -f -n 0 --fold 1 log
      ptail            nine ptail -f -n 0 log
      clush            clush -f K -w node[1-K] tail -n 0 -f /srv/data/log (clush -bL
                       would gather until the tails end: it prints nothing of a tail -f;
                       without -b clush prints `node7: line` as lines come)
    Each tool is followed until it has printed a probe line of every host; then the
    run.  Printed: write-to-print latency (median, 95th percentile, max), lines printed
    / written, and CPU seconds per second of run: root (nine's root daemon; clush:
    clush itself, the root of its fan-out), hosts (every process in the hosts'
    namespaces: leaves and muxes, or sshd and tail) and the tool (ptail, or clush and
    its ssh clients).  In the nine runs, one host's leaf is killed (SIGKILL) a third
    into the run and started again 2 s later on its host (the watch's restart,
    SshTree._start_batch): printed are the seconds from its restart (the leaf
    listening again) until its lines are printed again, and whether the lines written
    while it was down came too.
(b) nine ptop -b -n N -d 1 (N: --refreshes) against N rounds of
    clush -b -f K -w node[1-K] 'top -b -n1 | head -20': wall seconds per refresh or
    round, CPU of the root (nine's root daemon; clush and its ssh clients) per second
    as % of a core and per refresh, CPU on the hosts per refresh, bytes into this
    machine from the hosts per refresh (the receive counter of its port on the hosts'
    bridge: what the muxes send the root, or the ssh sessions), and ratios.
uptime's load is printed with the figures: the machine may be shared.
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


# -- on namespace hosts, against clush ---------------------------------------------------

HLINE = re.compile(r"^(\S+?)(?: \((\d+)\))?: (.*)$")


class HLines:
    """A process's stdout and stderr lines, timestamped as they arrive."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.out, self.err = [], []
        self.ts = [threading.Thread(target=self._pump, args=(f, to), daemon=True)
                   for f, to in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.ts:
            t.start()

    @staticmethod
    def _pump(f, to):
        for line in iter(f.readline, b""):
            to.append((time.monotonic(), line.decode(errors="replace").rstrip("\n")))

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for t in self.ts:
            t.join(5)


def hosts_of(head, _cache={}):
    """The hosts of an output line's head: node7, or node[1-64] (folded)."""
    got = _cache.get(head)
    if got is None:
        from ClusterShell.NodeSet import NodeSet
        got = _cache[head] = list(NodeSet(head)) if "[" in head else [head]
    return got


def cpu_by_pid(pids):
    """{pid: CPU seconds} of the processes, their reaped children's included (the
    sshd that ran a session, the shell that ran top)."""
    out = {}
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[pid] = sum(int(x) for x in fields[11:15]) / HZ
        except (OSError, IndexError, ValueError):
            pass
    return out


def cpu_since(before, pids):
    """CPU seconds the processes used since `before` (new processes: all of theirs)."""
    return sum(max(c - before.get(p, 0.0), 0.0) for p, c in cpu_by_pid(pids).items())


def hosts_tail_run(name, argv, cluster, tree, env, a, restart=None, nine=True):
    """One tool following every host's log while lines are written (see the module's
    doc); restart: (leaf Member) to kill and start again mid-run."""
    names = [h.name for h in cluster.hosts]
    files = {}
    for h in cluster.hosts:
        d = h.dir / "data"
        d.mkdir(exist_ok=True)
        files[h.name] = open(d / "log", "w", buffering=1)
    tool = HLines(argv, env)
    seen = set()
    deadline = time.monotonic() + 60 * max(1.0, os.getloadavg()[0] / os.cpu_count())
    n = 0
    while seen != set(names):           # probes until every host's line came through
        if time.monotonic() > deadline or tool.proc.poll() is not None:
            tool.stop()
            raise SystemExit("%s: probes of %d hosts never printed: %s %s" % (
                name, len(set(names) - seen), tool.out[-5:], tool.err[-5:]))
        for f in files.values():
            f.write("probe %d\n" % n)
        n += 1
        time.sleep(0.5)
        for _, line in tool.out:
            m = HLINE.match(line)
            if m and m.group(3).startswith("probe"):
                seen.update(hosts_of(m.group(1)))
    time.sleep(1.5)                     # the last probes (and fold windows) out
    mark = len(tool.out)
    head = "/sys/class/net/%s/statistics/rx_bytes" % cluster._res.head
    root_pid = tree.members[-1].pid if nine else tool.proc.pid   # clush: itself
    tool0 = cpu_by_pid(session(tool.proc.pid))
    hosts0 = cpu_by_pid(cluster.pids())
    root0 = cpu_of([root_pid])
    with open(head) as f:
        rx0 = int(f.read())
    written = {}
    victim = restart.host if restart else None
    killed = restarted = None
    down_lines = []
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < a.seconds:
        now = time.monotonic()
        if restart is not None and killed is None and now - t0 >= a.seconds / 3:
            os.kill(restart.pid, signal.SIGKILL)
            killed = time.monotonic()
        elif killed is not None and restarted is None and now - killed >= 2.0:
            threading.Thread(target=_restart_leaf, args=(tree, restart), daemon=True).start()
            restarted = -1.0
        if isinstance(restarted, float) and restarted < 0 and restart.restarted_at:
            restarted = restart.restarted_at
        written[k] = time.monotonic()
        for f in files.values():
            f.write("bench %d\n" % k)
        if killed is not None and (restarted is None or restarted < 0):
            down_lines.append(k)
        k += 1
        time.sleep(max(0.0, t0 + k / a.rate - time.monotonic()))
    run = time.monotonic() - t0
    time.sleep(3.0)                      # stragglers (and the last fold windows)
    if restart is not None and restart.restarted_at:
        restarted = restart.restarted_at
    after_tool = cpu_since(tool0, session(tool.proc.pid))
    after_hosts = cpu_since(hosts0, cluster.pids())
    root = cpu_of([root_pid]) - root0   # (clush: its own CPU, without its ssh)
    with open(head) as f:
        rx = int(f.read()) - rx0
    tool.stop()
    for f in files.values():
        f.close()
    lat, printed, back = [], 0, None
    victim_got = set()
    outage = set(down_lines)        # the victim's, late by the outage: its own figures
    for t, line in tool.out[mark:]:
        m = HLINE.match(line)
        if m is None or not m.group(3).startswith("bench "):
            continue
        try:
            i = int(m.group(3).split()[1])
        except (IndexError, ValueError):
            continue
        hs = hosts_of(m.group(1))
        printed += len(hs)
        lat.extend([t - written[i]] * (len(hs) - (victim in hs and i in outage)))
        if victim in hs:
            victim_got.add(i)
            if isinstance(restarted, float) and restarted > 0 and t >= restarted and back is None:
                back = t
    span = run + 3.0
    lat.sort()
    if not isinstance(restarted, float) or restarted <= 0:
        restarted = None
    r = {"name": name, "expected": k * len(names), "printed": printed,
         "median": statistics.median(lat) if lat else float("nan"),
         "p95": lat[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
         "max": lat[-1] if lat else float("nan"),
         "root": root / span, "hosts": after_hosts / span,
         "tool": after_tool / span, "rx_per_s": rx / span}
    if restart is not None:
        r["victim"] = victim
        r["back_after_restart"] = (back - restarted) if back and restarted else None
        r["back_after_kill"] = (back - killed) if back and killed else None
        r["restart_took"] = (restarted - killed) if restarted and killed else None
        r["down_lines"] = len(down_lines)
        r["down_lines_printed"] = len(set(down_lines) & victim_got)
        r["victim_printed"] = len(victim_got)
        r["stderr"] = [line for _, line in tool.err if victim in line][:4]
    return r


def _restart_leaf(tree, m):
    """Start leaf m again on its host (as nine.launch.watch does); m.restarted_at: the
    monotonic time it listened again."""
    try:
        tree._start_batch([m], {})
        m.restarted_at = time.monotonic()
    except Exception as ex:            # said in the figures (no restart time)
        print("restart of %s failed: %s" % (m.name, ex), flush=True)


def hosts_ptop(cluster, tree, env, addr, a, ssh_opts, nodes):
    """nine ptop -b against clush -b top in a loop: their figures."""
    import resource
    head = "/sys/class/net/%s/statistics/rx_bytes" % cluster._res.head
    root_pid = tree.members[-1].pid
    out = {}

    def measure(fn):
        hosts0 = cpu_by_pid(cluster.pids())
        root0 = cpu_of([root_pid])
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(head) as f:
            rx0 = int(f.read())
        t0 = time.monotonic()
        extra = fn()
        took = time.monotonic() - t0
        with open(head) as f:
            rx = int(f.read()) - rx0
        time.sleep(0.2)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"took": took, "rx": rx, "hosts": cpu_since(hosts0, cluster.pids()),
                "nine_root": cpu_of([root_pid]) - root0,
                "here": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
                "extra": extra}

    def ptop():
        p = subprocess.run([sys.executable, "-m", "nine", "ptop", "-a", addr, "-b", "-n",
                            str(a.refreshes), "-d", "1"], env=env, capture_output=True,
                           text=True, timeout=120 + 10 * a.refreshes)
        heads = re.findall(r"^nine ptop: \S+, (\S+) s, (\d+) bytes$", p.stdout, re.M)
        if p.returncode != 0 or len(heads) != a.refreshes:
            raise SystemExit("ptop failed: %s%s" % (p.stdout[-2000:], p.stderr[-2000:]))
        up = re.findall(r"(\d+) up", p.stdout)
        return {"secs": [float(x) for x, _ in heads], "bytes": [int(b) for _, b in heads],
                "up": up[-1] if up else "?", "last": p.stdout.split("nine ptop:")[-1][:600]}

    def clush():
        rounds = []
        for _ in range(a.refreshes):
            t0 = time.monotonic()
            p = subprocess.run(["clush", "-b", "-f", str(len(cluster.hosts)), "-o", ssh_opts,
                                "-w", nodes, "top -b -n1 | head -20"], capture_output=True,
                               text=True, timeout=300)
            rounds.append(time.monotonic() - t0)
            if p.returncode != 0:
                raise SystemExit("clush top: exit %d: %s" % (p.returncode, p.stderr[-1000:]))
            last = p.stdout
        return {"rounds": rounds, "lines": last.count("\n")}

    out["ptop"] = measure(ptop)
    out["clush"] = measure(clush) if shutil.which("clush") else None
    return out


def hosts_main(a, env):
    from interop.hosts import Cluster, available
    from nine.launch.ssh import SshTree
    from nine.launch.topology import Topology
    why = available()
    if why:
        sys.exit("namespace hosts cannot be made here: %s" % why)
    k = a.hosts
    nodes = "node[1-%d]" % k
    work = tempfile.mkdtemp(prefix="nine-tools-bench-hosts-")
    os.environ["NINE_KEY"] = env["NINE_KEY"]
    t0 = time.monotonic()
    with Cluster(k) as cluster:
        print("%d namespace hosts up in %.1f s" % (k, time.monotonic() - t0), flush=True)
        for h in cluster.hosts:
            d = h.dir / "data"
            d.mkdir(exist_ok=True)
            (d / "log").write_text("")
        ssh_opts = "-F %s" % cluster.ssh_config
        topo = Topology([(h.name, "ssh") for h in cluster.hosts], fanout=a.fanout,
                        leaf_export="/srv/data", listen="127.0.0.1:0")
        tree = SshTree([h.name for h in cluster.hosts], fanout=a.fanout, topology=topo,
                       ssh_options=ssh_opts, remote_python=sys.executable,
                       remote_workdir=os.path.join(work, "run"), root_daemon=True,
                       state_file=os.path.join(work, "state.json"),
                       name="tools-bench-%d" % os.getpid(), ssh_fanout=k)
        t0 = time.monotonic()
        try:
            addr = tree.start()
            levels = max(m.level for m in tree.members)
            print("nine tree on them in %.1f s (root %s, fanout %d, %d levels above the "
                  "leaves)" % (time.monotonic() - t0, addr, a.fanout, levels), flush=True)
            print("load: %s" % subprocess.run(["uptime"], capture_output=True,
                                              text=True).stdout.strip(), flush=True)
            leaves = {m.host: m for m in tree.members if m.kind == "leaf"}
            if a.only != "ptop":
                print("\n(a) tail -f of /srv/data/log on %d hosts: %g lines/s per host for "
                      "%g s" % (k, a.rate, a.seconds), flush=True)
                nine = [sys.executable, "-m", "nine", "ptail", "-a", addr, "-f", "-n", "0"]
                runs = [("ptail --fold 1", nine + ["--fold", "1", "log"], "node%d" % (k // 2)),
                        ("ptail", nine + ["log"], "node%d" % max(1, k // 2 - 1))]
                if shutil.which("clush"):
                    runs.append(("clush", ["clush", "-f", str(k), "-o", ssh_opts, "-w", nodes,
                                           "tail", "-n", "0", "-f", "/srv/data/log"], None))
                results = []
                for name, argv, victim in runs:
                    m = leaves.get(victim)
                    if m is not None:
                        m.restarted_at = None
                    results.append(hosts_tail_run(name, argv, cluster, tree, env, a, m,
                                                  nine=name != "clush"))
                print("%-15s %9s %9s %9s %17s %8s %8s %8s %10s" % (
                    "tool", "median s", "p95 s", "max s", "printed/written", "root", "hosts",
                    "tool", "rx B/s"))
                for r in results:
                    print("%-15s %9.3f %9.3f %9.3f %17s %8.3f %8.3f %8.3f %10d" % (
                        r["name"], r["median"], r["p95"], r["max"],
                        "%d/%d" % (r["printed"], r["expected"]), r["root"], r["hosts"],
                        r["tool"], r["rx_per_s"]))
                print("(CPU seconds per second of run; root: nine's root daemon, or clush "
                      "itself; hosts: every process on the hosts; tool: ptail, or clush and "
                      "its ssh;\n latency leaves out the killed host's lines written while it "
                      "was down: see below)")
                for r in results:
                    if "victim" in r:
                        f = lambda x: "%.2f s" % x if x is not None else "never"  # noqa: E731
                        print("%s: leaf of %s killed, started again %s later; its lines "
                              "printed again %s after the restart (%s after the kill); of the "
                              "%d lines written while it was down %d printed; stderr: %s" % (
                                  r["name"], r["victim"], f(r["restart_took"]),
                                  f(r["back_after_restart"]), f(r["back_after_kill"]),
                                  r["down_lines"], r["down_lines_printed"], r["stderr"]))
                by = {r["name"]: r for r in results}
                if "clush" in by:
                    c = by["clush"]
                    for name in ("ptail --fold 1", "ptail"):
                        n = by[name]
                        print("ratio %s / clush: median latency %.2fx, root CPU %.2fx, hosts "
                              "CPU %.2fx, tool CPU %.2fx" % (
                                  name, n["median"] / c["median"],
                                  n["root"] / max(c["root"], 1e-9),
                                  n["hosts"] / max(c["hosts"], 1e-9),
                                  n["tool"] / max(c["tool"], 1e-9)))
            if a.only != "ptail":
                print("\n(b) nine ptop -b -d 1, %d refreshes, against %d rounds of clush -b "
                      "'top -b -n1 | head -20'" % (a.refreshes, a.refreshes), flush=True)
                r = hosts_ptop(cluster, tree, env, addr, a, ssh_opts, nodes)
                p, x = r["ptop"], r["ptop"]["extra"]
                n = a.refreshes
                print("nine ptop: %d hosts up; per refresh %.3f s (median; first %.3f s), %d "
                      "bytes to ptop (median; first %d); wall %.1f s for %d" % (
                          int(x["up"]) if x["up"].isdigit() else -1,
                          statistics.median(x["secs"][1:] or x["secs"]), x["secs"][0],
                          statistics.median(x["bytes"][1:] or x["bytes"]), x["bytes"][0],
                          p["took"], n))
                print("  root daemon CPU %.1f%% of a core (%.3f s per refresh); ptop itself "
                      "%.3f s per refresh; hosts %.3f s per refresh; bytes into the root %d "
                      "per refresh" % (100 * p["nine_root"] / p["took"], p["nine_root"] / n,
                                       p["here"] / n, p["hosts"] / n, p["rx"] / n))
                c = r["clush"]
                if c is not None:
                    y = c["extra"]
                    print("clush top: per round %.3f s (median), worst %.3f s; clush+ssh CPU "
                          "%.1f%% of a core (%.3f s per round); hosts %.3f s per round; bytes "
                          "in %d per round; %d lines of output" % (
                              statistics.median(y["rounds"]), max(y["rounds"]),
                              100 * c["here"] / c["took"], c["here"] / n, c["hosts"] / n,
                              c["rx"] / n, y["lines"]))
                    print("ratio nine ptop / clush top: root CPU per refresh %.3fx (nine root "
                          "vs clush+ssh), hosts CPU %.2fx, bytes in %.3fx, seconds per "
                          "refresh %.2fx" % (
                              (p["nine_root"] / n) / max(c["here"] / n, 1e-9),
                              p["hosts"] / max(c["hosts"], 1e-9), p["rx"] / max(c["rx"], 1),
                              statistics.median(x["secs"][1:] or x["secs"]) /
                              statistics.median(y["rounds"])))
            print("load: %s" % subprocess.run(["uptime"], capture_output=True,
                                              text=True).stdout.strip(), flush=True)
        finally:
            tree.down()
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--leaves", type=int, default=16)
    ap.add_argument("--fanout", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0, help="writing time per tool")
    ap.add_argument("--rate", type=float, default=5.0, help="lines per second per host")
    ap.add_argument("--refreshes", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("ptail", "ptop"), help="with --hosts: that part only")
    ap.add_argument("--hosts", type=int, nargs="?", const=64, metavar="K",
                    help="on K namespace hosts (default 64) against clush (module doc)")
    a = ap.parse_args()
    if a.quick:
        a.leaves, a.fanout, a.seconds, a.refreshes = 4, 2, 3.0, 3
    elif a.hosts:
        for opt, val in (("--seconds", 20.0), ("--rate", 10.0)):
            if opt not in sys.argv:
                setattr(a, opt[2:], val)
    tmp = tempfile.mkdtemp(prefix="nine-tools-bench-")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["NINE_KEY"] = os.path.join(tmp, "key")
    make_key(env["NINE_KEY"])
    if a.hosts:
        try:
            hosts_main(a, env)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
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
