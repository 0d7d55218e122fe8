"""The multiplexer as a whole (issue 5), through real processes and sockets: leaf servers
are `python -m nine serve --export DIR` subprocesses, muxes are `python -m nine mux`
subprocesses, trees are `python -m nine tree` subprocesses; clients are nine.client.Client
(9P2000.L and 9P2000) and RawConn (raw 9P2000 frames).

  * the seed's three views of a global /proc (simple, merge, deep merge) over 3 leaves,
    exactly, at every level, with contents from the right leaf;
  * writes land on the owning leaf; a rename across leaves is EXDEV;
  * qid paths unique across leaves and stable;
  * a leaf killed during a merged listing and during a read: prompt errors, the listing
    goes on without it, the mux's status says why, and it comes back when restarted;
  * a bad FiNAL program stops `nine mux` before it serves, naming the line;
  * `nine tree`: 8 leaves / fanout 4, and a 3-level tree from a topology file with FiNAL
    rules at each level.

Every process is started in a session of its own and its whole process group is killed
at the end of the test that started it.
"""

import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

import gevent
import pytest

import nine.protocol as P
from conftest import ROOT, RawConn, free_port
from nine.client import Client
from nine.netwait import ServerExited, wait_port

SERVERS = ("serverA", "serverB", "serverC")
PIDS = {"serverA": "100", "serverB": "200", "serverC": "300"}   # one pid dir per server
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

SIMPLE = "simple *:/proc at /proc\n"
MERGE = "merge *:/proc at /proc\n"
DEEP = "deepmerge *:/proc at /proc\n"


# --- processes --------------------------------------------------------------------------

