"""FiNAL (nine.final): the language, the three /proc views of the design slides, the other
operators, routing of I/O to the owning child, qids, caching, failures, the wire."""

import errno
import time
import zlib

import gevent
import pytest

import nine.protocol as P
from conftest import RawConn, ThreadServer
from nine.final import FinalError, compose, parse, check
from nine.server.qidmap import QidMap
from nine.server.node import Context, Node
from nine.server.realfs import RealFS
from nine.synth.files import Dir, File, SynthFS

CTX = Context(uname="root", uid=0, gid=0)
PIDS = {"serverA": 100, "serverB": 200, "serverC": 300}


def proc_tree(srv, pid):
    """A /proc-like tree: cpuinfo, version, 1/{cmdline,stat}, 4/stat, PID/{cmdline,stat};
    and /etc/hostname."""
    def f(name, text):
        return File(name, read=lambda ctx: text.encode())
    return Dir("", [
        Dir("proc", [
            f("cpuinfo", "cpuinfo of %s\n" % srv),
            f("version", "version of %s\n" % srv),
            Dir("1", [f("cmdline", "init@%s" % srv), f("stat", "1 (init) S@%s" % srv)]),
            Dir("4", [f("stat", "4 (kworker) S@%s" % srv)]),
            Dir(str(pid), [f("cmdline", "daemon%d@%s" % (pid, srv)),
                           f("stat", "%d (daemon) S@%s" % (pid, srv))]),
        ]),
        Dir("etc", [f("hostname", "%s\n" % srv)]),
    ])


def servers():
    return {srv: SynthFS(proc_tree(srv, pid)).attach for srv, pid in PIDS.items()}


def walk(root, path):
    if not path:
        return root.clone(CTX)
    names = path.strip("/").split("/")
    nodes = root.walk(CTX, names)
    if len(nodes) < len(names):
        raise OSError(errno.ENOENT, path)
    return nodes[-1]


def ls(root, path="", count=8192):
    n = walk(root, path)
    n.open(CTX, P.L_O_RDONLY)
    out, off = [], 0
    while True:
        ents = n.readdir(CTX, off, count)
        if not ents:
            break
        out += [e.name for e in ents]
        off = ents[-1].offset
    n.close(CTX)
    return out


def cat(root, path):
    n = walk(root, path)
    n.open(CTX, P.L_O_RDONLY)
    data = n.read(CTX, 0, 1 << 16)
    n.close(CTX)
    return data


def is_dir(root, path):
    return bool(walk(root, path).qid[0] & P.QTDIR)


ALL = ["serverA", "serverB", "serverC"]
PROC_UNION = ["1", "100", "4", "cpuinfo", "version", "200", "300"]


# ------------------------------------------------------------------------------------------
# the three views of the slides
# ------------------------------------------------------------------------------------------

def test_default_view_is_directory_per_server():
    comp = compose("", servers(), QidMap())
    root = comp(CTX)
    assert ls(root) == ALL
    assert comp.contacts == {}                  # listing the view contacts nobody
    assert ls(root, "serverB") == ["etc", "proc"]
    assert cat(root, "serverB/proc/cpuinfo") == b"cpuinfo of serverB\n"
    assert set(comp.contacts) == {"serverB"}


def test_simple_view():
    comp = compose("simple *:/proc at /proc   # directory per server", servers(), QidMap())
    root = comp(CTX)
    assert ls(root) == ["proc"]
    assert ls(root, "proc") == ALL
    assert comp.contacts == {}
    for srv, pid in PIDS.items():
        assert ls(root, "proc/%s" % srv) == sorted(["1", "4", str(pid), "cpuinfo", "version"])
        assert ls(root, "proc/%s/1" % srv) == ["cmdline", "stat"]
        assert ls(root, "proc/%s/4" % srv) == ["stat"]
        assert cat(root, "proc/%s/cpuinfo" % srv) == ("cpuinfo of %s\n" % srv).encode()
        assert cat(root, "proc/%s/1/cmdline" % srv) == ("init@%s" % srv).encode()
        assert cat(root, "proc/%s/%d/cmdline" % (srv, pid)) == \
            ("daemon%d@%s" % (pid, srv)).encode()
    with pytest.raises(OSError) as ei:
        walk(root, "proc/serverA/200")
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(OSError):
        walk(root, "proc/serverQ")


def test_simple_view_walks_go_to_one_child():
    comp = compose("simple *:/proc at /proc", servers(), QidMap())
    root = comp(CTX)
    assert cat(root, "proc/serverB/200/stat") == b"200 (daemon) S@serverB"
    assert set(comp.contacts) == {"serverB"}


def test_merge_view():
    comp = compose("merge *:/proc at /proc", servers(), QidMap())
    root = comp(CTX)
    assert ls(root) == ["proc"]
    # first appearance order over the children in order
    assert ls(root, "proc") == PROC_UNION
    # common files become a directory of per-server files
    assert ls(root, "proc/cpuinfo") == ALL
    for srv in ALL:
        assert not is_dir(root, "proc/cpuinfo/%s" % srv)
        assert cat(root, "proc/cpuinfo/%s" % srv) == ("cpuinfo of %s\n" % srv).encode()
    # common directories hold per-server subdirectories
    assert ls(root, "proc/1") == ALL
    assert ls(root, "proc/4") == ALL
    for srv in ALL:
        assert is_dir(root, "proc/1/%s" % srv)
        assert ls(root, "proc/1/%s" % srv) == ["cmdline", "stat"]
        assert ls(root, "proc/4/%s" % srv) == ["stat"]
        assert cat(root, "proc/1/%s/cmdline" % srv) == ("init@%s" % srv).encode()
    # a pid only one server has
    assert ls(root, "proc/100") == ["serverA"]
    assert ls(root, "proc/200") == ["serverB"]
    assert ls(root, "proc/300/serverC") == ["cmdline", "stat"]
    assert cat(root, "proc/300/serverC/cmdline") == b"daemon300@serverC"
    with pytest.raises(OSError):
        walk(root, "proc/100/serverB")
    with pytest.raises(OSError):
        walk(root, "proc/cpuinfo/serverA/x")


