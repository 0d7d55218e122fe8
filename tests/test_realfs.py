"""Tests of the real-file backend (nine.server.realfs), driven directly: no network."""

import errno
import os
import stat
import time

import pytest

from nine.protocol import QTDIR, QTSYMLINK, QTFILE
from nine.protocol.const import (
    L_O_RDONLY, L_O_WRONLY, L_O_RDWR, L_O_CREAT, L_O_EXCL, L_O_TRUNC, L_O_APPEND,
    L_O_NONBLOCK, L_O_DIRECTORY, LOCK_TYPE_RDLCK, LOCK_TYPE_WRLCK, LOCK_TYPE_UNLCK,
    LOCK_SUCCESS, LOCK_BLOCKED, AT_REMOVEDIR, DT_DIR, DT_REG, DT_LNK)
from nine.server.node import Context, SetAttr
from nine.server import realfs as realfs_mod
from nine.server import identity
from nine.server.identity import reset as reset_identity
from nine.server.realfs import RealFS

IS_ROOT = os.geteuid() == 0
ROOT = Context(uid=None)


def errno_of(excinfo):
    return excinfo.value.errno


@pytest.fixture(autouse=True)
def _identity_back():
    yield
    reset_identity()


def _have_openat2():
    try:
        os.close(realfs_mod._openat2(os.open("/", os.O_PATH), b".", os.O_PATH))
        return True
    except OSError:
        return False


HAVE_OPENAT2 = _have_openat2()


