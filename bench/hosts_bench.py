"""A nine tree on K namespace hosts against clush and pdsh, in one run: launch, group
read, recovery, root bytes, and the per-level CPU the scale model (docs/scale.md) uses.

    sudo python3 bench/hosts_bench.py [-k 64] [--fanout 8] [--rounds 3] [--runs 5]
                                      [--reads 200] [--light N --light-fanout F]

K hosts (interop/hosts.py: network namespaces with their own address, /srv and sshd)
each hold /srv/data/release, a small file (two lines; three contents, so that the
folded output has three classes).  Then:

1. launch: `nine tree --hosts node[1-K] --fanout F --daemon ...` (nine.launch.ssh: a
   leaf per host, muxes on hosts, the root a daemon on this machine; the command
   returns once the root answers an attach), then `nine tree down`, against
   `clush -b -f K -w node[1-K] true`; --rounds rounds each, interleaved; medians and
   the ratio.  nine's launch is also split into its ssh rounds (one per level: the
   leaves, each level of muxes, the root here) from the launcher's -v log.
2. group read of release on every host: a fresh `nine gread --agg equiv` command (a
   group directory at the root: /groups/release), and an open group (Client.gopen,
   equiv; --reads reads), against `clush -b cat` and `pdsh -R ssh cat | dshbak -c`:
   wall time (cold: the first; warm: median of --runs more) and CPU (here: the command
   and its children; root: the root daemon; hosts: every process in the hosts'
   namespaces, sshd and what it runs included); all must give the same folded classes.
3. root bytes per read: the receive counter of this machine's port on the hosts'
   bridge (what the muxes send the root; for clush and pdsh, what every ssh session
   sends), per group read.
4. CPU per member at a leaf and per child at a mux: the open-group reads' CPU split by
   the tree's processes (leaves, muxes, the root), per member and per child.
5. recovery: `nine tree watch` runs; a level-1 mux (between the leaves and the root) is
   killed (SIGKILL to its process on its host) while the open group is read in a
   loop; the time until reads are whole again (every member in the classes, none
   failed), with the watch's adoption grace (--adopt-grace, default 2 s).
--light N: also N LIGHT LEAVES (simulation: bench/group_bench.py's in-process leaves,
   in worker processes on loopback, not on the hosts) under `nine mux` processes of
   --light-fanout children: the open group read of all N, timed (the 10,000-leaf figure
   of docs/scale.md).

Every benchmark over more than 16 hosts runs under the shared lock:
    flock /tmp/nine-bench.lock python3 bench/hosts_bench.py -k 64
"""

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from pgrep_bench import Meter, classes  # noqa: E402  (same meters, same parser)

PATH = "/srv/data/release"
GROUP = "/groups/release"


def plant(cluster):
    """release on every host: most hosts one content, node[5-7] another, node K-1 a
    third (three folded classes)."""
    k = len(cluster.hosts)
    for h in cluster.hosts:
        i = h.index
        v = "1.2.4" if i in (5, 6, 7) else "1.2.2" if i == k - 1 else "1.2.3"
        d = h.dir / "data"
        d.mkdir(exist_ok=True)
        (d / "release").write_text("nine %s\nkernel 6.1.0-13-amd64\n" % v)


def load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def med(xs):
    return statistics.median(xs) if xs else float("nan")


class Bed:
    """The hosts, the launcher's command lines, the meter."""

    def __init__(self, cluster, args, work):
        self.cluster = cluster
        self.k = len(cluster.hosts)
        self.nodes = "node[1-%d]" % self.k
        self.ssh_opts = "-F %s" % cluster.ssh_config
        self.work = work
        self.state = os.path.join(work, "state.json")
        self.args = args
        self.env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
                        os.environ.get("PYTHONPATH", ""))

    def nine(self, *argv):
        return [sys.executable, "-m", "nine"] + list(argv)

    def tree_argv(self, verbose=False):
        return self.nine(*(["-v"] if verbose else []), "tree", "--hosts", self.nodes,
                         "--fanout", str(self.args.fanout), "--daemon",
                         "--ssh-options", self.ssh_opts, "--ssh-fanout", str(self.k),
                         "--remote-python", sys.executable, "--leaf-export", "/srv/data",
                         "--remote-workdir", os.path.join(self.work, "run"),
                         "--state", self.state, "--listen", "127.0.0.1:0")

    def down_argv(self):
        return self.nine("tree", "down", "--state", self.state)

    def read_state(self):
        with open(self.state) as f:
            return json.load(f)


