"""nine pcp and nine psync against clush --copy, pdcp, parallel-scp and rsync, on
namespace hosts.

    sudo python3 bench/pcp_bench.py [-k 16] [--size 64] [--fanout 4] [--rate 200mbit]
                                    [--peer-size MiB] [--psync-size 64] [--only pcp|psync]

K hosts (interop/hosts.py: network namespaces with their own address, /srv and sshd).
A nine tree runs on them (nine.launch.ssh: a leaf per host exporting /srv/data, muxes
on hosts at fanout F, the root a daemon on this machine).

Links: each --rate (repeatable) is one run on a fresh cluster; "none" is unshaped
(veths as fast as this machine's CPU allows), a tc rate ("200mbit") shapes every link
of the cluster in both directions, this machine's included (Cluster(rate=...)): as on
a switched network, what the root sends to all hosts shares its one link, and so does
what a mux sends to its children.  Default: unshaped, then 200mbit.

Peers at a smaller size: with --peer-size M (< SIZE), clush, pdcp and parallel-scp copy
an M MiB file instead (their 64 copies of SIZE on a shaped link would take too long);
their wall time is then also given extrapolated linearly to SIZE (`wall@SIZE`, marked
`*`), which slightly overstates them (their fixed start-up cost is scaled too); their
egress in copies does not depend on the size.

1. pcp: a file of SIZE MiB (random bytes) to /srv/data/app.tar on every host, by

       nine pcp -w node[1-K] SRC /srv/data/app.tar
       clush -f K -w node[1-K] --copy SRC --dest /srv/data/
       pdcp -R ssh -f K -w node[1-K] SRC /srv/data/app.tar
       parallel-scp -p K -h HOSTS SRC /srv/data/app.tar        (when installed)

2. psync: a file of PSYNC-SIZE MiB (default 64) changed by 1% (10 places), the hosts holding three different older
   versions (each 1% away from the common base) and two hosts none, by

       nine psync -w node[1-K] SRC /srv/data/app.bin
       rsync -e ssh SRC HOST:/srv/data/app.bin     (one per host, all at once)
       parallel-rsync -p K -h HOSTS SRC /srv/data/app.bin      (when installed)

   If `nine pcp --help` offers --compress, `nine pcp --compress auto` is one more row (the
   file is random bytes: incompressible, as a tar of compressed packages would be).

For each: wall time, CPU seconds here (the command and its children), of the root
daemon and on the hosts, and the root's egress: bytes out of this machine into the
hosts (the transmit counter of its port on the hosts' bridge: for nine what the root
sends its children, for the others every ssh session); then the bytes on every host
are checked against the source.  The destination is reset before each tool, and the
pcp copies are removed before psync.  At the end of each part: ratios against the
peers (wall, egress), and the load average (this machine may be shared).
"""