def _user_xattrs_ok(path):
    p = os.path.join(path, ".xattr-probe")
    open(p, "w").close()
    try:
        os.setxattr(p, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        os.unlink(p)


@pytest.fixture(params=["openat2", "fallback"])
def fs(request, tmp_path):
    if request.param == "openat2" and not HAVE_OPENAT2:
        pytest.skip("no openat2 on this kernel")
    exp = tmp_path / "export"
    exp.mkdir()
    f = RealFS(str(exp), use_openat2=(request.param == "openat2"))
    yield f
    f.close()


@pytest.fixture
def exp(fs):
    return fs.root_dir


def root(fs, ctx=ROOT):
    return fs.attach(ctx)


def walk1(fs, *names, ctx=ROOT):
    nodes = root(fs, ctx).walk(ctx, list(names))
    assert len(nodes) == len(names), nodes
    return nodes[-1]


def make(exp, rel, data=b""):
    p = os.path.join(exp, rel)
    with open(p, "wb") as f:
        f.write(data)
    return p


# --- walk, clone, getattr ---------------------------------------------------------------

def test_openat2_is_used_when_asked(fs):
    assert fs.uses_openat2 in (True, False)
    fs2 = RealFS(fs.root_dir)
    assert fs2.uses_openat2 == HAVE_OPENAT2
    fs2.close()


def test_attach_and_getattr_root(fs, exp):
    r = root(fs)
    a = r.getattr(ROOT)
    st = os.stat(exp)
    assert a.qid.type == QTDIR
    assert stat.S_ISDIR(a.mode)
    assert a.mode == st.st_mode and a.uid == st.st_uid and a.nlink == st.st_nlink
    assert a.mtime == st.st_mtime_ns and a.atime == st.st_atime_ns
    assert r.name == "/"
    assert r.qid == a.qid


def test_walk_basic_partial_and_errors(fs, exp):
    os.makedirs(os.path.join(exp, "a/b"))
    make(exp, "a/b/f", b"x")
    r = root(fs)
    nodes = r.walk(ROOT, ["a", "b", "f"])
    assert [n.qid.type for n in nodes] == [QTDIR, QTDIR, QTFILE]
    assert nodes[-1].name == "f"
    assert nodes[-1].qid.path == (os.stat(os.path.join(exp, "a/b/f")).st_ino)
    # partial walk: stops at the first missing name
    nodes = r.walk(ROOT, ["a", "nope", "x"])
    assert len(nodes) == 1 and nodes[0].qid.type == QTDIR
    # first name missing: an error
    with pytest.raises(OSError) as ei:
        r.walk(ROOT, ["nope"])
    assert errno_of(ei) == errno.ENOENT
    # walking through a file
    with pytest.raises(OSError) as ei:
        walk1(fs, "a", "b", "f").walk(ROOT, ["x"])
    assert errno_of(ei) == errno.ENOTDIR
    with pytest.raises(OSError) as ei:
        walk1(fs, "a", "b", "f").walk(ROOT, [".."])
    assert errno_of(ei) == errno.ENOTDIR
    assert len(r.walk(ROOT, ["a", "b", "f", "x"])) == 3
    # '..' and '.'
    b = walk1(fs, "a", "b")
    up = b.walk(ROOT, ["..", ".."])
    assert up[0].qid == walk1(fs, "a").qid
    assert up[1].qid == r.qid
    assert b.walk(ROOT, ["."])[0].qid == b.qid
    assert r.walk(ROOT, [])== []


def test_walk_dotdot_at_root_stays(fs, exp):
    r = root(fs)
    nodes = r.walk(ROOT, ["..", "..", "..", ".."])
    assert all(n.qid == r.qid for n in nodes)
    assert nodes[-1].name == "/"
    os.mkdir(os.path.join(exp, "d"))
    n = r.walk(ROOT, ["..", "..", "d", "..", "..", "d"])
    assert n[-1].qid == walk1(fs, "d").qid
    # the node is the export, so a walk to the outside's names fails
    outside = os.path.basename(exp)
    assert len(r.walk(ROOT, ["..", outside])) == 1          # partial: stops at the root
    with pytest.raises(OSError):
        r.walk(ROOT, [outside])


def test_clone(fs, exp):
    make(exp, "f", b"abc")
    n = walk1(fs, "f")
    c = n.clone(ROOT)
    assert c is not n and c.qid == n.qid
    c.open(ROOT, L_O_RDONLY)
    assert c.read(ROOT, 0, 10) == b"abc"
    assert n.fd is None
    c.close(ROOT)


def test_qid_stable_unique_and_hardlinks(fs, exp):
    for i in range(20):
        make(exp, "f%d" % i)
    os.link(os.path.join(exp, "f0"), os.path.join(exp, "hl"))
    paths = {walk1(fs, "f%d" % i).qid.path for i in range(20)}
    assert len(paths) == 20
    assert walk1(fs, "f3").qid.path == walk1(fs, "f3").qid.path
    assert walk1(fs, "hl").qid.path == walk1(fs, "f0").qid.path
    assert walk1(fs, "f3").getattr(ROOT).qid.path == walk1(fs, "f3").qid.path
    # qid.version follows the content of regular files, directories stay 0
    n = walk1(fs, "f1")
    v0 = n.getattr(ROOT).qid.version
    make(exp, "f1", b"more data")
    assert n.getattr(ROOT).qid.version != v0
    assert root(fs).getattr(ROOT).qid.version == 0


def test_qid_other_devices(fs):
    class St:
        def __init__(self, dev, ino):
            self.st_dev, self.st_ino = dev, ino
            self.st_mode = stat.S_IFREG | 0o644
            self.st_mtime_ns, self.st_size = 0, 0
    a = fs._qid(St(999999, 5)).path
    b = fs._qid(St(999998, 5)).path
    assert a != b and a >> 48 != 0 and a & ((1 << 48) - 1) == 5
    assert fs._qid(St(999999, 5)).path == a
    big1 = fs._qid(St(999999, 1 << 60)).path
    big2 = fs._qid(St(999998, 1 << 60)).path
    assert big1 != big2 and big1 >> 63 == 1 and big2 >> 63 == 1
    assert fs._qid(St(999999, 1 << 60)).path == big1


# --- open, read, write, create ---------------------------------------------------------------

def test_open_read_write(fs, exp):
    make(exp, "f", b"hello world")
    n = walk1(fs, "f")
    n.open(ROOT, L_O_RDWR | L_O_CREAT | L_O_NONBLOCK)    # what the kernel sends
    assert n.read(ROOT, 0, 5) == b"hello"
    assert n.read(ROOT, 6, 100) == b"world"
    assert n.read(ROOT, 100, 10) == b""
    assert n.write(ROOT, 6, b"WORLD!") == 6
    n.fsync(ROOT)
    n.fsync(ROOT, 1)
    n.close(ROOT)
    n.close(ROOT)                                  # idempotent
    assert open(os.path.join(exp, "f"), "rb").read() == b"hello WORLD!"
    with pytest.raises(OSError) as ei:
        n.read(ROOT, 0, 1)
    assert errno_of(ei) == errno.EBADF


def test_open_trunc_and_append(fs, exp):
    make(exp, "f", b"0123456789")
    n = walk1(fs, "f")
    n.open(ROOT, L_O_WRONLY | L_O_TRUNC)
    assert os.path.getsize(os.path.join(exp, "f")) == 0
    n.write(ROOT, 0, b"abc")
    n.close(ROOT)
    n = walk1(fs, "f")
    n.open(ROOT, L_O_WRONLY | L_O_APPEND)
    n.write(ROOT, 0, b"def")
    n.write(ROOT, 0, b"ghi")
    n.close(ROOT)
    assert open(os.path.join(exp, "f"), "rb").read() == b"abcdefghi"


def test_open_directory_and_errors(fs, exp):
    os.mkdir(os.path.join(exp, "d"))
    d = walk1(fs, "d")
    with pytest.raises(OSError) as ei:
        d.open(ROOT, L_O_WRONLY)
    assert errno_of(ei) == errno.EISDIR
    d.open(ROOT, L_O_RDONLY | L_O_DIRECTORY)
    with pytest.raises(OSError) as ei:
        d.read(ROOT, 0, 10)
    assert errno_of(ei) == errno.EISDIR
    d.close(ROOT)
    make(exp, "f")
    with pytest.raises(OSError) as ei:
        walk1(fs, "f").open(ROOT, L_O_RDONLY | L_O_DIRECTORY)
    assert errno_of(ei) == errno.ENOTDIR


def test_create(fs, exp):
    r = root(fs)
    n = r.create(ROOT, "new", L_O_RDWR | L_O_CREAT, 0o640, None)
    assert n is not r and n.fd is not None and r.fd is None
    assert n.qid.type == QTFILE and n.name == "new"
    n.write(ROOT, 0, b"data")
    assert n.read(ROOT, 0, 10) == b"data"
    st = os.stat(os.path.join(exp, "new"))
    assert stat.S_IMODE(st.st_mode) == 0o640             # no umask applied
    assert n.getattr(ROOT).qid.path == st.st_ino
    n.close(ROOT)
    with pytest.raises(OSError) as ei:
        r.create(ROOT, "new", L_O_RDWR | L_O_CREAT | L_O_EXCL, 0o644, None)
    assert errno_of(ei) == errno.EEXIST
    # without O_EXCL an existing file is opened (a lookup/create race on the client)
    n = r.create(ROOT, "new", L_O_RDWR | L_O_CREAT, 0o600, None)
    assert n.read(ROOT, 0, 10) == b"data"
    n.close(ROOT)
    assert stat.S_IMODE(os.stat(os.path.join(exp, "new")).st_mode) == 0o640
    # gid argument
    n = r.create(ROOT, "g", L_O_WRONLY | L_O_CREAT, 0o644, 4321 if IS_ROOT else None)
    n.close(ROOT)
    if IS_ROOT:
        assert os.stat(os.path.join(exp, "g")).st_gid == 4321


def test_create_in_file_fails(fs, exp):
    make(exp, "f")
    with pytest.raises(OSError) as ei:
        walk1(fs, "f").create(ROOT, "x", L_O_RDWR | L_O_CREAT, 0o644, None)
    assert errno_of(ei) == errno.ENOTDIR


# --- setattr, statfs ----------------------------------------------------------------------------

def test_setattr_mode_size_times(fs, exp):
    p = make(exp, "f", b"0123456789")
    n = walk1(fs, "f")
    n.setattr(ROOT, SetAttr(mode=0o4751))
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4751
    n.setattr(ROOT, SetAttr(size=4))
    assert open(p, "rb").read() == b"0123"
    n.setattr(ROOT, SetAttr(size=100))
    assert os.path.getsize(p) == 100
    n.setattr(ROOT, SetAttr(atime=1_000_000_123, mtime=2_000_000_456))
    st = os.stat(p)
    assert st.st_atime_ns == 1_000_000_123 and st.st_mtime_ns == 2_000_000_456
    n.setattr(ROOT, SetAttr(mtime=3_000_000_000))                # atime left alone
    st = os.stat(p)
    assert st.st_atime_ns == 1_000_000_123 and st.st_mtime_ns == 3_000_000_000
    before = time.time_ns()
    n.setattr(ROOT, SetAttr(atime=SetAttr.NOW, mtime=SetAttr.NOW))
    st = os.stat(p)
    assert st.st_mtime_ns >= before - 20_000_000 and st.st_atime_ns >= before - 20_000_000
    a = n.getattr(ROOT)
    assert a.mtime == st.st_mtime_ns and a.size == 100
    n.setattr(ROOT, SetAttr(ctime=True))                         # harmless
    # directories
    os.mkdir(os.path.join(exp, "d"))
    d = walk1(fs, "d")
    d.setattr(ROOT, SetAttr(mode=0o700, mtime=5_000_000_000))
    st = os.stat(os.path.join(exp, "d"))
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_mtime_ns == 5_000_000_000
    with pytest.raises(OSError) as ei:
        d.setattr(ROOT, SetAttr(size=0))
    assert errno_of(ei) == errno.EISDIR
    # the root itself
    root(fs).setattr(ROOT, SetAttr(mtime=6_000_000_000))
    assert os.stat(exp).st_mtime_ns == 6_000_000_000


def test_setattr_on_open_node_and_readonly_fd_truncate(fs, exp):
    p = make(exp, "f", b"0123456789")
    n = walk1(fs, "f")
    n.open(ROOT, L_O_RDONLY)
    n.setattr(ROOT, SetAttr(size=3, mode=0o600, mtime=7_000_000_000))
    st = os.stat(p)
    assert st.st_size == 3 and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_mtime_ns == 7_000_000_000
    n.close(ROOT)


@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_setattr_chown(fs, exp):
    p = make(exp, "f")
    n = walk1(fs, "f")
    n.setattr(ROOT, SetAttr(uid=1234, gid=5678))
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    n.setattr(ROOT, SetAttr(gid=42))
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 42)
    os.symlink("f", os.path.join(exp, "l"))
    walk1(fs, "l").setattr(ROOT, SetAttr(uid=77, gid=88))
    st = os.lstat(os.path.join(exp, "l"))
    assert (st.st_uid, st.st_gid) == (77, 88)
    assert os.stat(p).st_uid == 1234                       # not followed


