"""Mux benchmark (issue 5): a mux composing N leaf name spaces over real 9P.

    python bench/mux_bench.py [--sizes 64,256,1024] [--n 10000] [--workers K]
                              [--child-msize BYTES] [--concurrency C] [--no-gc]
                              [--no-tracemalloc] [--profile N] [--json FILE]

The leaves are LIGHT IN-PROCESS SERVERS: each is a real nine Server (nine.server.core)
listening on its own loopback TCP port, with a tiny synthetic tree (nine.synth.files):

    proc/cpuinfo   (a few lines)     proc/1/cmdline     host/load

They live in K worker processes (default: one per core; leaf i in worker i % K; each
worker one gevent hub), or with --workers 0 in the benchmark's own process and hub.  The
mux under test (nine.mux.Mux, children = the N leaf addresses, child aname "") and the
client (nine.client.Client, over loopback TCP to the mux) run in the main process: every
child request is real 9P2000.L on a real socket.  For each N it prints:

  compose     build_mux(children, final_text): parse, check, build the composition and the
              server core (checked: no child contacted)
  root/       first listing of the merged root of the per-server view
              (`simple *:/ at /`: one directory per child; checked: no child contacted)
  cpuinfo/    first listing of proc/cpuinfo/ of the merge view (`merge *:/proc at /proc`:
              N entries, one per child): every child is contacted, concurrently (the
              composition's gather: a greenlet per child, at most 256 at a time by
              default): TCP connect + Tversion + Tattach + Twalk + Tclunk;
              the JSON also has the walk alone and when the last child came up
  mux CPU     CPU time (user + system) of the main process (mux and client) during it
  leafCPU     CPU time of the leaf worker processes during it (- with --workers 0)
  again       the same listing again, within the composition's ttl (1 s).  No child is
              connected again, but the walk to proc/cpuinfo asks every child again (one
              Twalk + Tclunk each): the composition caches merged *listings* (here none
              of proc/ was made), not the answers of a merge walk
  warm        again after invalidate(): the same work as `again` here
  RSS/child   growth of the main process's RSS from before the merge view's Mux was made
              to after its first cpuinfo/ listing, per child (live child connections;
              with --workers 0 this includes the leaves' side too)
  heap/child  the same under tracemalloc (a second, untimed pass); the sites holding most
              are printed under the table
  fds         file descriptors open in the main process after the listing

The client library gives every connection a 64 KiB receive buffer that grows only to the
largest frame received; a leaf's server connection has a 64 KiB one (RECVBUF).
--child-msize sets the msize the mux asks of its children (for comparison); a size whose
buffers would not fit in memory is skipped.

Default sizes 64, 256, 1024; --n 10000 adds a size (the FiNAL paper composed tens of
thousands of name spaces in about a quarter of a second).  RLIMIT_NOFILE's soft limit is
raised to the hard limit in every process; each child connection costs the mux one fd
(and its leaf two: listener and connection; three per child with --workers 0).
"""

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import sys
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import gevent  # noqa: E402

import benchleaves  # noqa: E402
from nine.client import Client  # noqa: E402
from nine.assembly import MuxConfig, build_mux  # noqa: E402
from nine.server.core import Server  # noqa: E402
from nine.synth.files import Dir, File, SynthFS  # noqa: E402

SIMPLE = "simple *:/ at /\n"
MERGE = "merge *:/proc at /proc\n"
PAGE = os.sysconf("SC_PAGE_SIZE")


def leaf_name(i):
    return "leaf%05d" % i


def leaf_tree(i):
    name = leaf_name(i)
    cpu = ("processor\t: 0\nvendor_id\t: nine\nmodel name\t: light leaf %s\n"
           "cpu MHz\t\t: 1000.000\n" % name).encode()
    return SynthFS(Dir("", [
        Dir("proc", [
            File("cpuinfo", read=lambda ctx: cpu),
            Dir("1", [File("cmdline", read=lambda ctx: b"init\0")]),
        ]),
        Dir("host", [File("load", read=lambda ctx: b"0.00 0.00 0.00\n")]),
    ])).attach


def make_leaf(i):
    return Server({None: leaf_tree(i)}, name=leaf_name(i))