def launch(bed, meter, rounds):
    """Rounds of (nine tree up, nine tree down) and clush true, interleaved."""
    res = {"nine up": [], "nine down": [], "clush true": []}
    for r in range(rounds):
        wall, p, m = meter.run(bed.tree_argv())
        if p.returncode:
            sys.exit("nine tree failed: %s%s" % (p.stdout[-2000:], p.stderr[-2000:]))
        res["nine up"].append((wall, m))
        wall, p, m = meter.run(bed.down_argv())
        if p.returncode:
            print("nine tree down (round %d, %.1f s): %s" % (r + 1, wall, p.stderr[-1500:]))
            q = subprocess.run(bed.down_argv(), capture_output=True, text=True)
            if q.returncode:
                sys.exit("nine tree down failed twice: %s" % q.stderr[-2000:])
        res["nine down"].append((wall, m))
        wall, p, m = meter.run(["clush", "-b", "-f", str(bed.k), "-o", bed.ssh_opts,
                                "-w", bed.nodes, "true"])
        if p.returncode:
            sys.exit("clush true failed: %s" % p.stderr[-2000:])
        res["clush true"].append((wall, m))
    print("\n== 1. launch (%d rounds, medians; load %s) ==" % (rounds, load()))
    print("%-12s %9s %9s %9s %9s" % ("k=%d" % bed.k, "wall s", "CPU here", "CPU hosts",
                                     "min wall"))
    for name, rs in res.items():
        print("%-12s %9.3f %9.3f %9.3f %9.3f" % (
            name, med([w for w, _ in rs]), med([m["here"] for _, m in rs]),
            med([m["hosts"] for _, m in rs]), min(w for w, _ in rs)))
    up, peer = med([w for w, _ in res["nine up"]]), med([w for w, _ in res["clush true"]])
    print("launch ratio nine tree / clush true: %.2fx (goal: within 1.5x)" % (up / peer))
    return res


def launch_split(bed):
    """One more `nine -v tree`: the time of each ssh round from its log lines."""
    t0 = time.perf_counter()
    p = subprocess.run(bed.tree_argv(verbose=True), capture_output=True, text=True,
                       cwd=ROOT, env=bed.env)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit("nine tree failed: %s%s" % (p.stdout[-2000:], p.stderr[-2000:]))
    steps = [ln for ln in p.stderr.splitlines() if "launch:" in ln]
    print("launch split (nine -v tree, %.3f s wall):" % wall)
    for ln in steps:
        print("  " + ln.split("launch:", 1)[1].strip())
    return wall


def make_group(addr, k):
    from nine.client import Client
    with Client(addr) as c:
        try:
            c.mkdir(GROUP)
        except FileExistsError:
            pass
        for i in range(1, k + 1):
            c.symlink("../../nodes/node%d/files/release" % i, "%s/node%d" % (GROUP, i))


class TreeCPU:
    """CPU seconds of the tree's processes by kind (psutil: leaves, muxes, root)."""

    def __init__(self, state):
        import psutil
        self.procs = {"leaves": [], "muxes": [], "root": []}
        for m in state["members"]:
            kind = {"leaf": "leaves", "mux": "muxes", "root": "root"}[m["kind"]]
            self.procs[kind].append(psutil.Process(m["pid"]))
        self.children = {kind: sum(len(m["children"]) for m in state["members"]
                                   if m["kind"] == k) for kind, k in
                         (("muxes", "mux"), ("root", "root"))}

    def sample(self):
        out = {}
        for kind, ps in self.procs.items():
            t = 0.0
            for p in ps:
                try:
                    c = p.cpu_times()
                    t += c.user + c.system
                except Exception:
                    pass
            out[kind] = t
        return out