def test_setattr_symlink_times_not_followed(fs, exp):
    p = make(exp, "f")
    os.utime(p, ns=(1, 1))
    os.symlink("f", os.path.join(exp, "l"))
    l = walk1(fs, "l")
    l.setattr(ROOT, SetAttr(mtime=9_000_000_000))
    assert os.lstat(os.path.join(exp, "l")).st_mtime_ns == 9_000_000_000
    assert os.stat(p).st_mtime_ns == 1
    with pytest.raises(OSError) as ei:
        l.setattr(ROOT, SetAttr(mode=0o777))
    assert errno_of(ei) == errno.EOPNOTSUPP
    assert stat.S_IMODE(os.stat(p).st_mode) != 0o777


def test_statfs(fs, exp):
    s = root(fs).statfs(ROOT)
    v = os.statvfs(exp)
    assert s.bsize == v.f_bsize and s.blocks == v.f_blocks
    assert s.namelen == 255 and s.type != 0
    make(exp, "f")
    f = walk1(fs, "f")
    assert f.statfs(ROOT).blocks == v.f_blocks
    f.open(ROOT, L_O_RDONLY)
    assert f.statfs(ROOT).blocks == v.f_blocks
    f.close(ROOT)


# --- mkdir, symlink, mknod, link, rename, unlink --------------------------------------------------

def test_mkdir_symlink_mknod(fs, exp):
    r = root(fs)
    q = r.mkdir(ROOT, "d", 0o751, None)
    assert q.type == QTDIR
    st = os.stat(os.path.join(exp, "d"))
    assert stat.S_IMODE(st.st_mode) == 0o751 and q.path == st.st_ino
    with pytest.raises(OSError) as ei:
        r.mkdir(ROOT, "d", 0o755, None)
    assert errno_of(ei) == errno.EEXIST
    q = r.symlink(ROOT, "l", "d/target", None)
    assert q.type == QTSYMLINK
    assert os.readlink(os.path.join(exp, "l")) == "d/target"
    assert walk1(fs, "l").readlink(ROOT) == "d/target"
    with pytest.raises(OSError) as ei:
        walk1(fs, "d").readlink(ROOT)
    assert errno_of(ei) == errno.EINVAL
    q = r.mknod(ROOT, "fifo", stat.S_IFIFO | 0o644, 0, 0, None)
    assert stat.S_ISFIFO(os.stat(os.path.join(exp, "fifo")).st_mode)
    r.mknod(ROOT, "sock", stat.S_IFSOCK | 0o644, 0, 0, None)
    assert stat.S_ISSOCK(os.lstat(os.path.join(exp, "sock")).st_mode)
    r.mknod(ROOT, "reg", 0o600, 0, 0, None)
    assert stat.S_ISREG(os.lstat(os.path.join(exp, "reg")).st_mode)
    if IS_ROOT:
        fs.allow_devices = True         # (refused by default: tests/test_holes.py)
        r.mknod(ROOT, "null", stat.S_IFCHR | 0o666, 1, 3, None)
        st = os.lstat(os.path.join(exp, "null"))
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        a = walk1(fs, "null").getattr(ROOT)
        assert a.rdev == os.makedev(1, 3)
        r.mknod(ROOT, "blk", stat.S_IFBLK | 0o600, 7, 0, None)
        assert stat.S_ISBLK(os.lstat(os.path.join(exp, "blk")).st_mode)
        r.mkdir(ROOT, "gd", 0o755, 999)
        assert os.stat(os.path.join(exp, "gd")).st_gid == 999
        r.symlink(ROOT, "gl", "x", 998)
        assert os.lstat(os.path.join(exp, "gl")).st_gid == 998


def test_fifo_open_read_write(fs, exp):
    os.mkfifo(os.path.join(exp, "p"))
    w = walk1(fs, "p")
    rd = walk1(fs, "p")
    rd.open(ROOT, L_O_RDONLY)                 # does not block the thread
    w.open(ROOT, L_O_WRONLY)
    assert w.write(ROOT, 0, b"ping") == 4
    assert rd.read(ROOT, 0, 100) == b"ping"
    w.close(ROOT)
    assert rd.read(ROOT, 0, 100) == b""        # writer gone: EOF
    rd.close(ROOT)


def test_link(fs, exp):
    make(exp, "f", b"x")
    os.mkdir(os.path.join(exp, "d"))
    walk1(fs, "d").link(ROOT, walk1(fs, "f"), "hard")
    st = os.stat(os.path.join(exp, "d/hard"))
    assert st.st_ino == os.stat(os.path.join(exp, "f")).st_ino and st.st_nlink == 2
    assert walk1(fs, "d", "hard").qid.path == walk1(fs, "f").qid.path
    # a symlink is linked itself, not its target
    os.symlink("/etc/passwd", os.path.join(exp, "l"))
    root(fs).link(ROOT, walk1(fs, "l"), "l2")
    assert os.readlink(os.path.join(exp, "l2")) == "/etc/passwd"
    with pytest.raises(OSError) as ei:
        root(fs).link(ROOT, walk1(fs, "f"), "l2")
    assert errno_of(ei) == errno.EEXIST


def test_renameat_and_rename(fs, exp):
    os.mkdir(os.path.join(exp, "a"))
    os.mkdir(os.path.join(exp, "b"))
    make(exp, "a/f", b"F")
    make(exp, "b/g", b"G")
    a, b = walk1(fs, "a"), walk1(fs, "b")
    f = walk1(fs, "a", "f")
    a.renameat(ROOT, "f", b, "f2")                   # across directories
    assert not os.path.exists(os.path.join(exp, "a/f"))
    assert open(os.path.join(exp, "b/f2"), "rb").read() == b"F"
    # the fid of the renamed file follows it
    assert f.name == "f2"
    f.open(ROOT, L_O_RDONLY)
    assert f.read(ROOT, 0, 10) == b"F"
    f.close(ROOT)
    g = walk1(fs, "b", "g")
    b.renameat(ROOT, "f2", b, "g")                   # over an existing file
    assert open(os.path.join(exp, "b/g"), "rb").read() == b"F"
    with pytest.raises(OSError) as ei:               # the fid of the replaced file is stale
        g.getattr(ROOT)
    assert errno_of(ei) == errno.ENOENT
    assert f.getattr(ROOT).size == 1
    # Trename: the node renames itself
    f.rename(ROOT, a, "back")
    assert open(os.path.join(exp, "a/back"), "rb").read() == b"F"
    assert f.getattr(ROOT).qid.type == QTFILE
    with pytest.raises(OSError) as ei:
        root(fs).rename(ROOT, a, "x")
    assert errno_of(ei) == errno.EBUSY
    with pytest.raises(OSError) as ei:
        a.renameat(ROOT, "missing", b, "x")
    assert errno_of(ei) == errno.ENOENT


def test_rename_directory_moves_descendant_fids(fs, exp):
    os.makedirs(os.path.join(exp, "top/sub"))
    make(exp, "top/sub/f", b"deep")
    deep = walk1(fs, "top", "sub", "f")
    sub = walk1(fs, "top", "sub")
    root(fs).renameat(ROOT, "top", root(fs), "moved")
    assert deep.getattr(ROOT).size == 4
    deep.open(ROOT, L_O_RDONLY)
    assert deep.read(ROOT, 0, 10) == b"deep"
    deep.close(ROOT)
    assert sub.walk(ROOT, [".."])[0].name == "moved"
    sub.create(ROOT, "new", L_O_WRONLY | L_O_CREAT, 0o644, None).close(ROOT)
    assert os.path.exists(os.path.join(exp, "moved/sub/new"))
    # a new file where the old name was is not reached by the old fids
    os.makedirs(os.path.join(exp, "top/sub"))
    make(exp, "top/sub/f", b"other")
    assert deep.getattr(ROOT).size == 4