def Leaves(total, nworkers):
    """N light leaf servers, in K worker processes or (K = 0) in this process."""
    return benchleaves.Leaves(
        total, nworkers,
        lambda k, nw: [sys.executable, os.path.abspath(__file__), "--leaf-worker",
                       "%d,%d,%d" % (k, nw, total)],
        make_leaf, name=leaf_name)


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def nfds():
    return len(os.listdir("/proc/self/fd"))


def timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def serve(mux):
    ss = mux.server.listen("127.0.0.1:0")
    return "%s:%d" % ss.address[:2]


def untouched(mux):
    """True if no child of mux was ever contacted."""
    return (all(c.connects == 0 and c.failures == 0 and c._link is None
                for c in mux.children.values())
            and not getattr(mux.root_attach, "contacts", None))


def tune(mux, a):
    """Apply --child-msize and --concurrency to a freshly made mux (before any contact)."""
    if a.child_msize:
        for c in mux.children.values():
            c.msize = a.child_msize      # read when the child's connection is opened
    if a.concurrency:
        mux.root_attach.concurrency = a.concurrency


def run_simple(kids, a):
    """The per-server view: compose, then the first listing of the merged root."""
    gc.collect()
    t_comp, mux = timed(lambda: build_mux(MuxConfig(kids, final_text=SIMPLE, child_aname="",
                                                    name="mux")))
    assert untouched(mux), "composing contacted a child"
    cl = None
    try:
        addr = serve(mux)
        t_att, cl = timed(lambda: Client(addr, aname=""))
        t_root, names = timed(lambda: cl.listdir(""))
        # the children, and the mux's own groups/ (nine.group.service)
        assert len(names) == len(kids) + 1 and "groups" in names, (len(names), len(kids))
        assert untouched(mux), "listing the per-server root contacted a child"
    finally:
        if cl is not None:
            cl.close()
        mux.close()
    return t_comp, t_att, t_root


def cpu_self():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_merge(kids, a, leaves, profile=False):
    """The merge view: the first listing of proc/cpuinfo/ (contacts every child)."""
    n = len(kids)
    gc.collect()
    r0 = rss()
    t_comp, mux = timed(lambda: build_mux(MuxConfig(kids, final_text=MERGE, child_aname="",
                                                    name="mux")))
    assert untouched(mux), "composing contacted a child"
    tune(mux, a)
    cl = None
    res = {"compose_merge_ms": t_comp * 1e3}
    try:
        addr = serve(mux)
        t_att, cl = timed(lambda: Client(addr, aname=""))
        res["client_attach_ms"] = t_att * 1e3
        gcs0 = sum(s["collections"] for s in gc.get_stats())
        prof = None
        if profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        c0, l0 = cpu_self(), leaves.cpu()
        w0 = time.time()
        t0 = time.perf_counter()
        f = cl.walk("proc/cpuinfo")
        t_walk = time.perf_counter() - t0
        try:
            from nine.protocol.const import L_O_DIRECTORY, L_O_RDONLY
            f.lopen(L_O_RDONLY | L_O_DIRECTORY)
            ents = [e for e in f.entries() if e.name not in (".", "..")]
        finally:
            f.clunk()
        t_cold = time.perf_counter() - t0
        c1, l1 = cpu_self(), leaves.cpu()
        res["cold_mux_cpu_ms"] = (c1 - c0) * 1e3
        res["cold_leaves_cpu_ms"] = None if l0 is None or l1 is None else (l1 - l0) * 1e3
        if prof is not None:
            prof.disable()
        res["gc_collections_cold"] = sum(s["collections"] for s in gc.get_stats()) - gcs0
        ups = [c.since - w0 for c in mux.children.values() if c.state == "up"]
        comp = mux.root_attach
        res.update(cold_ms=t_cold * 1e3, cold_walk_ms=t_walk * 1e3,
                   children_up=len(ups), entries=len(ents),
                   first_up_ms=min(ups) * 1e3 if ups else None,
                   last_up_ms=max(ups) * 1e3 if ups else None,
                   failures=len(getattr(comp, "failures", {}) or {}))
        res["rss_per_child_B"] = (rss() - r0) / n
        res["fds"] = nfds()
        if len(ents) != n:
            print("  warning: cpuinfo/ listed %d entries for %d children (%d failures: %s)"
                  % (len(ents), n, res["failures"],
                     "; ".join("%s %s" % (k, v[1]) for k, v in
                               list(comp.failures.items())[:3])), flush=True)
        t_cached, ents2 = timed(lambda: cl.listdir("proc/cpuinfo"))
        comp.invalidate()
        t_warm, ents3 = timed(lambda: cl.listdir("proc/cpuinfo"))
        res.update(again_ms=t_cached * 1e3, warm_ms=t_warm * 1e3)
        if prof is not None:
            res["_profile"] = prof
    finally:
        if cl is not None:
            cl.close()
        mux.close()
    return res


