"""nine pgrep and the verbs a user needs (issue 15): the grep, tail and topk aggregators
against GNU grep and through tree-shaped merges; grep at the leaf's read path (a RealFS
node by chunks: a 40 MiB file, context across block boundaries, bounded output; -r
walked through the member's node as nobody against GNU grep -r run as nobody); the
grep run by the leaf itself, or by a mux over leaves without the service; `nine pgrep`
on real files of real
leaf servers under a tree of three levels of muxes (6 leaves, fanout 2), its output
checked against what clush -b prints of grep run on each host (computed here by running
GNU grep in each leaf's directory), with planted variants, a missing file, host names
that do not fold, a host that is down and one that does not answer; mkdir, ln, rm,
rmdir and nine group; the empty aname of a leaf without an export."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ENV_ROOT, ROOT, NineProc
from nine.client import Client
from nine.group import aggregate as A
from nine.group.textagg import TRUNCATED, posix_regex, text_param
from nine.netwait import free_port

# --- the aggregators, against GNU grep --------------------------------------------

TEXTS = {
    "a": b"alpha beta\ngamma ERROR delta\nfoo bar\n\nError: x=1\nwarning (x) [y]\n"
         b"error42 a.b\nend",
    "b": b"one\ntwo\nthree two\nfour\nfive\nsix two\nseven\neight\nnine\nten two\n",
    "c": b"",
    "d": b"\n\n\nx\n",
    "e": b"ab\x00cd\nerror here\n",
}
BASIC = ["error", "two", "^f", "o$", "e.r", "[[:digit:]]", "x\\|two", "\\(t\\)w", "a\\+",
         "(x)", "[y]", "\\<two\\>", "^$", "", "[^a-z]", "t.*o", "x*", "e\\{2\\}", "a|b",
         "*a", "a**"]
EXTENDED = ["a|b", "(t)w", "e{2}", "a+", "x?y", "^$|two", "{1"]
FIXED = ["a.b", "(x)", "two", ""]
FLAGS = [[], ["-i"], ["-v"], ["-w"], ["-x"], ["-n"], ["-c"], ["-l"], ["-A1"], ["-B2"],
         ["-C1"], ["-n", "-C1"], ["-v", "-n"], ["-c", "-v"], ["-H", "-n", "-B1"]]


def grep_agg(pattern, flags, syntax, name):
    """The grep aggregator for GNU grep's flags."""
    kw = {"pattern": text_param(pattern), "syntax": syntax, "file": text_param(name)}
    names = {"-i": "icase", "-v": "invert", "-w": "word", "-x": "line", "-n": "number",
             "-c": "count", "-l": "files", "-H": "with_name"}
    for f in flags:
        if f in names:
            kw[names[f]] = True
        elif f[:2] in ("-A", "-C"):
            kw["after"] = int(f[2:])
        if f[:2] in ("-B", "-C"):
            kw["before"] = int(f[2:])
    return A.get("grep", **kw)


def test_grep_map_is_gnu_grep(tmp_path):
    """The map of every pattern and flag combination gives GNU grep's output, exit
    status and stderr notes (binary files), also when the file comes in chunks of 1, 2,
    5 or 11 bytes (a leaf reads by chunks: partial lines, -B context and promised -A
    context carried across every boundary)."""
    differ = []
    for name, data in TEXTS.items():
        (tmp_path / name).write_bytes(data)
        for syntax, pats, flag in (("basic", BASIC, []), ("extended", EXTENDED, ["-E"]),
                                   ("fixed", FIXED, ["-F"])):
            for pat in pats:
                for flags in FLAGS:
                    r = subprocess.run(["grep"] + flag + flags + ["-e", pat, name],
                                       cwd=tmp_path, capture_output=True)
                    g = grep_agg(pat, flags, syntax, name)
                    for window in (None, 1, 2, 5, 11):
                        got = g.grep(data, window)
                        if (r.returncode, r.stdout, r.stderr) != got:
                            differ.append((name, syntax, pat, flags, window, r.stdout,
                                           got))
    assert not differ, differ[:5]


def test_posix_regex_translation():
    assert posix_regex(r"\(a\|b\)\{2\}") == "(a|b){2}"
    assert posix_regex("a|b+(c)") == r"a\|b\+\(c\)"
    assert posix_regex("a|b+(c)", extended=True) == "a|b+(c)"
    assert posix_regex("*a**") == r"\*(?:a*)*"
    assert posix_regex("[^]a-c[]") == r"[^\]a-c\[\n]"
    assert posix_regex("[[:digit:]x]") == "[0-9x]"
    assert posix_regex("a^b$c$") == r"a\^b\$c$"
    with pytest.raises(A.AggregatorError):
        posix_regex("[a")
    with pytest.raises(A.AggregatorError):
        A.get("grep", pattern="x", syntax="other")


def _merge_shapes(agg, partials):
    """Renders of partials merged flat and in pairs, through the wire form."""
    def up(p):
        return agg.decode(agg.encode(p))
    flat = agg.merge(partials)
    ps = [up(p) for p in partials]
    while len(ps) > 1:
        ps = [up(agg.merge(ps[i:i + 2])) for i in range(0, len(ps), 2)]
    return agg.render(flat), agg.render(ps[0])