def group_reads(bed, meter, addr, state, runs, reads):
    from nine.client import Client
    k = bed.k
    gread = bed.nine("gread", "-a", addr, "--agg", "equiv", GROUP)
    tools = {
        "nine gread": (gread, False),
        "clush -b": (["clush", "-b", "-f", str(k), "-o", bed.ssh_opts, "-w", bed.nodes,
                      "cat", PATH], False),
        "pdsh | dshbak -c": ("PDSH_SSH_ARGS_APPEND=%s pdsh -R ssh -f %d -w %s cat %s | "
                             "dshbak -c" % (shlex.quote(bed.ssh_opts), k,
                                            shlex.quote(bed.nodes), PATH), True),
    }
    results = {name: [] for name in tools}
    outputs = {}
    for rnd in range(runs + 1):
        for name, (argv, shell) in tools.items():
            wall, p, m = meter.run(argv, shell)
            results[name].append((wall, m))
            outputs.setdefault(name, p.stdout)
            if rnd == 0 and p.returncode:
                print("%s: exit %d: %s" % (name, p.returncode, p.stderr[-500:]))

    # the open group: --reads reads, CPU by process, bytes into this machine
    c = Client(addr)
    g = c.gopen(GROUP, aggregator="equiv")
    for _ in range(5):
        out = g.read()
    outputs["nine open group"] = out.decode()
    cpu = TreeCPU(state)
    with open(meter.rx) as f:
        b0 = int(f.read())
    h0 = meter._hosts_cpu()
    s0, r0 = cpu.sample(), resource.getrusage(resource.RUSAGE_SELF)
    cb0 = c.conn.bytes_in
    ts = []
    for _ in range(reads):
        t = time.perf_counter()
        g.read()
        ts.append(time.perf_counter() - t)
    s1, r1 = cpu.sample(), resource.getrusage(resource.RUSAGE_SELF)
    h1 = meter._hosts_cpu()
    with open(meter.rx) as f:
        b1 = int(f.read())
    cb1 = c.conn.bytes_in
    failed = dict(g.failed)
    g.close()
    c.close()
    here = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / reads
    hosts = sum(v - h0.get(key, 0.0) for key, v in h1.items()) / reads
    split = {kind: (s1[kind] - s0[kind]) / reads for kind in s0}
    open_row = {"wall": med(ts), "min": min(ts), "here": here, "root": split["root"],
                "hosts": hosts, "bytes_in": (b1 - b0) / reads,
                "client_bytes": (cb1 - cb0) / reads, "split": split, "failed": failed}

    ref = classes(outputs["clush -b"])
    same = {name: classes(out) == ref for name, out in outputs.items()}
    print("\n== 2. group read of %s on %d hosts (load %s) ==" % (PATH, k, load()))
    print("folded classes: %s" % ", ".join("%d hosts" % len(ms) for ms, _ in sorted(
        ref.items(), key=lambda mo: -len(mo[0]))))
    print("same classes as clush -b: %s" % ", ".join(
        "%s %s" % (n, "yes" if ok else "NO") for n, ok in same.items()))
    print("%-18s %9s %9s %9s %9s %9s %9s %11s" % (
        "k=%d" % k, "cold s", "warm s", "CPU here", "CPU root", "CPU hosts", "CPU all",
        "bytes in"))
    rows = {}
    for name, rs in results.items():
        warm = rs[1:]
        row = {key: med([m[key] for _, m in warm]) for key in ("here", "root", "hosts",
                                                                  "bytes_in")}
        row.update(cold=rs[0][0], wall=med([w for w, _ in warm]))
        row["all"] = row["here"] + row["root"] + row["hosts"]
        rows[name] = row
    o = open_row
    o["all"] = o["here"] + o["root"] + o["hosts"]
    rows["nine open group"] = dict(o, cold=float("nan"))
    for name, r in rows.items():
        print("%-18s %9.4f %9.4f %9.4f %9.4f %9.4f %9.4f %11d" % (
            name, r["cold"], r["wall"], r["here"], r["root"], r["hosts"], r["all"],
            r["bytes_in"]))
    print("(warm: medians of %d runs; open group: median of %d reads, CPU and bytes per "
          "read; CPU in seconds)" % (runs, reads))
    n, og = rows["nine gread"], rows["nine open group"]
    for peer in ("clush -b", "pdsh | dshbak -c"):
        p = rows[peer]
        print("%-17s wall %6.1fx, CPU %6.1fx of nine gread; wall %7.0fx, CPU %7.0fx of "
              "the open group" % (peer, p["wall"] / n["wall"], p["all"] / n["all"],
                                  p["wall"] / og["wall"], p["all"] / og["all"]))
    if failed:
        print("ERROR: members failed in the open group: %s" % failed)
    if not all(same.values()):
        for name, out in outputs.items():
            print("== %s ==\n%s" % (name, out[:1500]))
    return rows, open_row, all(same.values()) and not failed