import argparse
import atexit
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class Meter:
    """CPU here, on the hosts and of the root daemon, and bytes out of this machine to
    the hosts, over one command."""

    def __init__(self, cluster, root_pid):
        self.cluster = cluster
        self.root_pid = root_pid
        self.tx = "/sys/class/net/%s/statistics/tx_bytes" % cluster._res.head

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
        t = psutil.Process(self.root_pid).cpu_times()
        return t.user + t.system

    def run(self, argv, shell=False):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        h0, root0 = self._hosts_cpu(), self._root_cpu()
        with open(self.tx) as f:
            b0 = int(f.read())
        t0 = time.perf_counter()
        p = subprocess.run(argv, shell=shell, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        with open(self.tx) as f:
            b1 = int(f.read())
        time.sleep(0.3)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        h1, root1 = self._hosts_cpu(), self._root_cpu()
        return wall, p, {"here": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
                         "hosts": sum(v - h0.get(k, 0.0) for k, v in h1.items()),
                         "root": root1 - root0, "out": b1 - b0}


def random_bytes(seed, n):
    """n reproducible random bytes (in 64 MiB pieces: randbytes takes at most 2 Gbit)."""
    r = random.Random(seed)
    return b"".join(r.randbytes(min(64 << 20, n - i)) for i in range(0, n, 64 << 20))


def mutate(data, seed, frac=0.01):
    r = random.Random(seed)
    b = bytearray(data)
    for _ in range(10):
        n = int(len(b) * frac / 10)
        off = r.randrange(len(b) - n)
        b[off:off + n] = r.randbytes(n)
    return bytes(b)


def table(title, rows, size):
    """rows: name -> (wall, meter, identical, exit status, MiB copied); wall@SIZE is
    wall scaled to size (marked * where the row copied less)."""
    print("\n%s" % title)
    print("%-26s %5s %8s %9s %9s %9s %9s %12s %8s %s" % (
        "", "MiB", "wall s", "wall@%d" % (size >> 20), "CPU here", "CPU root", "CPU hosts",
        "egress MiB", "copies", "identical"))
    for name, (wall, m, same, rc, mib) in rows.items():
        scaled = "%8.2f%s" % (wall * size / (mib << 20), " " if mib << 20 == size else "*")
        print("%-26s %5d %8.2f %9s %9.2f %9.2f %9.2f %12.1f %8.2f %s%s" % (
            name, mib, wall, scaled, m["here"], m["root"], m["hosts"], m["out"] / 2 ** 20,
            m["out"] / (mib << 20), same, "" if rc == 0 else " (exit %d)" % rc))
    sys.stdout.flush()


def ratios(rows, size, mine, peers):
    """One line per peer: how much faster (wall at size) and how much less egress (in
    copies) than the peer the row mine is, and the CPU of all sides.  Nothing for a row
    that failed or did not run."""
    if mine not in rows or rows[mine][3] != 0:
        return
    wall, m, _, _, mib = rows[mine]
    w = wall * size / (mib << 20)
    copies = m["out"] / (mib << 20)
    cpu = (m["here"] + m["root"] + m["hosts"]) * size / (mib << 20)
    for peer in peers:
        if peer not in rows or rows[peer][3] != 0:
            continue
        pw, pm, _, _, pmib = rows[peer]
        pwall = pw * size / (pmib << 20)
        pcopies = pm["out"] / (pmib << 20)
        pcpu = (pm["here"] + pm["root"] + pm["hosts"]) * size / (pmib << 20)
        print("  %s vs %s: %.1fx faster (%.1f s vs %.1f s%s), %.1fx less egress "
              "(%.2f vs %.2f copies), CPU all sides %.1f vs %.1f s" % (
                  mine, peer, pwall / w, w, pwall, ", extrapolated" if pmib << 20 != size
                  else "", pcopies / copies if copies else float("inf"), copies, pcopies,
                  cpu, pcpu))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", type=int, default=16, help="hosts (default 16)")
    ap.add_argument("--size", type=int, default=64, help="MiB (default 64)")
    ap.add_argument("--fanout", type=int, default=4)
    ap.add_argument("--only", choices=["pcp", "psync"], help="one part only")
    ap.add_argument("--rate", action="append",
                    help="links: a tc rate (200mbit) or none (unshaped); repeatable, one "
                         "run each (default: none, then 200mbit)")
    ap.add_argument("--peer-size", type=int,
                    help="MiB the peers copy in pcp, extrapolated to --size (default: --size)")
    ap.add_argument("--psync-size", type=int, default=64, help="MiB for psync (default 64)")
    ap.add_argument("--pcp-args", action="append", default=[],
                    help="one more nine pcp row with these options (\"-k 16\"); repeatable")
    ap.add_argument("--tools", help="comma-separated: only the rows whose name starts with "
                                    "one of these (nine, clush, pdcp, parallel, rsync; "
                                    "'nine pcp$': that row only)")
    args = ap.parse_args()
    from interop.hosts import available, parse_rate
    why = available()
    if why:
        sys.exit("namespace hosts cannot be made here: %s" % why)
    rates = args.rate or ["none", "200mbit"]
    for r in rates:
        if r != "none":
            parse_rate(r)
    if args.peer_size is not None and not 0 < args.peer_size <= args.size:
        sys.exit("--peer-size: 1 to --size MiB")
    if not os.environ.get("NINE_KEY"):
        from nine.auth.key import make_key
        d = tempfile.mkdtemp(prefix="nine-bench-key-")
        atexit.register(shutil.rmtree, d, True)
        make_key(os.path.join(d, "key"))
        os.environ["NINE_KEY"] = os.path.join(d, "key")
    print("load average before: %.2f %.2f %.2f; %d CPUs" % (os.getloadavg() + (os.cpu_count(),)))
    for r in rates:
        work = tempfile.mkdtemp(prefix="nine-pcp-bench-")
        try:
            run(args, None if r == "none" else r, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("load average: %.2f %.2f %.2f" % os.getloadavg(), flush=True)


def run(args, rate, work):
    """Both parts on a fresh cluster of args.k hosts, links shaped to rate (or not);
    work: a directory for the sources and the tree's files."""
    from interop.hosts import Cluster
    from nine.launch.ssh import SshTree
    from nine.launch.topology import Topology
    k, size = args.k, args.size << 20
    peer_mib = args.peer_size or args.size
    nodes = "node[1-%d]" % k
    src = os.path.join(work, "app.tar")
    peer_src = os.path.join(work, "peer", "app.tar")
    base = random_bytes(1, size)
    with open(src, "wb") as f:
        f.write(base)
    if peer_mib != args.size:
        os.mkdir(os.path.dirname(peer_src))
        with open(peer_src, "wb") as f:
            f.write(base[:peer_mib << 20])
    else:
        peer_src = src
    t0 = time.monotonic()
    with Cluster(k, rate=rate) as cluster:
        print("\n=== links %s: %d namespace hosts up in %.1f s; %d MiB" % (
            rate or "unshaped", k, time.monotonic() - t0, args.size), flush=True)
        for h in cluster.hosts:
            (h.dir / "data").mkdir(exist_ok=True)
        ssh_opts = "-F %s" % cluster.ssh_config
        hostfile = os.path.join(work, "hosts")
        with open(hostfile, "w") as f:
            f.write("".join(h.name + "\n" for h in cluster.hosts))
        topo = Topology([(h.name, "ssh") for h in cluster.hosts], fanout=args.fanout,
                        leaf_export="/srv/data", listen="127.0.0.1:0")
        tree = SshTree([h.name for h in cluster.hosts], fanout=args.fanout, topology=topo,
                       ssh_options=ssh_opts, remote_python=sys.executable,
                       remote_workdir=os.path.join(work, "run"), root_daemon=True,
                       state_file=os.path.join(work, "state.json"),
                       name="pcp-bench-%d" % os.getpid(), ssh_fanout=k)
        t0 = time.monotonic()
        try:
            addr = tree.start()
            print("nine tree on them in %.1f s (root %s, fanout %d)" % (
                time.monotonic() - t0, addr, args.fanout))
            meter = Meter(cluster, tree.members[-1].pid)
            nine = [sys.executable, "-m", "nine"]

            def same(name, want):
                bad = [h.name for h in cluster.hosts
                       if not (h.dir / "data" / name).exists()
                       or (h.dir / "data" / name).read_bytes() != want]
                return "yes" if not bad else "NO (%d hosts differ)" % len(bad)

            def clear(name):
                for h in cluster.hosts:
                    p = h.dir / "data" / name
                    if p.exists():
                        p.unlink()

            if args.only in (None, "pcp"):
                pcp = nine + ["pcp", "-q", "-a", addr, "-w", nodes]
                tools = {"nine pcp": (pcp + [src, "/srv/data/app.tar"], args.size)}
                help_text = subprocess.run(nine + ["pcp", "--help"], capture_output=True,
                                           text=True).stdout
                for extra in args.pcp_args:
                    tools["nine pcp " + extra] = (pcp + shlex.split(extra) + [
                        src, "/srv/data/app.tar"], args.size)
                if "--compress" in help_text:
                    tools["nine pcp --compress auto"] = (
                        pcp + ["--compress", "auto", src, "/srv/data/app.tar"], args.size)
                tools.update({
                    "clush --copy": (["clush", "-f", str(k), "-o", ssh_opts, "-w", nodes,
                                      "--copy", peer_src, "--dest", "/srv/data/"], peer_mib),
                    "pdcp": ("PDSH_SSH_ARGS_APPEND='%s' pdcp -R ssh -f %d -w %s %s "
                             "/srv/data/app.tar" % (ssh_opts, k, nodes, peer_src), peer_mib),
                })
                if shutil.which("parallel-scp"):
                    tools["parallel-scp"] = (["parallel-scp", "-p", str(k), "-h", hostfile,
                                              "-x", ssh_opts, "-t", "0", peer_src,
                                              "/srv/data/app.tar"], peer_mib)
                rows = {}
                for name, (argv, mib) in _chosen(tools, args.tools).items():
                    clear("app.tar")
                    wall, p, m = meter.run(argv, shell=isinstance(argv, str))
                    if p.returncode:
                        print("%s: exit %d: %s" % (name, p.returncode, p.stderr[-400:]))
                    rows[name] = (wall, m, same("app.tar", base[:mib << 20]), p.returncode,
                                  mib)
                    print("  %s: %.1f s" % (name, wall), flush=True)
                clear("app.tar")
                table("pcp: %d MiB to %d hosts, links %s (copies: egress / MiB copied; the "
                      "tree's root has %d children)" % (
                          args.size, k, rate or "unshaped", _root_children(k, args.fanout)),
                      rows, size)
                for mine in [n for n in rows if n.startswith("nine")]:
                    ratios(rows, size, mine, ["clush --copy", "pdcp", "parallel-scp"])
                print("  load average: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
            if args.only in (None, "psync"):
                psize = args.psync_size << 20
                base = random_bytes(2, psize)
                new = mutate(base, 100)
                with open(src, "wb") as f:
                    f.write(new)
                olds = [mutate(base, s) for s in (1, 2, 3)]

                def reset():
                    for i, h in enumerate(cluster.hosts):
                        p = h.dir / "data" / "app.bin"
                        if i >= k - 2:
                            if p.exists():
                                p.unlink()
                        else:
                            p.write_bytes(olds[i % 3])
                tools = {
                    "nine psync": nine + ["psync", "--addr", addr, "-w", nodes, "--stats",
                                          src, "/srv/data/app.bin"],
                    "rsync, one per host": " & ".join(
                        "rsync -e 'ssh %s' %s %s:/srv/data/app.bin" % (ssh_opts, src, h.name)
                        for h in cluster.hosts) + " & wait",
                }
                if shutil.which("parallel-rsync"):
                    tools["parallel-rsync"] = ["parallel-rsync", "-p", str(k), "-h",
                                               hostfile, "-x", "-e 'ssh %s'" % ssh_opts,
                                               "-t", "0", src, "/srv/data/app.bin"]
                rows = {}
                for name, argv in _chosen(tools, args.tools).items():
                    reset()
                    wall, p, m = meter.run(argv, shell=isinstance(argv, str))
                    if p.returncode:
                        print("%s: exit %d: %s" % (name, p.returncode, p.stderr[-400:]))
                    if name == "nine psync":
                        print(p.stdout.rstrip())
                    rows[name] = (wall, m, same("app.bin", new), p.returncode,
                                  args.psync_size)
                clear("app.bin")
                table("psync: %d MiB changed by 1%%; %d hosts hold 3 older versions, 2 "
                      "none; links %s" % (args.psync_size, k - 2, rate or "unshaped"),
                      rows, psize)
                ratios(rows, psize, "nine psync", ["parallel-rsync", "rsync, one per host"])
                print("  load average: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
        finally:
            tree.down()


def _chosen(tools, wanted):
    """The tools whose name starts with one of wanted (a comma list; NAME$: that name
    only), or all."""
    if not wanted:
        return tools
    words = [w.strip() for w in wanted.split(",") if w.strip()]
    exact = {w[:-1] for w in words if w.endswith("$")}
    prefixes = tuple(w for w in words if not w.endswith("$"))
    return {n: t for n, t in tools.items() if n in exact or n.startswith(prefixes)}


def _root_children(k, fanout):
    n = k
    while n > fanout:
        n = (n + fanout - 1) // fanout
    return n


if __name__ == "__main__":
    main()
