"""Values a client may send that no file system can take: each gets a clean errno (not
EIO from an exception inside the server), in every dialect that carries it, the server
stays up and another client's connection is unaffected.  A real bug in a handler (any
exception but OSError) is answered EIO and logged in one line, its traceback at debug
level only."""

import errno
import logging
import os
import stat

import pytest

import nine.protocol as P
from conftest import RawConn, ThreadServer
from nine.server.realfs import RealFS

U64 = (1 << 64) - 1
ALL = (P.V9P2000L, P.V9P2000U, P.V9P2000)
LEGACY = (P.V9P2000U, P.V9P2000)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    (d / "f").write_bytes(b"0123456789")
    (d / "sub").mkdir()
    # devices allowed: the device numbers themselves are what is checked
    s = ThreadServer({None: RealFS(str(d), allow_devices=True).attach})
    s.export = d
    yield s
    s.stop()


@pytest.fixture
def bystander(srv):
    """A client attached before the bad value and checked after it."""
    c = RawConn(srv.port)
    c.version()
    assert isinstance(c.attach(fid=1), P.Rattach)
    yield c
    r = c.rpc(P.Twalk(fid=1, newfid=2, wnames=["f"], tag=1))
    assert isinstance(r, P.Rwalk) and len(r.wqids) == 1
    assert isinstance(c.rpc(P.Tgetattr(fid=2, request_mask=0x7ff, tag=1)), P.Rgetattr)
    c.close()
    fresh = RawConn(srv.port)
    fresh.version()
    assert isinstance(fresh.attach(fid=1), P.Rattach)
    fresh.close()


@pytest.fixture(autouse=True)
def no_internal_errors(caplog):
    """No request of a test reached the server's internal-error path."""
    caplog.set_level(logging.DEBUG, logger="nine.server")
    yield
    bad = [r for r in caplog.records if r.name == "nine.server" and r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def connect(srv, dialect, uname="root"):
    c = RawConn(srv.port, dialect=dialect)
    c.version()
    r = c.rpc(P.Tattach(fid=1, afid=P.NOFID, uname=uname, aname="", tag=1,
                        n_uname=0 if dialect != P.V9P2000 else P.NONUNAME))
    assert isinstance(r, P.Rattach), r
    return c


def refused(r, dialect, code):
    """Is r the error `code` in dialect (9P2000 carries only a text, never EIO's)?"""
    if dialect == P.V9P2000L:
        return isinstance(r, P.Rlerror) and r.ecode == code
    if dialect == P.V9P2000U:
        return isinstance(r, P.Rerror) and r.errno == code
    return isinstance(r, P.Rerror) and "internal" not in r.ename


def walk_open(c, name, mode=P.ORDWR, fid=2):
    assert isinstance(c.rpc(P.Twalk(fid=1, newfid=fid, wnames=[name], tag=1)), P.Rwalk)
    if c.dialect == P.V9P2000L:
        r = c.rpc(P.Tlopen(fid=fid, flags=P.L_O_RDWR if mode == P.ORDWR else 0, tag=1))
    else:
        r = c.rpc(P.Topen(fid=fid, mode=mode, tag=1))
    assert not isinstance(r, (P.Rerror, P.Rlerror)), r


def nochange(**kw):
    """A Twstat stat that touches nothing but kw."""
    st = P.Stat(type=0xFFFF, dev=0xFFFFFFFF, qid=P.Qid(0xFF, 0xFFFFFFFF, U64), mode=0xFFFFFFFF,
                atime=0xFFFFFFFF, mtime=0xFFFFFFFF, length=U64)
    for k, v in kw.items():
        setattr(st, k, v)
    return st


def setattr_msg(**kw):
    m = dict(fid=2, valid=0, mode=0, uid=0, gid=0, size=0, atime_sec=0, atime_nsec=0,
             mtime_sec=0, mtime_nsec=0, tag=1)
    m.update(kw)
    return P.Tsetattr(**m)


# --- attach ----------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("field", ["uname", "aname"])
def test_attach_name_with_nul(srv, bystander, dialect, field):
    c = RawConn(srv.port, dialect=dialect)
    c.version()
    names = {"uname": "root", "aname": ""}
    names[field] += "\0x"
    r = c.rpc(P.Tattach(fid=1, afid=P.NOFID, n_uname=P.NONUNAME, tag=1, **names))
    assert refused(r, dialect, errno.EINVAL), r
    assert isinstance(c.rpc(P.Tattach(fid=1, afid=P.NOFID, uname="root", aname="",
                                      n_uname=P.NONUNAME, tag=1)), P.Rattach)


# --- numbers out of range ----------------------------------------------------------------

@pytest.mark.parametrize("mode,major,minor", [
    (stat.S_IFIFO | 0o644, 1 << 31, 0),
    (stat.S_IFCHR | 0o644, 1 << 31, 0),
    (stat.S_IFCHR | 0o644, 0xFFFFFFFF, 0xFFFFFFFF),
    (stat.S_IFBLK | 0o644, 4096, 0),             # more than the kernel's 12 bits of major
    (stat.S_IFCHR | 0o644, 1, 1 << 20),          # and 20 of minor
])
def test_mknod_device_number_out_of_range(srv, bystander, mode, major, minor):
    c = connect(srv, P.V9P2000L)
    r = c.rpc(P.Tmknod(dfid=1, name="dev", mode=mode, major=major, minor=minor, gid=0, tag=1))
    assert refused(r, P.V9P2000L, errno.EINVAL), r
    assert not os.path.lexists(srv.export / "dev")


@pytest.mark.parametrize("ext", ["c 2147483648 0", "b 1 4294967295", "c 4294967296 0",
                                 "c -1 0", "c x y", "c 1", "d 1 2", ""])
def test_create_device_extension_out_of_range(srv, bystander, ext):
    c = connect(srv, P.V9P2000U)
    r = c.rpc(P.Tcreate(fid=1, name="dev", perm=P.DMDEVICE | 0o644, mode=P.OREAD,
                        extension=ext, tag=1))
    assert refused(r, P.V9P2000U, errno.EINVAL), r
    assert not os.path.lexists(srv.export / "dev")


@pytest.mark.parametrize("size", [1 << 63, U64])
def test_setattr_size_too_large(srv, bystander, size):
    c = connect(srv, P.V9P2000L)
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["f"], tag=1))
    r = c.rpc(setattr_msg(valid=P.SETATTR_SIZE, size=size))
    assert refused(r, P.V9P2000L, errno.EFBIG), r
    assert (srv.export / "f").stat().st_size == 10