def test_deepmerge_view():
    comp = compose("deepmerge *:/proc at /proc", servers(), QidMap())
    root = comp(CTX)
    assert ls(root) == ["proc"]
    assert ls(root, "proc") == PROC_UNION
    assert ls(root, "proc/cpuinfo") == ALL
    # the merge starts at the leaves of the common sub-hierarchy
    assert ls(root, "proc/1") == ["cmdline", "stat"]
    assert ls(root, "proc/1/cmdline") == ALL
    assert ls(root, "proc/1/stat") == ALL
    assert ls(root, "proc/4") == ["stat"]
    assert ls(root, "proc/4/stat") == ALL
    for srv in ALL:
        assert cat(root, "proc/1/cmdline/%s" % srv) == ("init@%s" % srv).encode()
        assert cat(root, "proc/4/stat/%s" % srv) == ("4 (kworker) S@%s" % srv).encode()
        assert not is_dir(root, "proc/1/cmdline/%s" % srv)
    assert ls(root, "proc/200") == ["cmdline", "stat"]
    assert ls(root, "proc/200/cmdline") == ["serverB"]
    assert cat(root, "proc/200/stat/serverB") == b"200 (daemon) S@serverB"
    assert ls(root, "proc/cpuinfo") == ALL
    assert cat(root, "proc/cpuinfo/serverC") == b"cpuinfo of serverC\n"


def test_deepmerge_file_and_directory_of_one_name():
    kids = {"a": SynthFS(Dir("", [Dir("x", [File("f", read=lambda c: b"a")])])).attach,
            "b": SynthFS(Dir("", [File("x", read=lambda c: b"b-file")])).attach}
    root = compose("deepmerge *:/ at /m", kids)(CTX)
    # x is a directory in a and a file in b: the merge stops there (per-server entries)
    assert ls(root, "m/x") == ["a", "b"]
    assert ls(root, "m/x/a") == ["f"]
    assert cat(root, "m/x/b") == b"b-file"


def test_merge_of_listed_sources_in_their_order():
    comp = compose("merge serverC:/proc, serverA:/proc at /p", servers())
    root = comp(CTX)
    assert ls(root, "p/cpuinfo") == ["serverC", "serverA"]
    assert ls(root, "p") == ["1", "300", "4", "cpuinfo", "version", "100"]


def test_merge_walks_use_the_cached_listing():
    comp = compose("merge *:/proc at /proc", servers(), ttl=60)
    root = comp(CTX)
    ls(root, "proc")
    before = dict(comp.contacts)
    # the listing says which children hold 100: walking there contacts nobody
    n = walk(root, "proc/100")
    assert comp.contacts == before
    assert ls(root, "proc/100") == ["serverA"]
    assert comp.contacts == before
    assert cat(root, "proc/100/serverA/cmdline") == b"daemon100@serverA"
    changed = {c for c in comp.contacts if comp.contacts[c] != before.get(c)}
    assert changed == {"serverA"}
    n.close(CTX)


def test_merge_walk_without_listing_asks_each_child_once():
    comp = compose("merge *:/proc at /proc", servers(), ttl=0)
    root = comp(CTX)
    assert ls(root, "proc/200") == ["serverB"]
    assert cat(root, "proc/200/serverB/cmdline") == b"daemon200@serverB"


# ------------------------------------------------------------------------------------------
# the other operators
# ------------------------------------------------------------------------------------------

def test_remove():
    prog = """
        simple *:/proc at /proc
        remove /proc/*/4            # a glob over the per-server directories
        remove /proc/serverB
        remove /proc/serverC/[12]*  # serverC's 1 goes, its 300 stays
    """
    root = compose(prog, servers())(CTX)
    assert ls(root, "proc") == ["serverA", "serverC"]
    assert ls(root, "proc/serverA") == ["1", "100", "cpuinfo", "version"]
    assert ls(root, "proc/serverC") == ["300", "cpuinfo", "version"]
    for p in ("proc/serverA/4", "proc/serverB", "proc/serverB/cpuinfo", "proc/serverC/1",
              "proc/serverC/1/cmdline"):
        with pytest.raises(OSError) as ei:
            walk(root, p)
        assert ei.value.errno == errno.ENOENT, p
    # what the patterns do not match is untouched
    assert ls(root, "proc/serverA/1") == ["cmdline", "stat"]


def test_remove_in_a_merge():
    root = compose("merge *:/proc at /proc\nremove /proc/*/serverB\nremove /proc/version",
                   servers())(CTX)
    assert ls(root, "proc") == ["1", "100", "4", "cpuinfo", "200", "300"]
    assert ls(root, "proc/cpuinfo") == ["serverA", "serverC"]
    assert ls(root, "proc/200") == []


