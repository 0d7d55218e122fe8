"""nine pgrep against clush -b and pdsh | dshbak -c, on namespace hosts.

    sudo python3 bench/pgrep_bench.py [-k 64] [--runs 5] [--lines 6000]

K hosts (interop/hosts.py: network namespaces with their own address, /srv and sshd)
each hold /srv/data/app.log (LINES lines, the same on most hosts; three hosts have an
extra ERROR line, one has none).  A nine tree runs on them (nine.launch.ssh: a leaf per
host exporting /srv/data, muxes on hosts at fanout 4, the root a daemon on this
machine), and the same grep runs three ways:

    nine pgrep -w node[1-K] -n ERROR /srv/data/app.log
    clush -b -f K -w node[1-K] grep -n ERROR /srv/data/app.log
    pdsh -R ssh -f K -w node[1-K] grep -n ERROR /srv/data/app.log | dshbak -c

First the check: the three give the same folded classes (hosts -> output).  Then the
figures of each: wall time of the first run (cold: nine's first group read since the
tree started, ssh's first connections) and the median of --runs more (warm); CPU
seconds here (the command and its children: ssh, dshbak; for nine also the root
daemon) and on the hosts (every process in their namespaces: leaves, muxes, sshd and
what it runs, children's time included); bytes into this machine from the hosts (the
receive counter of its port on the hosts' bridge: for nine, what the muxes send the
root; for clush and pdsh, what every ssh session sends).
"""

import argparse
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PATTERN = "ERROR"
PATH = "/srv/data/app.log"