@pytest.mark.parametrize("dialect", LEGACY)
@pytest.mark.parametrize("length", [1 << 63, U64 - 1])
def test_wstat_length_too_large(srv, bystander, dialect, length):
    c = connect(srv, dialect)
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["f"], tag=1))
    r = c.rpc(P.Twstat(fid=2, stat=nochange(length=length), tag=1))
    assert refused(r, dialect, errno.EFBIG), r
    assert (srv.export / "f").stat().st_size == 10


def test_setattr_times(srv, bystander, tmp_path):
    """Seconds are signed on the wire (a time before 1970 is their two's complement, both
    ways); nanoseconds of a second or more are refused."""
    c = connect(srv, P.V9P2000L)
    (srv.export / "old").write_bytes(b"")
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["old"], tag=1))
    set_times = P.SETATTR_ATIME | P.SETATTR_ATIME_SET | P.SETATTR_MTIME | P.SETATTR_MTIME_SET
    r = c.rpc(setattr_msg(valid=set_times, atime_sec=U64, atime_nsec=5,
                          mtime_sec=(1 << 64) - 86400, mtime_nsec=0))
    assert isinstance(r, P.Rsetattr), r
    st = os.stat(srv.export / "old")
    assert st.st_atime_ns == -1000000000 + 5 and st.st_mtime_ns == -86400 * 1000000000
    a = c.rpc(P.Tgetattr(fid=2, request_mask=0x7ff, tag=1))
    assert (a.atime_sec, a.atime_nsec, a.mtime_sec) == (U64, 5, (1 << 64) - 86400)
    for field in ("atime_nsec", "mtime_nsec"):
        r = c.rpc(setattr_msg(valid=set_times, **{field: 1000000000}))
        assert refused(r, P.V9P2000L, errno.EINVAL), r
    assert os.stat(srv.export / "old").st_mtime_ns == -86400 * 1000000000
    # 9P2000/.u: a Tstat of that file still works (its times are u32 there)
    u = connect(srv, P.V9P2000U)
    u.rpc(P.Twalk(fid=1, newfid=2, wnames=["old"], tag=1))
    assert isinstance(u.rpc(P.Tstat(fid=2, tag=1)), P.Rstat)