def test_replace():
    prog = """
        merge *:/proc at /proc
        replace /proc/version with serverB:/proc/version
    """
    comp = compose(prog, servers())
    root = comp(CTX)
    assert ls(root, "proc") == PROC_UNION
    assert not is_dir(root, "proc/version")
    assert cat(root, "proc/version") == b"version of serverB\n"
    # the listing's entry is the file itself
    n = walk(root, "proc")
    n.open(CTX, 0)
    ents = {e.name: e for e in n.readdir(CTX, 0, 8192)}
    assert ents["version"].type == 8 and ents["cpuinfo"].type == 4
    assert ents["version"].qid == walk(root, "proc/version").qid


def test_move():
    prog = """
        merge *:/proc at /proc
        move /proc/cpuinfo to /info/cpuinfo
    """
    root = compose(prog, servers())(CTX)
    assert ls(root) == ["proc", "info"]
    assert ls(root, "proc") == ["1", "100", "4", "version", "200", "300"]
    assert ls(root, "info") == ["cpuinfo"]
    assert ls(root, "info/cpuinfo") == ALL
    assert cat(root, "info/cpuinfo/serverA") == b"cpuinfo of serverA\n"
    with pytest.raises(OSError):
        walk(root, "proc/cpuinfo")


def test_move_then_recreate_the_old_path():
    prog = """
        simple *:/proc at /proc
        move /proc to /old
        insert serverA:/etc at /proc
    """
    root = compose(prog, servers())(CTX)
    assert ls(root) == ["old", "proc"]      # statement order: old came (line 3) before proc
    assert ls(root, "old") == ALL
    assert ls(root, "proc") == ["hostname"]
    assert cat(root, "old/serverC/cpuinfo") == b"cpuinfo of serverC\n"
    # distinct directories, distinct qids
    assert walk(root, "old").qid != walk(root, "proc").qid


def test_insert_creates_the_path():
    prog = """
        simple *:/proc at /proc
        insert serverA:/etc at /config/serverA
        insert serverB:/etc at /config/serverB
    """
    root = compose(prog, servers())(CTX)
    assert ls(root) == ["proc", "config"]
    assert ls(root, "config") == ["serverA", "serverB"]
    assert ls(root, "config/serverB") == ["hostname"]
    assert cat(root, "config/serverB/hostname") == b"serverB\n"


def ctl_tree(log):
    """Synthetic control files to lay over a real /proc (one child)."""
    def w(name):
        def write(ctx, off, data):
            log.append((name, bytes(data)))
            return len(data)
        return write
    return Dir("", [
        File("ctl", write=w("ctl")),
        Dir("1", [File("ctl", write=w("1/ctl")), File("note", write=w("1/note"))]),
        Dir("ctlonly", [File("x", read=lambda c: b"x")]),
    ])


def test_insert_unions_a_synthetic_tree_into_a_real_one():
    log = []
    kids = servers()
    kids["ctlA"] = SynthFS(ctl_tree(log)).attach
    prog = """
        simple server*:/proc at /proc
        insert ctlA:/ at /proc/serverA      # serverA's /proc plus its control files
    """
    comp = compose(prog, kids)
    root = comp(CTX)
    assert ls(root, "proc") == ALL
    assert ls(root, "proc/serverA") == ["1", "ctl", "ctlonly", "100", "4", "cpuinfo",
                                        "version"]
    # the union is recursive: 1/ holds the real and the synthetic files
    assert ls(root, "proc/serverA/1") == ["ctl", "note", "cmdline", "stat"]
    assert cat(root, "proc/serverA/1/cmdline") == b"init@serverA"
    n = walk(root, "proc/serverA/1/ctl")
    n.open(CTX, P.L_O_WRONLY)
    assert n.write(CTX, 0, b"stop") == 4
    n.close(CTX)
    assert log == [("1/ctl", b"stop")]
    assert ls(root, "proc/serverB") == ["1", "200", "4", "cpuinfo", "version"]
    # the union directory has a synthetic qid; the files keep their children's
    assert walk(root, "proc/serverA/1").qid[2] & (1 << 63)
    assert not walk(root, "proc/serverA/1/cmdline").qid[2] & (1 << 63)


def test_insert_several_sources_is_a_union_in_order():
    a = SynthFS(Dir("", [File("x", read=lambda c: b"a"), File("y", read=lambda c: b"a")]))
    b = SynthFS(Dir("", [File("x", read=lambda c: b"b"), File("z", read=lambda c: b"b")]))
    root = compose("insert b:/, a:/ at /u", {"a": a.attach, "b": b.attach})(CTX)
    assert ls(root, "u") == ["x", "z", "y"]
    assert cat(root, "u/x") == b"b"
    assert cat(root, "u/y") == b"a"
    # a later insert at the same place is searched first
    root = compose("insert b:/ at /u\ninsert a:/ at /u", {"a": a.attach, "b": b.attach})(CTX)
    assert cat(root, "u/x") == b"a"


def test_dotdot_stays_in_the_virtual_name_space():
    root = compose("simple *:/proc at /proc", servers())(CTX)
    n = root.walk(CTX, ["proc", "serverA", "1", "..", ".."])
    assert [x.name for x in n] == ["proc", "serverA", "1", "serverA", "proc"]
    assert n[-1].qid == walk(root, "proc").qid
    # never into the child's own root (its /etc is not in this view)
    n = root.walk(CTX, ["proc", "serverA", "..", "..", ".."])
    assert n[-1].qid == root.qid


# ------------------------------------------------------------------------------------------
# errors before serving
# ------------------------------------------------------------------------------------------