def test_rename_hardlink_onto_itself(fs, exp):
    make(exp, "f", b"x")
    os.link(os.path.join(exp, "f"), os.path.join(exp, "g"))
    f = walk1(fs, "f")
    g = walk1(fs, "g")
    root(fs).renameat(ROOT, "f", root(fs), "g")        # POSIX: does nothing
    assert os.path.exists(os.path.join(exp, "f")) and os.path.exists(os.path.join(exp, "g"))
    f.getattr(ROOT)
    g.getattr(ROOT)


def test_unlinkat_and_remove(fs, exp):
    os.makedirs(os.path.join(exp, "d/e"))
    make(exp, "d/f")
    make(exp, "d/e/x")
    d = walk1(fs, "d")
    d.unlinkat(ROOT, "f", 0)
    assert not os.path.exists(os.path.join(exp, "d/f"))
    with pytest.raises(OSError) as ei:
        d.unlinkat(ROOT, "e", AT_REMOVEDIR)
    assert errno_of(ei) == errno.ENOTEMPTY
    with pytest.raises(OSError) as ei:
        d.unlinkat(ROOT, "e", 0)
    assert errno_of(ei) in (errno.EISDIR, errno.EPERM)
    walk1(fs, "d", "e", "x").remove(ROOT)
    e = walk1(fs, "d", "e")
    d.unlinkat(ROOT, "e", AT_REMOVEDIR)
    with pytest.raises(OSError) as ei:
        e.getattr(ROOT)
    assert errno_of(ei) == errno.ENOENT
    os.mkdir(os.path.join(exp, "d/e"))                 # a new 'e' is not the old fid's
    with pytest.raises(OSError):
        e.getattr(ROOT)
    walk1(fs, "d", "e").remove(ROOT)
    walk1(fs, "d").remove(ROOT)
    assert os.listdir(exp) == []
    with pytest.raises(OSError) as ei:
        root(fs).remove(ROOT)
    assert errno_of(ei) == errno.EBUSY
    with pytest.raises(OSError) as ei:
        root(fs).unlinkat(ROOT, "missing", 0)
    assert errno_of(ei) == errno.ENOENT


def test_remove_symlink_not_target(fs, exp):
    make(exp, "f")
    os.symlink("f", os.path.join(exp, "l"))
    walk1(fs, "l").remove(ROOT)
    assert os.path.exists(os.path.join(exp, "f")) and not os.path.lexists(os.path.join(exp, "l"))


# --- readdir --------------------------------------------------------------------------------

def readall(node, count=4096, start=0):
    out = []
    off = start
    while True:
        batch = node.readdir(ROOT, off, count)
        if not batch:
            return out
        out.extend(batch)
        off = batch[-1].offset


def test_readdir_small(fs, exp):
    os.mkdir(os.path.join(exp, "d"))
    make(exp, "f")
    os.symlink("f", os.path.join(exp, "l"))
    r = root(fs)
    r.open(ROOT, L_O_RDONLY | L_O_DIRECTORY)
    ents = readall(r)
    names = [e.name for e in ents]
    assert sorted(names) == [".", "..", "d", "f", "l"]
    by = {e.name: e for e in ents}
    assert by["d"].type == DT_DIR and by["d"].qid.type == QTDIR
    assert by["f"].type == DT_REG and by["l"].type == DT_LNK
    assert by["l"].qid.type == QTSYMLINK
    assert by["f"].qid == walk1(fs, "f").qid
    assert by["."].qid.path == r.qid.path and by[".."].qid.path == r.qid.path
    assert len({e.offset for e in ents}) == len(ents)
    # rewinding gives the same listing
    assert [e.name for e in readall(r)] == names
    r.close(ROOT)
    d = walk1(fs, "d")
    d.open(ROOT, L_O_RDONLY)
    ents = readall(d)
    assert sorted(e.name for e in ents) == [".", ".."]
    assert {e.name: e for e in ents}[".."].qid.path == r.qid.path
    d.close(ROOT)
    with pytest.raises(OSError) as ei:
        walk1(fs, "f").readdir(ROOT, 0, 100)
    assert errno_of(ei) == errno.EBADF


def test_readdir_2000_batches_with_deletes(fs, exp):
    os.mkdir(os.path.join(exp, "big"))
    names = ["file-%04d-%s" % (i, "x" * (i % 37)) for i in range(2000)]
    for n in names:
        make(exp, "big/" + n)
    d = walk1(fs, "big")
    d.open(ROOT, L_O_RDONLY)
    seen = []
    deleted = set()
    off = 0
    batches = 0
    while True:
        batch = d.readdir(ROOT, off, 1000)
        if not batch:
            break
        batches += 1
        assert sum(24 + len(e.name.encode()) for e in batch) <= 1000
        seen.extend(e.name for e in batch)
        off = batch[-1].offset
        # delete a few names not yet listed, and a few already listed, between batches
        remaining = [n for n in names if n not in seen and n not in deleted]
        for n in remaining[:7] + seen[-3:]:
            if n not in (".", "..") and n not in deleted:
                os.unlink(os.path.join(exp, "big", n))
                deleted.add(n)
        # a new file created meanwhile may or may not be listed: never twice
        make(exp, "big/new-%d" % batches)
    assert batches > 20
    real = [n for n in seen if n not in (".", "..") and not n.startswith("new-")]
    assert len(real) == len(set(real)), "an entry was repeated"
    assert len(seen) == len(set(seen))
    # every name never deleted was listed; no name deleted before being listed appears
    must = set(names) - deleted
    assert must <= set(real), "entries lost: %r" % sorted(must - set(real))[:5]
    for n in real:
        assert n in names
    d.close(ROOT)


def test_readdir_cookie_valid_on_another_fid(fs, exp):
    os.mkdir(os.path.join(exp, "d"))
    for i in range(300):
        make(exp, "d/n%03d" % i)
    a = walk1(fs, "d")
    a.open(ROOT, L_O_RDONLY)
    first = a.readdir(ROOT, 0, 2000)
    cookie = first[-1].offset
    rest_a = readall(a, 2000, cookie)
    a.close(ROOT)
    os.unlink(os.path.join(exp, "d", first[-1].name))      # the cookie's own entry is gone
    b = walk1(fs, "d")
    b.open(ROOT, L_O_RDONLY)
    rest_b = readall(b, 2000, cookie)
    assert [e.name for e in rest_b] == [e.name for e in rest_a]
    b.close(ROOT)
    all_names = [e.name for e in first] + [e.name for e in rest_a]
    assert sorted(all_names) == sorted([".", ".."] + ["n%03d" % i for i in range(300)])


# --- unlinked open file ---------------------------------------------------------------------------

def test_unlinked_open_file_stays_usable(fs, exp):
    p = make(exp, "f", b"contents")
    n = walk1(fs, "f")
    n.open(ROOT, L_O_RDWR)
    ro = walk1(fs, "f")
    ro.open(ROOT, L_O_RDONLY)
    root(fs).unlinkat(ROOT, "f", 0)
    assert not os.path.exists(p)
    a = n.getattr(ROOT)
    assert a.nlink == 0 and a.size == 8
    assert n.read(ROOT, 0, 100) == b"contents"
    n.write(ROOT, 8, b"+more")
    assert n.read(ROOT, 0, 100) == b"contents+more"
    n.setattr(ROOT, SetAttr(size=4))
    assert n.read(ROOT, 0, 100) == b"cont"
    ro.setattr(ROOT, SetAttr(size=2))                   # through a read-only open
    assert ro.read(ROOT, 0, 100) == b"co"
    n.setattr(ROOT, SetAttr(mode=0o600, mtime=1_000_000_000))
    a = ro.getattr(ROOT)
    assert stat.S_IMODE(a.mode) == 0o600 and a.mtime == 1_000_000_000 and a.size == 2
    if _user_xattrs_ok(exp):
        n.setxattr(ROOT, "user.k", b"v", 0)
        assert ro.getxattr(ROOT, "user.k") == b"v"
    n.fsync(ROOT)
    n.close(ROOT)
    ro.close(ROOT)
    # a new file of that name is not the old fid's
    make(exp, "f", b"new")
    with pytest.raises(OSError) as ei:
        n.getattr(ROOT)
    assert errno_of(ei) == errno.ENOENT