def test_setattr_ids_all_ones_leave_owner(srv, bystander):
    """uid/gid 2^32-1 is "no id" (chown's -1): nothing changes; 2^32-2 is an id."""
    (srv.export / "own").write_bytes(b"")
    os.chown(srv.export / "own", 10, 20)
    c = connect(srv, P.V9P2000L)
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["own"], tag=1))
    r = c.rpc(setattr_msg(valid=P.SETATTR_UID | P.SETATTR_GID, uid=0xFFFFFFFF, gid=0xFFFFFFFF))
    assert isinstance(r, P.Rsetattr)
    st = os.stat(srv.export / "own")
    assert (st.st_uid, st.st_gid) == (10, 20)
    r = c.rpc(setattr_msg(valid=P.SETATTR_GID, gid=0xFFFFFFFE))
    assert isinstance(r, P.Rsetattr) and os.stat(srv.export / "own").st_gid == 0xFFFFFFFE


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("offset", [1 << 63, U64])
def test_read_write_offset_beyond_files(srv, bystander, dialect, offset):
    c = connect(srv, dialect)
    walk_open(c, "f")
    r = c.rpc(P.Tread(fid=2, offset=offset, count=10, tag=1))
    assert refused(r, dialect, errno.EINVAL), r
    r = c.rpc(P.Twrite(fid=2, offset=offset, data=b"x", tag=1))
    assert refused(r, dialect, errno.EINVAL), r
    assert (srv.export / "f").read_bytes() == b"0123456789"


@pytest.mark.parametrize("offset", [1 << 63, U64])
def test_readdir_offset_beyond_any(srv, bystander, offset):
    c = connect(srv, P.V9P2000L)
    walk_open(c, "sub", P.OREAD)
    r = c.rpc(P.Treaddir(fid=2, offset=offset, count=4096, tag=1))
    assert isinstance(r, P.Rreaddir) and r.data == b""


@pytest.mark.parametrize("dialect", LEGACY)
def test_directory_read_offset_beyond_any(srv, bystander, dialect):
    c = connect(srv, dialect)
    walk_open(c, "sub", P.OREAD)
    r = c.rpc(P.Tread(fid=2, offset=U64, count=4096, tag=1))
    assert refused(r, dialect, errno.EINVAL), r


# --- names and strings with a NUL -----------------------------------------------------------

@pytest.mark.parametrize("dialect", ALL)
def test_walk_and_create_names_with_nul(srv, bystander, dialect):
    c = connect(srv, dialect)
    r = c.rpc(P.Twalk(fid=1, newfid=2, wnames=["f\0g"], tag=1))
    assert refused(r, dialect, errno.EINVAL), r
    c.rpc(P.Twalk(fid=1, newfid=3, wnames=[], tag=1))
    if dialect == P.V9P2000L:
        r = c.rpc(P.Tlcreate(fid=3, name="n\0m", flags=P.L_O_RDWR, mode=0o644, gid=0, tag=1))
        assert refused(r, dialect, errno.EINVAL), r
        r = c.rpc(P.Tmkdir(dfid=3, name="n\0m", mode=0o755, gid=0, tag=1))
    else:
        r = c.rpc(P.Tcreate(fid=3, name="n\0m", perm=0o644, mode=P.ORDWR, tag=1))
    assert refused(r, dialect, errno.EINVAL), r
    assert not [n for n in os.listdir(srv.export) if n.startswith("n")]


@pytest.mark.parametrize("dialect", (P.V9P2000L, P.V9P2000U))
def test_symlink_target_with_nul(srv, bystander, dialect):
    c = connect(srv, dialect)
    if dialect == P.V9P2000L:
        r = c.rpc(P.Tsymlink(fid=1, name="sl", symtgt="a\0b", gid=0, tag=1))
    else:
        r = c.rpc(P.Tcreate(fid=1, name="sl", perm=P.DMSYMLINK | 0o777, mode=P.OREAD,
                            extension="a\0b", tag=1))
    assert refused(r, dialect, errno.EINVAL), r
    assert not os.path.lexists(srv.export / "sl")