BAD = [
    ("simple *:/proc at /proc\nfrobnicate /x", 2, "unknown operator 'frobnicate'"),
    ("\n\n# c\nremove /proc/[abc", 4, "bad pattern"),
    ("remove /proc/**/environ", 1, "'**'"),
    ("remove /x/[]", 1, "unclosed '['"),
    ("merge *:/proc at /proc\nremove proc/1", 2, "must start with '/'"),
    ("insert serverA:/etc /config", 1, "expected 'at'"),
    ("replace /proc/version serverB:/proc/version", 1, "expected 'with'"),
    ("move /a /b", 1, "expected 'to'"),
    ("insert serverQ:/etc at /config", 1, "unknown child 'serverQ'"),
    ("merge node*:/proc at /proc", 1, "no child matches 'node*'"),
    ("insert serverA:/etc at /conf/*", 1, "cannot hold a pattern"),
    ("insert serverA:/../etc at /c", 1, "'..' may not appear"),
    ("insert serverA at /c", 1, "bad source 'serverA'"),
    ("insert at /c", 1, "needs at least one source"),
    ("insert serverA:/a serverB:/b at /c", 1, "separated by ','"),
    ("insert serverA:/a, at /c", 1, "missing after ','"),
    ("remove /a /b", 1, "unexpected '/b'"),
    ("remove /", 1, "cannot remove the root"),
    ("merge *:/proc at /proc\n\nsimple *:/proc at /proc", 3,
     "conflicting targets: /proc is already the target of line 1"),
    ("replace /proc/version with serverA:/v\nmerge *:/proc at /proc", 2,
     "would discard what line 1"),
    ("insert serverA:/etc at /c\nmove /x to /c", 2, "conflicting targets"),
    ("move /proc to /proc/old", 1, "one lies inside the other"),
    ("merge serverA:/proc, server[AB]:/proc at /p", 1, "child 'serverA' appears twice"),
    ("simple server[B-A]:/ at /", 1, "bad range"),
]


@pytest.mark.parametrize("text,line,reason", BAD)
def test_errors_name_the_line_and_the_reason(text, line, reason):
    with pytest.raises(FinalError) as ei:
        compose(text, servers())
    e = ei.value
    assert isinstance(e, ValueError)
    assert e.lineno == line, str(e)
    assert reason in str(e), str(e)
    assert str(e).startswith("line %d: " % line)


def test_parse_alone_checks_syntax_and_check_resolves_children():
    prog = parse("merge *:/proc at /proc\nremove /proc/*/environ\n")
    assert [s.op for s in prog] == ["merge", "remove"]
    check(prog, ["a", "b"])
    assert prog.statements[0].sources[0].children == ("a", "b")
    with pytest.raises(FinalError):
        check(parse("insert c:/ at /x"), ["a", "b"])
    with pytest.raises(FinalError) as ei:
        compose("", {"bad/name": servers()["serverA"]})
    assert "bad child name" in str(ei.value)


def test_a_bad_program_contacts_no_child():
    touched = []

    def attach(ctx):
        touched.append(1)
        return SynthFS(Dir("", [])).attach(ctx)
    with pytest.raises(FinalError):
        compose("merge *:/proc at /proc\nbogus", {"a": attach})
    assert touched == []


# ------------------------------------------------------------------------------------------
# qids
# ------------------------------------------------------------------------------------------

class SamePaths(Node):
    """A child whose qid paths depend only on the path inside it: identical trees in two
    children have identical qids, as two real machines' /proc would."""

    def __init__(self, node, path=()):
        self.n = node
        self.path = path
        self.name = node.name
        self.may_block = False

    @property
    def qid(self):
        q = self.n.qid
        return P.Qid(q[0], q[1], zlib.crc32("/".join(self.path).encode()) & 0xFFFF)

    def clone(self, ctx):
        return SamePaths(self.n.clone(ctx), self.path)

    def walk(self, ctx, names):
        out, p = [], self.path
        for name, n in zip(names, self.n.walk(ctx, names)):
            p = p + (name,)
            out.append(SamePaths(n, p))
        return out

    def open(self, ctx, flags):
        self.n.open(ctx, flags)

    def read(self, ctx, off, count):
        return self.n.read(ctx, off, count)

    def readdir(self, ctx, off, count):
        from nine.server.node import Dirent
        return [Dirent(P.Qid(e.qid[0], 0, zlib.crc32("/".join(self.path + (e.name,)).encode())
                             & 0xFFFF), e.offset, e.type, e.name)
                for e in self.n.readdir(ctx, off, count)]

    def getattr(self, ctx):
        a = self.n.getattr(ctx)
        a.qid = self.qid
        return a

    def close(self, ctx):
        self.n.close(ctx)


def same_path_servers():
    return {srv: (lambda ctx, a=a: SamePaths(a(ctx))) for srv, a in servers().items()}


def all_qids(root, path="", out=None):
    out = {} if out is None else out
    n = walk(root, path)
    out.setdefault(n.qid[2], set()).add(path)
    if n.qid[0] & P.QTDIR:
        for name in ls(root, path):
            all_qids(root, (path + "/" + name).strip("/"), out)
    return out


@pytest.mark.parametrize("view", ["simple", "merge", "deepmerge"])
def test_qids_unique_across_children(view):
    kids = same_path_servers()
    # the children really do collide
    a, b = kids["serverA"](CTX), kids["serverB"](CTX)
    assert walk(a, "proc/1/cmdline").qid == walk(b, "proc/1/cmdline").qid
    qm = QidMap()
    root = compose("%s *:/proc at /proc" % view, kids, qm)(CTX)
    q = all_qids(root)
    dup = {p: paths for p, paths in q.items() if len(paths) > 1}
    assert not dup
    # stable: a second attach sees the same qids
    assert all_qids(compose("%s *:/proc at /proc" % view, kids, qm)(CTX)) == q
    # listing qids agree with walked qids
    n = walk(root, "proc")
    n.open(CTX, 0)
    for e in n.readdir(CTX, 0, 1 << 16):
        assert walk(root, "proc/" + e.name).qid == e.qid