# --- locks ----------------------------------------------------------------------------------------

def test_lock_conflicts_between_fids(fs, exp):
    make(exp, "f", b"x" * 100)
    a = walk1(fs, "f")
    b = walk1(fs, "f")
    a.open(ROOT, L_O_RDWR)
    b.open(ROOT, L_O_RDWR)
    assert a.lock(ROOT, LOCK_TYPE_WRLCK, 0, 0, 10, 111, "cl") == LOCK_SUCCESS
    assert b.lock(ROOT, LOCK_TYPE_WRLCK, 0, 5, 10, 222, "cl") == LOCK_BLOCKED
    assert b.lock(ROOT, LOCK_TYPE_RDLCK, 1, 0, 1, 222, "cl") == LOCK_BLOCKED
    assert b.lock(ROOT, LOCK_TYPE_WRLCK, 0, 10, 10, 222, "cl") == LOCK_SUCCESS   # no overlap
    t, start, length, pid, cid = b.getlock(ROOT, LOCK_TYPE_WRLCK, 0, 0, 222, "cl")
    assert t == LOCK_TYPE_WRLCK and start == 0 and length == 10
    t, *_ = b.getlock(ROOT, LOCK_TYPE_WRLCK, 50, 10, 222, "cl")
    assert t == LOCK_TYPE_UNLCK
    t, *_ = a.getlock(ROOT, LOCK_TYPE_WRLCK, 0, 10, 111, "cl")      # own lock: no conflict
    assert t == LOCK_TYPE_UNLCK
    assert a.lock(ROOT, LOCK_TYPE_UNLCK, 0, 0, 10, 111, "cl") == LOCK_SUCCESS
    assert b.lock(ROOT, LOCK_TYPE_WRLCK, 0, 0, 0, 222, "cl") == LOCK_SUCCESS     # whole file
    assert a.lock(ROOT, LOCK_TYPE_RDLCK, 0, 500, 2 ** 64 - 1, 111, "cl") == LOCK_BLOCKED
    b.close(ROOT)                                                    # close releases
    assert a.lock(ROOT, LOCK_TYPE_WRLCK, 0, 0, 0, 111, "cl") == LOCK_SUCCESS
    a.close(ROOT)


def test_read_locks_share(fs, exp):
    make(exp, "f", b"x")
    a, b = walk1(fs, "f"), walk1(fs, "f")
    a.open(ROOT, L_O_RDONLY)
    b.open(ROOT, L_O_RDONLY)
    assert a.lock(ROOT, LOCK_TYPE_RDLCK, 0, 0, 0, 1, "") == LOCK_SUCCESS
    assert b.lock(ROOT, LOCK_TYPE_RDLCK, 0, 0, 0, 2, "") == LOCK_SUCCESS
    t, *_ = b.getlock(ROOT, LOCK_TYPE_RDLCK, 0, 0, 2, "")
    assert t == LOCK_TYPE_UNLCK
    t, *_ = b.getlock(ROOT, LOCK_TYPE_WRLCK, 0, 0, 2, "")
    assert t == LOCK_TYPE_RDLCK
    with pytest.raises(OSError):
        walk1(fs, "f").lock(ROOT, LOCK_TYPE_RDLCK, 0, 0, 0, 3, "")     # not open
    a.close(ROOT)
    b.close(ROOT)


# --- xattrs -----------------------------------------------------------------------------------

def test_xattrs(fs, exp):
    if not _user_xattrs_ok(exp):
        pytest.skip("no user xattrs on this file system")
    p = make(exp, "f")
    n = walk1(fs, "f")
    with pytest.raises(OSError) as ei:
        n.getxattr(ROOT, "user.missing")
    assert errno_of(ei) == errno.ENODATA
    with pytest.raises(OSError) as ei:
        n.getxattr(ROOT, "security.capability")
    assert errno_of(ei) in (errno.ENODATA, errno.EOPNOTSUPP)
    n.setxattr(ROOT, "user.a", b"1", 0)
    n.setxattr(ROOT, "user.b", b"\x00\xff" * 100, 0)
    assert os.getxattr(p, "user.a") == b"1"
    assert n.getxattr(ROOT, "user.b") == b"\x00\xff" * 100
    assert {"user.a", "user.b"} <= set(n.listxattr(ROOT))
    with pytest.raises(OSError) as ei:
        n.setxattr(ROOT, "user.a", b"2", os.XATTR_CREATE)
    assert errno_of(ei) == errno.EEXIST
    with pytest.raises(OSError) as ei:
        n.setxattr(ROOT, "user.zz", b"2", os.XATTR_REPLACE)
    assert errno_of(ei) == errno.ENODATA
    n.removexattr(ROOT, "user.a")
    with pytest.raises(OSError) as ei:
        n.removexattr(ROOT, "user.a")
    assert errno_of(ei) == errno.ENODATA
    assert "user.a" not in n.listxattr(ROOT)
    # open node, directory, root
    n.open(ROOT, L_O_RDONLY)
    assert n.getxattr(ROOT, "user.b") == b"\x00\xff" * 100
    n.close(ROOT)
    os.mkdir(os.path.join(exp, "d"))
    walk1(fs, "d").setxattr(ROOT, "user.d", b"dir", 0)
    assert os.getxattr(os.path.join(exp, "d"), "user.d") == b"dir"
    r = root(fs)
    r.setxattr(ROOT, "user.r", b"root", 0)
    assert r.getxattr(ROOT, "user.r") == b"root"
    assert "user.r" in r.listxattr(ROOT)
    # a symlink: its own xattrs, never its target's
    os.symlink("f", os.path.join(exp, "l"))
    l = walk1(fs, "l")
    with pytest.raises(OSError) as ei:
        l.getxattr(ROOT, "user.b")
    assert errno_of(ei) == errno.ENODATA
    with pytest.raises(OSError) as ei:
        l.getxattr(ROOT, "security.capability")
    assert errno_of(ei) in (errno.ENODATA, errno.EOPNOTSUPP)
    assert "user.b" not in l.listxattr(ROOT)


# --- confinement ----------------------------------------------------------------------------------

@pytest.fixture
def outside(tmp_path):
    o = tmp_path / "outside"
    o.mkdir()
    (o / "secret").write_bytes(b"SECRET")
    return str(o)


