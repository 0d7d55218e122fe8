"""Group-read benchmark: one small file read on N members through a tree of muxes,
through one flat mux, and by serial iteration from a client.

    python bench/group_bench.py [--sizes 16,64,256,1024] [--fanout 16] [--reads 20]
                                [--open-reads 5] [--workers K] [--classes 4]
                                [--interleave] [--latency MS] [--quick] [--json FILE]

--latency MS (a simulation, off by default) delays every reply of every 9P server of
the benchmark (the leaves, the `nine mux` processes, the root and the flat mux) by MS
milliseconds, as hosts across a network do: each link becomes a round trip of MS (the
server's own work is unchanged, and it keeps serving meanwhile).  Serial iteration pays
it N times; a group read once per level of the tree plus once to the root.
On loopback (the default) a round trip costs tens of microseconds, so serial iteration
is bounded by CPU, like the tree.

For each N it starts N LIGHT LEAF SERVERS (simulation): each a real nine Server
(nine.server.core, with the group service installed as `nine serve` does) on its own
loopback TCP port, exporting one synthetic file `v` of about 20 bytes
("version 1.2.K-bench\\n").  The leaves live in K worker processes (default: one per
core; leaf i in worker i % K), as in bench/mux_bench.py.  The content makes --classes
equivalence classes of contiguous leaves (leaf i has class i * classes // N), the way
racks of a cluster differ; with --interleave leaf i has class i % classes instead (then
the folded member sets, hence the bytes, grow with N).

Then, in the same run, it times the same group read (aggregator equiv, members
(leafNNNNN, /nodes/leafNNNNN/v), one whole read of every member per group read) three
ways:

  tree    a TBON started by nine.launch.Tree over the leaves: muxes of --fanout
          children each, levels added until the root has at most --fanout children.
          The muxes above the leaves (`simple *:/ at /nodes`) and the inner muxes
          (`insert *:/ at /`) are `nine mux` processes, so they run in parallel; the
          root is a Mux in this process (as `nine tree` runs it), listening on loopback.
          The client opens the group with gopen() at the root: the root's group service
          does the work (served=True) and delegates one private group per child mux, so
          a group read is one request per child per level.
  flat    one Mux in this process with all N leaves as direct children
          (`simple *:/ at /nodes`), the same gopen() group read: the mux reads all N
          leaves concurrently itself.  (For N <= fanout the tree is this same one mux.)
  serial  a client reading the N files one after another, directly from the leaf
          servers: one connection and one open fid per leaf made beforehand, then per
          iteration one Tread of each file in turn (the whole file: a short read).
  serial+open  the same, but as a tool that opens and reads N files does: walk, open,
          read to EOF, clunk per file (Client.read_file), on the same connections.

A first group read opens the members / delegates to the children (`setup`, with
gopen); then a few untimed warm-up reads, then --reads timed group reads: the median
ms per group read is reported, with the ratios serial/tree and flat/tree, the depth of
the tree (levels of muxes, root included), the bytes the client received (and sent) on
its connection to the root per group read (counted on the socket), the CPU time all
processes of the benchmark (leaf workers, mux processes, this process) used per group
read (from /proc: clock ticks, coarse for small N), and the time the client spends
rendering the merged result (part of every group read).  Every group read's equivalence
classes are checked against the expected ones (and the serial reads' contents too): a
mismatch is printed as an ERROR and the exit status is 1.

Expectations (the project issue): the tree beats serial iteration by more than 20x at 256
members and its time grows with the depth of the tree, not with N.  Both need cores: the
total work of a group read (N leaf reads, N/fanout mux merges, ...) grows with N, and
with fewer cores than processes the tree's levels cannot run in parallel; light leaves
packed N/K per worker process also serialize the leaf level within a worker.  And a
level's own work grows with the members below it wherever member sets are handled one
name at a time (folding them for the wire, rendering at the client): the `render`
column and the CPU split show it.  The cpu count is printed with the results.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import gevent  # noqa: E402

import benchleaves  # noqa: E402
from nine.client import Client  # noqa: E402
from nine.group.service import install  # noqa: E402
from nine.assembly import MuxConfig, build_mux  # noqa: E402
from nine.launch import Topology, Tree  # noqa: E402
from nine.protocol.const import L_O_RDONLY  # noqa: E402
from nine.server.core import Server  # noqa: E402
from nine.synth.files import Dir, File, SynthFS  # noqa: E402

LEAF_FINAL = "simple *:/ at /nodes\n"     # the muxes right above the leaves
WARMUP = 2                                 # untimed group reads after the first


# ---------------------------------------------------------------------------------------
# light leaves

def leaf_name(i):
    return "leaf%05d" % i


def leaf_class(i, n, classes, interleave):
    return i % classes if interleave else i * classes // n


def leaf_content(i, n, classes, interleave):
    return b"version 1.2.%d-bench\n" % leaf_class(i, n, classes, interleave)


def make_leaf(i, n, classes, interleave, latency_us=0):
    data = leaf_content(i, n, classes, interleave)
    f = File("v", read=lambda ctx, d=data: d)
    srv = Server({None: SynthFS(Dir("", [f])).attach}, name=leaf_name(i))
    if latency_us:
        benchleaves.install_delay(latency_us)   # every server of this process
    install(srv)                       # as `nine serve` does (unused by this read)
    return srv


def worker_main(spec):
    """A leaf worker process: hosts leaves i < n with i % nworkers == k."""
    k, nworkers, n, classes, interleave, lat = (int(x) for x in spec.split(","))
    benchleaves.worker_main(range(k, n, nworkers),
                            lambda i: make_leaf(i, n, classes, bool(interleave), lat))


def Leaves(n, nworkers, classes, interleave, latency_us=0):
    """N light leaf servers in K worker processes (K = 0: in this process)."""
    return benchleaves.Leaves(
        n, nworkers,
        lambda k, nw: [sys.executable, os.path.abspath(__file__), "--leaf-worker",
                       "%d,%d,%d,%d,%d,%d" % (k, nw, n, classes, int(interleave),
                                              latency_us)],
        lambda i: make_leaf(i, n, classes, interleave, latency_us), name=leaf_name)


# ---------------------------------------------------------------------------------------
# measuring

def proc_cpu(pids):
    """CPU seconds (user + system) used so far by these processes (None: this one)."""
    if pids is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tck


class CPU:
    """CPU time used by groups of processes between start() and stop():
    {"leaves": [pid...], "muxes": [pid...]} and this process ("self")."""

    def __init__(self, groups):
        self.groups = dict(groups, self=None)

    def start(self):
        self.t0 = {k: proc_cpu(v) for k, v in self.groups.items()}

    def stop(self, per):
        """{group: ms per `per` operations, "all": their sum}"""
        out = {k: (proc_cpu(v) - self.t0[k]) / per * 1e3 for k, v in self.groups.items()}
        out["all"] = sum(out.values())
        return out


class ByteCount:
    """The bytes a client connection received and sent (its Connection's counters)."""

    def __init__(self, client):
        self.conn = client.conn

    rx = property(lambda self: self.conn.bytes_in)
    tx = property(lambda self: self.conn.bytes_out)


def count_bytes(client):
    return ByteCount(client)


def check_classes(what, got, expected, errors):
    """got/expected: {content: set(members)}; records an error message on mismatch."""
    got = {bytes(k): set(v) for k, v in (got or {}).items()}
    if got == expected:
        return True
    missing = set().union(*expected.values()) - set().union(*got.values()) if got else \
        set().union(*expected.values())
    msg = "%s: equivalence classes differ: got %d classes (%s), expected %d%s" % (
        what, len(got), ", ".join("%r x%d" % (k, len(v)) for k, v in sorted(got.items())),
        len(expected), "; %d members missing" % len(missing) if missing else "")
    errors.append(msg)
    print("  ERROR " + msg, flush=True)
    return False


def median_ms(ts):
    return statistics.median(ts) * 1e3


def time_group(addr, members, expected, reads, cpu, what, errors):
    """gopen + first read (setup), warm-up, then `reads` timed group reads at addr."""
    c = Client(addr, aname="")
    try:
        cs = count_bytes(c)
        t0 = time.perf_counter()
        g = c.gopen(None, "r", members=members, aggregator="equiv")
        if not g.served:
            errors.append("%s: the group is not served by the mux" % what)
            print("  ERROR " + errors[-1], flush=True)
        g.read()
        setup = time.perf_counter() - t0
        ok = check_classes(what + " (first read)", g.last.value, expected, errors)
        if g.failed:
            errors.append("%s: members failed: %s" % (what, dict(list(g.failed.items())[:3])))
            print("  ERROR " + errors[-1], flush=True)
        for _ in range(WARMUP):
            g.read()
        rx0, tx0 = cs.rx, cs.tx
        cpu.start()
        ts = []
        size = 0
        for _ in range(reads):
            t = time.perf_counter()
            out = g.read()
            ts.append(time.perf_counter() - t)
            size = len(out)
            if ok:
                ok = check_classes(what, g.last.value, expected, errors)
        used = cpu.stop(reads)
        rx, tx = (cs.rx - rx0) / reads, (cs.tx - tx0) / reads
        # the client's share of a group read: rendering the merged result (g.read() does
        # it after decoding the partial the server sent)
        agg, last = g.aggregator(), g.last
        rts = []
        for _ in range(5):
            t = time.perf_counter()
            agg.render(last)
            rts.append(time.perf_counter() - t)
        g.close()
        return dict(setup_ms=setup * 1e3, ms=median_ms(ts), min_ms=min(ts) * 1e3,
                    render_ms=median_ms(rts), rx_B=rx, tx_B=tx, rendered_B=size,
                    cpu_ms=used["all"], cpu_ms_by=used)
    finally:
        c.close()


def serve(mux):
    ss = mux.server.listen("127.0.0.1:0")
    return "%s:%d" % ss.address[:2]


def run_serial(leaves, expected, reads, open_reads, cpu, errors):
    """Serial iteration from a client, directly from the leaves (a connection each)."""
    kids = leaves.children()
    clients, fids = [], []
    try:
        for name, addr in kids:
            c = Client(addr, aname="")
            clients.append(c)
            f = c.walk("v")
            fids.append(f)
            f.lopen(L_O_RDONLY)

        def one_pass():
            out = {}
            for (name, _), f in zip(kids, fids):
                out.setdefault(f.read(0, 4096), set()).add(name)
            return out

        def open_pass():
            out = {}
            for (name, _), c in zip(kids, clients):
                out.setdefault(c.read_file("v"), set()).add(name)
            return out

        res = {}
        for key, fn, n in (("serial", one_pass, reads), ("serial_open", open_pass, open_reads)):
            if n <= 0:
                continue
            ok = check_classes(key, fn(), expected, errors)     # warm-up, checked
            cpu.start()
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                got = fn()
                ts.append(time.perf_counter() - t)
                if ok:
                    ok = check_classes(key, got, expected, errors)
            res[key + "_ms"] = median_ms(ts)
            res[key + "_cpu_ms"] = cpu.stop(n)["all"]
        return res
    finally:
        for f in fids:
            try:
                f.clunk_nowait()
            except Exception:
                pass
        for c in clients:
            c.close()


def run_size(n, a, errors):
    row = {"n": n}
    leaves = Leaves(n, a.workers, a.classes, a.interleave, int(a.latency * 1000))
    tree = None
    flat = None
    try:
        row["leaves_start_s"] = leaves.start_s
        kids = leaves.children()
        members = [(name, "/nodes/%s/v" % name) for name, _ in kids]
        expected = {}
        for i, (name, _) in enumerate(kids):
            expected.setdefault(leaf_content(i, n, a.classes, a.interleave), set()).add(name)
        row["classes"] = len(expected)

        # (c) serial iteration, directly from the leaves
        row.update(run_serial(leaves, expected, a.reads, a.open_reads,
                              CPU({"leaves": leaves.pids()}), errors))

        # (b) one flat mux over all N leaves (in this process)
        flat = build_mux(MuxConfig(kids, final_text=LEAF_FINAL, child_aname="", name="flat"))
        r = time_group(serve(flat), members, expected, a.reads,
                       CPU({"leaves": leaves.pids(), "muxes": []}), "flat", errors)
        row.update({"flat_" + k: v for k, v in r.items()})
        flat.close()
        flat = None

        # (a) the tree: `nine mux` processes, root in this process
        topo = Topology(kids, listen="127.0.0.1:0", fanout=a.fanout,
                        final_leaf_mux=LEAF_FINAL,
                        final_root=LEAF_FINAL if n <= a.fanout else None)
        tree = Tree(topo)
        t0 = time.perf_counter()
        root = tree.start()
        addr = serve(root)
        row["tree_start_s"] = time.perf_counter() - t0
        row["depth"] = len(tree.levels)            # mux levels, the root included
        row["muxes"] = sum(len(lv) for lv in tree.levels[1:]) + 1
        r = time_group(addr, members, expected, a.reads,
                       CPU({"leaves": leaves.pids(),
                            "muxes": [p.pid for p, _ in tree.procs]}), "tree", errors)
        row.update({"tree_" + k: v for k, v in r.items()})
    finally:
        if flat is not None:
            flat.close()
        if tree is not None:
            tree.stop()
        leaves.stop()
    t = row["tree_ms"]
    row["serial_over_tree"] = row["serial_ms"] / t
    row["flat_over_tree"] = row["flat_ms"] / t
    if "serial_open_ms" in row:
        row["serial_open_over_tree"] = row["serial_open_ms"] / t
    return row


# ---------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16,64,256,1024", help="comma-separated N values")
    ap.add_argument("--quick", action="store_true", help="a smoke run: --sizes 16,64")
    ap.add_argument("--fanout", type=int, default=16, help="children per mux in the tree")
    ap.add_argument("--reads", type=int, default=20, help="timed group reads per way")
    ap.add_argument("--open-reads", type=int, default=5,
                    help="timed passes of serial+open (0: skip it)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="leaf worker processes (0: leaves in this process; default: "
                         "one per core)")
    ap.add_argument("--classes", type=int, default=4,
                    help="distinct file contents (equivalence classes)")
    ap.add_argument("--interleave", action="store_true",
                    help="leaf i has class i %% classes (default: contiguous blocks)")
    ap.add_argument("--latency", type=float, default=0.0, metavar="MS",
                    help="SIMULATED: every reply of every leaf is delayed by MS "
                    "milliseconds (a stand-in for the round trip to a remote host; "
                    "default 0: loopback only)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--leaf-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.leaf_worker:
        worker_main(a.leaf_worker)
        return 0
    if a.quick:
        a.sizes = "16,64"
    sizes = sorted({int(x) for x in a.sizes.split(",") if x})
    if a.fanout < 2 or a.reads < 1 or a.classes < 1 or not sizes or min(sizes) < 1:
        ap.error("need --fanout >= 2, --reads >= 1, --classes >= 1 and sizes >= 1")
    if a.latency < 0:
        ap.error("--latency must be >= 0")
    if a.latency and a.latency != int(a.latency):
        print("note: the event loop's timers wait whole milliseconds (epoll): --latency %g "
              "acts as about %d ms" % (a.latency, -(-a.latency // 1)), file=sys.stderr)
    if a.latency:
        us = int(a.latency * 1000)
        benchleaves.install_delay(us)            # the root and the flat mux (here)
        benchleaves.delay_child_processes(us)    # the `nine mux` processes, the workers

    # SIGTERM ends the run like Ctrl-C does: the finally clauses stop every process
    main_greenlet = gevent.getcurrent()
    gevent.signal_handler(signal.SIGTERM,
                          lambda: main_greenlet.throw(SystemExit(128 + signal.SIGTERM)))
    soft, _ = benchleaves.raise_nofile()
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(),
        "python": sys.version.split()[0], "gevent": gevent.__version__,
        "fanout": a.fanout, "reads": a.reads, "leaf_workers": a.workers,
        "classes": a.classes, "interleave": a.interleave,
    }
    print("nine group-read benchmark, %s, %s, cpu count %d, Python %s, gevent %s" % (
        info["date"], info["host"], info["cpus"], info["python"], info["gevent"]))
    print("leaves: LIGHT LEAF SERVERS (simulation): a nine Server each, one ~20-byte file "
          "v,\n  own loopback TCP port, real 9P2000.L, %s; %d %s classes" % (
              "in %d worker process%s" % (a.workers, "es" if a.workers != 1 else "")
              if a.workers else "in this process", a.classes,
              "interleaved" if a.interleave else "contiguous"))
    if a.latency:
        print("  SIMULATED LATENCY: every reply of every 9P server here (leaves, muxes, "
              "the root)\n  leaves it %g ms after it was made (a delay line): each link "
              "is a %g ms round trip" % (a.latency, a.latency))
    print("tree: fanout %d, `nine mux` processes, root in this process; flat: one mux "
          "in this process;\nserial: one Tread per file in turn on pre-opened fids, one "
          "connection per leaf;\nserial+open: walk+open+read+clunk per file "
          "(Client.read_file).  %d timed reads (serial+open %d)\nafter a first read and "
          "%d warm-up reads; medians; RLIMIT_NOFILE %d" % (
              a.fanout, a.reads, a.open_reads, WARMUP, soft))
    need = max(sizes) * 3 + 64
    if need > soft:
        print("warning: about %d fds may be needed here, the limit is %d" % (need, soft))
    print(flush=True)

    t_all = time.perf_counter()
    rows, errors = [], []
    try:
        for n in sizes:
            print("N=%d ..." % n, end=" ", flush=True)
            r = run_size(n, a, errors)
            rows.append(r)
            print("depth %d: tree %.2f ms, flat %.2f ms, serial %.2f ms per group read" % (
                r["depth"], r["tree_ms"], r["flat_ms"], r["serial_ms"]), flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    print("\nms per group read (median of %d timed reads); tree: depth = levels of muxes, root "
          "included;\nrx/tx B: bytes the client received/sent on its connection to the tree's "
          "root per group read" % a.reads)
    print("%5s %5s %5s %9s %9s %9s %9s %9s %7s %7s" % (
        "N", "depth", "muxes", "tree", "flat", "serial", "ser/tree", "flat/tree", "rx B",
        "tx B"))
    for r in rows:
        print("%5d %5d %5d %9.2f %9.2f %9.2f %8.1fx %8.2fx %7.0f %7.0f" % (
            r["n"], r["depth"], r["muxes"], r["tree_ms"], r["flat_ms"], r["serial_ms"],
            r["serial_over_tree"], r["flat_over_tree"], r["tree_rx_B"], r["tree_tx_B"]))
    print("\ndetails, ms: setup = gopen + first group read (members opened/delegated); "
          "render = the\nclient's rendering of the merged result (part of every group "
          "read); ser+open = serial with\nwalk+open+read+clunk per file; CPU = CPU ms per "
          "group read, all processes together\n(tree: leaf workers + mux processes + this "
          "process)")
    print("%5s %9s %9s %7s %9s %9s %20s %8s %9s" % (
        "N", "treeSetup", "flatSetup", "render", "ser+open", "treeCPU", "(leaves+muxes+self)",
        "flatCPU", "serialCPU"))
    for r in rows:
        by = r["tree_cpu_ms_by"]
        print("%5d %9.1f %9.1f %7.2f %9s %9.1f %20s %8.1f %9.1f" % (
            r["n"], r["tree_setup_ms"], r["flat_setup_ms"], r["tree_render_ms"],
            "%.2f" % r["serial_open_ms"] if "serial_open_ms" in r else "-",
            r["tree_cpu_ms"], "%.1f+%.1f+%.1f" % (by["leaves"], by["muxes"], by["self"]),
            r["flat_cpu_ms"], r["serial_cpu_ms"]))
    print("tree start s (mux processes): %s; leaves start s: %s" % (
        ", ".join("%.2f" % r["tree_start_s"] for r in rows),
        ", ".join("%.2f" % r["leaves_start_s"] for r in rows)))
    at = {r["n"]: r for r in rows}
    if 256 in at:
        x = at[256]["serial_over_tree"]
        print("at N=256: serial/tree %.1fx (the issue asks > 20x): %s on %d cpus%s" % (
            x, "met" if x > 20 else "NOT met", os.cpu_count(),
            ", with a SIMULATED link latency of %g ms" % a.latency if a.latency else ""))
    if len(rows) > 1:
        a0, a1 = rows[0], rows[-1]
        print("tree time x%.1f from N=%d to N=%d (depth %d -> %d; N x%.0f)" % (
            a1["tree_ms"] / a0["tree_ms"], a0["n"], a1["n"], a0["depth"], a1["depth"],
            a1["n"] / a0["n"]))
    for e in errors:
        print("ERROR: " + e)
    print("total %.1f s, cpu count %d" % (time.perf_counter() - t_all, os.cpu_count()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": info, "rows": rows, "errors": errors}, f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
