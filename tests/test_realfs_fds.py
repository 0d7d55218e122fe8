"""Fids hold their files (nine.server.realfs): an O_PATH fd per file, never a path from
the export root.  Trees deeper than PATH_MAX, files and directories renamed or moved out
by a local process, the fd budget, groups, the streaming directory listing, and the
lenient unlinkat of an empty directory."""

import errno
import os
import stat
import tracemalloc

import pytest

import nine.protocol as P
from conftest import RawConn, ThreadServer
from nine.protocol.const import (
    L_O_RDONLY, L_O_WRONLY, L_O_RDWR, L_O_CREAT, AT_REMOVEDIR)
from nine.server import listing as listing_mod
from nine.server import realfs as realfs_mod
from nine.server.identity import reset as reset_identity
from nine.server.node import Context, SetAttr
from nine.server.realfs import RealFS

ROOT = Context(uid=None)
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
LONG = "n" * 250                 # 20 of them: over 5,000 bytes, PATH_MAX is 4,096
DEPTH = 20


@pytest.fixture(autouse=True)
def _identity_back():
    yield
    reset_identity()


@pytest.fixture(params=["openat2", "fallback"])
def fs(request, tmp_path):
    exp = tmp_path / "export"
    exp.mkdir()
    f = RealFS(str(exp), use_openat2=None if request.param == "openat2" else False)
    if request.param == "openat2" and not f.uses_openat2:
        f.close()
        pytest.skip("no openat2 on this kernel")
    yield f
    f.close()


@pytest.fixture
def exp(fs):
    return fs.root_dir


def make(exp, rel, data=b""):
    p = os.path.join(exp, rel)
    with open(p, "wb") as f:
        f.write(data)
    return p


def walk1(fs, *names, ctx=ROOT):
    nodes = fs.attach(ctx).walk(ctx, list(names))
    assert len(nodes) == len(names), nodes
    for n in nodes[:-1]:
        n.close(ctx)
    return nodes[-1]


def readall(node, count=4096):
    out, off = [], 0
    while True:
        batch = node.readdir(ROOT, off, count)
        if not batch:
            return out
        out.extend(batch)
        off = batch[-1].offset


def nfds():
    return len(os.listdir("/proc/self/fd"))


# --- a tree deeper than PATH_MAX ----------------------------------------------------------