class Mapped(Node):
    """What a remote child does: map its qids itself through the mux's QidMap."""

    def __init__(self, node, child, qm):
        self.n, self.child, self.qm = node, child, qm
        self.name = node.name
        self.may_block = False

    @property
    def qid(self):
        return self.qm.map(self.child, self.n.qid)

    def clone(self, ctx):
        return Mapped(self.n.clone(ctx), self.child, self.qm)

    def walk(self, ctx, names):
        return [Mapped(n, self.child, self.qm) for n in self.n.walk(ctx, names)]

    def open(self, ctx, flags):
        self.n.open(ctx, flags)

    def read(self, ctx, off, count):
        return self.n.read(ctx, off, count)

    def readdir(self, ctx, off, count):
        from nine.server.node import Dirent
        return [Dirent(self.qm.map(self.child, e.qid), e.offset, e.type, e.name)
                for e in self.n.readdir(ctx, off, count)]

    def close(self, ctx):
        self.n.close(ctx)


class SelfMapped(Mapped):
    maps_qids = True            # what a remote node of the mux declares


def test_children_that_declare_they_map_their_own_qids():
    qm = QidMap()
    kids = {srv: (lambda ctx, a=a, srv=srv: SelfMapped(SamePaths(a(ctx)), srv, qm))
            for srv, a in servers().items()}
    root = compose("merge *:/proc at /proc", kids, qm)(CTX)     # map_qids left True
    raw = SamePaths(servers()["serverC"](CTX))
    assert walk(root, "proc/1/serverC/cmdline").qid == \
        qm.map("serverC", walk(raw, "proc/1/cmdline").qid)
    q = all_qids(root)
    assert not {p: v for p, v in q.items() if len(v) > 1}


def test_children_that_map_their_own_qids():
    qm = QidMap()
    kids = {srv: (lambda ctx, a=a, srv=srv: Mapped(SamePaths(a(ctx)), srv, qm))
            for srv, a in servers().items()}
    root = compose("merge *:/proc at /proc", kids, qm, map_qids=False)(CTX)
    q = all_qids(root)
    assert not {p: v for p, v in q.items() if len(v) > 1}
    # passed through untouched: the child's own mapping
    raw = SamePaths(servers()["serverB"](CTX))
    assert walk(root, "proc/cpuinfo/serverB").qid == qm.map("serverB",
                                                             walk(raw, "proc/cpuinfo").qid)


# ------------------------------------------------------------------------------------------
# listings: cookies, cache, concurrency, failures
# ------------------------------------------------------------------------------------------

def test_readdir_cookies_stable_across_batches():
    comp = compose("merge *:/proc at /proc", servers(), ttl=0)
    root = comp(CTX)
    n = walk(root, "proc")
    n.open(CTX, 0)
    first = n.readdir(CTX, 0, 60)          # room for two entries or so
    assert 0 < len(first) < len(PROC_UNION)
    comp.invalidate()
    rest, off = [], first[-1].offset
    while True:
        e = n.readdir(CTX, off, 60)
        if not e:
            break
        rest += e
        off = e[-1].offset
    assert [e.name for e in first + rest] == PROC_UNION
    # a cookie handed out earlier still continues from the same place
    again = n.readdir(CTX, first[0].offset, 1 << 16)
    assert [e.name for e in again] == PROC_UNION[1:]


def test_merged_listing_is_cached_per_user_with_ttl():
    comp = compose("merge *:/proc at /proc", servers(), ttl=0.3)
    root = comp(CTX)
    ls(root, "proc")
    c1 = dict(comp.contacts)
    ls(root, "proc")
    assert comp.contacts == c1                  # cached
    other = Context(uname="other", uid=1000, gid=1000)
    r2 = comp(other)
    n = r2.walk(other, ["proc"])[0]
    n.open(other, 0)
    n.readdir(other, 0, 8192)
    assert comp.contacts != c1                  # another user: its own listing
    c2 = dict(comp.contacts)
    time.sleep(0.35)
    ls(root, "proc")
    assert comp.contacts != c2                  # expired


class Slow(Node):
    """A child that takes `delay` seconds per readdir (it would be a remote one)."""

    def __init__(self, node, delay):
        self.n, self.delay = node, delay
        self.name = node.name
        self.qid = node.qid
        self.may_block = True

    def clone(self, ctx):
        return Slow(self.n.clone(ctx), self.delay)

    def walk(self, ctx, names):
        return [Slow(n, self.delay) for n in self.n.walk(ctx, names)]

    def open(self, ctx, flags):
        self.n.open(ctx, flags)

    def read(self, ctx, off, count):
        return self.n.read(ctx, off, count)

    def readdir(self, ctx, off, count):
        gevent.sleep(self.delay)
        return self.n.readdir(ctx, off, count)

    def close(self, ctx):
        self.n.close(ctx)


def test_merged_listing_asks_children_concurrently():
    kids = {srv: (lambda ctx, a=a: Slow(a(ctx), 0.2)) for srv, a in servers().items()}
    root = compose("merge *:/proc at /proc", kids)(CTX)
    t0 = time.monotonic()
    assert ls(root, "proc") == PROC_UNION       # 2 readdirs per child (data, then end)
    assert time.monotonic() - t0 < 0.2 * 2 * 3 * 0.7