def per_level(state, open_row, k):
    """CPU per member at a leaf, per child at a mux and at the root, per group read."""
    sp = open_row["split"]
    nmux = sum(1 for m in state["members"] if m["kind"] == "mux")
    mux_children = sum(len(m["children"]) for m in state["members"] if m["kind"] == "mux")
    root_children = len(state["members"][-1]["children"])
    out = {"leaf_ms": sp["leaves"] / k * 1e3,
           "mux_child_ms": sp["muxes"] / mux_children * 1e3 if mux_children else 0,
           "root_child_ms": sp["root"] / root_children * 1e3,
           "client_ms": open_row["here"] * 1e3, "muxes": nmux,
           "mux_children": mux_children, "root_children": root_children}
    print("\n== 4. CPU per group read by level (open group, k=%d) ==" % k)
    print("leaves: %.3f ms per member (each leaf its own host: in parallel)" % out["leaf_ms"])
    print("muxes:  %.3f ms per child (%d muxes, %d children)" % (
        out["mux_child_ms"], nmux, mux_children))
    print("root:   %.3f ms per child (%d children)" % (out["root_child_ms"], root_children))
    print("client: %.3f ms per read (decode and render %d members' classes)" % (
        out["client_ms"], k))
    mux_us, client_us = name_cost()
    out.update(mux_name_us=mux_us, client_name_us=client_us,
               client_fixed_ms=max(0.0, out["client_ms"] - k * client_us / 1e3))
    print("per member name (hot equiv partials, 10,000 members, here): %.2f us at a mux "
          "level (decode, merge, encode), %.2f us at the client (decode, render)" % (
              mux_us, client_us))
    return out