def mkdeep(top, depth, data):
    """DEPTH directories of LONG names and a file 'leaf', made with mkdir and openat
    steps (no path ever longer than one name); returns the st_ino of the leaf."""
    fd = os.open(top, os.O_PATH | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(LONG, dir_fd=fd)
            nfd = os.open(LONG, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        lf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(lf, data)
        ino = os.fstat(lf).st_ino
        os.close(lf)
        return ino
    finally:
        os.close(fd)


def rmdeep(top):
    """Remove everything below the directory top (openat steps again)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _rm_below(fd)
    finally:
        os.close(fd)


def _rm_below(fd):
    for name in os.listdir(fd):
        if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                _rm_below(sub)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


def walk_deep(node, names):
    """Walk names from node 16 at a time (a Twalk's most), closing what is passed."""
    for i in range(0, len(names), 16):
        part = names[i:i + 16]
        got = node.walk(ROOT, part)
        assert len(got) == len(part)
        for n in got[:-1]:
            n.close(ROOT)
        node = got[-1]
    return node


def test_tree_deeper_than_path_max(fs, exp):
    ino = mkdeep(exp, DEPTH, b"deep down")
    full = os.path.join(exp, *[LONG] * DEPTH, "leaf")
    assert len(full) > 4096
    with pytest.raises(OSError) as ei:
        os.stat(full)
    assert ei.value.errno == errno.ENAMETOOLONG
    d = walk_deep(fs.attach(ROOT), [LONG] * DEPTH)
    leaf = d.walk(ROOT, ["leaf"])[0]
    a = leaf.getattr(ROOT)
    assert a.size == 9 and a.qid.path == ino
    leaf.open(ROOT, L_O_RDONLY)
    assert leaf.read(ROOT, 0, 100) == b"deep down"
    leaf.close(ROOT)
    n = d.create(ROOT, "new", L_O_RDWR | L_O_CREAT, 0o640, None)
    n.write(ROOT, 0, b"made at the bottom")
    n.close(ROOT)
    assert d.walk(ROOT, ["new"])[0].getattr(ROOT).size == 18
    d.mkdir(ROOT, "sub", 0o755, None)
    d.symlink(ROOT, "sym", "leaf", None)
    assert d.walk(ROOT, ["sym"])[0].readlink(ROOT) == "leaf"
    d.walk(ROOT, ["new"])[0].setattr(ROOT, SetAttr(mode=0o600, mtime=7_000_000_000))
    assert d.walk(ROOT, ["new"])[0].getattr(ROOT).mtime == 7_000_000_000
    lst = d.clone(ROOT)
    lst.open(ROOT, L_O_RDONLY)
    assert sorted(e.name for e in readall(lst)) == [".", "..", "leaf", "new", "sub", "sym"]
    lst.close(ROOT)
    d.renameat(ROOT, "new", d, "renamed")
    d.unlinkat(ROOT, "renamed", 0)
    d.unlinkat(ROOT, "sub", AT_REMOVEDIR)
    assert d.statfs(ROOT).namelen == 255
    # '..' climbs back up, and stops at the root
    up = d.walk(ROOT, [".."] * 16)
    assert up[-1].name == LONG
    top = walk_deep(d, [".."] * (DEPTH + 5))
    assert top.qid == fs.attach(ROOT).qid
    rmdeep(exp)


def test_deep_tree_over_the_wire(tmp_path):
    """The same through the protocol (Twalk of 16 names at a time), as the kernel."""
    exp = tmp_path / "export"
    exp.mkdir()
    mkdeep(str(exp), DEPTH, b"wire")
    fs = RealFS(str(exp))
    s = ThreadServer({"": fs.attach})
    try:
        c = RawConn(s.port)
        c.version()
        assert isinstance(c.rpc(P.Tattach(fid=0, afid=P.NOFID, uname="root", aname="",
                                          n_uname=0, tag=1)), P.Rattach)
        fid = 0
        for i in range(0, DEPTH, 16):
            n = min(16, DEPTH - i)
            r = c.rpc(P.Twalk(fid=fid, newfid=fid + 1, wnames=[LONG] * n, tag=1))
            assert isinstance(r, P.Rwalk) and len(r.wqids) == n, r
            fid += 1
        r = c.rpc(P.Tlcreate(fid=fid, name="made", flags=P.L_O_RDWR, mode=0o644, gid=0,
                             tag=1))
        assert isinstance(r, P.Rlcreate), r
        c.rpc(P.Twrite(fid=fid, offset=0, data=b"over the wire", tag=1))
        c.rpc(P.Tclunk(fid=fid, tag=1))
        r = c.rpc(P.Twalk(fid=fid - 1, newfid=50, wnames=[LONG] * (DEPTH - 16) + ["made"],
                          tag=1))
        assert isinstance(r, P.Rwalk) and len(r.wqids) == DEPTH - 16 + 1, r
        r = c.rpc(P.Tgetattr(fid=50, request_mask=P.GETATTR_BASIC, tag=1))
        assert isinstance(r, P.Rgetattr) and r.size == 13
        c.rpc(P.Tlopen(fid=50, flags=P.L_O_RDONLY, tag=1))
        assert c.rpc(P.Tread(fid=50, offset=0, count=100, tag=1)).data == b"over the wire"
    finally:
        s.stop()
        rmdeep(exp)
        fs.close()


# --- renamed by a local process -------------------------------------------------------

def test_file_renamed_locally_keeps_its_fid(fs, exp):
    make(exp, "f", b"old")
    n = walk1(fs, "f")
    os.rename(os.path.join(exp, "f"), os.path.join(exp, "g"))
    make(exp, "f", b"NEW FILE")                    # a new file at the old name
    assert n.getattr(ROOT).size == 3
    assert n.qid.path == os.stat(os.path.join(exp, "g")).st_ino
    n.open(ROOT, L_O_RDONLY)
    assert n.read(ROOT, 0, 100) == b"old"
    n.close(ROOT)
    n = walk1(fs, "g")
    n.setattr(ROOT, SetAttr(mode=0o600))
    assert stat.S_IMODE(os.stat(os.path.join(exp, "g")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(exp, "f")).st_mode) != 0o600
    # a fresh walk of the name finds the new file
    fresh = walk1(fs, "f")
    assert fresh.getattr(ROOT).size == 8 and fresh.qid.path != n.qid.path
    # the old fid's name is stale: removing or renaming it by name never hits the new file
    old = walk1(fs, "g")
    os.rename(os.path.join(exp, "g"), os.path.join(exp, "h"))
    os.rename(os.path.join(exp, "f"), os.path.join(exp, "g"))
    for op in (lambda: old.remove(ROOT), lambda: old.rename(ROOT, None, "x")):
        with pytest.raises(OSError) as ei:
            op()
        assert ei.value.errno == errno.ENOENT
    assert sorted(os.listdir(exp)) == ["g", "h"]
    assert old.getattr(ROOT).size == 3


def test_directory_renamed_locally_walks_on(fs, exp):
    os.makedirs(os.path.join(exp, "a/b"))
    make(exp, "a/b/f", b"in b")
    a = walk1(fs, "a")
    b = walk1(fs, "a", "b")
    os.rename(os.path.join(exp, "a"), os.path.join(exp, "z"))
    f = b.walk(ROOT, ["f"])[0]
    f.open(ROOT, L_O_RDONLY)
    assert f.read(ROOT, 0, 100) == b"in b"
    f.close(ROOT)
    assert a.walk(ROOT, ["b", "f"])[1].qid == f.qid
    b.create(ROOT, "new", L_O_WRONLY | L_O_CREAT, 0o644, None).close(ROOT)
    assert os.path.exists(os.path.join(exp, "z/b/new"))
    assert b.walk(ROOT, [".."])[0].qid == a.qid
    a.open(ROOT, L_O_RDONLY)
    assert sorted(e.name for e in readall(a)) == [".", "..", "b"]
    a.close(ROOT)
    with pytest.raises(OSError):
        walk1(fs, "a")


def test_directory_moved_out_of_the_export(fs, exp, tmp_path):
    """A fid of a directory that a local process moves outside keeps it (as an open
    directory would); '..' from it stays lexical, inside the export."""
    os.makedirs(os.path.join(exp, "d/e"))
    outside = tmp_path / "outside"
    outside.mkdir()
    root = fs.attach(ROOT)
    d = walk1(fs, "d")
    e = walk1(fs, "d", "e")
    os.rename(os.path.join(exp, "d"), outside / "d")
    assert e.walk(ROOT, [".."])[0].qid == d.qid
    up = e.walk(ROOT, [".."] * 5)
    assert up[-1].qid == root.qid
    assert len(e.walk(ROOT, [".."] * 3 + ["outside"])) == 3      # never the outside's
    with pytest.raises(OSError):
        walk1(fs, "d")


def test_unlinked_file_is_enoent_unless_open(fs, exp):
    make(exp, "f", b"x")
    n = walk1(fs, "f")
    o = walk1(fs, "f")
    o.open(ROOT, L_O_RDONLY)
    os.unlink(os.path.join(exp, "f"))
    for op in (lambda: n.getattr(ROOT), lambda: n.open(ROOT, L_O_RDONLY),
               lambda: n.setattr(ROOT, SetAttr(mode=0o600))):
        with pytest.raises(OSError) as ei:
            op()
        assert ei.value.errno == errno.ENOENT
    assert o.getattr(ROOT).nlink == 0 and o.read(ROOT, 0, 10) == b"x"
    o.close(ROOT)


def test_symlink_times_by_name_before_linux_5_8(fs, exp, monkeypatch):
    """utimensat(fd, "", AT_EMPTY_PATH) is EINVAL before Linux 5.8: by checked name."""
    os.symlink("target", os.path.join(exp, "l"))
    real = realfs_mod.utimens

    def old_kernel(dirfd, path, atime, mtime, flags):
        if path == b"":
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(dirfd, path, atime, mtime, flags)
    monkeypatch.setattr(realfs_mod, "utimens", old_kernel)
    walk1(fs, "l").setattr(ROOT, SetAttr(mtime=9_000_000_000))
    assert os.lstat(os.path.join(exp, "l")).st_mtime_ns == 9_000_000_000


# --- the fd budget ------------------------------------------------------------------------

def test_fds_of_clunked_files_are_bounded(tmp_path):
    exp = tmp_path / "export"
    exp.mkdir()
    for i in range(200):
        (exp / ("f%d" % i)).write_bytes(b"")
    fs = RealFS(str(exp), idle_fds=16)
    try:
        before = nfds()
        r = fs.attach(ROOT)
        for i in range(200):
            n = r.walk(ROOT, ["f%d" % i])[0]
            n.getattr(ROOT)
            n.close(ROOT)
        assert nfds() <= before + 16
        held = [r.walk(ROOT, ["f%d" % i])[0] for i in range(100)]
        assert before + 100 <= nfds() <= before + 116
        held += [n.clone(ROOT) for n in held]          # fids of one file share its fd
        assert nfds() <= before + 116
        for n in held:
            n.close(ROOT)
        assert nfds() <= before + 16
    finally:
        fs.close()


def test_evicted_directory_is_reopened_by_name(tmp_path):
    exp = tmp_path / "export"
    (exp / "a" / "b").mkdir(parents=True)
    for i in range(40):
        (exp / ("f%d" % i)).write_bytes(b"")
    fs = RealFS(str(exp), idle_fds=16)

    def evict():
        for i in range(40):
            fs.attach(ROOT).walk(ROOT, ["f%d" % i])[0].close(ROOT)
    try:
        a, b = fs.attach(ROOT).walk(ROOT, ["a", "b"])
        a.close(ROOT)
        evict()
        assert b.file.parent.fd is None                 # 'a' lost its fd ...
        up = b.walk(ROOT, [".."])[0]                    # ... for now
        assert up.qid.path == os.stat(exp / "a").st_ino
        up.close(ROOT)
        # replaced under its name meanwhile: refused, never the other directory
        os.rename(exp / "a", exp / "a.old")
        os.mkdir(exp / "a")
        evict()
        with pytest.raises(OSError) as ei:
            b.walk(ROOT, [".."])
        assert ei.value.errno == errno.ENOENT
        assert b.walk(ROOT, ["."])[0].qid == b.qid      # b itself is held
    finally:
        fs.close()


# --- groups ---------------------------------------------------------------------------------

@needs_root
def test_made_in_a_member_group_as_the_kernel_would(fs, exp):
    """The creator's group is the fsgid when the user is a member: the setgid bit of a
    new group-executable file survives (a chown after the fact would clear it)."""
    os.chmod(exp, 0o777)
    member = Context(uid=5000, gid=5000, groups=(5000, 777))
    r = fs.attach(member)
    r.create(member, "f", L_O_WRONLY | L_O_CREAT, 0o2755, 777).close(member)
    st = os.stat(os.path.join(exp, "f"))
    assert (st.st_uid, st.st_gid) == (5000, 777) and st.st_mode & stat.S_ISGID
    r.mkdir(member, "d", 0o775, 777)
    st = os.stat(os.path.join(exp, "d"))
    assert (st.st_uid, st.st_gid) == (5000, 777)
    # not a member (by the group database): the user's own group
    r.create(member, "g", L_O_WRONLY | L_O_CREAT, 0o644, 778).close(member)
    assert os.stat(os.path.join(exp, "g")).st_gid == 5000
    # chown to a member group; the kernel clears setgid on a chmod by a non-member
    g = r.walk(member, ["g"])[0]
    g.setattr(member, SetAttr(gid=777))
    assert os.stat(os.path.join(exp, "g")).st_gid == 777
    os.chown(os.path.join(exp, "g"), 5000, 999)
    g.setattr(member, SetAttr(mode=0o2755))
    assert stat.S_IMODE(os.stat(os.path.join(exp, "g")).st_mode) == 0o755


# --- unlinkat of a directory without AT_REMOVEDIR (p9fs) ---------------------------------

def test_unlinkat_removes_an_empty_directory_only(fs, exp):
    os.mkdir(os.path.join(exp, "empty"))
    os.makedirs(os.path.join(exp, "full/x"))
    r = fs.attach(ROOT)
    r.unlinkat(ROOT, "empty", 0)
    assert not os.path.exists(os.path.join(exp, "empty"))
    with pytest.raises(OSError) as ei:
        r.unlinkat(ROOT, "full", 0)
    assert ei.value.errno == errno.EISDIR
    assert os.path.isdir(os.path.join(exp, "full/x"))


# --- the streaming listing ----------------------------------------------------------------

def test_listing_holds_no_copy_of_the_directory(tmp_path):
    """20 fids list one directory, interleaved batch by batch: nothing is kept between
    batches, and a batch costs its own entries (bench/listing_bench.py: 100,000)."""
    d = tmp_path / "big"
    d.mkdir()
    for i in range(4000):
        (d / ("entry-%06d" % i)).write_bytes(b"")
    fs = RealFS(str(tmp_path))
    fids = []
    for _ in range(20):
        n = walk1(fs, "big")
        n.open(ROOT, L_O_RDONLY)
        fids.append([n, 0, 0])
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        live = fids
        while live:
            for st in live:
                batch = st[0].readdir(ROOT, st[1], 8192)
                st[1] = batch[-1].offset if batch else None
                st[2] += len(batch)
            live = [st for st in live if st[1] is not None]
            between = tracemalloc.get_traced_memory()[0] - base
            assert between < 300_000, between    # the last batch itself
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak            # (20 snapshots took 17 MB)
    for n, _, count in fids:
        assert count == 4002
        n.close(ROOT)
    fs.close()


def test_listing_lets_others_run(fs, exp, monkeypatch):
    os.mkdir(os.path.join(exp, "d"))
    for i in range(1000):
        open(os.path.join(exp, "d", "f%04d" % i), "wb").close()
    n = walk1(fs, "d")
    assert not n.may_block
    n.open(ROOT, L_O_RDONLY)
    assert n.may_block                                # its listing yields: not inline
    yields = []
    monkeypatch.setattr(listing_mod, "_yield", lambda: yields.append(0))
    assert len(n.readdir(ROOT, 0, 1 << 20)) == 1002
    assert len(yields) >= 3
    n.close(ROOT)


def test_listing_never_splits_one_offset(fs, exp, monkeypatch):
    """Entries that share a d_off (a hash collision) all go in one reply, so that the
    next batch, continuing after that offset, repeats none of them."""
    os.mkdir(os.path.join(exp, "d"))
    names = [b"c%02d" % i for i in range(50)]
    for nm in names:
        open(os.path.join(exp, "d", nm.decode()), "wb").close()
    # a fake directory: entry i's own position is 1000 + i // 2 (pairs collide)
    recs = [(1, 1000 + i // 2, 8, nm) for i, nm in enumerate(names)]
    offs = [r[1] for r in recs[1:]] + [1 << 40]
    recs = [(ino, off, t, nm) for (ino, _, t, nm), off in zip(recs, offs)]
    pos = {}

    def seek(fd, off):
        pos[fd] = 0 if off == 0 else min([i for i in range(len(recs))
                                          if 1000 + i // 2 >= off] + [len(recs)])

    def getdents(fd, size):
        i = pos[fd]
        pos[fd] = min(i + 4, len(recs))
        return recs[i:i + 4]
    monkeypatch.setattr(listing_mod, "_seekdir", seek)
    monkeypatch.setattr(listing_mod, "_getdents", getdents)
    d = walk1(fs, "d")
    d.open(ROOT, L_O_RDONLY)
    out, off = [], 0
    while True:
        b = d.readdir(ROOT, off, 3 * (24 + 3))         # room for three entries
        if not b:
            break
        assert len(b) <= 3
        out.extend(b)
        off = b[-1].offset
    assert [e.name for e in out] == [nm.decode() for nm in names]
    d.close(ROOT)