class Broken(Node):
    qid = P.Qid(P.QTDIR, 0, 1)

    def walk(self, ctx, names):
        raise OSError(errno.EIO, "child is down")

    def clone(self, ctx):
        return Broken()


def test_a_failing_child_drops_out_and_is_reported():
    kids = servers()
    kids["serverD"] = lambda ctx: Broken()
    seen = []
    comp = compose("merge *:/proc at /proc", kids, on_failure=lambda c, e: seen.append(c))
    root = comp(CTX)
    n = walk(root, "proc")
    n.open(CTX, 0)
    assert [e.name for e in n.readdir(CTX, 0, 8192)] == PROC_UNION
    assert n.failed == {"serverD"}
    assert set(comp.failures) == {"serverD"} and comp.failures["serverD"][0] == errno.EIO
    assert seen == ["serverD"]
    assert "serverD\tfailed\tEIO" in comp.status()
    assert ls(root, "proc/cpuinfo") == ALL

    # an attach that fails counts the same
    def down(ctx):
        raise OSError(errno.ECONNREFUSED, "connection refused")
    kids["serverD"] = down
    comp = compose("deepmerge *:/proc at /proc", kids)
    assert ls(comp(CTX), "proc/1") == ["cmdline", "stat"]
    assert comp.failures["serverD"][0] == errno.ECONNREFUSED
    # a simple view still lists it (no contact); walking into it reports the error
    comp = compose("simple *:/proc at /proc", kids)
    root = comp(CTX)
    assert ls(root, "proc") == ALL + ["serverD"]
    with pytest.raises(OSError) as ei:
        ls(root, "proc/serverD")
    assert ei.value.errno == errno.ECONNREFUSED


def test_a_child_down_at_attach_joins_the_attach_when_back(monkeypatch):
    """A long-lived attach (a kernel mount) made while a child was down: the union
    settles again when the child answers, so its files appear in that same attach (the
    root it walked from, and nodes cloned from it), not only in later attaches."""
    import nine.final.nodes as nodes
    monkeypatch.setattr(nodes, "RESETTLE_EVERY", 0.05)
    kids = servers()
    up = SynthFS(proc_tree("serverD", 400)).attach
    state = {"down": True}

    def maybe(ctx):
        if state["down"]:
            raise OSError(errno.ECONNREFUSED, "connection refused")
        return up(ctx)
    kids["serverD"] = maybe
    comp = compose("insert *:/ at /", kids, ttl=0)      # the root of an upper mux
    root = comp(CTX)
    assert "400" not in ls(root, "proc")
    keep = root.clone(CTX)
    with pytest.raises(OSError):
        cat(root, "proc/400/cmdline")
    state["down"] = False
    time.sleep(0.06)
    assert "400" in ls(root, "proc")
    assert cat(keep, "proc/400/cmdline") == b"daemon400@serverD"
    assert cat(root, "etc/hostname") in (b"serverA\n", b"serverD\n")
    assert root.retry is None                   # every layer answered: settled for good
    # a union whose children all answer is never settled again
    r2 = compose("insert *:/ at /", servers())(CTX)
    assert r2.retry is None and walk(r2, "proc").retry is None


# ------------------------------------------------------------------------------------------
# writes, creates, renames go to the owning child
# ------------------------------------------------------------------------------------------

@pytest.fixture
def real_children(tmp_path):
    kids = {}
    for c in ("rA", "rB"):
        d = tmp_path / c
        (d / "data").mkdir(parents=True)
        (d / "data" / ("only-" + c)).write_bytes(c.encode())
        (d / "data" / "common").write_bytes(b"common of " + c.encode())
        kids[c] = RealFS(str(d)).attach
    return tmp_path, kids


def test_writes_and_creates_route_to_the_owning_child(real_children):
    tmp, kids = real_children
    comp = compose("simple *:/ at /\ninsert rB:/data, rA:/data at /u\nmerge *:/data at /m",
                   kids, ttl=60)
    root = comp(CTX)
    assert ls(root) == ["rA", "rB", "u", "m"]
    assert sorted(ls(root, "u")) == ["common", "only-rA", "only-rB"]
    assert cat(root, "u/common") == b"common of rB"
    # a write through the per-server view lands in that child
    n = walk(root, "rA/data/common")
    n.open(CTX, P.L_O_WRONLY)
    n.write(CTX, 0, b"COMMON")
    n.close(CTX)
    assert (tmp / "rA/data/common").read_bytes() == b"COMMON of rA"
    # create in a child directory
    d = walk(root, "rA/data")
    f = d.create(CTX, "new", P.L_O_RDWR | P.L_O_CREAT, 0o644, 0)
    f.write(CTX, 0, b"hello")
    f.close(CTX)
    assert (tmp / "rA/data/new").read_bytes() == b"hello"
    # create in a union: the first layer (rB) gets it, and the cached listing is dropped
    assert "made" not in ls(root, "u")
    u = walk(root, "u")
    f = u.create(CTX, "made", P.L_O_RDWR | P.L_O_CREAT, 0o644, 0)
    f.write(CTX, 0, b"x")
    f.close(CTX)
    assert (tmp / "rB/data/made").exists() and not (tmp / "rA/data/made").exists()
    assert "made" in ls(root, "u")
    assert "made" in ls(root, "m")
    assert ls(root, "m/made") == ["rB"]
    u.mkdir(CTX, "sub", 0o755, 0)
    assert (tmp / "rB/data/sub").is_dir()
    # a merged directory belongs to no single child: EPERM
    m = walk(root, "m")
    with pytest.raises(OSError) as ei:
        m.create(CTX, "x", P.L_O_RDWR | P.L_O_CREAT, 0o644, 0)
    assert ei.value.errno == errno.EPERM
    with pytest.raises(OSError) as ei:
        root.create(CTX, "x", P.L_O_RDWR | P.L_O_CREAT, 0o644, 0)
    assert ei.value.errno == errno.EPERM
    # unlink through a union removes the visible file, in its child
    u.unlinkat(CTX, "only-rA", 0)
    assert not (tmp / "rA/data/only-rA").exists()
    assert sorted(ls(root, "u")) == ["common", "made", "new", "only-rB", "sub"]