def test_symlink_escape_refused(fs, exp, outside):
    os.symlink("/etc", os.path.join(exp, "etc"))
    os.symlink("../../..", os.path.join(exp, "up"))
    os.symlink(outside, os.path.join(exp, "out"))
    os.symlink("../outside/secret", os.path.join(exp, "sec"))
    os.mkdir(os.path.join(exp, "d"))
    os.symlink("..", os.path.join(exp, "d", "dd"))
    r = root(fs)
    for name, rest in (("etc", "passwd"), ("up", "etc"), ("out", "secret"), ("d", "dd")):
        nodes = r.walk(ROOT, [name, rest] if name != "d" else ["d", "dd", "outside"])
        # walking TO the symlink gives the symlink; walking THROUGH it is refused
        assert nodes[-1].qid.type == QTSYMLINK, (name, nodes)
        with pytest.raises(OSError) as ei:
            nodes[-1].walk(ROOT, ["x"])
        assert errno_of(ei) in (errno.ENOTDIR, errno.ELOOP)
    for name in ("etc", "up", "out", "sec"):
        n = walk1(fs, name)
        with pytest.raises(OSError) as ei:
            n.open(ROOT, L_O_RDONLY)
        assert errno_of(ei) in (errno.ELOOP, errno.ENOTDIR)
        with pytest.raises(OSError):
            n.create(ROOT, "x", L_O_RDWR | L_O_CREAT, 0o644, None)
        with pytest.raises(OSError):
            n.mkdir(ROOT, "x", 0o755, None)
        with pytest.raises(OSError):
            n.unlinkat(ROOT, "secret", 0)
        # operations on the symlink node itself never touch the target
        a = n.getattr(ROOT)
        assert stat.S_ISLNK(a.mode)
        with pytest.raises(OSError):
            n.setattr(ROOT, SetAttr(size=0))
        with pytest.raises(OSError):
            n.setattr(ROOT, SetAttr(mode=0o777))
    assert open(os.path.join(outside, "secret"), "rb").read() == b"SECRET"
    assert stat.S_IMODE(os.stat(os.path.join(outside, "secret")).st_mode) != 0o777
    # a dangling symlink is not created through
    os.symlink(os.path.join(outside, "created"), os.path.join(exp, "dangle"))
    with pytest.raises(OSError):
        r.create(ROOT, "dangle", L_O_RDWR | L_O_CREAT, 0o644, None)
    assert not os.path.exists(os.path.join(outside, "created"))
    # hard-linking the symlink links the symlink; renaming over it replaces it
    r.link(ROOT, walk1(fs, "sec"), "sec2")
    assert os.path.islink(os.path.join(exp, "sec2"))


def test_invalid_names(fs, exp, outside):
    os.mkdir(os.path.join(exp, "d"))
    make(exp, "d/f", b"f")
    r = root(fs)
    d = walk1(fs, "d")
    bad = ["..", ".", "a/b", "../outside", "/etc/passwd", "", "x\0y",
           "../../outside/secret", b"a/b", b".."]
    for name in bad:
        for op in (lambda: r.create(ROOT, name, L_O_RDWR | L_O_CREAT, 0o644, None),
                   lambda: r.mkdir(ROOT, name, 0o755, None),
                   lambda: r.symlink(ROOT, name, "t", None),
                   lambda: r.mknod(ROOT, name, stat.S_IFIFO | 0o644, 0, 0, None),
                   lambda: r.link(ROOT, walk1(fs, "d", "f"), name),
                   lambda: d.renameat(ROOT, "f", r, name),
                   lambda: r.renameat(ROOT, name, d, "g"),
                   lambda: walk1(fs, "d", "f").rename(ROOT, r, name),
                   lambda: r.unlinkat(ROOT, name, 0),
                   lambda: r.unlinkat(ROOT, name, AT_REMOVEDIR)):
            with pytest.raises(OSError) as ei:
                op()
            assert errno_of(ei) in (errno.EINVAL, errno.ENOENT), (name, ei.value)
    for name in ["a/b", "../outside", "/etc", "", "x\0y", "d/f"]:
        with pytest.raises(OSError) as ei:
            r.walk(ROOT, [name])
        assert errno_of(ei) in (errno.EINVAL, errno.ENOENT)
    assert sorted(os.listdir(exp)) == ["d"] and os.listdir(os.path.join(exp, "d")) == ["f"]
    assert sorted(os.listdir(outside)) == ["secret"]


def test_dir_swapped_for_symlink_after_walk(fs, exp, outside):
    """A race: a directory walked earlier is replaced by a symlink to the outside.  Its
    fids hold the directory (now d.old) and its file: they act there, never outside."""
    os.mkdir(os.path.join(exp, "d"))
    make(exp, "d/secret", b"inside")
    d = walk1(fs, "d")
    f = walk1(fs, "d", "secret")
    os.rename(os.path.join(exp, "d"), os.path.join(exp, "d.old"))
    os.symlink(outside, os.path.join(exp, "d"))
    f.open(ROOT, L_O_RDONLY)
    assert f.read(ROOT, 0, 100) == b"inside"
    f.close(ROOT)
    f.setattr(ROOT, SetAttr(size=0, mode=0o777))
    assert f.getattr(ROOT).size == 0
    assert d.walk(ROOT, ["secret"])[0].qid.path == f.qid.path
    d.create(ROOT, "new", L_O_RDWR | L_O_CREAT, 0o644, None).close(ROOT)
    d.mkdir(ROOT, "newdir", 0o755, None)
    d.symlink(ROOT, "newlink", "x", None)
    f.rename(ROOT, root(fs), "moved")            # out of d.old, to the export's root
    assert sorted(os.listdir(os.path.join(exp, "d.old"))) == ["new", "newdir", "newlink"]
    assert os.path.getsize(os.path.join(exp, "moved")) == 0
    assert open(os.path.join(outside, "secret"), "rb").read() == b"SECRET"
    assert stat.S_IMODE(os.stat(os.path.join(outside, "secret")).st_mode) != 0o777
    assert sorted(os.listdir(outside)) == ["secret"]
    # d itself (the symlink now) is a symlink node when walked afresh
    assert walk1(fs, "d").qid.type == QTSYMLINK


def test_rename_cannot_leave_export(fs, exp, outside):
    make(exp, "f", b"F")
    r = root(fs)
    other = RealFS(outside)
    try:
        with pytest.raises(OSError) as ei:
            r.renameat(ROOT, "f", other.attach(ROOT), "f")
        assert errno_of(ei) == errno.EXDEV
        with pytest.raises(OSError) as ei:
            r.link(ROOT, other.attach(ROOT).walk(ROOT, ["secret"])[0], "s")
        assert errno_of(ei) == errno.EXDEV
    finally:
        other.close()
    assert os.path.exists(os.path.join(exp, "f"))


# --- read-only ---------------------------------------------------------------------------

def test_read_only(tmp_path):
    exp = tmp_path / "ro"
    exp.mkdir()
    (exp / "f").write_bytes(b"data")
    (exp / "d").mkdir()
    fs = RealFS(str(exp), read_only=True)
    r = fs.attach(ROOT)
    f = r.walk(ROOT, ["f"])[0]
    d = r.walk(ROOT, ["d"])[0]
    ops = [lambda: f.open(ROOT, L_O_WRONLY), lambda: f.open(ROOT, L_O_RDWR),
           lambda: f.open(ROOT, L_O_RDONLY | L_O_TRUNC),
           lambda: f.setattr(ROOT, SetAttr(mode=0o600)),
           lambda: f.setattr(ROOT, SetAttr(size=0)),
           lambda: r.create(ROOT, "n", L_O_RDWR | L_O_CREAT, 0o644, None),
           lambda: r.mkdir(ROOT, "n", 0o755, None),
           lambda: r.symlink(ROOT, "n", "f", None),
           lambda: r.mknod(ROOT, "n", stat.S_IFIFO | 0o644, 0, 0, None),
           lambda: r.link(ROOT, f, "n"),
           lambda: r.renameat(ROOT, "f", r, "g"),
           lambda: f.rename(ROOT, d, "g"),
           lambda: r.unlinkat(ROOT, "f", 0),
           lambda: r.unlinkat(ROOT, "d", AT_REMOVEDIR),
           lambda: f.remove(ROOT),
           lambda: f.setxattr(ROOT, "user.x", b"1", 0),
           lambda: f.removexattr(ROOT, "user.x")]
    for op in ops:
        with pytest.raises(OSError) as ei:
            op()
        assert errno_of(ei) == errno.EROFS
    f.open(ROOT, L_O_RDONLY)
    assert f.read(ROOT, 0, 10) == b"data"
    assert f.getattr(ROOT).size == 4
    assert f.lock(ROOT, LOCK_TYPE_RDLCK, 0, 0, 0, 1, "") == LOCK_SUCCESS
    f.close(ROOT)
    r.open(ROOT, L_O_RDONLY)
    assert sorted(e.name for e in readall(r)) == [".", "..", "d", "f"]
    r.close(ROOT)
    with pytest.raises(OSError) as ei:
        f.getxattr(ROOT, "user.x")
    assert errno_of(ei) == errno.ENODATA
    r.statfs(ROOT)
    assert sorted(os.listdir(exp)) == ["d", "f"]
    fs.close()