def plant(cluster, lines):
    """app.log on every host: mostly one content; node[7,9,33]: an extra ERROR line;
    the host K-14 (node50 of 64): no ERROR at all."""
    base = ["2026-12-07T10:%02d:%02d app[%d]: request %d served in %d ms" % (
        (i // 60) % 60, i % 60, 4000 + i % 17, i, i % 97) for i in range(lines)]
    for i in range(150, lines, 300):
        base[i] = "2026-12-07T10:%02d:%02d app[4000]: ERROR disk /dev/sd%s full" % (
            (i // 60) % 60, i % 60, "abcdefgh"[i % 8])
    k = len(cluster.hosts)
    odd = {"node7", "node9", "node33"} & {h.name for h in cluster.hosts}
    clean = "node%d" % max(1, k - 14)
    for h in cluster.hosts:
        text = list(base)
        if h.name in odd:
            text[lines // 2] = "2026-12-07T10:30:00 app[4001]: ERROR link eth1 down"
        if h.name == clean:
            text = [t.replace("ERROR", "warning") for t in text]
        d = h.dir / "data"
        d.mkdir(exist_ok=True)
        (d / "app.log").write_text("\n".join(text) + "\n")


_HEAD = re.compile(r"^-{15,16}\n(.+?)\n-{15,16}\n", re.M)


def classes(text):
    """{frozenset(hosts): output} of clush -b / dshbak -c output (nine pgrep prints
    clush's)."""
    from ClusterShell.NodeSet import NodeSet
    out = {}
    heads = list(_HEAD.finditer(text))
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        hosts = re.sub(r" \(\d+\)$", "", m.group(1))
        out[frozenset(NodeSet(hosts))] = text[m.end():end].rstrip("\n") + "\n"
    return out


class Meter:
    """CPU here (children of this process), on the hosts, of the root daemon, and bytes
    into this machine, over one command."""

    def __init__(self, cluster, root_pid):
        self.cluster = cluster
        self.root_pid = root_pid
        self.rx = "/sys/class/net/%s/statistics/rx_bytes" % cluster._res.head

    def _hosts_cpu(self):
        import psutil
        out = {}
        for pid in self.cluster.pids():
            try:
                p = psutil.Process(pid)
                t = p.cpu_times()
                out[(pid, p.create_time())] = t.user + t.system + t.children_user + \
                    t.children_system
            except psutil.Error:
                pass
        return out

    def _root_cpu(self):
        import psutil
        if not self.root_pid:
            return 0.0
        t = psutil.Process(self.root_pid).cpu_times()
        return t.user + t.system

    def run(self, argv, shell=False):
        """(seconds, stdout, {here, hosts, root: CPU seconds, bytes_in})."""
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        h0, root0 = self._hosts_cpu(), self._root_cpu()
        with open(self.rx) as f:
            b0 = int(f.read())
        t0 = time.perf_counter()
        p = subprocess.run(argv, shell=shell, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        with open(self.rx) as f:
            b1 = int(f.read())
        time.sleep(0.2)                 # sshd sessions reaped by their listeners
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        h1, root1 = self._hosts_cpu(), self._root_cpu()
        hosts = sum(v - h0.get(k, 0.0) for k, v in h1.items())
        here = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return wall, p, {"here": here, "hosts": hosts, "root": root1 - root0,
                         "bytes_in": b1 - b0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", type=int, default=64, help="hosts (default 64)")
    ap.add_argument("--runs", type=int, default=5, help="warm runs of each (default 5)")
    ap.add_argument("--lines", type=int, default=6000, help="lines of app.log (default "
                    "6000, about 360 KB: under the group read's 1 MiB per member)")
    ap.add_argument("--fanout", type=int, default=4)
    args = ap.parse_args()
    from interop.hosts import Cluster, available
    from nine.launch.ssh import SshTree
    from nine.launch.topology import Topology
    why = available()
    if why:
        sys.exit("namespace hosts cannot be made here: %s" % why)
    if not os.environ.get("NINE_KEY"):
        from nine.auth.key import make_key
        d = tempfile.mkdtemp(prefix="nine-bench-key-")
        make_key(os.path.join(d, "key"))
        os.environ["NINE_KEY"] = os.path.join(d, "key")
    k = args.k
    nodes = "node[1-%d]" % k
    work = tempfile.mkdtemp(prefix="nine-pgrep-bench-")
    t0 = time.monotonic()
    with Cluster(k) as cluster:
        print("%d namespace hosts up in %.1f s" % (k, time.monotonic() - t0))
        plant(cluster, args.lines)
        ssh_opts = "-F %s" % cluster.ssh_config
        topo = Topology([(h.name, "ssh") for h in cluster.hosts], fanout=args.fanout,
                        leaf_export="/srv/data", listen="127.0.0.1:0")
        tree = SshTree([h.name for h in cluster.hosts], fanout=args.fanout, topology=topo,
                       ssh_options=ssh_opts, remote_python=sys.executable,
                       remote_workdir=os.path.join(work, "run"), root_daemon=True,
                       state_file=os.path.join(work, "state.json"),
                       name="pgrep-bench-%d" % os.getpid(), ssh_fanout=k)
        t0 = time.monotonic()
        try:
            addr = tree.start()
            print("nine tree on them in %.1f s (root %s)" % (time.monotonic() - t0, addr))
            root_pid = tree.members[-1].pid
            meter = Meter(cluster, root_pid)
            env_cmd = [sys.executable, "-m", "nine", "pgrep", "-a", addr, "-w", nodes,
                       "-n", PATTERN, PATH]
            tools = {
                "nine pgrep": (env_cmd, False),
                "clush -b": (["clush", "-b", "-f", str(k), "-o", ssh_opts, "-w", nodes,
                              "grep", "-n", PATTERN, PATH], False),
                "pdsh | dshbak -c": ("PDSH_SSH_ARGS_APPEND=%s pdsh -R ssh -f %d -w %s "
                                     "grep -n %s %s | dshbak -c" % (
                                         shlex.quote(ssh_opts), k, shlex.quote(nodes),
                                         PATTERN, PATH), True),
            }
            results = {name: [] for name in tools}
            outputs = {}
            for rnd in range(args.runs + 1):          # round 0: cold
                for name, (argv, shell) in tools.items():
                    wall, p, m = meter.run(argv, shell)
                    results[name].append((wall, m))
                    outputs.setdefault(name, p.stdout)
                    if rnd == 0 and p.returncode not in (0, 1):
                        print("%s: exit %d: %s" % (name, p.returncode, p.stderr[-500:]))
            ref = classes(outputs["clush -b"])
            same = {name: classes(out) == ref for name, out in outputs.items()}
            print("\nfolded classes: %s" % ", ".join(
                "%d %s" % (len(ms), "(%d lines)" % out.count("\n")) for ms, out in
                sorted(ref.items(), key=lambda mo: -len(mo[0]))))
            print("same classes as clush -b: %s" % ", ".join(
                "%s %s" % (n, "yes" if ok else "NO") for n, ok in same.items()))
            print("\n%-18s %9s %9s %9s %9s %9s %11s" % (
                "k=%d" % k, "cold s", "warm s", "CPU here", "CPU root", "CPU hosts",
                "bytes in"))
            for name, rs in results.items():
                warm = rs[1:]
                med = lambda key: statistics.median(m[key] for _, m in warm)  # noqa: E731
                print("%-18s %9.3f %9.3f %9.3f %9.3f %9.3f %11d" % (
                    name, rs[0][0], statistics.median(w for w, _ in warm), med("here"),
                    med("root"), med("hosts"), med("bytes_in")))
            print("(warm: medians of %d runs; CPU in seconds; 'here' is the command and "
                  "its children on this machine)" % len(rs[1:]))
            if not all(same.values()):
                for name, out in outputs.items():
                    print("== %s ==\n%s" % (name, out[:2000]))
                sys.exit(1)
        finally:
            tree.down()


if __name__ == "__main__":
    main()