def test_grep_tail_topk_merge_at_every_level():
    files = {"node%d" % i: b"".join(b"row%d %d\n" % (j, (i * 7 + j) % 13) for j in range(20))
             + b"ERROR %d\n" % (i % 3) for i in range(1, 17)}
    g = A.get("grep", pattern=text_param("ERROR 1"), number=True)
    flat, tree = _merge_shapes(g, [g.leaf(m, d) for m, d in files.items()])
    assert flat == tree == (b"---------------\nnode[1,4,7,10,13,16] (6)\n---------------\n"
                            b"21:ERROR 1\n")
    for t in (A.get("tail", n=1), A.get("tail", start=21)):
        flat, tree = _merge_shapes(t, [t.leaf(m, d) for m, d in files.items()])
        assert flat == tree == (
            b"---------------\nnode[1,4,7,10,13,16] (6)\n---------------\nERROR 1\n"
            b"---------------\nnode[2,5,8,11,14] (5)\n---------------\nERROR 2\n"
            b"---------------\nnode[3,6,9,12,15] (5)\n---------------\nERROR 0\n")
    k = A.get("topk", k=3, column=1)
    flat, tree = _merge_shapes(k, [k.leaf(m, d) for m, d in files.items()])
    assert flat == tree
    best = sorted(((int(l.split()[1]), m, l.decode()) for m, d in files.items()
                   for l in d.splitlines()), key=lambda r: (-r[0], A.natural_key(r[1]), r[2]))
    assert flat.decode() == "".join("%s: %s\n" % (m, l) for _, m, l in best[:3])
    small = A.get("topk", k=2, column=1, smallest=True)
    assert small.render(small.merge([small.leaf("a", b"x 5\ny 1\nz -\n"),
                                     small.leaf("b", b"w 0\n")])) == b"b: w 0\na: y 1\n"


