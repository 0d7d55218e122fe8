"""Group file operations (nine.group.service, nine.client.group) through real trees.

The trees here are real 9P servers and muxes on loopback sockets, built in one thread
with its own gevent hub (InThread), with synthetic leaf files the tests control: values
in classes, a file whose read never returns, growing logs, a ctl file that records what
is written.  The debugger test runs examples/debugger.py: real leaf processes
(`nine serve --proc`) tracing real processes with ptrace.
"""

import errno
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time

import gevent
import pytest

from nine.client import Client, NineError
from nine.netwait import scaled
from nine.group import aggregate as A

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class InThread:
    """Run build() in a thread with its own gevent hub and keep that hub running until
    stop(): servers and muxes made there serve while the test talks to them."""

    def __init__(self, build):
        self._ready = threading.Event()
        self.value = None
        self.error = None
        self.t = threading.Thread(target=self._run, args=(build,), daemon=True)
        self.t.start()
        assert self._ready.wait(60), "the servers did not start"
        if self.error is not None:
            raise self.error

    def _run(self, build):
        import gevent.event
        try:
            self.value = build()
        except BaseException as e:
            self.error = e
            self._ready.set()
            return
        self._stop = gevent.event.Event()
        loop = gevent.get_hub().loop
        self._async = loop.async_()
        self._async.start(self._stop.set)
        self._calls = []
        self._callw = loop.async_()
        self._callw.start(self._drain)
        self._ready.set()
        self._stop.wait()
        try:
            _close(self.value)      # every socket of this world, so that no fd leaks
        finally:
            gevent.get_hub().destroy(destroy_loop=True)

    def _drain(self):
        calls, self._calls = self._calls, []
        for fn, done in calls:
            def run(fn=fn, done=done):
                try:
                    fn()
                finally:
                    done.set()
            gevent.spawn(run)

    def call(self, fn):
        """Run fn() in the servers' thread (e.g. to stop one) and wait for it."""
        done = threading.Event()
        self._calls.append((fn, done))
        self._callw.send()
        assert done.wait(10)

    def stop(self):
        self._async.send()
        self.t.join(10)


def _close(v):
    if isinstance(v, dict):
        for x in v.values():
            _close(x)
    elif isinstance(v, (list, tuple)):
        for x in v:
            _close(x)
    elif hasattr(v, "stop") and hasattr(v, "conns"):      # a Server
        v.stop()
    elif hasattr(v, "children") and hasattr(v, "server"):  # a Mux
        v.close()


def _leaf(files, groups=True):
    from nine.group.service import install
    from nine.server.core import Server
    from nine.synth.files import Dir, SynthFS
    srv = Server({None: SynthFS(Dir("", files)).attach})
    if groups:
        install(srv)
    s = srv.listen("127.0.0.1:0")
    return srv, "127.0.0.1:%d" % s.address[1]


def _mux(children, final, aname=""):
    from nine.assembly import MuxConfig, build_mux
    m = build_mux(MuxConfig(children, final_text=final, child_aname=aname))
    s = m.server.listen("127.0.0.1:0")
    return m, "127.0.0.1:%d" % s.address[1]