def name_cost(n=10000, fanout=32, classes=4, reps=5):
    """CPU per member name of the equiv partials (nine.group.aggregate), hot (the folded
    sets cached as in repeated reads of an open group): (us per member at a mux level:
    decode `fanout` children's partials, merge, encode; us per member at the client:
    decode, render).  A level's work grows with the members below it, not only with
    its fanout: the model's N term."""
    from nine.group import aggregate as A
    agg = A.get("equiv")
    names = ["leaf%05d" % i for i in range(n)]
    per = -(-n // fanout)
    kids = []
    for c in range(fanout):
        part = names[c * per:(c + 1) * per]
        value = {}
        for i, m in enumerate(part, c * per):
            value.setdefault(b"version 1.2.%d\n" % (i * classes // n), set()).add(m)
        kids.append(agg.encode(A.Partial(value)))

    def level():
        return agg.encode(agg.merge([agg.decode(k) for k in kids]))
    up = level()
    t = time.process_time()
    for _ in range(reps):
        up = level()
    mux = (time.process_time() - t) / reps / n * 1e6
    agg.render(agg.decode(up))
    t = time.process_time()
    for _ in range(reps):
        agg.render(agg.decode(up))
    client = (time.process_time() - t) / reps / n * 1e6
    return mux, client


def depth(n, fanout):
    """Levels of muxes, the root included, over n leaves (nine.launch.ssh.place: levels
    are added until the root has at most `fanout` children)."""
    d, width = 1, n
    while width > fanout:
        width = -(-width // fanout)
        d += 1
    return d


def model_ms(n, fanout, rtt_ms, per):
    """The scale model (docs/scale.md), in ms: one round trip per level of links; the
    leaf's work once (the leaves read in parallel, each on its own host); at each level
    one mux's work, since the muxes of a level run in parallel on their own hosts: its
    `fanout` children's replies one after another (CPU per child; the root's includes
    serving the client) plus the member names below it (min(n, fanout^level) x CPU per
    name: decoding, merging and encoding the member sets); the client's decoding and
    rendering (fixed + n x CPU per name)."""
    d = depth(n, fanout)
    t = d * rtt_ms + per["leaf_ms"]
    for level in range(1, d + 1):
        child = per["root_child_ms"] if level == d else per["mux_child_ms"]
        t += fanout * child + min(n, fanout ** level) * per["mux_name_us"] / 1e3
    return t + per["client_fixed_ms"] + n * per["client_name_us"] / 1e3


def model(per):
    print("\n== scale model (docs/scale.md): ms per group read of one small file per host ==")
    print("inputs: leaf %.3f ms per member; %.3f ms per child at a mux, %.3f at the root; "
          "%.2f us per member name at a mux level, %.2f us at the client; client fixed "
          "%.3f ms" % (per["leaf_ms"], per["mux_child_ms"], per["root_child_ms"],
                       per["mux_name_us"], per["client_name_us"], per["client_fixed_ms"]))
    print("%8s %7s %6s %10s %10s" % ("hosts", "fanout", "depth", "rtt 0.1ms", "rtt 1ms"))
    for n in (1000, 10000, 100000):
        for f in (16, 32, 64):
            print("%8d %7d %6d %10.1f %10.1f" % (n, f, depth(n, f), model_ms(n, f, 0.1, per),
                                                 model_ms(n, f, 1.0, per)))


def recovery(bed, addr, grace, limit=120.0):
    """Kill a level-1 mux while the open group is read in a loop; the time until reads
    are whole again (the watch adopts the mux on another host)."""
    from nine.client import Client
    state = bed.read_state()
    muxes = [m for m in state["members"] if m["kind"] == "mux" and m["level"] == 1]
    if not muxes:
        print("\n== 5. recovery: no mux between the leaves and the root (k <= fanout) ==")
        return None
    victim = muxes[len(muxes) // 2]
    watch = subprocess.Popen(bed.nine("tree", "watch", "--state", bed.state,
                                      "--adopt-grace", str(grace)),
                             cwd=ROOT, env=bed.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = watch.stdout.readline()
        if "adopted" not in line:
            sys.exit("nine tree watch: %s%s" % (line, watch.stderr.read()[-2000:]))
        time.sleep(1.5)                 # its first poll: every mux seen up
        c = Client(addr)
        g = c.gopen(GROUP, aggregator="equiv")
        g.read()
        whole = lambda: not g.failed and sum(  # noqa: E731
            len(ms) for ms in (g.last.value or {}).values()) == bed.k
        assert whole(), g.failed
        os.kill(victim["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        first_bad = None
        n = bad = 0
        while time.monotonic() - t0 < limit:
            try:
                g.read()
                ok = whole()
            except OSError:
                ok = False
            n += 1
            if not ok:
                bad += 1
                first_bad = first_bad or time.monotonic() - t0
            elif first_bad is not None:
                break
            time.sleep(0.02)
        took = time.monotonic() - t0
        st = bed.read_state()
        now = {m["name"]: m for m in st["members"]}[victim["name"]]
        print("\n== 5. recovery after SIGKILL of %s (level 1, on %s, %d leaves under it); "
              "load %s ==" % (victim["name"], victim["host"], len(victim["children"]), load()))
        if first_bad is None or took >= limit:
            print("NOT whole again within %g s (failed reads seen: %s; last: %s); %s now: "
                  "%s" % (limit, bad, dict(list(g.failed.items())[:2]), victim["name"], now))
            watch.send_signal(signal.SIGTERM)
            print("the watch said:\n%s" % watch.communicate(timeout=60)[1][-3000:])
            return None
        g.close()
        c.close()
        print("first failed read after %.3f s; reads whole again after %.2f s (%d reads, "
              "%d partial); adopted on %s (adoption grace %g s, watch polls every 1 s)" % (
                  first_bad, took, n, bad, now["host"], grace))
        return took
    finally:
        watch.send_signal(signal.SIGTERM)
        try:
            watch.wait(60)
        except subprocess.TimeoutExpired:
            watch.kill()


def light(n, fanout, workers, reads):
    """N light leaves (group_bench's) under `nine mux` processes: the open group read."""
    import group_bench as gb
    from nine.launch import Topology, Tree
    gb.benchleaves.raise_nofile()
    t0 = time.perf_counter()
    leaves = gb.Leaves(n, workers, 4, False)
    tree = None
    try:
        kids = leaves.children()
        up = time.perf_counter() - t0
        members = [(name, "/nodes/%s/v" % name) for name, _ in kids]
        expected = {}
        for i, (name, _) in enumerate(kids):
            expected.setdefault(gb.leaf_content(i, n, 4, False), set()).add(name)
        topo = Topology(kids, listen="127.0.0.1:0", fanout=fanout,
                        final_leaf_mux=gb.LEAF_FINAL)
        tree = Tree(topo)
        t1 = time.perf_counter()
        addr = gb.serve(tree.start())
        tree_up = time.perf_counter() - t1
        errors = []
        r = gb.time_group(addr, members, expected, reads,
                          gb.CPU({"leaves": leaves.pids(),
                                  "muxes": [p.pid for p, _ in tree.procs]}), "light", errors)
        by = r["cpu_ms_by"]
        print("\n== light leaves: %d (simulation: in %d worker processes on loopback), "
              "fanout %d, %d levels of muxes, %d `nine mux` processes; load %s ==" % (
                  n, workers, fanout, len(tree.levels), len(tree.procs), load()))
        print("leaves up in %.1f s, muxes in %.1f s; gopen + first read %.0f ms" % (
            up, tree_up, r["setup_ms"]))
        print("group read of %d members: median %.0f ms, min %.0f ms; CPU %.0f ms per read "
              "(leaves %.0f, muxes %.0f, root+client %.0f) on %d cores; %d bytes to the "
              "client%s" % (n, r["ms"], r["min_ms"], r["cpu_ms"], by["leaves"], by["muxes"],
                            by["self"], os.cpu_count(), r["rx_B"],
                            "; ERRORS: %s" % errors if errors else ""))
        return r, not errors
    finally:
        if tree is not None:
            tree.stop()
        leaves.stop()


def hosts(args, work, out, t0):
    """Parts 1-5 on K namespace hosts; whether every check held."""
    from interop.hosts import Cluster
    try:
        with Cluster(args.k) as cluster:
            return _hosts(cluster, args, work, out, t0)
    finally:                    # the root daemon runs here, outside the hosts: no leftover
        state = os.path.join(work, "state.json")
        if os.path.exists(state):
            import psutil
            with open(state) as f:
                pid = json.load(f)["members"][-1]["pid"]
            try:
                if pid and "mux" in psutil.Process(pid).cmdline():
                    os.kill(pid, signal.SIGTERM)
            except (psutil.Error, OSError):
                pass


def _hosts(cluster, args, work, out, t0):
    ok = True
    print("%d namespace hosts up in %.1f s" % (args.k, time.monotonic() - t0))
    plant(cluster)
    bed = Bed(cluster, args, work)
    meter = Meter(cluster, None)
    parts = args.parts.split(",")
    if "launch" in parts:
        res = launch(bed, meter, args.rounds)
        out["launch"] = {k: [w for w, _ in v] for k, v in res.items()}
    try:
        out["launch_verbose_s"] = launch_split(bed)
        state = bed.read_state()
        addr = state["address"]
        meter.root_pid = state["members"][-1]["pid"]
        make_group(addr, args.k)
        if "reads" in parts:
            rows, open_row, same = group_reads(bed, meter, addr, state, args.runs,
                                               args.reads)
            ok = ok and same
            out["group_read"] = {k: {kk: vv for kk, vv in v.items() if kk != "split"}
                                 for k, v in rows.items()}
            print("\n== 3. root bytes per group read: %d into this machine from the "
                  "muxes (%d to the client) ==" % (open_row["bytes_in"],
                                                  open_row["client_bytes"]))
            out["per_level"] = per_level(state, open_row, args.k)
            model(out["per_level"])
        if "recovery" in parts:
            out["recovery_s"] = recovery(bed, addr, args.adopt_grace)
            ok = ok and out["recovery_s"] is not None
    finally:
        p = subprocess.run(bed.down_argv(), capture_output=True, text=True, cwd=ROOT,
                           env=bed.env)
        if p.returncode:
            print("nine tree down: %s" % p.stderr[-2000:])
            ok = False
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", type=int, default=64, help="hosts (default 64; 0: none, for "
                    "--light alone)")
    ap.add_argument("--fanout", type=int, default=8, help="the tree's fanout (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="launch rounds (default 3)")
    ap.add_argument("--runs", type=int, default=5, help="warm runs of each group-read "
                    "command (default 5)")
    ap.add_argument("--reads", type=int, default=200, help="timed reads of the open group "
                    "(default 200)")
    ap.add_argument("--adopt-grace", type=float, default=2.0)
    ap.add_argument("--parts", default="launch,reads,recovery", help="what to measure on "
                    "the hosts (default launch,reads,recovery)")
    ap.add_argument("--light", type=int, default=0, metavar="N", help="also N light leaves "
                    "on loopback (simulation; default 0: none)")
    ap.add_argument("--light-fanout", type=int, default=64)
    ap.add_argument("--light-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--light-reads", type=int, default=5)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    from interop.hosts import available
    why = args.k and available()
    if why:
        sys.exit("namespace hosts cannot be made here: %s" % why)
    if not os.environ.get("NINE_KEY"):
        from nine.auth.key import make_key
        d = tempfile.mkdtemp(prefix="nine-bench-key-")
        make_key(os.path.join(d, "key"))
        os.environ["NINE_KEY"] = os.path.join(d, "key")
    print("hosts_bench: k=%d, fanout %d, %d cpus, load %s (a shared machine)" % (
        args.k, args.fanout, os.cpu_count(), load()))
    os.chdir(ROOT)                      # `python -m nine` (this checkout) in every command
    os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    work = tempfile.mkdtemp(prefix="nine-hosts-bench-")
    ok = True
    out = {"k": args.k, "fanout": args.fanout}
    t0 = time.monotonic()
    if args.k:
        ok = hosts(args, work, out, t0)
    if args.light:
        r, good = light(args.light, args.light_fanout, args.light_workers, args.light_reads)
        out["light"] = {"n": args.light, "fanout": args.light_fanout, "ms": r["ms"],
                        "min_ms": r["min_ms"], "cpu_ms": r["cpu_ms"], "rx_B": r["rx_B"]}
        ok = ok and good
    print("\ntotal %.0f s; load %s; cpu count %d (shared with other work)" % (
        time.monotonic() - t0, load(), os.cpu_count()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    if ok:                      # (the servers' logs stay after a failure)
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("the servers' logs: %s" % work)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