def test_rename_within_a_child_and_across_children(real_children):
    tmp, kids = real_children
    root = compose("simple *:/ at /\ninsert rA:/data at /a", kids)(CTX)
    d = walk(root, "rA/data")
    d.renameat(CTX, "common", walk(root, "a"), "renamed")      # same child, other view
    assert (tmp / "rA/data/renamed").exists()
    with pytest.raises(OSError) as ei:
        d.renameat(CTX, "renamed", walk(root, "rB/data"), "x")
    assert ei.value.errno == errno.EXDEV
    f = walk(root, "a/renamed")
    with pytest.raises(OSError) as ei:
        f.rename(CTX, walk(root, "rB/data"), "x")
    assert ei.value.errno == errno.EXDEV
    f.rename(CTX, walk(root, "rA"), "top")
    assert (tmp / "rA/top").exists()
    # the per-server directories of a view are the composition's own
    with pytest.raises(OSError) as ei:
        walk(root, "rA").remove(CTX)
    assert ei.value.errno == errno.EPERM


# ------------------------------------------------------------------------------------------
# over the wire
# ------------------------------------------------------------------------------------------

@pytest.fixture
def wire():
    holder = {}

    def make():
        kids = servers()
        log = holder["log"] = []
        kids["ctlA"] = SynthFS(ctl_tree(log)).attach
        prog = """
            deepmerge server*:/proc at /proc
            simple server*:/proc at /srv
            insert ctlA:/ at /srv/serverA
            replace /proc/version with serverB:/proc/version
        """
        comp = holder["comp"] = compose(prog, kids, QidMap())
        return {None: comp}
    s = ThreadServer(make)
    s.holder = holder
    yield s
    s.stop()


def _walk_fid(c, fid, newfid, path, tag=2):
    r = c.rpc(P.Twalk(fid=fid, newfid=newfid, wnames=path.split("/") if path else [],
                      tag=tag))
    assert isinstance(r, P.Rwalk), r
    return r


def _readdir_l(c, fid):
    assert isinstance(c.rpc(P.Tlopen(fid=fid, flags=0, tag=3)), P.Rlopen)
    out, off = [], 0
    while True:
        r = c.rpc(P.Treaddir(fid=fid, offset=off, count=100, tag=3))   # small batches
        assert isinstance(r, P.Rreaddir), r
        ents = P.unpack_dirents(r.data)
        if not ents:
            break
        out += ents
        off = ents[-1][1]
    return out


def test_over_the_wire_9p2000L(wire):
    c = RawConn(wire.port)
    c.version()
    assert isinstance(c.attach(fid=1), P.Rattach)
    _walk_fid(c, 1, 2, "")
    assert [e[3] for e in _readdir_l(c, 2)] == ["proc", "srv"]
    _walk_fid(c, 1, 3, "proc")
    ents = _readdir_l(c, 3)
    assert [e[3] for e in ents] == PROC_UNION
    assert all(e[2] == 4 for e in ents if e[3] != "version")
    _walk_fid(c, 1, 4, "proc/1/cmdline")
    assert [e[3] for e in _readdir_l(c, 4)] == ALL
    r = _walk_fid(c, 1, 5, "proc/1/cmdline/serverC")
    assert len(r.wqids) == 4 and not r.wqids[-1][0] & P.QTDIR
    c.rpc(P.Tlopen(fid=5, flags=0, tag=4))
    assert c.rpc(P.Tread(fid=5, offset=0, count=100, tag=4)).data == b"init@serverC"
    _walk_fid(c, 1, 6, "proc/version")
    c.rpc(P.Tlopen(fid=6, flags=0, tag=4))
    assert c.rpc(P.Tread(fid=6, offset=0, count=100, tag=4)).data == b"version of serverB\n"
    _walk_fid(c, 1, 7, "srv/serverA")
    assert [e[3] for e in _readdir_l(c, 7)] == ["1", "ctl", "ctlonly", "100", "4", "cpuinfo",
                                                "version"]
    _walk_fid(c, 1, 8, "srv/serverA/1/note")
    c.rpc(P.Tlopen(fid=8, flags=P.L_O_WRONLY, tag=4))
    assert isinstance(c.rpc(P.Twrite(fid=8, offset=0, data=b"kill", tag=4)), P.Rwrite)
    assert wire.holder["log"] == [("1/note", b"kill")]
    # getattr qids agree with walk qids and are distinct
    qs = {}
    for fid, path in ((9, "proc/1/cmdline/serverA"), (10, "proc/1/cmdline/serverB"),
                      (11, "srv/serverA/1/cmdline"), (12, "srv/serverB/1/cmdline"),
                      (13, "proc/1"), (14, "srv/serverA/1")):
        r = _walk_fid(c, 1, fid, path)
        g = c.rpc(P.Tgetattr(fid=fid, request_mask=P.GETATTR_BASIC, tag=5))
        assert g.qid == r.wqids[-1]
        qs[path] = g.qid
    # the same file of one child at two places of the name space keeps its identity;
    # everything else differs
    assert qs["proc/1/cmdline/serverA"] == qs["srv/serverA/1/cmdline"]
    assert qs["proc/1/cmdline/serverB"] == qs["srv/serverB/1/cmdline"]
    assert len({q[2] for q in qs.values()}) == 4
    r = c.rpc(P.Twalk(fid=1, newfid=20, wnames=["proc", "1", "nope"], tag=6))
    assert isinstance(r, P.Rwalk) and len(r.wqids) == 2
    r = c.rpc(P.Twalk(fid=1, newfid=20, wnames=["nope"], tag=6))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.ENOENT
    c.close()


