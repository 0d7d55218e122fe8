"""nine pcp and nine psync against clush --copy, pdcp, parallel-scp and rsync, on
namespace hosts.

    sudo python3 bench/pcp_bench.py [-k 16] [--size 64] [--fanout 4]

K hosts (interop/hosts.py: network namespaces with their own address, /srv and sshd).
A nine tree runs on them (nine.launch.ssh: a leaf per host exporting /srv/data, muxes
on hosts at fanout F, the root a daemon on this machine).

1. pcp: a file of SIZE MiB (random bytes) to /srv/data/app.tar on every host, by

       nine pcp -w node[1-K] SRC /srv/data/app.tar
       clush -f K -w node[1-K] --copy SRC --dest /srv/data/
       pdcp -R ssh -f K -w node[1-K] SRC /srv/data/app.tar
       parallel-scp -p K -h HOSTS SRC /srv/data/app.tar        (when installed)

2. psync: the file changed by 1% (10 places), the hosts holding three different older
   versions (each 1% away from the common base) and two hosts none, by

       nine psync -w node[1-K] SRC /srv/data/app.bin
       rsync -e ssh SRC HOST:/srv/data/app.bin     (one per host, all at once)
       parallel-rsync -p K -h HOSTS SRC /srv/data/app.bin      (when installed)

For each: wall time, CPU seconds here (the command and its children), of the root
daemon and on the hosts, and the root's egress: bytes out of this machine into the
hosts (the transmit counter of its port on the hosts' bridge: for nine what the root
sends its children, for the others every ssh session); then the bytes on every host
are checked against the source.  The destination is reset before each tool.
"""

import argparse
import os
import random
import resource
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


def mutate(data, seed, frac=0.01):
    r = random.Random(seed)
    b = bytearray(data)
    for _ in range(10):
        n = int(len(b) * frac / 10)
        off = r.randrange(len(b) - n)
        b[off:off + n] = r.randbytes(n)
    return bytes(b)


def table(title, rows, size):
    print("\n%s" % title)
    print("%-22s %8s %9s %9s %9s %12s %8s %s" % ("", "wall s", "CPU here", "CPU root",
                                                 "CPU hosts", "egress MiB", "copies",
                                                 "identical"))
    for name, (wall, m, same, rc) in rows.items():
        print("%-22s %8.2f %9.2f %9.2f %9.2f %12.1f %8.2f %s%s" % (
            name, wall, m["here"], m["root"], m["hosts"], m["out"] / 2 ** 20,
            m["out"] / size, same, "" if rc == 0 else " (exit %d)" % rc))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", type=int, default=16, help="hosts (default 16)")
    ap.add_argument("--size", type=int, default=64, help="MiB (default 64)")
    ap.add_argument("--fanout", type=int, default=4)
    ap.add_argument("--only", choices=["pcp", "psync"], help="one part only")
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
    k, size = args.k, args.size << 20
    nodes = "node[1-%d]" % k
    work = tempfile.mkdtemp(prefix="nine-pcp-bench-")
    src = os.path.join(work, "app.tar")
    base = random.Random(1).randbytes(size)
    with open(src, "wb") as f:
        f.write(base)
    t0 = time.monotonic()
    with Cluster(k) as cluster:
        print("%d namespace hosts up in %.1f s; %d MiB" % (k, time.monotonic() - t0,
                                                           args.size))
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

            if args.only in (None, "pcp"):
                tools = {
                    "nine pcp": nine + ["pcp", "-q", "-a", addr, "-w", nodes, src,
                                        "/srv/data/app.tar"],
                    "clush --copy": ["clush", "-f", str(k), "-o", ssh_opts, "-w", nodes,
                                     "--copy", src, "--dest", "/srv/data/"],
                    "pdcp": "PDSH_SSH_ARGS_APPEND='%s' pdcp -R ssh -f %d -w %s %s "
                            "/srv/data/app.tar" % (ssh_opts, k, nodes, src),
                }
                if shutil.which("parallel-scp"):
                    tools["parallel-scp"] = ["parallel-scp", "-p", str(k), "-h", hostfile,
                                             "-x", ssh_opts, src, "/srv/data/app.tar"]
                rows = {}
                for name, argv in tools.items():
                    for h in cluster.hosts:
                        p = h.dir / "data" / "app.tar"
                        if p.exists():
                            p.unlink()
                    wall, p, m = meter.run(argv, shell=isinstance(argv, str))
                    if p.returncode:
                        print("%s: exit %d: %s" % (name, p.returncode, p.stderr[-400:]))
                    rows[name] = (wall, m, same("app.tar", base), p.returncode)
                table("pcp: %d MiB to %d hosts (copies: egress / file size; the tree's "
                      "root has %d children)" % (args.size, k, _root_children(k, args.fanout)),
                      rows, size)
            if args.only in (None, "psync"):
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
                                               src, "/srv/data/app.bin"]
                rows = {}
                for name, argv in tools.items():
                    reset()
                    wall, p, m = meter.run(argv, shell=isinstance(argv, str))
                    if p.returncode:
                        print("%s: exit %d: %s" % (name, p.returncode, p.stderr[-400:]))
                    if name == "nine psync":
                        print(p.stdout.rstrip())
                    rows[name] = (wall, m, same("app.bin", new), p.returncode)
                table("psync: %d MiB changed by 1%%; %d hosts hold 3 older versions, 2 "
                      "none" % (args.size, k - 2), rows, size)
        finally:
            tree.down()
            shutil.rmtree(work, ignore_errors=True)


def _root_children(k, fanout):
    n = k
    while n > fanout:
        n = (n + fanout - 1) // fanout
    return n


if __name__ == "__main__":
    main()