def run_traced(kids, a, top=4):
    """The merge view's first cpuinfo/ listing again, under tracemalloc (untimed)."""
    n = len(kids)
    gc.collect()
    tracemalloc.start()
    try:
        snap0 = tracemalloc.take_snapshot()
        base = tracemalloc.get_traced_memory()[0]
        mux = build_mux(MuxConfig(kids, final_text=MERGE, child_aname="", name="mux"))
        tune(mux, a)
        cl = None
        try:
            cl = Client(serve(mux), aname="")
            ents = cl.listdir("proc/cpuinfo")
            assert len(ents) == n, (len(ents), n)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - base
            snap = tracemalloc.take_snapshot()
        finally:
            if cl is not None:
                cl.close()
            mux.close()
    finally:
        tracemalloc.stop()
    flt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = snap.filter_traces(flt).compare_to(snap0.filter_traces(flt), "lineno")
    sites = []
    for st in diff[:top]:
        fr = st.traceback[0]
        fn = os.path.normpath(fr.filename)
        root = os.path.dirname(HERE) + os.sep
        if fn.startswith(root):
            fn = fn[len(root):]
        else:
            fn = os.path.basename(fn)
        sites.append(("%s:%d" % (fn, fr.lineno), st.size_diff / n))
    return held / n, sites