# --- identity --------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
USER = Context(uname="u", uid=12345, gid=12345, groups=(12345,))


@needs_root
def test_acting_as_another_user(fs, exp):
    os.chmod(exp, 0o777)
    secret = make(exp, "rootonly", b"root secret")
    os.chmod(secret, 0o600)
    r = fs.attach(USER)
    n = r.create(USER, "mine", L_O_RDWR | L_O_CREAT, 0o644, 12345)
    n.write(USER, 0, b"x")
    n.close(USER)
    st = os.stat(os.path.join(exp, "mine"))
    assert (st.st_uid, st.st_gid) == (12345, 12345)
    r.mkdir(USER, "mydir", 0o755, 12345)
    st = os.stat(os.path.join(exp, "mydir"))
    assert (st.st_uid, st.st_gid) == (12345, 12345)
    r.symlink(USER, "mylink", "mine", 12345)
    assert os.lstat(os.path.join(exp, "mylink")).st_uid == 12345
    r.mknod(USER, "myfifo", stat.S_IFIFO | 0o600, 0, 0, 12345)
    assert os.lstat(os.path.join(exp, "myfifo")).st_uid == 12345
    # a 0600 root file cannot be read, written, truncated or chmod'ed
    s = r.walk(USER, ["rootonly"])[0]
    for op in (lambda: s.open(USER, L_O_RDONLY), lambda: s.open(USER, L_O_WRONLY),
               lambda: s.setattr(USER, SetAttr(size=0))):
        with pytest.raises(OSError) as ei:
            op()
        assert errno_of(ei) == errno.EACCES
    with pytest.raises(OSError) as ei:
        s.setattr(USER, SetAttr(mode=0o666))
    assert errno_of(ei) == errno.EPERM
    with pytest.raises(OSError) as ei:
        s.setattr(USER, SetAttr(mtime=1))
    assert errno_of(ei) == errno.EPERM
    # nor chown his own file to root, nor make devices
    m = r.walk(USER, ["mine"])[0]
    with pytest.raises(OSError) as ei:
        m.setattr(USER, SetAttr(uid=0))
    assert errno_of(ei) == errno.EPERM
    with pytest.raises(OSError) as ei:
        m.setattr(USER, SetAttr(gid=0))
    assert errno_of(ei) == errno.EPERM
    with pytest.raises(OSError) as ei:
        r.mknod(USER, "dev", stat.S_IFCHR | 0o666, 1, 3, 12345)
    assert errno_of(ei) == errno.EPERM
    # xattrs needing capabilities that fsuid does not drop
    for name in ("trusted.x", "security.capability", "security.x"):
        with pytest.raises(OSError) as ei:
            m.setxattr(USER, name, b"\x01\x00\x00\x02" + b"\x00" * 16, 0)
        assert errno_of(ei) == errno.EPERM
    xattrs = _user_xattrs_ok(exp)
    if xattrs:
        m.setxattr(USER, "user.ok", b"1", 0)
        os.setxattr(os.path.join(exp, "mine"), "trusted.hidden", b"t")
        assert "trusted.hidden" not in m.listxattr(USER)
        with pytest.raises(OSError) as ei:
            m.getxattr(USER, "trusted.hidden")
        assert errno_of(ei) == errno.ENODATA
    with pytest.raises(OSError) as ei:
        m.getxattr(USER, "security.capability")
    assert errno_of(ei) in (errno.ENODATA, errno.EOPNOTSUPP)
    # own files: chmod, times, truncate are fine
    m.setattr(USER, SetAttr(mode=0o600, mtime=5, size=0))
    # root (ctx uid None) still can do everything, interleaved with the user
    s.open(ROOT, L_O_RDONLY)
    assert s.read(ROOT, 0, 100) == b"root secret"
    s.close(ROOT)
    if xattrs:
        assert "trusted.hidden" in m.listxattr(ROOT)
    # search permission is checked on walks
    os.mkdir(os.path.join(exp, "closed"), 0o700)
    make(exp, "closed/inner")
    assert len(r.walk(USER, ["closed", "inner"])) == 1          # partial
    with pytest.raises(OSError) as ei:
        r.walk(USER, ["closed"])[0].walk(USER, ["inner"])
    assert errno_of(ei) == errno.EACCES
    assert len(r.walk(ROOT, ["closed", "inner"])) == 2
    # another user cannot remove or rename the user's files in a sticky directory
    os.chmod(exp, 0o1777)
    other = Context(uid=23456, gid=23456)
    with pytest.raises(OSError) as ei:
        r.unlinkat(other, "mine", 0)
    assert errno_of(ei) == errno.EPERM
    r.unlinkat(USER, "mine", 0)


@needs_root
def test_identity_groups(fs, exp):
    d = os.path.join(exp, "g")
    os.mkdir(d, 0o770)
    os.chown(d, 0, 777)
    os.chmod(d, 0o770)
    r = fs.attach(ROOT)
    member = Context(uid=5000, gid=5000, groups=(5000, 777))
    stranger = Context(uid=5001, gid=5001, groups=())
    n = r.walk(member, ["g"])[0].create(member, "x", L_O_WRONLY | L_O_CREAT, 0o644, 777)
    n.close(member)
    st = os.stat(os.path.join(d, "x"))
    assert (st.st_uid, st.st_gid) == (5000, 777)
    assert len(r.walk(stranger, ["g", "x"])) == 1
    with pytest.raises(OSError) as ei:
        r.walk(stranger, ["g"])[0].walk(stranger, ["x"])
    assert errno_of(ei) == errno.EACCES
    # every operation gives the thread back its own identity, also after an error
    assert fsids() == (0, 0)
    with pytest.raises(OSError):
        r.walk(stranger, ["g"])[0].walk(stranger, ["nope"])
    assert fsids() == (0, 0) and os.getgroups() == list(identity.OWN[2])
    assert identity.current() == identity.OWN


def fsids():
    from nine.server.syscalls import libc
    return libc.setfsuid(-1), libc.setfsgid(-1)


@needs_root
def test_identity_restored_around_yields(fs, exp):
    """A FIFO writer open waits (yields) as the server, not as the user, and is then
    resumed as the user."""
    import gevent
    os.chmod(exp, 0o777)
    os.mkfifo(os.path.join(exp, "p"))
    os.chmod(os.path.join(exp, "p"), 0o666)
    w = walk1(fs, "p", ctx=USER)
    seen = []

    def other():
        seen.append(fsids())
        rd = walk1(fs, "p")
        rd.open(ROOT, L_O_RDONLY)
        seen.append(rd)
    g = gevent.spawn_later(0.05, other)
    w.open(USER, L_O_WRONLY)                  # waits for the reader
    g.join()
    assert seen[0] == (0, 0)
    assert fsids() == (0, 0)
    w.write(USER, 0, b"hi")
    assert seen[1].read(ROOT, 0, 10) == b"hi"
    w.close(USER)
    seen[1].close(ROOT)