def test_long_member_is_named_not_cut_silently():
    from nine.group.handle import MAX_WHOLE
    g = A.get("grep", pattern="x")
    p = g.leaf("n1", b"x\n" * (MAX_WHOLE // 2))
    assert p.errors == {TRUNCATED: {"n1"}} and p.value


def test_grep_params_travel_in_ctl_lines():
    """Text parameters survive the ctl language (typed words) in their ~base64 form."""
    from nine.group.handle import format_agg, parse_agg
    pat = "a b=1 true 1e5 :x\nsecond"
    agg = ("grep", {"pattern": text_param(pat), "number": True, "before": 2})
    name, params = parse_agg(format_agg(*agg).split())
    g = A.get(name, **params)
    assert g.grep(b"zz\n1e5\nq\na b=1 true 1e5 :x\nsecond!\n")[1] == \
        b"2-1e5\n3-q\n4:a b=1 true 1e5 :x\n5:second!\n"


# --- the leaf's own read path: a RealFS node read by chunks, grep -r walked as the reader

def leaf_grep(export, rel, agg, uid=None):
    """agg.leaf_file of export/rel as a leaf's group service runs it: the RealFS node
    walked and opened as user uid (None: this process's own identity), read through a
    MemberFile.  Returns the Partial."""
    from nine.group.member import MemberFile
    from nine.server.node import Context
    from nine.server.realfs import RealFS
    ctx = Context(uname="u", uid=uid, gid=uid)
    fs = RealFS(str(export))
    root = fs.attach(ctx)
    names = [x for x in rel.split("/") if x]
    nodes = root.walk(ctx, names) if names else [root.clone(ctx)]
    assert len(nodes) == max(len(names), 1)
    for n in nodes[:-1]:
        n.close(ctx)
    node = nodes[-1]
    try:
        node.open(ctx, os.O_RDONLY)
        return agg.leaf_file("h", MemberFile(node, ctx))
    finally:
        node.close(ctx)
        root.close(ctx)
        fs.close()


def big_text(size, seed=15):
    """About `size` bytes of log lines: a sparse ERROR now and then, an ERROR line
    across every 1 MiB boundary (the leaf's window), and one line of 3 MiB (longer than
    a window) that ends in `needle`."""
    import random
    rnd = random.Random(seed)
    W = 1 << 20
    words = [b"alpha", b"beta", b"gamma", b"delta", b"disk", b"retry", b"ok", b"err"]
    pool = [b" ".join(rnd.choices(words, k=rnd.randrange(0, 25))) +
            (b" ERROR code=%d" % rnd.randrange(100) if rnd.random() < 0.002 else b"")
            for _ in range(7919)]
    parts = []
    n = 0
    i = 0
    while n < size:
        i += 1
        line = b"%d %s" % (i, pool[i % len(pool)])
        if (n + len(line)) // W != n // W or (n + len(line) + 1) % W == 0:
            pad = W - n % W
            line = b"x" * (pad // 2) + b" ERROR straddles " + b"y" * (pad // 2 + 3)
        if i == 5000:
            line = b"z" * (3 * W) + b" needle"
        parts.append(line + b"\n")
        n += len(line) + 1
    return b"".join(parts)


BIG_CASES = [["-n", "ERROR"], ["-c", "ERROR"], ["-n", "-C2", "ERROR"], ["-B3", "ERROR"],
             ["-A2", "-n", "ERROR"], ["-c", "-v", "ERROR"], ["-l", "needle"],
             ["-n", "needle"], ["-n", "-C1", "ERROR straddles"]]
SMALL_CASES = [["-w", "-c", "straddles"], ["-i", "-c", "error"], ["-c", "-x", ""],
               ["-n", "-v", "-e", "[0-9]", "-e", "^$"], ["-n", "-C2", "ERROR"],
               ["-B3", "-A1", "ERROR"]]


def test_big_file_is_searched_whole_as_gnu_grep(tmp_path, monkeypatch):
    """A 40 MiB file through the leaf's read path (1 MiB blocks, 64 KiB reads): GNU
    grep's output with matches and context across every block boundary and a line
    longer than a block; then a 6 MiB one cut into 4 KiB blocks.  A member longer than
    1 MiB is no longer named as truncated."""
    from nine.group import textagg
    for size, window, flagsets in ((40 << 20, None, BIG_CASES),
                                   (6 << 20, 4096, SMALL_CASES)):
        (tmp_path / "big.log").write_bytes(big_text(size))
        if window:
            monkeypatch.setattr(textagg, "WINDOW", window)
        for flags in flagsets:
            r = subprocess.run(["grep"] + flags + ["big.log"], cwd=tmp_path,
                               capture_output=True)
            opts = [f for f in flags if f.startswith("-") and f != "-e"]
            pats = [flags[i + 1] for i, f in enumerate(flags) if f == "-e"] or \
                [([f for f in flags if not f.startswith("-")] or [""])[-1]]
            agg = grep_agg("\n".join(pats), opts, "basic", "big.log")
            p = leaf_grep(tmp_path, "big.log", agg)
            assert p.errors == {}, flags
            assert p.value == {(r.returncode, r.stdout, r.stderr): {"h"}}, \
                (flags, window, len(r.stdout))


def test_output_and_line_bounds(tmp_path, monkeypatch):
    """A grep whose output passes `limit` bytes stops there and names the member (its
    output so far is GNU grep's first lines); a line longer than MAX_LINE stops the
    scan and is named."""
    from nine.group import textagg
    data = big_text(3 << 20)
    (tmp_path / "big.log").write_bytes(data)
    full = subprocess.run(["grep", "-n", "ERROR code", "big.log"], cwd=tmp_path,
                          capture_output=True).stdout
    agg = A.get("grep", pattern=text_param("ERROR code"), number=True, limit=300)
    p = leaf_grep(tmp_path, "big.log", agg)
    (status, out, _), = p.value
    assert status == 0 and 200 < len(out) <= 300 and full.startswith(out)
    assert out.endswith(b"\n") and len(full) > 500
    assert list(p.errors) == ["grep output cut at 300 bytes (narrow the pattern, or "
                              "use -c or -l)"]
    assert agg.render(p).endswith(b"errors: h: grep output cut at 300 bytes (narrow the "
                                  b"pattern, or use -c or -l)\n")
    monkeypatch.setattr(textagg, "MAX_LINE", 1 << 20)
    p = A.get("grep", pattern="needle").leaf_file("h", _Chunks(data))
    assert p.errors == {textagg.LONG_LINE: {"h"}}


class _Chunks:
    """A member file of bytes (for leaf_file without a server); `read` counts the
    chunks the map took."""
    is_dir = False

    def __init__(self, data):
        self.data = data
        self.read = 0

    def chunks(self, size):
        for i in range(0, len(self.data), size):
            self.read += 1
            yield self.data[i:i + size]


def test_grep_stops_reading_where_grep_may():
    """-l and -q stop at the first selected line; -c and a plain grep read on to the
    end (10 blocks of 1 MiB, the match in the second)."""
    data = b"hay\n" * (1 << 18) + b"needle\n" + b"hay\n" * (9 << 18)
    for kw, out, blocks in (({"files": True, "file": "f"}, b"f\n", 2),
                            ({"quiet": True}, b"", 2), ({"count": True}, b"1\n", 11),
                            ({}, b"needle\n", 11)):
        f = _Chunks(data)
        p = A.get("grep", pattern="needle", **kw).leaf_file("h", f)
        assert p.value == {(0, out, b""): {"h"}} and p.errors == {}
        assert f.read == blocks, kw


def recursive_tree(top):
    """A tree for grep -r: nested directories, a file over two blocks, a symbolic link
    to a file and one to a directory (not followed), a FIFO (not read), an unreadable
    directory and an unreadable file."""
    (top / "b" / "c").mkdir(parents=True)
    (top / "e" / "f" / "g").mkdir(parents=True)
    (top / "locked").mkdir()
    (top / "a.txt").write_bytes(b"needle 1\nhay\n")
    (top / "b" / "c" / "d.conf").write_bytes(b"hay\nneedle x\nhay\n")
    (top / "b" / "skip.log").write_bytes(b"needle but excluded\n")
    (top / "e" / "f" / "g" / "deep.conf").write_bytes(b"a\nb\nneedle deep\nc\n")
    (top / "locked" / "x.conf").write_bytes(b"needle locked\n")
    (top / "secret.txt").write_bytes(b"needle secret\n")
    (top / "big.log").write_bytes(b"needle first\n" + b"hay\n" * (600 << 10) +
                                  b"needle last\n")
    (top / "bin.dat").write_bytes(b"\x00\x01needle\n")
    os.symlink("a.txt", top / "b" / "link.txt")
    os.symlink("../e", top / "b" / "dirlink")
    os.mkfifo(top / "e" / "fifo")
    os.chmod(top / "locked", 0)
    os.chmod(top / "secret.txt", 0)
    for d in (top, top / "b", top / "b" / "c", top / "e", top / "e" / "f",
              top / "e" / "f" / "g"):
        os.chmod(d, 0o755)


R_CASES = [(["-n", "needle"], "t"), (["--include=*.conf", "-c", "needle"], "t"),
           (["-l", "needle"], "t"), (["-C1", "-n", "needle"], "t"),
           (["--exclude=*.log", "-v", "hay"], "t"), (["needle"], ""),
           (["--include=*.conf", "--include=*.txt", "-h", "needle"], "t/"),
           (["-c", "-v", ""], "t")]


@pytest.mark.skipif(os.geteuid() != 0, reason="reads as another user (nobody)")
def test_recursive_grep_at_the_leaf_is_gnu_grep_r(tmp_path):
    """grep -r through the member's own node, as the reader (nobody): GNU grep -r's
    output, order and messages run as nobody on the same tree (an unreadable directory
    and file named, exit status 2; links and the FIFO left out; --include)."""
    export = tmp_path / "exp"
    export.mkdir()
    os.chmod(export, 0o755)
    recursive_tree(export / "t")
    nobody = 65534
    for flags, path in R_CASES:
        cmd = ["setpriv", "--reuid=%d" % nobody, "--regid=%d" % nobody,
               "--clear-groups", "grep", "-r"] + flags + ([path] if path else [])
        r = subprocess.run(cmd, cwd=export if path else export / "t", capture_output=True)
        kw = {"recursive": True, "no_name": "-h" in flags, "file": text_param(path)}
        inc = [f.split("=", 1)[1] for f in flags if f.startswith("--include=")]
        exc = [f.split("=", 1)[1] for f in flags if f.startswith("--exclude=")]
        if inc:
            kw["include"] = text_param("\n".join(inc))
        if exc:
            kw["exclude"] = text_param("\n".join(exc))
        opts = [f for f in flags if f.startswith("-") and not f.startswith("--") and
                f != "-h"]
        pattern = [f for f in flags if not f.startswith("-")][0]
        agg = grep_agg(pattern, opts, "basic", "")
        agg = A.get("grep", **dict(agg.params, **kw))
        p = leaf_grep(export, "t", agg, uid=nobody)
        (status, out, notes), = p.value
        assert out == r.stdout, (flags, path)
        mine = sorted([e.encode() + b"\n" for e in p.errors] + notes.splitlines(True))
        assert mine == sorted(r.stderr.splitlines(True)), (flags, path)
        assert (2 if p.errors else status) == r.returncode, (flags, path)
        assert (b"Permission denied" in r.stderr) == (pattern != "")    # -v '': no walk
    # without recursive, a directory member is an error, as grep's
    with pytest.raises(OSError) as e:
        leaf_grep(export, "t", A.get("grep", pattern="x"), uid=nobody)
    assert e.value.strerror == "Is a directory"


def test_grep_runs_at_the_leaf(tmp_path, monkeypatch):
    """A host's one file is grepped by its own leaf's group service (the single member
    is handed to it), not read up to the mux: the root mux (this process) maps no
    member and receives the matching line; the 2 MiB files are searched whole."""
    from nine.group import textagg
    from nine.launch import Topology, Tree
    calls = []
    orig = textagg.Grep.leaf_file
    monkeypatch.setattr(textagg.Grep, "leaf_file",
                        lambda self, m, f: calls.append(m) or orig(self, m, f))
    exp = tmp_path / "exp"
    tree = Tree(Topology.local(2, fanout=2, listen="127.0.0.1:0", leaf_export=str(exp)))
    try:
        root = tree.start()
        srv = root.server.listen("127.0.0.1:0")
        for i in (1, 2):
            (exp / ("node%d" % i) / "big.log").write_bytes(b"hay\n" * (1 << 19) +
                                                          b"needle\n")
        c = Client("127.0.0.1:%d" % srv.address[1])
        g = c.gopen(None, "r", members=[("node%d" % i, "/nodes/node%d/files/big.log" % i)
                                        for i in (1, 2)],
                    aggregator="grep", pattern="needle", number=True)
        assert g.read() == b"---------------\nnode[1-2] (2)\n---------------\n524289:needle\n"
        assert calls == [] and g.failed == {}
        g.close()
        c.close()
    finally:
        tree.stop()


def test_grep_by_a_mux_over_leaves_without_the_service(tmp_path):
    """Leaves without a group service (as diod) under a mux: the mux greps each member
    itself through its remote nodes (reads by offsets; -r walked with readdir, walk and
    open on them): GNU grep's output, a 2.4 MiB file searched whole."""
    from test_group import InThread, _mux
    from nine.server.core import Server
    from nine.server.realfs import RealFS
    names = ["h1", "h2", "h3"]
    for n in names:
        t = tmp_path / n / "t"
        (t / "b" / "c").mkdir(parents=True)
        (t / "a.txt").write_bytes(b"needle 1\nhay\n")
        (t / "b" / "c" / "d.conf").write_bytes(b"hay\nneedle %s\n" % n.encode())
        (t / "big.log").write_bytes(b"needle first\n" + b"hay\n" * (600 << 10) +
                                    b"needle last\n")
        os.symlink("../a.txt", t / "b" / "link.txt")
        os.symlink("..", t / "b" / "c" / "up")

    def build():
        leaves, addrs = [], []
        for n in names:
            srv = Server({None: RealFS(str(tmp_path / n)).attach})
            s = srv.listen("127.0.0.1:0")
            leaves.append(srv)
            addrs.append((n, "127.0.0.1:%d" % s.address[1]))
        return {"leaves": leaves, "mux": _mux(addrs, "simple *:/ at /nodes\n")}
    w = InThread(build)
    try:
        c = Client(w.value["mux"][1])
        for flags, rel, kw in ((["-r", "-n"], "t", {"recursive": True, "number": True,
                                                    "with_name": True}),
                               (["-c"], "t/big.log", {"count": True})):
            g = c.gopen(None, "r", members=[(n, "/nodes/%s/%s" % (n, rel)) for n in names],
                        aggregator="grep", pattern="needle", file=text_param(rel), **kw)
            assert g.served
            p = g.read_partial()
            g.close()
            expect = {}
            for n in names:
                r = subprocess.run(["grep"] + flags + ["needle", rel], cwd=tmp_path / n,
                                   capture_output=True)
                expect.setdefault((r.returncode, r.stdout, r.stderr), set()).add(n)
            assert p.errors == {} and p.value == expect, flags
        c.close()
    finally:
        w.stop()


# --- a tree of real leaves ----------------------------------------------------------

NAMES = ["node1", "node2", "node3", "node4", "web", "db"]     # web and db do not fold
LOG = b"boot ok\nERROR disk full\nretry\nERROR disk full\nall done\n"
CONF = b"listen 80\nworkers 4\nlog /var/log/app.log\n"


def plant(exp):
    """Every host has app.log and etc/app.conf; a few differ (planted variants), db has
    no app.log, and node2/node3 have a directory tree for -r."""
    for i, n in enumerate(NAMES):
        d = exp / n
        (d / "etc").mkdir(parents=True, exist_ok=True)
        if n != "db":
            log = LOG if n not in ("node3", "web") else LOG.replace(b"full", b"ok") + \
                b"ERROR late\n"
            (d / "app.log").write_bytes(log)
        (d / "etc" / "app.conf").write_bytes(CONF if n != "node4" else
                                            CONF.replace(b"workers 4", b"workers 8"))
    for n in ("node2", "node3"):
        r = exp / n / "tree"
        (r / "b" / "c").mkdir(parents=True, exist_ok=True)
        (r / "a.txt").write_bytes(b"needle 1\nhay\n")
        (r / "b" / "c" / "d.conf").write_bytes(b"hay\nneedle %s\n" % n.encode())
        (r / "b" / "skip.log").write_bytes(b"needle but excluded\n")
        os.symlink("a.txt", r / "b" / "link.txt")
        os.symlink("../b", r / "b" / "c" / "up")
        (r / "big.log").write_bytes(b"needle first\n" + b"hay %d\n" % len(n) * (300 << 10) +
                                    b"needle last %s\n" % n.encode())     # 2.4 MiB
        (r / "locked").mkdir()
        (r / "locked" / "x.conf").write_bytes(b"needle locked\n")
        os.chmod(r / "locked", 0o700)        # root's: nobody may not read it
        for d in (exp, exp / n, r, r / "b", r / "b" / "c"):
            os.chmod(d, 0o755)


class _Tree:
    """The tree (nine.launch.Tree) with muxes that mark a silent child hung after 1 s."""

    @staticmethod
    def make(topo):
        from nine.launch import Tree

        class QuickHang(Tree):
            def _spawn(self, args):
                if args[0] == "mux":
                    args = args + ["--hang-timeout", "1"]
                return super()._spawn(args)
        return QuickHang(topo)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from nine.launch import Topology
    exp = tmp_path_factory.mktemp("pgrep") / "exp"
    topo = Topology([(n, "local") for n in NAMES], fanout=2, listen="127.0.0.1:0",
                    leaf_export=str(exp))
    t = _Tree.make(topo)
    try:
        root = t.start()
        srv = root.server.listen("127.0.0.1:0")
        plant(exp)
        t.addr = "127.0.0.1:%d" % srv.address[1]
        t.exp = exp
        yield t
    finally:
        t.stop()


def nine(t, *args, script=None):
    """Run `nine ARGS` (or cmd/SCRIPT ARGS) against the tree: (status, stdout, stderr)."""
    from gevent import subprocess as sp     # the root mux runs in this process's hub
    cmd = [sys.executable, os.path.join(ROOT, "cmd", script)] if script else \
        [sys.executable, "-m", "nine"]
    r = sp.run(cmd + list(args), env=ENV_ROOT, capture_output=True, timeout=120)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def pgrep(t, *args):
    return nine(t, "pgrep", "-a", t.addr, *args)


def _natural(s):
    return A.natural_key(s)


def clush_b(results):
    """What clush -b prints of per-host (status, output): ClusterShell's own NodeSet
    folding, classes by status, then size, then first node."""
    from ClusterShell.NodeSet import NodeSet
    classes = {}
    for h, key in results.items():
        classes.setdefault(key, set()).add(h)
    out = ""
    for (rc, text), ms in sorted(classes.items(), key=lambda km: (
            km[0][0], -len(km[1]), NodeSet.fromlist(km[1])[0])):
        if text:
            head = str(NodeSet.fromlist(ms)) + (" (%d)" % len(ms) if len(ms) > 1 else "")
            out += "---------------\n%s\n---------------\n%s" % (head, text)
    return out


def gnu(t, grep_args, paths, hosts=NAMES):
    """{host: (status, output)} of GNU grep run in each host's directory."""
    out = {}
    for h in hosts:
        r = subprocess.run(["grep"] + grep_args + paths, cwd=t.exp / h, capture_output=True)
        out[h] = (r.returncode, r.stdout.decode())
    return out


CASES = [
    (["ERROR"], []), (["-n", "ERROR"], []), (["-c", "ERROR"], []), (["-v", "ERROR"], []),
    (["-i", "error"], []), (["--word-regexp", "ERR"], ["-w", "ERR"]), (["-l", "late"], []),
    (["-F", "disk ful"], []), (["-E", "ERROR (disk|late)"], []), (["-n", "-C1", "retry"], []),
    (["-A1", "boot"], []), (["-B1", "-n", "done"], []), (["--line-regexp", "retry"],
                                                           ["-x", "retry"]),
    (["-e", "boot", "-e", "late"], []), (["nomatch"], []),
]


@pytest.mark.parametrize("args,gnu_args", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_pgrep_gathers_as_clush_b(tree, args, gnu_args):
    """One file on every host: the folded classes are what clush -b prints of grep; the
    host without the file is named last; the exit status is grep's."""
    rc, out, err = pgrep(tree, *args, "app.log")
    expect = gnu(tree, gnu_args or args, ["app.log"])
    assert out == clush_b(expect), err
    assert "app.log: No such file or directory: db" in err
    assert rc == 2
    good = [h for h in NAMES if h != "db"]
    rc, out2, err = pgrep(tree, "-w", ",".join(good), *args, "app.log")
    assert out2 == out and err == ""
    assert rc == (0 if any(expect[h][0] == 0 for h in good) else 1)


def test_several_files_and_exit_status(tree):
    rc, out, err = pgrep(tree, "-w", "node[1-4],web", "-n", "ERROR\\|workers 8",
                         "app.log", "etc/app.conf")
    expect = gnu(tree, ["-n", "ERROR\\|workers 8"], ["app.log", "etc/app.conf"],
                 ["node1", "node2", "node3", "node4", "web"])
    assert rc == 0 and err == "" and out == clush_b(expect)
    assert "node[1-2] (2)" in out and "node4\n" in out and "node3,web (2)" in out
    # a file missing on one host: its output is still shown (with grep's status 2 there)
    rc, out, err = pgrep(tree, "-c", "ERROR", "app.log", "etc/app.conf")
    assert out == clush_b(gnu(tree, ["-c", "ERROR"], ["app.log", "etc/app.conf"]))
    assert rc == 2 and err == "app.log: No such file or directory: db\n"
    # -s: no message about it, the same status
    rc, _, err = pgrep(tree, "-s", "-c", "ERROR", "app.log")
    assert rc == 2 and err == ""


def test_line_mode_diff_and_quiet(tree):
    rc, out, err = pgrep(tree, "-x", "db", "-L", "ERROR", "app.log")
    expect = gnu(tree, ["ERROR"], ["app.log"], NAMES[:-1])
    lines = [(rc_, _natural(h), h, line) for h, (rc_, text) in expect.items()
             for line in text.splitlines()]
    assert out == "".join("%s: %s\n" % (h, line) for _, _, h, line in sorted(lines))
    assert rc == 0
    rc, out, err = pgrep(tree, "--diff", "-c", "workers", "etc/app.conf")
    assert rc == 0
    # every host's count is 1: one class, nothing to diff
    assert out == "---------------\ndb,node[1-4],web (6)\n---------------\n1\n"
    rc, out, err = pgrep(tree, "--diff", "-v", "listen", "etc/app.conf")
    assert out == ("---------------\ndb,node[1-3],web (5)\n---------------\n"
                   "workers 4\nlog /var/log/app.log\n"
                   "--- db,node[1-3],web (5)\n+++ node4\n@@ -1,2 +1,2 @@\n"
                   "-workers 4\n+workers 8\n log /var/log/app.log\n")
    rc, out, err = pgrep(tree, "-q", "-w", "node1", "ERROR", "app.log")
    assert (rc, out, err) == (0, "", "")
    rc, out, err = pgrep(tree, "-q", "-w", "node1", "nothing", "app.log")
    assert (rc, out, err) == (1, "", "")


def test_recursive_at_the_leaf(tree):
    """-r: each host's leaf walks the directory itself and greps every file whole (a
    2.4 MiB one included): GNU grep -r's output run in each host's directory, in its
    order, symbolic links not followed; --include; a directory the reader (nobody) may
    not read is named as grep names it, exit status 2."""
    hosts = ["node2", "node3", "node1"]
    rc, out, err = pgrep(tree, "-w", ",".join(hosts), "-r", "-n", "needle", "tree")
    expect = gnu(tree, ["-r", "-n", "needle"], ["tree"], ["node2", "node3"])
    assert "tree/big.log:307202:needle last node2" in expect["node2"][1]
    assert out == clush_b(expect)
    assert err == "tree: No such file or directory: node1\n" and rc == 2
    rc, out, err = pgrep(tree, "-w", "node2", "-r", "-l", "needle")     # no PATH: the export
    assert out == clush_b(gnu(tree, ["-r", "-l", "needle"], [], ["node2"])) and rc == 0
    rc, out, err = pgrep(tree, "-w", "node[2-3]", "-r", "--include", "*.conf", "-c",
                         "-C1", "needle", "tree")
    assert rc == 0 and err == ""
    assert out == clush_b(gnu(tree, ["-r", "--include=*.conf", "-c", "needle"], ["tree"],
                               ["node2", "node3"]))
    for paths in (["tree/b", "tree/a.txt"], ["tree/a.txt"], ["-h", "tree/b"]):
        rc, out, err = pgrep(tree, "-w", "node[2-3]", "-r", "-C1", "needle", *paths)
        assert rc == 0 and err == ""
        assert out == clush_b(gnu(tree, ["-r", "-C1", "needle"], paths,
                                   ["node2", "node3"])), paths
    # as nobody: tree/locked cannot be read
    from gevent import subprocess as sp
    env = dict(ENV_ROOT, LOGNAME="nobody", USER="nobody")
    r = sp.run([sys.executable, "-m", "nine", "pgrep", "-a", tree.addr, "-w", "node[2-3]",
                "-r", "needle", "tree"], env=env, capture_output=True, timeout=120)
    expect = {}
    for h in ("node2", "node3"):
        g = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "grep", "-r", "needle", "tree"], cwd=tree.exp / h,
                           capture_output=True)
        assert g.returncode == 2 and g.stderr == b"grep: tree/locked: Permission denied\n"
        expect[h] = (0, g.stdout.decode())
    assert r.stdout.decode() == clush_b(expect)
    assert (r.returncode, r.stderr) == (2, b"tree/locked: Permission denied: node[2-3] (2)\n")
    assert "locked" not in r.stdout.decode()


def test_ctrl_c_shows_what_arrives(tree):
    """Ctrl-C during a read that one host cannot finish (its file is a FIFO without a
    writer): the others' results, that host named as interrupted, status 130; with
    --timeout the same host is named as timed out."""
    from gevent import subprocess as sp
    import gevent
    for n in NAMES:
        (tree.exp / n / "slow.log").write_bytes(b"ERROR slow\n")
    fifo = tree.exp / "node3" / "slow.log"
    fifo.unlink()
    os.mkfifo(fifo)
    try:
        for extra in ([], ["app.log"]):
            p = sp.Popen([sys.executable, "-m", "nine", "pgrep", "-a", tree.addr, "-c",
                          "ERROR", "slow.log"] + extra, env=ENV_ROOT, stdout=sp.PIPE,
                         stderr=sp.PIPE)
            gevent.sleep(3)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=30)
            assert p.returncode == 130, err
            assert err.decode().splitlines()[-1] == "interrupted: node3", err
            if not extra:
                assert out.decode() == ("---------------\ndb,node[1-2,4],web (5)\n"
                                        "---------------\n1\n")
        rc, out, err = pgrep(tree, "--timeout", "2", "-c", "ERROR", "slow.log")
        assert (rc, err) == (2, "timed out: node3\n")
        assert out == "---------------\ndb,node[1-2,4],web (5)\n---------------\n1\n"
    finally:
        fifo.unlink()


def test_absolute_paths_through_the_exports_file(tree):
    """A path on the host maps through /nodes/HOST/exports to /nodes/HOST/files/..."""
    node1 = str(tree.exp / "node1")
    rc, out, err = pgrep(tree, "-w", "node1,node2", "-l", "ERROR", node1 + "/app.log")
    assert out == "---------------\nnode1\n---------------\n%s/app.log\n" % node1
    assert err == "%s/app.log: No such file or directory (not exported): node2\n" % node1
    assert rc == 2
    rc, out, err = pgrep(tree, "-w", "nosuch[1-2],node1", "ERROR", "app.log")
    assert rc == 2 and err == "no such host: nosuch[1-2] (2)\n"


def test_script_and_config_file(tree, tmp_path):
    cfg = tmp_path / "nine"
    cfg.mkdir()
    (cfg / "config").write_text("# the root\naddr = %s\n" % tree.addr)
    from gevent import subprocess as sp
    env = dict(ENV_ROOT, XDG_CONFIG_HOME=str(tmp_path))
    env.pop("NINE_ADDR", None)
    r = sp.run([sys.executable, os.path.join(ROOT, "cmd", "nine-pgrep"), "-w", "node1",
                "-c", "ERROR", "app.log"], env=env, capture_output=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, b"---------------\nnode1\n---------------\n2\n")
    r = sp.run([sys.executable, "-m", "nine", "pgrep"], env=env, capture_output=True,
               timeout=60)
    assert r.returncode == 2 and b"no pattern" in r.stderr


def test_groups_and_edit_verbs(tree):
    """nine group make/ls/rm, pgrep -g on the group's own files; mkdir, ln, rm, rmdir
    through the root land on the leaf's disk."""
    rc, out, err = nine(tree, "group", "make", "-a", tree.addr, "logs", "-w",
                        "node[1-4],db", "--agg", "equiv", "app.log")
    assert (rc, out) == (0, "/groups/logs: 5 members\n"), err
    rc, out, err = nine(tree, "group", "ls", "-a", tree.addr)
    assert re.search(r"^logs +5 members  agg equiv  sync all  db,node\[1-4\] \(5\)$", out,
                     re.M), out
    rc, out, err = nine(tree, "group", "ls", "-a", tree.addr, "logs")
    assert "node1 -> /nodes/node1/files/app.log\n" in out
    rc, out, err = pgrep(tree, "-g", "logs", "-x", "node4", "-c", "ERROR")
    assert out == clush_b(gnu(tree, ["-c", "ERROR"], ["app.log"], ["node1", "node2",
                                                                    "node3"]))
    assert err == "app.log: No such file or directory: db\n" and rc == 2
    rc, out, err = pgrep(tree, "-g", "logs", "-c", "listen", "etc/app.conf")
    assert rc == 0 and out == "---------------\ndb,node[1-4] (5)\n---------------\n1\n"
    assert nine(tree, "gread", "-a", tree.addr, "/groups/logs")[0] == 1    # db: no file
    assert nine(tree, "group", "rm", "-a", tree.addr, "logs")[0] == 0
    assert "logs" not in nine(tree, "group", "ls", "-a", tree.addr)[1]

    base = "/nodes/web/files/"
    a = ["-a", tree.addr]
    rc, _, err = nine(tree, "mkdir", *a, "-p", base + "x/y/z")
    assert rc == 0, err
    assert (tree.exp / "web" / "x" / "y" / "z").is_dir()
    assert nine(tree, "ln", *a, "-s", "../app.log", base + "x/log")[0] == 0
    assert os.readlink(tree.exp / "web" / "x" / "log") == "../app.log"
    rc, _, err = nine(tree, "rmdir", *a, base + "x")
    assert rc == 1 and "Directory not empty" in err
    rc, _, err = nine(tree, "rm", *a, base + "x")
    assert rc == 1 and "Is a directory" in err
    assert nine(tree, "rm", *a, base + "x/log")[0] == 0
    assert nine(tree, "rmdir", *a, base + "x/y/z")[0] == 0
    assert nine(tree, "rm", *a, "-r", base + "x")[0] == 0
    assert not (tree.exp / "web" / "x").exists()
    assert nine(tree, "rm", *a, "-f", base + "x")[0] == 0


def test_empty_aname_of_a_leaf_without_export():
    """`nine serve --proc --exec` (no export) serves the combined tree at the empty
    aname; an unknown aname is refused with the names that exist."""
    s = NineProc(["--proc", "--exec"], free_port())
    try:
        r = subprocess.run([sys.executable, "-m", "nine", "ls", "-a", s.addr, "/"],
                           env=ENV_ROOT, capture_output=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, b"exec\nproc\n"), r.stderr
        r = subprocess.run([sys.executable, "-m", "nine", "ls", "-a", s.addr, "-A", "x",
                            "-V", "9P2000.u", "/"], env=ENV_ROOT, capture_output=True,
                           timeout=60)
        assert r.returncode == 1
        assert r.stderr.decode() == ("nine: %s refused the attach to aname 'x': no export "
                                     "'x' (anames: exec, groups, nine, proc)\n" % s.addr)
    finally:
        s.stop()


def _leaf(tree, name):
    """The Popen of leaf `name` (the tree starts its leaves first, in order)."""
    return tree.procs[NAMES.index(name)][0]


def test_down_and_silent_hosts_are_named_last(tree):
    """A leaf killed is named as down; a leaf stopped (SIGSTOP) is named as timed out
    (its mux marks it hung); the others' results are shown; exit status 2.  (Last: the
    tree stays hurt.)"""
    _leaf(tree, "node2").kill()
    _leaf(tree, "node2").wait()
    stopped = _leaf(tree, "node4")
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        rc, out, err = pgrep(tree, "--timeout", "8", "-x", "db", "-c", "ERROR", "app.log")
        took = time.monotonic() - t0
        expect = gnu(tree, ["-c", "ERROR"], ["app.log"], ["node1", "node3", "web"])
        assert out == clush_b(expect)
        assert rc == 2
        lines = err.splitlines()
        assert lines == ["down: connection refused: node2", "timed out: node4"], err
        assert took < 60
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