def fmt_bytes(b):
    if b is None:
        return "-"
    if abs(b) >= 1 << 20:
        return "%.2f MiB" % (b / (1 << 20))
    if abs(b) >= 10 << 10:
        return "%.0f KiB" % (b / 1024)
    return "%.0f B" % b


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,256,1024", help="comma-separated N values")
    ap.add_argument("--n", type=int, action="append", default=[],
                    help="add a size (e.g. --n 10000)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="leaf worker processes (0: leaves in this process; default: "
                         "one per core)")
    ap.add_argument("--child-msize", type=int, default=0,
                    help="msize the mux asks of its children (default: the mux's own, "
                         "nine.mux.remote.DEFAULT_MSIZE)")
    ap.add_argument("--concurrency", type=int, default=0,
                    help="greenlets per merged listing (default: the composition's, 256)")
    ap.add_argument("--no-gc", action="store_true",
                    help="disable the cyclic garbage collector during the timed passes")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="skip the untimed tracemalloc pass")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="cProfile the cold cpuinfo/ listing at this N (top functions)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--leaf-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.leaf_worker:
        k, nw, total = (int(x) for x in a.leaf_worker.split(","))
        benchleaves.worker_main(range(k, total, nw), make_leaf)
        return

    sizes = [int(x) for x in a.sizes.split(",") if x] + a.n
    sizes = sorted(set(sizes))
    soft, hard = benchleaves.raise_nofile()
    from nine.mux.remote import DEFAULT_MSIZE
    child_msize = a.child_msize or DEFAULT_MSIZE
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(), "cores": os.cpu_count(),
        "python": sys.version.split()[0], "gevent": gevent.__version__,
        "leaves": "light in-process nine Servers (synthetic proc/cpuinfo, proc/1/cmdline, "
                  "host/load), each on its own loopback TCP port; real 9P2000.L",
        "leaf_workers": a.workers, "child_msize": child_msize, "nofile": [soft, hard],
        "concurrency": a.concurrency or "default", "gc": "off" if a.no_gc else "on",
    }
    print("nine mux benchmark, %s, %s, %d cores, Python %s, gevent %s" % (
        info["date"], info["host"], info["cores"], info["python"], info["gevent"]))
    print("leaves: LIGHT IN-PROCESS SERVERS (simulation): each a nine Server with a tiny "
          "synthetic tree\n  on its own loopback TCP port, real 9P2000.L; %s" % (
              "in %d worker process%s (one gevent hub each)" % (
                  a.workers, "es" if a.workers != 1 else "")
              if a.workers else "in the benchmark's own process and hub"))
    print("mux and client: this process (one hub); child msize %d; RLIMIT_NOFILE %d%s%s"
          % (child_msize, soft,
             "; concurrency %d" % a.concurrency if a.concurrency else "",
             "; gc off" if a.no_gc else ""))
    need = max(sizes) * (1 if a.workers else 3) + 64
    if need > soft:
        print("warning: %d fds may be needed here, the limit is %d" % (need, soft))

    # the client library starts each connection with a 64 KiB receive buffer
    # (nine/client/conn.py), and a leaf's server connection has one of RECVBUF
    # (nine/server/conn.py), both touched when made: refuse sizes that would exhaust memory
    from nine.server.conn import RECVBUF
    per = 65536 + RECVBUF
    avail = mem_available()
    fits = [n for n in sizes if avail is None or n * per < 0.6 * avail]
    for n in sizes:
        if n not in fits:
            print("skipping N=%d: the child receive buffers (mux and leaves) would take "
                  "%.1f GiB of %.1f GiB available (try --child-msize 8192)" % (
                      n, n * per / (1 << 30), avail / (1 << 30)))
    sizes = fits
    if not sizes:
        return
    t0 = time.perf_counter()
    leaves = Leaves(max(sizes), a.workers)
    run_simple(leaves.children(1), a)        # warm up: lazy imports, first server
    print("started %d leaves in %.2f s\n" % (max(sizes), leaves.start_s))
    hdr = ("%6s %8s %7s %9s %8s %8s %8s %8s %10s %10s %6s" % (
        "N", "compose", "root/", "cpuinfo/", "mux CPU", "leafCPU", "again", "warm",
        "RSS/child", "heap/child", "fds"))
    print("times in ms.  root/: `simple *:/ at /`, first listing of the root (contacts no "
          "child);\ncpuinfo/: `merge *:/proc at /proc`, first listing of proc/cpuinfo/ "
          "(contacts all N\nchildren: connect, Tversion, Tattach, Twalk, Tclunk), with "
          "the CPU time the mux process\nand the leaf processes used meanwhile; again: "
          "within the ttl; warm: after invalidate()")
    print(hdr, flush=True)
    rows = []
    sites_out = []
    profiles = []
    try:
        for n in sizes:
            kids = leaves.children(n)
            if a.no_gc:
                gc.collect()
                gc.disable()
            t_comp, t_att, t_root = run_simple(kids, a)
            res = run_merge(kids, a, leaves, profile=(a.profile == n))
            gc.enable()
            prof = res.pop("_profile", None)
            if prof is not None:
                profiles.append((n, prof))
            row = dict(n=n, compose_ms=t_comp * 1e3, simple_attach_ms=t_att * 1e3,
                       root_ms=t_root * 1e3, **res)
            if not a.no_tracemalloc:
                heap, sites = run_traced(kids, a)
                row["heap_per_child_B"] = heap
                row["heap_sites_per_child_B"] = sites
                sites_out.append((n, sites))
            rows.append(row)
            lc = row["cold_leaves_cpu_ms"]
            print("%6d %8.1f %7.1f %9.1f %8.0f %8s %8.1f %8.1f %10s %10s %6d" % (
                n, t_comp * 1e3, t_root * 1e3, row["cold_ms"], row["cold_mux_cpu_ms"],
                "-" if lc is None else "%.0f" % lc,
                row["again_ms"], row["warm_ms"], fmt_bytes(row["rss_per_child_B"]),
                fmt_bytes(row.get("heap_per_child_B")), row["fds"]), flush=True)
    finally:
        leaves.stop()
    if sites_out:
        print("\nheap per child by allocation site (tracemalloc, top %d):"
              % len(sites_out[0][1]))
        for n, sites in sites_out:
            print("%6d  %s" % (n, "  ".join("%s %s" % (s, fmt_bytes(b)) for s, b in sites)))
    for n, prof in profiles:
        import io
        import pstats
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
        print("\nprofile of the cold cpuinfo/ listing at N=%d (tottime; cProfile counts "
              "time spent in\nother greenlets, so times of functions that wait are "
              "inflated: indicative only):" % n)
        print("\n".join(s.getvalue().splitlines()[:45]))
    print("\ntotal %.1f s" % (time.perf_counter() - t0))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