@needs_root
def test_squash(tmp_path):
    exp = tmp_path / "sq"
    exp.mkdir()
    os.chmod(exp, 0o777)
    (exp / "rootonly").write_bytes(b"s")
    os.chmod(exp / "rootonly", 0o600)
    fs = RealFS(str(exp), squash=(4444, 4445))
    try:
        r = fs.attach(ROOT)
        r.create(ROOT, "f", L_O_WRONLY | L_O_CREAT, 0o644, None).close(ROOT)
        st = os.stat(exp / "f")
        assert (st.st_uid, st.st_gid) == (4444, 4445)
        with pytest.raises(OSError) as ei:
            r.walk(ROOT, ["rootonly"])[0].open(ROOT, L_O_RDONLY)
        assert errno_of(ei) == errno.EACCES
        r.create(USER, "g", L_O_WRONLY | L_O_CREAT, 0o644, None).close(USER)
        assert os.stat(exp / "g").st_uid == 4444
    finally:
        fs.close()


# --- many fids, no fds --------------------------------------------------------------------

def test_nodes_hold_no_fds(fs, exp):
    os.mkdir(os.path.join(exp, "d"))
    make(exp, "d/f")
    before = len(os.listdir("/proc/self/fd"))
    r = root(fs)
    nodes = [r.walk(ROOT, ["d", "f"]) for _ in range(2000)]
    # one O_PATH fd per file, shared by every fid of it (tests/test_realfs_fds.py)
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    for ns in nodes[:10]:
        ns[1].getattr(ROOT)
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    del nodes


@needs_root
def test_cached_identity_mode(tmp_path):
    exp = tmp_path / "c"
    exp.mkdir()
    os.chmod(exp, 0o777)
    (exp / "rootonly").write_bytes(b"s")
    os.chmod(exp / "rootonly", 0o600)
    fs = RealFS(str(exp), restore_identity=False)
    try:
        r = fs.attach(USER)
        r.create(USER, "f", L_O_WRONLY | L_O_CREAT, 0o644, None).close(USER)
        assert fsids() == (12345, 12345)            # left in force between operations
        with pytest.raises(OSError) as ei:
            r.walk(USER, ["rootonly"])[0].open(USER, L_O_RDONLY)
        assert errno_of(ei) == errno.EACCES
        n = r.walk(ROOT, ["rootonly"])[0]            # switched back for a root request
        n.open(ROOT, L_O_RDONLY)
        assert fsids() == (0, 0)
        n.close(ROOT)
        r.walk(USER, ["f"])
        reset_identity()
        assert fsids() == (0, 0)
        assert os.stat(exp / "f").st_uid == 12345
    finally:
        reset_identity()
        fs.close()


def test_not_root_acts_as_itself(tmp_path):
    """A server that is not root ignores ctx uids (and squash): it is always itself."""
    exp = tmp_path / "nr"
    exp.mkdir()
    os.chmod(exp, 0o777)
    (exp / "rootonly").write_bytes(b"s")
    os.chmod(exp / "rootonly", 0o600)
    if not IS_ROOT:
        pytest.skip("needs root to become someone else")
    pid = os.fork()
    if pid == 0:                                     # pragma: no cover (child)
        code = 1
        try:
            os.chdir(exp)                            # its parents are 0700
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            exp = __import__("pathlib").Path(".")
            for fs in (RealFS("."), RealFS(".", squash=(4444, 4444))):
                r = fs.attach(USER)
                name = "f%d" % (fs.squash is not None)
                r.create(USER, name, L_O_WRONLY | L_O_CREAT, 0o644, 12345).close(USER)
                st = os.stat(exp / name)
                assert (st.st_uid, st.st_gid) == (65534, 65534), st
                try:
                    r.walk(USER, ["rootonly"])[0].open(ROOT, L_O_RDONLY)
                    raise AssertionError("read a 0600 root file")
                except PermissionError:
                    pass
                fs.close()
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_fallback_chosen_without_openat2(tmp_path, monkeypatch):
    def enosys(*a, **k):
        raise OSError(errno.ENOSYS, "no openat2")
    monkeypatch.setattr(realfs_mod, "_openat2", enosys)
    fs = RealFS(str(tmp_path))
    try:
        assert not fs.uses_openat2
        os.symlink("/etc", tmp_path / "l")
        r = fs.attach(ROOT)
        nodes = r.walk(ROOT, ["l", "passwd"])
        assert len(nodes) == 1 and nodes[0].qid.type == QTSYMLINK
    finally:
        fs.close()


def test_confinement_under_swap_race(fs, exp, outside):
    """A thread keeps swapping a directory with a symlink to the outside while nodes of
    that directory are used: nothing outside is ever read, made, changed or removed."""
    import threading
    inside = os.path.join(exp, "d")
    os.mkdir(inside)
    make(exp, "d/secret", b"inside")
    os.chmod(os.path.join(outside, "secret"), 0o600)
    d = walk1(fs, "d")
    f = walk1(fs, "d", "secret")
    stop = threading.Event()

    def swapper():
        link = os.path.join(exp, "d.link")
        real = os.path.join(exp, "d.real")
        while not stop.is_set():
            try:
                os.rename(inside, real)
                os.symlink(outside, link)
                os.rename(link, inside)          # d is now a symlink to the outside
                os.rename(inside, link)
                os.unlink(link)
                os.rename(real, inside)          # d is the real directory again
            except OSError:
                pass

    def fresh_walk():                    # by name: sees the swaps (held fids do not)
        n = root(fs).walk(ROOT, ["d"])[0]
        try:
            return n.walk(ROOT, ["secret"])
        finally:
            n.close(ROOT)
    t = threading.Thread(target=swapper)
    t.start()
    got, failed = [], []
    try:
        t0 = time.time()
        i = 0
        while time.time() < t0 + 5 and (time.time() < t0 + 0.5 or len(got) < 40
                                         or len(failed) < 40):
            i += 1
            for op in (lambda: f.open(ROOT, L_O_RDONLY) or (f.read(ROOT, 0, 100), f.close(ROOT)),
                       lambda: f.getattr(ROOT),
                       lambda: f.setattr(ROOT, SetAttr(mode=0o644, mtime=12345)),
                       lambda: f.setxattr(ROOT, "user.race", b"1", 0),
                       lambda: d.create(ROOT, "c%d" % i, L_O_RDWR | L_O_CREAT, 0o644,
                                        None).close(ROOT),
                       lambda: d.mkdir(ROOT, "m%d" % i, 0o755, None),
                       lambda: d.unlinkat(ROOT, "c%d" % i, 0),
                       lambda: d.renameat(ROOT, "m%d" % i, root(fs), "moved%d" % i),
                       lambda: d.walk(ROOT, ["secret"]), fresh_walk):
                try:
                    got.append(op())
                except OSError:
                    failed.append(1)
    finally:
        stop.set()
        t.join()
    st = os.stat(os.path.join(outside, "secret"))
    assert open(os.path.join(outside, "secret"), "rb").read() == b"SECRET"
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns != 12345
    assert sorted(os.listdir(outside)) == ["secret"]
    with pytest.raises(OSError):
        os.getxattr(os.path.join(outside, "secret"), "user.race")
    assert not any(isinstance(x, tuple) and x[0] == b"SECRET" for x in got)
    assert len(got) > 20 and len(failed) > 20          # both states were hit