def build_tree(leaf_files, fanout=4, groups=True):
    """leaf_files: {leaf name: [File, ...]}.  Leaves under muxes of `fanout` (view
    /nodes/LEAF/...), those under a root (a recursive union).  Returns a dict."""
    leaves = {}
    for name, files in leaf_files.items():
        leaves[name] = _leaf(files, groups)
    names = list(leaves)
    mids = []
    for i in range(0, len(names), fanout):
        kids = [(n, leaves[n][1]) for n in names[i:i + fanout]]
        mids.append(("mux%d" % (i // fanout),) + _mux(kids, "simple *:/ at /nodes\n"))
    root, raddr = _mux([(n, a) for n, _, a in mids], "insert *:/ at /\n")
    return {"leaves": leaves, "mids": mids, "root": root, "addr": raddr}


@pytest.fixture
def world():
    made = []

    def make(build):
        w = InThread(build)
        made.append(w)
        make.last = w
        return w.value
    yield make
    for w in made:
        w.stop()


def File(*a, **kw):
    from nine.synth.files import File as F
    return F(*a, **kw)


def value_files(i, k, n):
    """Leaf i of n in class i*k//n (contiguous classes): file v = 'value C'."""
    cls = i * k // n
    return [File("v", read=lambda ctx, c=cls: b"value %d\n" % c)]


def members(n, name="v"):
    return [("n%d" % i, "/nodes/n%d/%s" % (i, name)) for i in range(n)]


def root_children_conns(t):
    return [c.link().conn for c in t["root"].children.values()]


# --- reads, classes, one request per child ---------------------------------------------

def test_equiv_through_tree_one_request_per_child(world):
    n, k = 16, 3
    t = world(lambda: build_tree({"n%d" % i: value_files(i, k, n) for i in range(n)}))
    c = Client(t["addr"])
    g = c.gopen(None, "r", members=members(n), aggregator="equiv")
    assert g.served
    classes = g.classes()
    want = {}
    for i in range(n):
        want.setdefault(b"value %d\n" % (i * k // n), set()).add("n%d" % i)
    assert classes == want
    assert g.status == {"n%d" % i: None for i in range(n)}
    # later reads: one request per child mux of the root, none per member
    conns = root_children_conns(t)
    before = sum(x.requests for x in conns)
    for _ in range(3):
        assert g.classes() == want
    assert sum(x.requests for x in conns) - before == 3 * len(conns) == 3 * 4
    text = g.read().decode()
    assert "n[0-5] (6)" in text and "value 0" in text
    # the same group without the server's help gives the same classes
    h = c.gopen(None, "r", members=members(n), aggregator="equiv", use_server=False)
    assert not h.served and h.classes() == want
    g.close()
    h.close()
    c.close()


def test_group_open_hands_members_on_without_walking_them(world):
    """Opening a group of members under primed directories costs the root a constant
    number of requests per child (a listing, the child group's files, its add lines),
    not one walk per member; members the child cannot open are still named."""
    n = 64
    t = world(lambda: build_tree({"n%d" % i: value_files(i, 2, n) for i in range(n)},
                                 fanout=16))
    c = Client(t["addr"])
    conns = root_children_conns(t)
    sent = []
    for step in (3, 2, 1):   # a first open (links made), then 32 and 64 members
        ms = members(n)[::step]
        before = sum(x.requests for x in conns)
        g = c.gopen(None, "r", members=ms, aggregator="count")
        assert g.read().strip() == b"%d" % len(ms)
        sent.append(sum(x.requests for x in conns) - before)
        g.close()
    assert sent[2] <= 20 * len(conns) and sent[2] - sent[1] <= 2, sent
    # ghosts: a file a leaf does not have (handed on, named by the child), a leaf that
    # does not exist (walked here: not in the listing)
    ms = members(16) + [("g1", "/nodes/n3/nosuch"), ("g2", "/nodes/n40/nosuch"),
                        ("g3", "/nodes/n999/v")]
    g = c.gopen(None, "r", members=ms, aggregator="count")
    out = g.read().decode()
    assert out.splitlines()[0] == "16", out
    assert set(g.failed) == {"g1", "g2", "g3"}
    assert all("No such file" in r for r in g.failed.values()), g.failed
    g.close()
    c.close()


def test_final_rules_below_a_member_are_kept(world):
    """A root whose FiNAL program hides files below the leaves: such members are not
    handed on by path (the child would show them), they fail as hidden."""
    def build():
        n = 8
        leaves = {"n%d" % i: _leaf(value_files(i, 2, n) + [
            File("secret", read=lambda ctx: b"s\n")]) for i in range(n)}
        mids = []
        names = list(leaves)
        for j in range(0, n, 4):
            kids = [(x, leaves[x][1]) for x in names[j:j + 4]]
            mids.append(("mux%d" % (j // 4),) + _mux(kids, "simple *:/ at /nodes\n"))
        root, raddr = _mux([(x, a) for x, _, a in mids],
                           "insert *:/ at /\nremove /nodes/*/secret\n")
        return {"leaves": leaves, "mids": mids, "root": root, "addr": raddr}
    t = world(build)
    c = Client(t["addr"])
    with pytest.raises(NineError):
        c.read_file("/nodes/n1/secret")
    g = c.gopen(None, "r", members=members(8) +
                [("s%d" % i, "/nodes/n%d/secret" % i) for i in range(8)],
                aggregator="count")
    assert g.read().decode().splitlines()[0] == "8"
    assert set(g.failed) == {"s%d" % i for i in range(8)}
    g.close()
    c.close()


@pytest.mark.parametrize("k", [2, 5])
def test_root_bytes_follow_classes_not_members(world, k):
    """The bytes the root mux receives from its 4 child muxes for an equivalence-class
    read, and the bytes the client receives from the root, stay the same as the group
    grows from 8 to 256 members (k classes, member names folded into ranges), while a
    concatenation grows with the members."""
    got, front, cat = {}, {}, {}
    for n in (8, 32, 128, 256):
        t = world(lambda n=n: build_tree({"n%d" % i: value_files(i, k, n) for i in range(n)},
                                         fanout=n // 4))
        assert len(t["root"].children) == 4
        c = Client(t["addr"])
        g = c.gopen(None, "r", members=members(n), aggregator="equiv")
        assert len(g.classes()) == k
        conns = root_children_conns(t)
        b0 = sum(x.bytes_in for x in conns)
        f0 = c.conn.bytes_in
        classes = g.classes()
        got[n] = sum(x.bytes_in for x in conns) - b0
        front[n] = c.conn.bytes_in - f0
        assert len(classes) == k and sum(len(m) for m in classes.values()) == n
        g.bindaggr("read", "concat")
        b0 = sum(x.bytes_in for x in conns)
        g.read()
        cat[n] = sum(x.bytes_in for x in conns) - b0
        assert cat[n] > n * len(b"n0: value 0\n")        # every member's data came up
        g.close()
        c.close()
    for series in (got, front):
        assert max(series.values()) < 1.5 * min(series.values()), (got, front)
    # about 40 bytes per class per child: proportional to k, not to N
    assert got[256] < 4 * (60 + 60 * k), got
    assert front[256] < 80 + 60 * k, front
    assert cat[256] > 10 * got[256], (cat, got)


def test_hash_and_signature_map_on_the_leaf(world):
    """hash and signature map each member where it is read: a leaf-level mux hands
    even a single member to the leaf's group service, so the leaves send hashes and
    signatures up, not the windows they read."""
    n, size = 8, 256 * 1024
    blob = bytes(range(256)) * (size // 256)
    t = world(lambda: build_tree({"n%d" % i: [File("f", read=lambda ctx: blob)]
                                  for i in range(n)}))
    c = Client(t["addr"])
    for agg, params in (("hash", {}), ("signature", {"block": 2048, "strong": 16}),
                        ("concat", {})):
        g = c.gopen(None, "r", members=members(n, "f"), aggregator=agg, **params)
        g.read_partial(size)                  # the links to the leaves are up now
        leaf_conns = [ch.link().conn for _, m, _ in t["mids"]
                      for ch in m.children.values()]
        b0 = sum(x.bytes_in for x in leaf_conns)
        g.lseek(0)
        p = g.read_partial(size)
        moved = sum(x.bytes_in for x in leaf_conns) - b0
        g.close()
        if agg == "concat":
            assert moved > n * size, moved              # the bytes came up
            continue
        assert p.errors == {} and len(p.value) == 1, (agg, p.errors)
        assert set(next(iter(p.value.values()))) == {"n%d" % i for i in range(n)}
        assert moved < n * size // 10, (agg, moved)
    c.close()


def test_the_seeds_c_style_calls(world):
    """gfd = gopen(dir, flags); gbindaggr(gfd, OP_READ, EQUIV_CLASS_AGG); lseek; read."""
    from nine.client.group import gopen, gbindaggr, OP_READ, OP_WRITE, EQUIV_CLASS_AGG
    n = 6
    t = world(lambda: build_tree({"n%d" % i: [File("m", read=lambda ctx, i=i: b"hdr:%d\n" % (i % 2))]
                                  for i in range(n)}, fanout=3))
    c = Client(t["addr"])
    c.mkdir("/groups/m")
    for i in range(n):
        c.symlink("/nodes/n%d/m" % i, "/groups/m/n%d" % i)
    gfd = gopen(c, "/groups/m", os.O_RDONLY)
    assert gfd.read().decode().splitlines()[0] == "n0: hdr:0"      # concat by default
    assert gbindaggr(gfd, OP_READ, EQUIV_CLASS_AGG) is gfd
    gfd.lseek(4)
    assert gfd.classes(1) == {b"0": {"n0", "n2", "n4"}, b"1": {"n1", "n3", "n5"}}
    with pytest.raises(ValueError):
        gbindaggr(gfd, OP_WRITE, EQUIV_CLASS_AGG)       # writes are not aggregated
    gfd.close()
    c.close()


def test_concat_labels_and_offsets(world):
    n = 6
    t = world(lambda: build_tree({"n%d" % i: [File("f", read=lambda ctx, i=i: b"0123456789-%d\n" % i)]
                                  for i in range(n)}, fanout=3))
    c = Client(t["addr"])
    g = c.gopen(None, "r", members=members(n, "f"))
    assert g.read().decode().splitlines() == ["n%d: 0123456789-%d" % (i, i) for i in range(n)]
    g.lseek(4)
    assert g.read(3).decode().splitlines() == ["n%d: 456" % i for i in range(n)]
    assert g.offset == 7
    g.bindaggr("read", "count")
    assert g.read(2).decode().strip() == "6"
    c.close()


# --- timeouts --------------------------------------------------------------------------

def _never(ctx, off, count):
    gevent.sleep(3600)
    return b""


def test_timeout_names_the_silent_members(world):
    n = 8
    files = {"n%d" % i: value_files(i, 2, n) + [File("slow", pread=_never)] for i in range(n)}
    t = world(lambda: build_tree(files, fanout=4))
    c = Client(t["addr"])
    ms = members(n) + [("s3", "/nodes/n3/slow"), ("s6", "/nodes/n6/slow")]
    g = c.gopen(None, "r", members=ms, aggregator="equiv", sync="timeout", timeout=1.0)
    for _ in range(2):
        t0 = time.monotonic()
        classes = g.classes()
        took = time.monotonic() - t0
        assert took < 2.0, took             # never blocked past the timeout (+ slack)
        assert sum(len(v) for v in classes.values()) == n
        assert set(g.failed) == {"s3", "s6"}
        assert all("timed out" in r for r in g.failed.values()), g.failed
    # the group stays usable with the slow members removed; nothing is wedged
    g.close()
    g = c.gopen(None, "r", members=members(n), aggregator="count", sync="all")
    assert g.read().strip() == b"8"
    c.close()


def test_timeout_at_a_leaf_with_local_members(world):
    """A group made directly on a leaf server: its own members time out there."""
    def build():
        return _leaf([File("v", read=lambda ctx: b"x\n"), File("slow", pread=_never)])
    srv, addr = world(build)
    c = Client(addr)
    g = c.gopen(None, "r", members=[("a", "/v"), ("b", "/slow")], sync="timeout",
                timeout=0.5)
    t0 = time.monotonic()
    assert g.read() == b"a: x\nerrors: b: timed out after 0.5s\n"
    assert time.monotonic() - t0 < 1.5
    assert g.failed == {"b": "timed out after 0.5s"}
    c.close()


# --- writes ------------------------------------------------------------------------------

def test_writes_go_down_the_tree(world):
    n = 8
    got = {i: [] for i in range(n)}

    def files(i):
        def w(ctx, off, data, i=i):
            got[i].append((off, bytes(data)))
            return len(data)
        return [File("ctl", write=w, read=lambda ctx: b""), File("ro", read=lambda ctx: b"")]
    t = world(lambda: build_tree({"n%d" % i: files(i) for i in range(n)}))
    c = Client(t["addr"])
    ms = members(n, "ctl") + [("bad", "/nodes/n1/ro"), ("gone", "/nodes/n1/nosuch")]
    g = c.gopen(None, "w", members=ms)
    assert g.write(b"stop\n") == 5
    assert all(got[i] == [(0, b"stop\n")] for i in range(n)), got
    assert set(g.failed) == {"bad", "gone"}
    assert "Permission denied" in g.failed["bad"]
    assert "No such file" in g.failed["gone"]
    g.lseek(4096)
    g.write(b"\xcc")
    assert all(got[i][-1] == (4096, b"\xcc") for i in range(n))
    # a write larger than one message reaches every member whole, in order
    big = bytes(range(256)) * 1200                       # 300 KiB
    for i in range(n):
        got[i].clear()
    g.lseek(0)
    assert g.write(big) == len(big)
    for i in range(n):
        offs = [o for o, _ in got[i]]
        assert len(offs) > 1 and offs == sorted(offs), offs
        assert b"".join(d for _, d in got[i]) == big
    # every member failing is an error of the write itself
    g2 = c.gopen(None, "w", members=[("bad", "/nodes/n1/ro"), ("bad2", "/nodes/n2/ro")])
    with pytest.raises(OSError):
        g2.write(b"x")
    c.close()


# --- nowait: tail -f over a group --------------------------------------------------------

def test_nowait_streams_as_members_grow(world):
    n = 6
    logs = {i: bytearray(b"start %d\n" % i) for i in range(n)}

    def files(i):
        return [File("log", pread=lambda ctx, off, count, i=i: bytes(logs[i][off:off + count]),
                     blocking=False)]
    t = world(lambda: build_tree({"n%d" % i: files(i) for i in range(n)}, fanout=3))
    c = Client(t["addr"])
    g = c.gopen(None, "r", members=members(n, "log"), sync="nowait")
    lines = []
    s = g.stream(timeout=5)
    while len(lines) < n:
        lines += next(s).decode().splitlines()
    assert sorted(lines) == sorted("n%d: start %d" % (i, i) for i in range(n))
    logs[2] += b"more 2\n"
    logs[5] += b"more 5a\nmore 5b\n"
    more = []
    while len(more) < 3:
        more += next(s).decode().splitlines()
    assert sorted(more) == ["n2: more 2", "n5: more 5a", "n5: more 5b"]
    # nothing new: the stream waits, then ends at its timeout
    s2 = g.stream(timeout=0.6)
    assert list(s2) == []
    g.close()
    c.close()


def test_nowait_stream_goes_on_after_a_leaf_restarts(world):
    """tail -f over a group: a leaf that goes away is named in the stream; once it
    serves again its member is reopened and followed from where it stopped."""
    n = 4
    logs = {i: bytearray(b"start %d\n" % i) for i in range(n)}

    def files(i):
        return [File("log", pread=lambda ctx, off, count, i=i: bytes(logs[i][off:off + count]),
                     blocking=False)]
    t = world(lambda: build_tree({"n%d" % i: files(i) for i in range(n)}, fanout=2))
    c = Client(t["addr"])
    g = c.gopen(None, "r", members=members(n, "log"), sync="nowait")
    s = g.stream(timeout=20)
    lines = []
    while len(lines) < n:
        lines += next(s).decode().splitlines()
    srv, addr = t["leaves"]["n1"]
    t0 = time.monotonic()
    world.last.call(srv.stop)
    got = []
    while not any(x.startswith("errors: n1") for x in got):
        got += next(s).decode().splitlines()
    logs[1] += b"while down\n"
    world.last.call(lambda: srv.listen(addr))
    logs[1] += b"after restart\n"
    logs[3] += b"others go on\n"
    more = []
    while len(more) < 3:
        more += [x for x in next(s).decode().splitlines() if not x.startswith("errors:")]
    assert sorted(more) == ["n1: after restart", "n1: while down", "n3: others go on"]
    assert time.monotonic() - t0 < 15
    g.close()
    c.close()


def test_stream_reopens_a_member_as_soon_as_its_child_reconnects(world, monkeypatch):
    """The member of a leaf that went away is opened again when the mux's link to the
    leaf is up again (Remote.wait_up), not at the next repair interval: with that
    interval made 120 s, the leaf's lines still come within seconds of its restart."""
    import nine.group.execute as execute
    monkeypatch.setattr(execute, "REPAIR_EVERY", 120.0)
    logs = {i: bytearray(b"start %d\n" % i) for i in range(2)}

    def files(i):
        return [File("log", pread=lambda ctx, off, count, i=i: bytes(logs[i][off:off + count]),
                     blocking=False)]
    t = world(lambda: build_tree({"n%d" % i: files(i) for i in range(2)}, fanout=2))
    c = Client(t["addr"])
    g = c.gopen(None, "r", members=members(2, "log"), sync="nowait")
    s = g.stream(timeout=60)
    lines = []
    while len(lines) < 2:
        lines += next(s).decode().splitlines()
    srv, addr = t["leaves"]["n1"]
    world.last.call(srv.stop)
    got = []
    while not any(x.startswith("errors: n1") for x in got):
        got += next(s).decode().splitlines()
    logs[1] += b"while down\n"
    t0 = time.monotonic()
    world.last.call(lambda: srv.listen(addr))
    more = []
    while not more:
        more += [x for x in next(s).decode().splitlines() if not x.startswith("errors:")]
    assert more == ["n1: while down"]
    assert time.monotonic() - t0 < min(scaled(10), 60)
    g.close()
    c.close()


# --- the shell's interface: mkdir, symlinks, ctl, data ----------------------------------

def test_group_directory_interface(world):
    n = 4
    t = world(lambda: build_tree({"n%d" % i: value_files(i, 2, n) for i in range(n)}))
    c = Client(t["addr"])
    assert "groups" in c.listdir("/")
    c.mkdir("/groups/g")
    for i in range(n):
        if i % 2:
            c.symlink("../../nodes/n%d/v" % i, "/groups/g/n%d" % i)     # relative
        else:
            c.symlink("/mnt/nine/nodes/n%d/v" % i, "/groups/g/n%d" % i)  # a mount point's
    c.symlink("../../nodes/n9/v", "/groups/g/ghost")
    assert sorted(c.listdir("/groups/g")) == sorted(
        ["ctl", "data", "errors", "partial", "relay", "status", "ghost"] + ["n%d" % i for i in range(n)])
    assert c.readlink("/groups/g/n1") == "../../nodes/n1/v"
    c.write_file("/groups/g/ctl", b"agg equiv\n")
    out = c.read_file("/groups/g/data").decode()
    assert "n[0-1] (2)\n---------------\nvalue 0" in out and "n[2-3] (2)" in out
    assert "errors: ghost: open: No such file or directory" in out
    st = c.read_file("/groups/g/status").decode()
    assert "ok n[0-3]" in st and "failed ghost" in st
    assert b"agg equiv" in c.read_file("/groups/g/ctl")
    # bad commands are refused with EINVAL, nothing changes
    for bad in (b"agg nosuch\n", b"sync sometimes\n", b"seek -1\n", b"frobnicate\n",
                b"agg histogram bins=x=y\n"):
        with pytest.raises(NineError) as ei:
            c.write_file("/groups/g/ctl", bad)
        assert ei.value.errno == errno.EINVAL, bad
    assert b"agg equiv" in c.read_file("/groups/g/ctl")
    with pytest.raises(NineError) as ei:
        c.remove("/groups/g/ctl")
    assert ei.value.errno == errno.EPERM
    c.remove("/groups/g/ghost")
    # gopen of the group's directory: its symlinks are the members
    g = c.gopen("/groups/g", "r", aggregator="count")
    assert g.labels == ["n0", "n1", "n2", "n3"]
    assert g.read().strip() == b"4"
    g.close()
    c.remove("/groups/g")
    assert "g" not in c.listdir("/groups")
    with pytest.raises(NineError):
        c.mkdir("/groups/bad/name")
    c.close()


def test_ctl_write_is_all_or_nothing(world):
    n = 3
    t = world(lambda: build_tree({"n%d" % i: value_files(i, 2, n) for i in range(n)}))
    c = Client(t["addr"])
    c.mkdir("/groups/g")
    c.write_file("/groups/g/ctl", b"agg count\nadd n0 /nodes/n0/v\nadd n1 /nodes/n1/v\n")
    before = c.read_file("/groups/g/ctl")
    assert b"agg count" in before and b"members 2" in before
    for bad in (b"agg sum\nadd n2 /nodes/n2/v\nseek 5\nfrobnicate\n",
                b"del n0\nsync timeout 3\nadd n1 /nodes/n1/v\n",      # n1 exists
                b"del n1\nadd n1 /elsewhere\nagg nosuch\n"):
        with pytest.raises(NineError) as ei:
            c.write_file("/groups/g/ctl", bad)
        assert ei.value.errno in (errno.EINVAL, errno.EEXIST), bad
        assert c.read_file("/groups/g/ctl") == before, bad
        assert sorted(x for x in c.listdir("/groups/g") if x.startswith("n")) == ["n0", "n1"]
        assert c.readlink("/groups/g/n1") == "/nodes/n1/v"
    assert c.read_file("/groups/g/data").strip() == b"2"
    c.close()


def test_a_group_belongs_to_its_maker(world):
    n = 4
    t = world(lambda: build_tree({"n%d" % i: value_files(i, 2, n) for i in range(n)}))
    alice = Client(t["addr"], uname="alice", n_uname=4001)
    bob = Client(t["addr"], uname="bob", n_uname=4002)
    root = Client(t["addr"], uname="root", n_uname=0)
    alice.mkdir("/groups/a")
    for i in range(n):
        alice.symlink("/nodes/n%d/v" % i, "/groups/a/n%d" % i)
    alice.write_file("/groups/a/ctl", b"agg equiv\n")
    st = bob.stat("/groups/a")
    assert (st.st_uid, st.st_mode & 0o7777) == (4001, 0o755)
    assert bob.stat("/groups/a/ctl").st_mode & 0o777 == 0o644
    assert bob.stat("/groups/a/data").st_uid == 4001
    # others may look and read (each member is read as the reader) ...
    assert b"n[0-1] (2)" in bob.read_file("/groups/a/data")
    g = bob.gopen("/groups/a", "r", aggregator="count")
    assert g.read().strip() == b"4"
    g.close()
    # ... but not change, drive or remove it
    for what, fn, eno in (
            ("ctl", lambda: bob.write_file("/groups/a/ctl", b"agg count\n"), errno.EACCES),
            ("data", lambda: bob.write_file("/groups/a/data", b"stop\n"), errno.EACCES),
            ("add", lambda: bob.symlink("/nodes/n0/v", "/groups/a/x"), errno.EACCES),
            ("del", lambda: bob.remove("/groups/a/n0"), errno.EACCES),
            ("rmdir", lambda: bob.remove("/groups/a"), errno.EPERM)):
        with pytest.raises(NineError) as ei:
            fn()
        assert ei.value.errno == eno, what
    assert b"agg equiv" in alice.read_file("/groups/a/ctl")
    assert len([x for x in bob.listdir("/groups/a") if x.startswith("n")]) == n
    # bob's own groups are his; a private group (members=) needs no directory
    bob.mkdir("/groups/b")
    bob.symlink("/nodes/n1/v", "/groups/b/n1")
    assert bob.stat("/groups/b").st_uid == 4002
    g = bob.gopen(None, "r", members=members(n), aggregator="count")
    assert g.read().strip() == b"4"
    g.close()
    # root may change anything; the owner may remove her group
    root.write_file("/groups/a/ctl", b"agg count\n")
    root.remove("/groups/b")
    alice.remove("/groups/a")
    assert sorted(bob.listdir("/groups")) == ["clone", "features"]
    for c in (alice, bob, root):
        c.close()


def test_dead_leaf_is_named_and_others_answer(world):
    n = 8
    t = world(lambda: build_tree({"n%d" % i: value_files(i, 2, n) for i in range(n)}))
    c = Client(t["addr"])
    g = c.gopen(None, "r", members=members(n), aggregator="count")
    assert g.read().strip() == b"8"
    srv = t["leaves"]["n5"][0]
    world.last.call(srv.stop)       # the leaf stops listening and drops its connections
    deadline = time.monotonic() + 10
    while True:
        out = g.read().decode()
        if "n5" in out or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out.splitlines()[0] == "7", out
    assert "errors: n5" in out
    c.close()


def test_no_group_service_falls_back_to_the_client(world):
    def build():
        return _leaf([File("a", read=lambda ctx: b"x 1\n"),
                      File("b", read=lambda ctx: b"x 2\n")], groups=False)
    srv, addr = world(build)
    c = Client(addr)
    g = c.gopen(None, "r", members=[("a", "/a"), ("b", "/b")], aggregator="sum")
    assert not g.served
    assert g.read() == b"x 3\n"
    c.close()


@pytest.mark.skipif(shutil.which("diod") is None, reason="needs diod")
def test_gopen_against_diod(tmp_path):
    """A directory on diod (no group service): the client does the work itself."""
    from conftest import free_port, wait_port
    d = tmp_path / "grp"
    d.mkdir()
    for i in range(5):
        (d / ("host%d" % i)).write_text("up\n" if i != 3 else "down\n")
    port = free_port()
    p = subprocess.Popen(["diod", "-f", "-n", "-e", str(tmp_path), "-l", "127.0.0.1:%d" % port],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=p)
        c = Client("127.0.0.1:%d" % port, aname=str(tmp_path))
        g = c.gopen("/grp", "r", aggregator="equiv")
        assert not g.served
        assert g.classes() == {b"up\n": {"host0", "host1", "host2", "host4"},
                               b"down\n": {"host3"}}
        c.close()
    finally:
        p.kill()
        p.wait()


# --- the seed's debugger, end to end ------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("gcc") is None,
                    reason="Linux ptrace and gcc")
def test_debugger_32_processes_over_8_leaves(capsys):
    spec = importlib.util.spec_from_file_location("debugger",
                                                  os.path.join(ROOT, "examples", "debugger.py"))
    dbg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dbg)
    rc = dbg.main(["--procs", "32", "--leaves", "8", "--classes", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "wait: breakpoint 0x" in out and ": p[0-31]" in out
    assert "p[0,3,6,9,12,15,18,21,24,27,30] (11)" in out
    assert "ok: 3 classes, as the processes hold" in out


# --- custom aggregators on every mux ----------------------------------------------------

def test_custom_aggregator_runs_at_every_level(tmp_path):
    """examples/aggregators.py registers `longest`; `nine tree --aggregators` gives it to
    every leaf and mux process, so a group read merges with it at every level."""
    from nine.group.aggregate import load
    from nine.launch import Topology, Tree
    agg = os.path.join(ROOT, "examples", "aggregators.py")
    assert "longest" in load(agg) or "longest" in A.names()
    exp = tmp_path / "exp"
    topo = Topology.local(6, fanout=3, listen="127.0.0.1:0", leaf_export=str(exp),
                          leaf_args="--host", aggregators=agg)
    tree = Tree(topo)
    try:
        root = tree.start()
        srv = root.server.listen("127.0.0.1:0")
        for i in range(1, 7):
            (exp / ("node%d" % i) / "f").write_text("short\n" + "x" * (i % 4) + "\n")
        c = Client("127.0.0.1:%d" % srv.address[1])
        ms = [("node%d" % i, "/nodes/node%d/files/f" % i) for i in range(1, 7)]
        g = c.gopen(None, "r", members=ms, aggregator="longest")
        assert g.served
        assert g.read() == b"5 node[1-6]: short\n"
        g.close()
        for i in range(1, 7):
            (exp / ("node%d" % i) / "f").write_text("y" * i + "\n")
        g = c.gopen(None, "r", members=ms, aggregator="longest")
        assert g.read() == b"6 node6: yyyyyy\n"
        # the status of the delegated groups on the muxes names no failure
        assert g.failed == {}
        c.close()
    finally:
        tree.stop()


def test_unknown_custom_aggregator_is_refused(world):
    t = world(lambda: build_tree({"n%d" % i: value_files(i, 2, 4) for i in range(4)}))
    c = Client(t["addr"])
    with pytest.raises(NineError) as ei:
        c.write_file("/groups/1x", b"")
    c.mkdir("/groups/g")
    with pytest.raises(NineError) as ei:
        c.write_file("/groups/g/ctl", b"agg nosuchagg a=1\n")
    assert ei.value.errno == errno.EINVAL
    c.close()


def test_flushed_group_read_frees_everything(world):
    """A group read blocked on members that never answer (sync all) is flushed by the
    client (as Ctrl-C on `cat data` does): the flush runs down the tree, and the group
    answers the next read at once."""
    from nine.client import NineTimeout
    n = 6
    files = {"n%d" % i: value_files(i, 2, n) + [File("slow", pread=_never)] for i in range(n)}
    t = world(lambda: build_tree(files, fanout=3))
    c = Client(t["addr"])
    g = c.gopen(None, "r", members=members(n) + [("s1", "/nodes/n1/slow"),
                                                  ("s4", "/nodes/n4/slow")], aggregator="count")
    assert g.served
    r = g._remote
    r._configure(None)
    t0 = time.monotonic()
    with pytest.raises(NineTimeout):
        r.h.partial.read(0, 4096, timeout=0.5)    # Tflush after 0.5 s
    assert time.monotonic() - t0 < 3
    g.set_sync("timeout", 0.5)
    t0 = time.monotonic()
    assert g.read().decode().splitlines()[0] == "6"
    assert time.monotonic() - t0 < 2
    assert set(g.failed) == {"s1", "s4"}
    # and the mux's connections are still good for other clients
    c2 = Client(t["addr"])
    assert c2.read_file("/nodes/n2/v") == b"value 0\n"
    c2.close()
    c.close()


def test_restarted_leaf_comes_back_into_the_group(world):
    """A leaf that goes away is named; once it serves again (same address) the open
    group picks it up again by itself: its members are resolved anew."""
    n = 8
    t = world(lambda: build_tree({"n%d" % i: value_files(i, 2, n) for i in range(n)}))
    c = Client(t["addr"])
    g = c.gopen(None, "r", members=members(n), aggregator="count")
    assert g.read().strip() == b"8"
    srv, addr = t["leaves"]["n5"]
    world.last.call(srv.stop)

    def wait_for(pred, what):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = g.read().decode()
            if pred(out):
                return out
            time.sleep(0.2)
        pytest.fail("%s: last read %r" % (what, out))
    out = wait_for(lambda o: "errors: n5" in o, "the dead leaf is named")
    assert out.splitlines()[0] == "7"
    world.last.call(lambda: srv.listen(addr))
    out = wait_for(lambda o: o == "8\n", "the restarted leaf answers again")
    assert g.failed == {}
    c.close()