class Proc:
    """`python -m nine ARGS` in a session (process group) of its own: stop() kills the
    group, so whatever it started goes too."""

    def __init__(self, args, addr=None, stdout=subprocess.DEVNULL):
        self.args = list(args)
        self.addr = addr
        self.port = int(addr.rpartition(":")[2]) if addr else None
        self.err = tempfile.TemporaryFile()     # not a pipe: it never fills up
        self.proc = subprocess.Popen([sys.executable, "-m", "nine"] + self.args, env=ENV,
                                     stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=self.err, start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout=60):
        try:
            wait_port(self.port, timeout, proc=self.proc)
        except (ServerExited, TimeoutError) as e:
            raise RuntimeError("nine %s: %s: %s" % (" ".join(self.args), e, self.stderr())) from None
        return self

    def stderr(self):
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        """Signal the process alone (not its group)."""
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def reap(self, timeout=5):
        """Wait for the process to end, without blocking the gevent hub."""
        t0 = time.time()
        while self.proc.poll() is None:
            if time.time() - t0 > timeout:
                raise RuntimeError("pid %d still running" % self.pid)
            gevent.sleep(0.01)
        return self.proc.returncode

    def stop(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.close()


class Procs:
    """Every process a test starts; stop_all() (a finalizer) kills them all."""

    def __init__(self):
        self.procs = []

    def start(self, args, addr=None, **kw):
        p = Proc(args, addr, **kw)
        self.procs.append(p)
        return p

    def leaf(self, export, addr=None):
        addr = addr or "127.0.0.1:%d" % free_port()
        p = self.start(["serve", "--listen", addr, "-q", "--export", str(export)], addr)
        p.export = export
        return p

    def mux(self, children, final_text=None, child_aname=""):
        addr = "127.0.0.1:%d" % free_port()
        args = ["mux", "--listen", addr, "-q", "--child-aname", child_aname]
        if final_text is not None:
            args += ["--final-text", final_text]
        for name, leaf in children:
            args += ["--child", "%s=%s" % (name, leaf.addr)]
        return self.start(args, addr)

    def stop_all(self):
        for p in self.procs:
            p.stop()
        self.procs = []


@pytest.fixture
def procs():
    ps = Procs()
    yield ps
    ps.stop_all()


@pytest.fixture(scope="module")
def mprocs():
    ps = Procs()
    yield ps
    ps.stop_all()


def ready(*ps):
    for p in ps:
        p.wait_ready()
    return ps


# --- leaf exports: a small /proc-like tree per server -------------------------------------

def content(server, rel):
    return ("%s of %s\n" % (rel, server)).encode()


def make_export(root, server):
    """DIR/proc/{cpuinfo, 1/cmdline, 4/stat, PID/cmdline} with PID one per server."""
    proc = root / server / "proc"
    for rel in ("cpuinfo", "1/cmdline", "4/stat", PIDS[server] + "/cmdline"):
        f = proc / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(content(server, rel))
    return root / server


def start_leaves(ps, root):
    leaves = {s: ps.leaf(make_export(root, s)) for s in SERVERS}
    ready(*leaves.values())
    return leaves


# --- client helpers ---------------------------------------------------------------------

def client(addr, aname="", version=P.V9P2000L):
    return Client(addr, aname=aname, uname="root", n_uname=0, version=version)


def raw_dirread(port, path, aname=""):
    """{name: Stat} of directory path, read with plain 9P2000 frames (Topen, Tread of
    stat entries in several small batches)."""
    c = RawConn(port, dialect=P.V9P2000)
    try:
        r = c.version(msize=8192)
        assert r.version == P.V9P2000
        r = c.rpc(P.Tattach(fid=0, afid=P.NOFID, uname="root", aname=aname, n_uname=0, tag=1))
        assert isinstance(r, P.Rattach), r
        names = [p for p in path.split("/") if p]
        r = c.rpc(P.Twalk(fid=0, newfid=1, wnames=names, tag=2))
        assert isinstance(r, P.Rwalk) and len(r.wqids) == len(names), r
        r = c.rpc(P.Topen(fid=1, mode=P.OREAD, tag=3))
        assert isinstance(r, P.Ropen) and r.qid.type & P.QTDIR, r
        out = {}
        off = 0
        while True:
            r = c.rpc(P.Tread(fid=1, offset=off, count=120, tag=4))   # a few entries each
            assert isinstance(r, P.Rread), r
            if not r.data:
                break
            for st in P.unpack_stats(r.data, P.V9P2000):
                assert st.name not in out, "%s listed twice in %s" % (st.name, path)
                out[st.name] = st
            off += len(r.data)
        c.rpc(P.Tclunk(fid=1, tag=5))
        return out
    finally:
        c.close()


def raw_read(port, path, aname=""):
    c = RawConn(port, dialect=P.V9P2000)
    try:
        c.version(msize=8192)
        c.rpc(P.Tattach(fid=0, afid=P.NOFID, uname="root", aname=aname, n_uname=0, tag=1))
        names = [p for p in path.split("/") if p]
        r = c.rpc(P.Twalk(fid=0, newfid=1, wnames=names, tag=2))
        assert isinstance(r, P.Rwalk) and len(r.wqids) == len(names), r
        assert isinstance(c.rpc(P.Topen(fid=1, mode=P.OREAD, tag=3)), P.Ropen)
        r = c.rpc(P.Tread(fid=1, offset=0, count=4096, tag=4))
        assert isinstance(r, P.Rread), r
        return r.data
    finally:
        c.close()


def wait_for(pred, timeout, what, step=0.05):
    t0 = time.time()
    last = None
    while time.time() - t0 < timeout:
        try:
            last = pred()
            if last:
                return time.time() - t0
        except OSError as e:
            last = e
        gevent.sleep(step)
    raise AssertionError("%s: not within %.1fs (last: %r)" % (what, timeout, last))


# --- 1. the seed's three views ---------------------------------------------------------------

def _files(view):
    """{virtual path: (server, path in the leaf)} of every leaf file in a view."""
    out = {}
    for s in SERVERS:
        for rel in ("cpuinfo", "1/cmdline", "4/stat", PIDS[s] + "/cmdline"):
            d, _, f = rel.rpartition("/")
            if view == "simple":
                vp = "proc/%s/%s" % (s, rel)
            elif view == "merge":
                vp = "proc/%s/%s/%s" % (d, s, f) if d else "proc/%s/%s" % (f, s)
            else:
                vp = "proc/%s/%s" % (rel, s)
            out[vp] = (s, rel)
    return out


def _listings(view):
    """{virtual directory: exact listing} of a view (the seed's pictures)."""
    allpids = ["1", "4"] + [PIDS[s] for s in SERVERS]
    top = sorted(allpids + ["cpuinfo"])
    L = {"": ["groups", "proc"]}      # groups/: the mux's group service
    if view == "simple":
        L["proc"] = list(SERVERS)
        for s in SERVERS:
            L["proc/" + s] = sorted(["1", "4", PIDS[s], "cpuinfo"])
            L["proc/%s/1" % s] = ["cmdline"]
            L["proc/%s/4" % s] = ["stat"]
            L["proc/%s/%s" % (s, PIDS[s])] = ["cmdline"]
    elif view == "merge":
        L["proc"] = top
        for name in ("cpuinfo", "1", "4"):
            L["proc/" + name] = list(SERVERS)
        for s in SERVERS:
            L["proc/%s" % PIDS[s]] = [s]
            L["proc/%s/%s" % (PIDS[s], s)] = ["cmdline"]
            L["proc/1/" + s] = ["cmdline"]
            L["proc/4/" + s] = ["stat"]
    else:
        L["proc"] = top
        L["proc/cpuinfo"] = list(SERVERS)
        L["proc/1"] = ["cmdline"]
        L["proc/1/cmdline"] = list(SERVERS)
        L["proc/4"] = ["stat"]
        L["proc/4/stat"] = list(SERVERS)
        for s in SERVERS:
            L["proc/%s" % PIDS[s]] = ["cmdline"]
            L["proc/%s/cmdline" % PIDS[s]] = [s]
    return L


@pytest.fixture(scope="module")
def views(mprocs, tmp_path_factory):
    """3 leaves and 3 muxes over them, one per view of the seed."""
    leaves = start_leaves(mprocs, tmp_path_factory.mktemp("views"))
    kids = [(s, leaves[s]) for s in SERVERS]
    muxes = {"simple": mprocs.mux(kids, SIMPLE), "merge": mprocs.mux(kids, MERGE),
             "deepmerge": mprocs.mux(kids, DEEP)}
    ready(*muxes.values())
    return leaves, muxes


@pytest.mark.parametrize("view", ["simple", "merge", "deepmerge"])
def test_seed_views_exact_over_9p2000L(views, view):
    leaves, muxes = views
    c = client(muxes[view].addr)
    try:
        for d, want in _listings(view).items():
            got = c.listdir(d)
            # per-server entries come in the children's order; other names in any order
            if set(want) <= set(SERVERS):
                assert got == want, (view, d)
            else:
                assert sorted(got) == sorted(want), (view, d)
        files = _files(view)
        for vp, (s, rel) in files.items():
            assert c.read_file(vp) == content(s, rel), vp
            assert c.read_file(vp) == (leaves[s].export / "proc" / rel).read_bytes()
            st = c.stat(vp)
            assert stat.S_ISREG(st.st_mode) and st.st_size == len(content(s, rel)), vp
        # every directory of the listings is a directory, every leaf file a file
        for d in _listings(view):
            assert stat.S_ISDIR(c.stat(d).st_mode), d
            for e in c.readdir(d):
                p = (d + "/" + e.name).lstrip("/")
                assert e.is_dir() == (p not in files), p
        with pytest.raises(FileNotFoundError):
            c.stat("proc/nosuch")
        with pytest.raises(FileNotFoundError):
            c.stat("proc/1/serverQ" if view != "simple" else "proc/serverQ/1")
    finally:
        c.close()


@pytest.mark.parametrize("view", ["simple", "merge", "deepmerge"])
def test_seed_views_exact_over_9p2000(views, view):
    leaves, muxes = views
    m = muxes[view]
    files = _files(view)
    c = client(m.addr, version=P.V9P2000)
    try:
        assert c.dialect == P.V9P2000
        for d, want in _listings(view).items():
            ents = c.readdir(d)
            assert sorted(e.name for e in ents) == sorted(want), (view, d)
            for e in ents:
                p = (d + "/" + e.name).lstrip("/")
                assert e.stat is not None and e.stat.name == e.name
                assert stat.S_ISDIR(e.stat.st_mode) == (p not in files), p
        for vp, (s, rel) in files.items():
            assert c.read_file(vp) == content(s, rel), vp
    finally:
        c.close()
    # raw frames: stat entries of a directory read in small batches, none lost or repeated
    for d, want in _listings(view).items():
        got = raw_dirread(m.port, d)
        assert sorted(got) == sorted(want), (view, d)
        for name, st in got.items():
            p = (d + "/" + name).lstrip("/")
            isdir = p not in files
            assert bool(st.mode & P.DMDIR) == isdir and bool(st.qid.type & P.QTDIR) == isdir
            if not isdir:
                s, rel = files[p]
                assert st.length == len(content(s, rel))
    vp, (s, rel) = sorted(files.items())[0]
    assert raw_read(m.port, vp) == content(s, rel)


def test_aname_attaches_inside_the_merged_name_space(views):
    leaves, muxes = views
    c = client(muxes["deepmerge"].addr, aname="proc/1")
    try:
        assert c.listdir() == ["cmdline"]
        assert c.listdir("cmdline") == list(SERVERS)
        assert c.read_file("cmdline/serverC") == content("serverC", "1/cmdline")
    finally:
        c.close()
    c = client(muxes["simple"].addr, aname="proc/serverB")
    try:
        assert sorted(c.listdir()) == sorted(["1", "4", "200", "cpuinfo"])
        assert c.read_file("cpuinfo") == content("serverB", "cpuinfo")
    finally:
        c.close()
    assert sorted(raw_dirread(muxes["merge"].port, "", aname="proc")) == \
        sorted(_listings("merge")["proc"])
    with pytest.raises(FileNotFoundError):
        client(muxes["merge"].addr, aname="proc/nosuch")
    # the mux's own files
    c = client(muxes["merge"].addr, aname="mux")
    try:
        assert c.read_file("final").decode() == MERGE
        kids = c.read_file("children").decode().splitlines()
        assert kids == ["%s %s" % (s, leaves[s].addr) for s in SERVERS]
        lines = c.read_file("status").decode().splitlines()
        assert [ln.split()[0] for ln in lines] == list(SERVERS)
        assert all(ln.split()[2] == "up" for ln in lines), lines
    finally:
        c.close()


# --- 3. qids -------------------------------------------------------------------------------

def test_qids_unique_across_leaves_and_stable(procs, tmp_path):
    # two leaves exporting the SAME directory: the same inode numbers in both
    exp = make_export(tmp_path, "serverA")
    a, b = ready(procs.leaf(exp), procs.leaf(exp))
    prog = ("simple *:/proc at /simple\nmerge *:/proc at /merge\n"
            "deepmerge *:/proc at /deep\n")
    m, = ready(procs.mux([("a", a), ("b", b)], prog))
    rels = ["cpuinfo", "1", "1/cmdline", "4", "4/stat", "100", "100/cmdline"]
    da, db = client(a.addr), client(b.addr)
    direct = {r: da.stat("proc/" + r).qid.path for r in rels}
    assert {r: db.stat("proc/" + r).qid.path for r in rels} == direct
    assert len(set(direct.values())) == len(rels)
    da.close()
    db.close()

    c = client(m.addr)
    seen = {}
    for leaf in ("a", "b"):
        for r in rels:
            seen[(leaf, r)] = c.stat("simple/%s/%s" % (leaf, r)).qid.path
    assert len(set(seen.values())) == 2 * len(rels), seen      # no collision at all
    # the same leaf file is one qid wherever the views show it, and every time
    for _ in range(3):
        for leaf in ("a", "b"):
            assert c.stat("simple/%s/cpuinfo" % leaf).qid.path == seen[(leaf, "cpuinfo")]
            assert c.stat("merge/cpuinfo/%s" % leaf).qid.path == seen[(leaf, "cpuinfo")]
            assert c.stat("deep/cpuinfo/%s" % leaf).qid.path == seen[(leaf, "cpuinfo")]
            assert c.stat("merge/1/%s/cmdline" % leaf).qid.path == seen[(leaf, "1/cmdline")]
            assert c.stat("deep/1/cmdline/%s" % leaf).qid.path == seen[(leaf, "1/cmdline")]
            assert c.stat("merge/1/%s" % leaf).qid.path == seen[(leaf, "1")]
    ents = {e.name: e.qid.path for e in c.readdir("merge/cpuinfo")}
    assert ents == {"a": seen[("a", "cpuinfo")], "b": seen[("b", "cpuinfo")]}
    # directories the mux makes have qids of their own, distinct and stable
    made = ["", "simple", "merge", "deep", "merge/cpuinfo", "merge/1", "deep/1",
            "deep/1/cmdline", "simple/a"]
    mq = {p: c.stat(p).qid.path for p in made}
    assert len(set(mq.values())) == len(made)
    assert not set(mq.values()) & set(seen.values())
    c.close()
    # a second connection, and a 9P2000 one, see the same qids
    c2 = client(m.addr, version=P.V9P2000)
    assert c2.stat("deep/4/stat/b").qid.path == seen[("b", "4/stat")]
    assert {p: c2.stat(p).qid.path for p in made} == mq
    c2.close()
    raw = raw_dirread(m.port, "merge/100")
    assert {n: st.qid.path for n, st in raw.items()} == {"a": seen[("a", "100")],
                                                         "b": seen[("b", "100")]}


# --- 2. writes land on the owning leaf ---------------------------------------------------------

def _errno(fn):
    try:
        fn()
    except OSError as e:
        return e.errno
    return None


def test_writes_land_on_the_owning_leaf(procs, tmp_path):
    leaves = start_leaves(procs, tmp_path)
    kids = [(s, leaves[s]) for s in SERVERS]
    prog = "merge *:/proc at /proc\nsimple *:/proc at /srv\ndeepmerge *:/proc at /deep\n"
    m, = ready(procs.mux(kids, prog))
    exp = {s: leaves[s].export / "proc" for s in SERVERS}
    c = client(m.addr)
    try:
        # overwrite existing files, through each view
        c.write_file("proc/cpuinfo/serverB", b"new cpuinfo of B\n")
        assert (exp["serverB"] / "cpuinfo").read_bytes() == b"new cpuinfo of B\n"
        c.write_file("srv/serverC/4/stat", b"C stat\n")
        assert (exp["serverC"] / "4" / "stat").read_bytes() == b"C stat\n"
        c.write_file("deep/1/cmdline/serverA", b"A cmdline\n")
        assert (exp["serverA"] / "1" / "cmdline").read_bytes() == b"A cmdline\n"
        for s, rel in (("serverA", "cpuinfo"), ("serverC", "cpuinfo"), ("serverB", "4/stat")):
            assert (exp[s] / rel).read_bytes() == content(s, rel)     # untouched
        # create: a new file in a leaf's directory
        c.write_file("proc/1/serverB/environ", b"B=1\n")
        assert (exp["serverB"] / "1" / "environ").read_bytes() == b"B=1\n"
        assert not (exp["serverA"] / "1" / "environ").exists()
        assert not (exp["serverC"] / "1" / "environ").exists()
        assert sorted(c.listdir("proc/1/serverB")) == ["cmdline", "environ"]
        # ... and the deep merge shows it at once (creates drop the listing cache)
        assert c.listdir("deep/1/environ") == ["serverB"]
        assert c.read_file("deep/1/environ/serverB") == b"B=1\n"
        # mkdir, then a file in it
        c.mkdir("srv/serverC/4/task")
        assert (exp["serverC"] / "4" / "task").is_dir()
        c.write_file("srv/serverC/4/task/4", b"thread\n")
        assert (exp["serverC"] / "4" / "task" / "4").read_bytes() == b"thread\n"
        assert sorted(c.listdir("deep/4")) == ["stat", "task"]
        # rename inside one leaf
        c.rename("proc/1/serverB/environ", "proc/4/serverB/environ")
        assert not (exp["serverB"] / "1" / "environ").exists()
        assert (exp["serverB"] / "4" / "environ").read_bytes() == b"B=1\n"
        c.rename("srv/serverB/4/environ", "srv/serverB/environ")
        assert (exp["serverB"] / "environ").read_bytes() == b"B=1\n"
        # rename across leaves: EXDEV, nothing moves
        assert _errno(lambda: c.rename("srv/serverB/environ", "srv/serverA/environ")) == \
            errno.EXDEV
        assert _errno(lambda: c.rename("proc/cpuinfo/serverA", "proc/1/serverC/x")) == \
            errno.EXDEV
        assert (exp["serverB"] / "environ").exists()
        assert not (exp["serverA"] / "environ").exists()
        assert not (exp["serverC"] / "1" / "x").exists()
        # names the views make are not files of any leaf: no create, no rename
        assert _errno(lambda: c.write_file("proc/newfile", b"x")) == errno.EPERM
        assert _errno(lambda: c.write_file("proc/cpuinfo/serverD", b"x")) == errno.EPERM
        assert _errno(lambda: c.mkdir("deep/1/newdir")) == errno.EPERM
        assert _errno(lambda: c.rename("proc/cpuinfo", "proc/cpu")) == errno.EPERM
        # remove
        c.remove("srv/serverC/4/task/4")
        # an empty directory in a deep merge has no per-server leaves: it is the view's
        assert c.listdir("deep/4/task") == []
        assert _errno(lambda: c.remove("deep/4/task")) == errno.EPERM
        c.remove("srv/serverC/4/task")
        assert not (exp["serverC"] / "4" / "task").exists()
        assert c.listdir("deep/4") == ["stat"]
    finally:
        c.close()
    # the same through raw 9P2000.L frames: Trenameat and Trename across leaves
    r = RawConn(m.port)
    try:
        r.version()
        assert isinstance(r.attach(fid=0), P.Rattach)
        w = r.rpc(P.Twalk(fid=0, newfid=1, wnames=["srv", "serverA"], tag=2))
        assert isinstance(w, P.Rwalk) and len(w.wqids) == 2
        w = r.rpc(P.Twalk(fid=0, newfid=2, wnames=["srv", "serverB"], tag=2))
        assert isinstance(w, P.Rwalk) and len(w.wqids) == 2
        e = r.rpc(P.Trenameat(olddirfid=1, oldname="cpuinfo", newdirfid=2, newname="x", tag=3))
        assert isinstance(e, P.Rlerror) and e.ecode == errno.EXDEV, e
        w = r.rpc(P.Twalk(fid=1, newfid=3, wnames=["cpuinfo"], tag=2))
        assert isinstance(w, P.Rwalk) and len(w.wqids) == 1
        e = r.rpc(P.Trename(fid=3, dfid=2, name="x", tag=3))
        assert isinstance(e, P.Rlerror) and e.ecode == errno.EXDEV, e
        # a write through raw frames lands on serverA
        assert isinstance(r.rpc(P.Tlopen(fid=3, flags=P.L_O_RDWR, tag=4)), P.Rlopen)
        assert r.rpc(P.Twrite(fid=3, offset=0, data=b"RAW", tag=4)).count == 3
        assert (exp["serverA"] / "cpuinfo").read_bytes()[:3] == b"RAW"
        assert not (exp["serverB"] / "x").exists()
    finally:
        r.close()


# --- 4. a leaf dies during a merged listing and during a read, then comes back ----------------

def _status(addr):
    c = client(addr, aname="mux")
    try:
        return c.read_file("status").decode()
    finally:
        c.close()


def _line(status, name):
    ls = [ln for ln in status.splitlines() if ln.split()[:1] == [name]]
    assert ls, status
    return ls[0]


def test_leaf_killed_mid_listing_and_mid_read_then_restarted(procs, tmp_path):
    leaves = start_leaves(procs, tmp_path)
    kids = [(s, leaves[s]) for s in SERVERS]
    m, = ready(procs.mux(kids, "merge *:/proc at /proc\nsimple *:/proc at /srv\n"))
    B = leaves["serverB"]
    c = client(m.addr)
    try:
        assert c.listdir("proc/cpuinfo") == list(SERVERS)
        assert c.read_file("proc/cpuinfo/serverB") == content("serverB", "cpuinfo")
        f = c.walk("proc/1/serverB/cmdline")
        f.lopen(P.L_O_RDONLY)
        assert f.read(0, 100) == content("serverB", "1/cmdline")
        assert "up" in _line(_status(m.addr), "serverB").split()
        d = c.walk("srv/serverB")               # the view's own directory: B not asked
        cu = client(m.addr, version=P.V9P2000U)  # a client that gets error texts
        fu = cu.walk("srv/serverB/4/stat")
        fu.open(P.OREAD)

        # B stops answering (SIGSTOP): a listing of a merged directory nobody listed yet,
        # a read on an open file of B and a walk into B are all left hanging ...
        B.kill(signal.SIGSTOP)
        results = {}

        def timed(key, fn):
            try:
                results[key] = ("ok", fn(), time.time())
            except OSError as e:
                results[key] = ("err", e, time.time())
        gs = [gevent.spawn(timed, "list", lambda: c.listdir("proc/4")),
              gevent.spawn(timed, "read", lambda: f.read(0, 100)),
              gevent.spawn(timed, "walk", lambda: d.walk(["cpuinfo"])),
              gevent.spawn(timed, "read.u", lambda: fu.read(0, 100))]
        gevent.sleep(0.5)
        assert results == {}, results           # they are waiting for B
        # ... and B dies in the middle of them
        t_kill = time.time()
        B.kill(signal.SIGKILL)
        gevent.joinall(gs, timeout=5)
        assert set(results) == {"list", "read", "walk", "read.u"}, results
        for key, (how, val, t) in results.items():
            assert t - t_kill < 2.0, (key, t - t_kill)        # promptly, no hang
        how, val, _ = results["list"]
        assert how == "ok" and val == ["serverA", "serverC"], (
            results, _status(m.addr), {s: leaves[s].alive() for s in SERVERS})
        for key in ("read", "walk", "read.u"):
            how, e, _ = results[key]
            assert how == "err" and e.errno == errno.EHOSTDOWN, (key, results[key])
        assert "child serverB (%s) is down" % B.addr in str(results["read.u"][1])
        B.reap()

        # afterwards: B's files fail at once; the others work; listings go on without B
        for fn in (lambda: f.read(0, 100), lambda: d.walk(["1", "cmdline"]),
                   lambda: c.listdir("srv/serverB"), lambda: fu.read(0, 100)):
            t0 = time.time()
            with pytest.raises(OSError) as ei:
                fn()
            assert time.time() - t0 < 1.0
            assert ei.value.errno == errno.EHOSTDOWN, ei.value
        # a walk of several names that fails after the first one gets a partial Rwalk,
        # which carries no error: the client walks the failing name again alone and
        # reports the real reason, just as fast
        t0 = time.time()
        with pytest.raises(OSError) as ei:
            c.read_file("srv/serverB/1/cmdline")
        assert ei.value.errno == errno.EHOSTDOWN, ei.value
        assert time.time() - t0 < 1.0
        with pytest.raises(FileNotFoundError):      # merged: B holds nothing now
            c.read_file("proc/cpuinfo/serverB")
        assert c.read_file("proc/cpuinfo/serverC") == content("serverC", "cpuinfo")
        assert c.read_file("srv/serverA/1/cmdline") == content("serverA", "1/cmdline")
        wait_for(lambda: c.listdir("proc/cpuinfo") == ["serverA", "serverC"], 3,
                 "B drops out of proc/cpuinfo")
        assert "200" not in c.listdir("proc")
        assert c.listdir("proc/1") == ["serverA", "serverC"]
        # the status file says which child is down and why
        st = _status(m.addr)
        lb = _line(st, "serverB")
        assert "down" in lb.split() and B.addr in lb and "error=" in lb, st
        assert "up" in _line(st, "serverA").split() and "up" in _line(st, "serverC").split()
        assert any(ln.startswith("serverB\tfailed\tEHOSTDOWN") for ln in st.splitlines()), st

        # restart B on the same port with the same export: it comes back by itself
        B2, = ready(procs.leaf(B.export, B.addr))
        took = wait_for(lambda: c.listdir("proc/cpuinfo") == list(SERVERS), 10,
                        "B back in proc/cpuinfo")
        assert c.read_file("proc/cpuinfo/serverB") == content("serverB", "cpuinfo")
        assert c.read_file("srv/serverB/1/cmdline") == content("serverB", "1/cmdline")
        assert "200" in c.listdir("proc")
        st = _status(m.addr)
        assert "up" in _line(st, "serverB").split(), st
        assert "failed" not in st, st
        # the open fid of the dead connection stays dead, with a clear error
        with pytest.raises(OSError) as ei:
            f.read(0, 100)
        assert ei.value.errno in (errno.EIO, errno.EHOSTDOWN)
        f.clunk()
        c.write_file("srv/serverB/back", b"back\n")
        assert (B.export / "proc" / "back").read_bytes() == b"back\n"
        print("leaf back after %.2fs" % took)
        d.clunk()
        fu.clunk()
        cu.close()
    finally:
        c.close()


# --- 5. a bad FiNAL program stops nine mux before it serves -------------------------------------

BAD_PROGRAMS = [
    # (program, line number, words of the reason)
    ("merge *:/proc at /proc\nfrobnicate /x\n", 2, "unknown operator 'frobnicate'"),
    ("# a comment\n\nsimple *:/proc at /srv\ninsert serverA:/etc /config\n", 4,
     "expected 'at'"),
    ("merge serverQ:/proc at /proc\n", 1, "unknown child 'serverQ'"),
    ("remove /proc/[abc\n", 1, "bad pattern"),
    ("merge *:/proc at /proc\nsimple *:/proc at /proc\n", 2, "conflicting targets"),
]


@pytest.mark.parametrize("prog,lineno,reason", BAD_PROGRAMS,
                         ids=["operator", "keyword", "child", "pattern", "targets"])
def test_bad_final_program_refused_before_serving(tmp_path, prog, lineno, reason):
    port = free_port()
    # children that do not exist: the program is refused before anyone is contacted
    base = [sys.executable, "-m", "nine", "mux", "--listen", "127.0.0.1:%d" % port,
            "--child", "serverA=127.0.0.1:1", "--child", "serverB=127.0.0.1:2"]
    t0 = time.time()
    r = subprocess.run(base + ["--final-text", prog], env=ENV, capture_output=True,
                       timeout=30)
    assert r.returncode not in (0, None)
    err = r.stderr.decode()
    assert "line %d: " % lineno in err and reason in err, err
    assert "Traceback" not in err
    # the same from a file: the message names the file and the line
    fn = tmp_path / "bad.final"
    fn.write_text(prog)
    r = subprocess.run(base + ["--final", str(fn)], env=ENV, capture_output=True, timeout=30)
    assert r.returncode not in (0, None)
    err = r.stderr.decode()
    assert "%s: line %d: " % (fn, lineno) in err and reason in err, err
    assert time.time() - t0 < 20
    with pytest.raises(OSError):        # it never listened
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_bad_final_program_of_a_tree(tmp_path):
    # the root's rules on the command line
    r = subprocess.run([sys.executable, "-m", "nine", "tree", "--leaves", "2", "--fanout",
                        "2", "--listen", "127.0.0.1:%d" % free_port(), "--final-text",
                        "simple *:/ at /nodes\nmerge node*:/proc at\n"],
                       env=ENV, capture_output=True, timeout=60)
    assert r.returncode not in (0, None)
    assert "line 2: " in r.stderr.decode(), r.stderr.decode()
    # the rules of a level of muxes in a topology file: refused before anything starts
    (tmp_path / "leaf.final").write_text("simple *:/ at /nodes\n\nfrob /x\n")
    topo = tmp_path / "t.ini"
    topo.write_text("[tree]\nfanout = 2\nfinal-leaf-mux = leaf.final\n[leaves]\n"
                    "node1 = local\nnode2 = local\nnode3 = local\n")
    p = subprocess.Popen([sys.executable, "-m", "nine", "tree", "--topology", str(topo),
                          "--listen", "127.0.0.1:%d" % free_port()], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=60)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert p.returncode not in (0, None)
    err = err.decode()
    assert "leaf.final" in err and "line 3: unknown operator 'frob'" in err, err


# --- 6. nine tree ------------------------------------------------------------------------------

def group_members(pgid):
    """Live (not zombie) processes of process group pgid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(d))
    return out


def read_lines(proc, n, timeout=30):
    """The first n lines of proc's stdout (a pipe), without hanging."""
    import select
    buf = b""
    t0 = time.time()
    fd = proc.stdout.fileno()
    while buf.count(b"\n") < n and time.time() - t0 < timeout:
        poll = select.poll()                 # select() cannot watch fds >= 1024
        poll.register(fd, select.POLLIN)
        if poll.poll(200):
            d = os.read(fd, 65536)
            if not d:
                break
            buf += d
    return buf.decode().splitlines()


def start_tree(ps, args, listen):
    t = ps.start(["tree", "--listen", listen] + args, listen, stdout=subprocess.PIPE)
    t.wait_ready(90)
    t.out = read_lines(t.proc, 2)
    return t


def parse_kv(text):
    out = {}
    for ln in text.splitlines():
        k, v = ln.split()
        out[k] = float(v)
    return out


def check_stops_with_everything(t, sig):
    """Signal the tree process alone: it and every leaf and mux it started must end."""
    members = group_members(t.pid)
    assert t.pid in members and len(members) > 1, members
    t.kill(sig)
    t0 = time.time()
    while group_members(t.pid) and time.time() - t0 < 15:
        time.sleep(0.05)
    left = group_members(t.pid)
    assert not left, "still running after %s: %s" % (sig, left)
    return t.proc.wait(5)


def test_tree_8_leaves_fanout_4(procs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    listen = "127.0.0.1:%d" % free_port()
    t0 = time.time()
    t = start_tree(procs, ["--leaves", "8", "--fanout", "4", "--leaf-export", str(data)],
                   listen)
    started = time.time() - t0
    assert t.out[0] == "nine tree: 8 leaves, 2 levels of muxes, root on %s" % listen, t.out
    assert t.out[1].startswith("leaves:") and t.out[1].count("=127.0.0.1:") == 8, t.out
    nodes = ["node%d" % i for i in range(1, 9)]
    c = client(listen)
    try:
        assert sorted(c.listdir()) == ["groups", "host", "nodes", "proc"]
        assert sorted(c.listdir("nodes")) == nodes
        assert sorted(c.listdir("nodes/node6")) == ["exec", "exports", "filectl", "files", "host",
                                                     "proc", "unpack"]
        load = parse_kv(c.read_file("host/load/node5").decode())
        assert sorted(load) == ["load1", "load15", "load5"]
        assert all(v >= 0 for v in load.values())
        assert sorted(c.listdir("host/load")) == nodes
        # pid 1 exists on every leaf (they share this host)
        assert sorted(c.listdir("proc/1")) == nodes
        assert c.listdir("proc/1/node7") == c.listdir("nodes/node7/proc/1")
        assert str(os.getpid()) in c.listdir("proc")
        assert sorted(c.listdir("proc/%d" % os.getpid())) == nodes
        # a file written through the root lands on node3's export, nowhere else
        c.write_file("nodes/node3/files/from-root.txt", b"written at the root\n")
        assert (data / "node3" / "from-root.txt").read_bytes() == b"written at the root\n"
        c.mkdir("nodes/node3/files/sub")
        c.write_file("nodes/node3/files/sub/deeper", b"deeper\n")
        c.rename("nodes/node3/files/sub/deeper", "nodes/node3/files/moved")
        assert (data / "node3" / "moved").read_bytes() == b"deeper\n"
        assert not (data / "node3" / "sub" / "deeper").exists()
        for n in nodes:
            if n != "node3":
                assert os.listdir(data / n) == [], n
        assert sorted(c.listdir("nodes/node3/files")) == ["from-root.txt", "moved", "sub"]
        assert c.read_file("nodes/node3/files/moved") == b"deeper\n"
        # ... and a file put on a leaf's export shows through the root
        (data / "node8" / "local.txt").write_bytes(b"on node8\n")
        assert c.read_file("nodes/node8/files/local.txt") == b"on node8\n"
        # across leaves: EXDEV
        assert _errno(lambda: c.rename("nodes/node3/files/moved",
                                       "nodes/node5/files/moved")) == errno.EXDEV
        # the root's status: its two children (the muxes) are up
        st = _status(listen)
        assert [ln.split()[0] for ln in st.splitlines()] == ["mux1-0", "mux1-1"], st
        assert all(ln.split()[2] == "up" for ln in st.splitlines()), st
    finally:
        c.close()
    # SIGTERM to `nine tree` alone stops every leaf and mux it started
    check_stops_with_everything(t, signal.SIGTERM)
    print("8-leaf tree up in %.2fs" % started)


TOPOLOGY = """\
[tree]
listen = {listen}
fanout = 2
leaf-args = --proc --host --exec
leaf-export = data            # node NAME exports data/NAME as files/
final-leaf-mux = leaf.final
final-mid = mid.final
final-root = root.final

[leaves]
node1 = local
node2 = local
node3 = local
node4 = local
node5 = local:{special}
"""

# the muxes over the leaves: one directory per leaf, the seed's merge view of proc and
# host, and the leaves' exported files by leaf under /data
LEAF_FINAL = """\
simple *:/ at /nodes
merge *:/proc at /proc
merge *:/host at /host
simple *:/files at /data
"""
# the middle level: a recursive union of its children, without the leaves' exec trees
MID_FINAL = """\
insert *:/ at /
remove /nodes/*/exec
"""
# the root: the union of its children, load averages moved to the top
ROOT_FINAL = """\
insert mux2-*:/ at /
move /host/load to /load
"""


def test_tree_three_levels_from_topology_file(procs, tmp_path):
    listen = "127.0.0.1:%d" % free_port()
    special = tmp_path / "special"
    special.mkdir()
    (special / "only-on-5").write_bytes(b"node5's own directory\n")
    (tmp_path / "leaf.final").write_text(LEAF_FINAL)
    (tmp_path / "mid.final").write_text(MID_FINAL)
    (tmp_path / "root.final").write_text(ROOT_FINAL)
    topo = tmp_path / "tree.ini"
    topo.write_text(TOPOLOGY.format(listen="127.0.0.1:1", special=special))
    data = tmp_path / "data"
    t0 = time.time()
    t = start_tree(procs, ["--topology", str(topo)], listen)   # --listen overrides
    started = time.time() - t0
    head = t.out[0]
    assert head.startswith("nine tree: 5 leaves, ") and head.endswith(" root on " + listen)
    levels = int(head.split(", ")[1].split()[0])
    assert levels >= 3, t.out           # 5 leaves -> 3 muxes -> 2 muxes -> the root
    nodes = ["node%d" % i for i in range(1, 6)]
    c = client(listen)
    try:
        assert sorted(c.listdir()) == ["data", "groups", "host", "load", "nodes", "proc"]
        assert sorted(c.listdir("nodes")) == nodes
        # the middle level removed exec, the root moved load
        for n in nodes:
            assert sorted(c.listdir("nodes/" + n)) == ["exports", "filectl", "files", "host",
                                                      "proc", "unpack"], n
        assert "load" not in c.listdir("host") and "cpu" in c.listdir("host")
        assert sorted(c.listdir("load")) == nodes
        load = parse_kv(c.read_file("load/node5").decode())
        assert sorted(load) == ["load1", "load15", "load5"]
        assert sorted(c.listdir("proc/1")) == nodes
        assert sorted(c.listdir("host/hostname")) == nodes
        assert c.read_file("host/hostname/node2").decode().startswith("hostname ")
        # files, through the leaf muxes' /data and through /nodes
        assert sorted(c.listdir("data")) == nodes
        assert c.listdir("data/node5") == ["only-on-5"]
        assert c.read_file("nodes/node5/files/only-on-5") == b"node5's own directory\n"
        c.write_file("data/node3/via-data", b"3 via /data\n")
        assert (data / "node3" / "via-data").read_bytes() == b"3 via /data\n"
        c.write_file("nodes/node4/files/via-nodes", b"4 via /nodes\n")
        assert (data / "node4" / "via-nodes").read_bytes() == b"4 via /nodes\n"
        c.write_file("data/node5/new", b"5\n")
        assert (special / "new").read_bytes() == b"5\n"
        assert not (data / "node5").exists()
        for n in ("node1", "node2"):
            assert os.listdir(data / n) == []
        assert c.read_file("nodes/node3/files/via-data") == b"3 via /data\n"
        assert _errno(lambda: c.rename("data/node3/via-data", "data/node4/x")) == errno.EXDEV
        st = _status(listen)
        assert [ln.split()[0] for ln in st.splitlines()] == ["mux2-0", "mux2-1"], st
    finally:
        c.close()
    c = client(listen, aname="mux")
    assert c.read_file("final").decode() == ROOT_FINAL
    c.close()
    # an interrupt stops the tree and everything it started, and it exits cleanly
    assert check_stops_with_everything(t, signal.SIGINT) == 0
    print("3-level tree up in %.2fs" % started)


def test_leaf_down_at_attach_joins_that_attach_when_it_starts(procs, tmp_path):
    """An upper mux's root is a recursive union of its children ("insert *:/ at /").  A
    long-lived attach (a kernel mount, a monitor) made while one leaf is down sees that
    leaf's files once it starts, without attaching again."""
    exports = {s: make_export(tmp_path, s) for s in SERVERS}
    late = SERVERS[-1]
    late_addr = "127.0.0.1:%d" % free_port()
    up = {s: procs.leaf(exports[s]) for s in SERVERS if s != late}
    ready(*up.values())

    class Pending:
        addr = late_addr
    kids = [(s, up.get(s, Pending)) for s in SERVERS]
    m, = ready(procs.mux(kids, "insert *:/ at /\n"))
    c = client(m.addr)
    try:
        pid = PIDS[late]
        assert pid not in c.listdir("proc")
        ready(procs.leaf(exports[late], late_addr))
        wait_for(lambda: pid in c.listdir("proc"), 30, "the late leaf in the same attach")
        assert c.read_file("proc/%s/cmdline" % pid) == content(late, pid + "/cmdline")
        for s in SERVERS[:-1]:
            assert PIDS[s] in c.listdir("proc")
    finally:
        c.close()