def _read_stats(c, fid, count=200):
    assert isinstance(c.rpc(P.Topen(fid=fid, mode=P.OREAD, tag=3)), P.Ropen)
    out, off = [], 0
    while True:
        r = c.rpc(P.Tread(fid=fid, offset=off, count=count, tag=3))
        assert isinstance(r, P.Rread), r
        if not r.data:
            break
        out += P.unpack_stats(r.data, P.V9P2000)
        off += len(r.data)
    return out


def test_over_the_wire_9p2000(wire):
    c = RawConn(wire.port, dialect=P.V9P2000)
    c.version()
    assert isinstance(c.rpc(P.Tattach(fid=1, afid=P.NOFID, uname="root", aname="", tag=1)),
                      P.Rattach)
    _walk_fid(c, 1, 2, "proc")
    st = _read_stats(c, 2)
    assert [s.name for s in st] == PROC_UNION
    for s in st:
        assert bool(s.mode & P.DMDIR) == (s.name != "version"), s
    _walk_fid(c, 1, 3, "proc/cpuinfo")
    st = _read_stats(c, 3)
    assert [s.name for s in st] == ALL
    assert all(not s.mode & P.DMDIR for s in st)
    assert [s.length for s in st] == [0, 0, 0]      # synthetic files: size 0
    _walk_fid(c, 1, 4, "srv")
    st = _read_stats(c, 4, count=80)
    assert [s.name for s in st] == ALL and all(s.mode & P.DMDIR for s in st)
    _walk_fid(c, 1, 5, "srv/serverB/200/cmdline")
    c.rpc(P.Topen(fid=5, mode=P.OREAD, tag=4))
    assert c.rpc(P.Tread(fid=5, offset=0, count=100, tag=4)).data == b"daemon200@serverB"
    r = c.rpc(P.Tstat(fid=5, tag=4))
    assert r.stat.name == "cmdline"
    _walk_fid(c, 1, 6, "proc/4/stat/serverA")
    assert c.rpc(P.Tstat(fid=6, tag=4)).stat.name == "serverA"
    c.close()


# ------------------------------------------------------------------------------------------
# scale
# ------------------------------------------------------------------------------------------

def test_ten_thousand_children_compose_and_list_fast():
    n = 10000
    leaf = Dir("", [Dir("proc", [File("cpuinfo", read=lambda c: b"x")])])
    att = SynthFS(leaf).attach
    kids = {"node%05d" % i: att for i in range(n)}
    t0 = time.perf_counter()
    comp = compose("simple *:/proc at /proc", kids, QidMap())
    root = comp(CTX)
    t1 = time.perf_counter()
    names = ls(root, "proc", count=1 << 16)
    t2 = time.perf_counter()
    print("\ncompose %d children: %.3f s; first listing of the per-server view: %.3f s"
          % (n, t1 - t0, t2 - t1))
    assert len(names) == n and names[0] == "node00000" and names[-1] == "node09999"
    assert comp.contacts == {}
    assert t2 - t0 < 5.0


def test_over_the_wire_creates_and_renames(tmp_path):
    for c in ("rA", "rB"):
        (tmp_path / c / "data").mkdir(parents=True)
        (tmp_path / c / "data" / "f").write_bytes(c.encode())

    def make():
        kids = {c: RealFS(str(tmp_path / c)).attach for c in ("rA", "rB")}
        return {None: compose("simple *:/ at /\ninsert rB:/data, rA:/data at /u", kids)}
    srv = ThreadServer(make)
    try:
        c = RawConn(srv.port)
        c.version()
        c.attach(fid=1)
        _walk_fid(c, 1, 2, "u")
        r = c.rpc(P.Tlcreate(fid=2, name="made", flags=P.L_O_RDWR, mode=0o644, gid=0, tag=2))
        assert isinstance(r, P.Rlcreate), r
        assert isinstance(c.rpc(P.Twrite(fid=2, offset=0, data=b"via union", tag=2)), P.Rwrite)
        assert (tmp_path / "rB/data/made").read_bytes() == b"via union"
        _walk_fid(c, 1, 3, "u")
        assert sorted(e[3] for e in _readdir_l(c, 3)) == ["f", "made"]
        _walk_fid(c, 1, 4, "rA/data")
        _walk_fid(c, 1, 5, "rB/data")
        r = c.rpc(P.Trenameat(olddirfid=4, oldname="f", newdirfid=5, newname="g", tag=2))
        assert isinstance(r, P.Rlerror) and r.ecode == errno.EXDEV
        r = c.rpc(P.Trenameat(olddirfid=4, oldname="f", newdirfid=4, newname="g", tag=2))
        assert isinstance(r, P.Rrenameat), r
        assert (tmp_path / "rA/data/g").read_bytes() == b"rA"
        r = c.rpc(P.Tmkdir(dfid=1, name="nope", mode=0o755, gid=0, tag=2))
        assert isinstance(r, P.Rlerror) and r.ecode == errno.EPERM
        c.close()
    finally:
        srv.stop()