def test_xattr_names_with_nul_and_unknown_flags(srv, bystander):
    c = connect(srv, P.V9P2000L)
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["f"], tag=1))
    r = c.rpc(P.Txattrwalk(fid=2, newfid=3, name="user.a\0b", tag=1))
    assert refused(r, P.V9P2000L, errno.EINVAL), r
    r = c.rpc(P.Txattrcreate(fid=2, name="user.a\0b", attr_size=1, flags=0, tag=1))
    assert refused(r, P.V9P2000L, errno.EINVAL), r
    r = c.rpc(P.Txattrcreate(fid=2, name="user.x", attr_size=1, flags=0xFFFFFFFF, tag=1))
    assert refused(r, P.V9P2000L, errno.EINVAL), r
    # the fid is still a plain one: an xattr written through it now works
    assert isinstance(c.rpc(P.Txattrcreate(fid=2, name="user.x", attr_size=1, flags=0, tag=1)),
                      P.Rxattrcreate)
    assert isinstance(c.rpc(P.Twrite(fid=2, offset=0, data=b"v", tag=1)), P.Rwrite)
    assert isinstance(c.rpc(P.Tclunk(fid=2, tag=1)), P.Rclunk)
    assert os.getxattr(srv.export / "f", "user.x") == b"v"
    os.removexattr(srv.export / "f", "user.x")


@pytest.mark.parametrize("dialect", LEGACY)
@pytest.mark.parametrize("field,value", [
    ("uid", "ro\0ot"), ("gid", "ro\0ot"), ("uid", "99999999999999999999"),
    ("gid", "4294967295"), ("uid", "\u00b2"), ("name", "a\0b"), ("name", "a/b")])
def test_wstat_strings(srv, bystander, dialect, field, value):
    """A bad owner or name is refused before anything of the wstat is applied."""
    (srv.export / "w").write_bytes(b"")
    os.chmod(srv.export / "w", 0o600)
    c = connect(srv, dialect)
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["w"], tag=1))
    r = c.rpc(P.Twstat(fid=2, stat=nochange(mode=0o644, **{field: value}), tag=1))
    assert refused(r, dialect, errno.EINVAL), r
    assert stat.S_IMODE(os.stat(srv.export / "w").st_mode) == 0o600


@pytest.mark.parametrize("ext,code", [("x", errno.EINVAL), ("1 2", errno.EINVAL),
                                      ("99999999999", errno.EINVAL), ("77\n", errno.EBADF)])
def test_hard_link_extension(srv, bystander, ext, code):
    c = connect(srv, P.V9P2000U)
    r = c.rpc(P.Tcreate(fid=1, name="hl", perm=P.DMLINK, mode=P.OREAD, extension=ext, tag=1))
    assert refused(r, P.V9P2000U, code), r
    assert not os.path.lexists(srv.export / "hl")


# --- what a bug in a handler gives ------------------------------------------------------------

def test_internal_error_is_eio_and_one_log_line(caplog):
    from nine.synth.files import Dir, File, SynthFS

    def broken(ctx):
        raise RuntimeError("a bug in a backend")

    s = ThreadServer({None: SynthFS(Dir("", [File("broken", read=broken),
                                             File("ok", read=lambda ctx: b"ok")])).attach})
    try:
        c = RawConn(s.port)
        c.version()
        c.attach(fid=1)
        walk_open(c, "broken", P.OREAD)
        for _ in range(3):
            r = c.rpc(P.Tread(fid=2, offset=0, count=100, tag=1))
            assert isinstance(r, P.Rlerror) and r.ecode == errno.EIO
        walk_open(c, "ok", P.OREAD, fid=3)
        assert c.rpc(P.Tread(fid=3, offset=0, count=100, tag=1)).data == b"ok"
    finally:
        s.stop()
    records = [r for r in caplog.records if r.name == "nine.server"]
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 3 and not any(r.exc_info for r in errors)
    assert "internal error in Tread: RuntimeError: a bug in a backend" in errors[0].getMessage()
    traces = [r for r in records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(traces) == 3
    caplog.clear()           # the errors were the point: not a failure of the autouse check
