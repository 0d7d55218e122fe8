"""Holes closed after the security review (issue 12): device files in exports (nodev
unless --allow-devices), what `--listen unix!PATH` may replace, the unix socket's mode,
and --read-only over the exec and proc trees."""

import errno
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

import nine.protocol as P
from conftest import ENV_ROOT, NineProc, RawConn, free_port
from nine.netwait import wait_for
from nine.protocol.const import L_O_RDONLY, L_O_WRONLY
from nine.server.listen import clear_stale, unix_socket
from nine.server.node import Context
from nine.server.realfs import RealFS

IS_ROOT = os.geteuid() == 0
ROOT_ONLY = pytest.mark.skipif(not IS_ROOT, reason="making device files needs root")
ROOT = Context(uid=None)
NULL = os.makedev(1, 3)


def _oserr(fn):
    with pytest.raises(OSError) as ei:
        fn()
    return ei.value.errno


# --- devices in the real-file backend ----------------------------------------------------

@pytest.fixture
def exp(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    (d / "reg").write_bytes(b"regular\n")
    return d


def test_mknod_of_devices_refused_unless_allowed(exp):
    fs = RealFS(str(exp))
    r = fs.attach(ROOT)
    for fmt, dev in ((stat.S_IFCHR, (1, 3)), (stat.S_IFBLK, (7, 0))):
        with pytest.raises(OSError) as ei:
            r.mknod(ROOT, "dev", fmt | 0o600, dev[0], dev[1], None)
        assert ei.value.errno == errno.EPERM and "--allow-devices" in ei.value.strerror
        assert not os.path.lexists(exp / "dev")
    # FIFOs, sockets and regular files are not devices
    r.mknod(ROOT, "fifo", stat.S_IFIFO | 0o600, 0, 0, None)
    r.mknod(ROOT, "sock", stat.S_IFSOCK | 0o600, 0, 0, None)
    r.mknod(ROOT, "file", 0o600, 0, 0, None)
    assert stat.S_ISFIFO(os.lstat(exp / "fifo").st_mode)
    assert stat.S_ISSOCK(os.lstat(exp / "sock").st_mode)
    fs.close()


@ROOT_ONLY
def test_mknod_of_devices_allowed_with_allow_devices(exp):
    fs = RealFS(str(exp), allow_devices=True)
    r = fs.attach(ROOT)
    r.mknod(ROOT, "null", stat.S_IFCHR | 0o666, 1, 3, None)
    r.mknod(ROOT, "blk", stat.S_IFBLK | 0o600, 7, 0, None)
    assert os.lstat(exp / "null").st_rdev == NULL
    assert stat.S_ISBLK(os.lstat(exp / "blk").st_mode)
    n = r.walk(ROOT, ["null"])[0]
    n.open(ROOT, L_O_RDONLY)
    assert n.read(ROOT, 0, 10) == b""
    n.close(ROOT)
    fs.close()


@ROOT_ONLY
def test_opening_existing_devices_refused(exp):
    os.mknod(exp / "null", stat.S_IFCHR | 0o666, NULL)
    fs = RealFS(str(exp))
    r = fs.attach(ROOT)
    n = r.walk(ROOT, ["null"])[0]
    assert n.getattr(ROOT).rdev == NULL            # stat is fine, as under nodev
    for flags in (L_O_RDONLY, L_O_WRONLY):
        with pytest.raises(OSError) as ei:
            n.clone(ROOT).open(ROOT, flags)
        assert ei.value.errno == errno.EACCES and "--allow-devices" in ei.value.strerror
    # Tlcreate of the existing name (no O_EXCL) opens it: refused too
    assert _oserr(lambda: r.clone(ROOT).create(ROOT, "null", L_O_WRONLY, 0o644,
                                               None)) == errno.EACCES
    # a name swapped for a device after the walk: the fid holds the removed file, never
    # the device now at its name (nine.server.realfs: fids hold their files)
    m = r.walk(ROOT, ["reg"])[0]
    os.unlink(exp / "reg")
    os.mknod(exp / "reg", stat.S_IFCHR | 0o666, NULL)
    before = len(os.listdir("/proc/self/fd"))
    assert _oserr(lambda: m.open(ROOT, L_O_RDONLY)) == errno.ENOENT
    assert len(os.listdir("/proc/self/fd")) == before and m.fd is None
    # FIFOs still open (a writer waits for a reader: open the reader first)
    os.mkfifo(exp / "fifo")
    f = r.walk(ROOT, ["fifo"])[0]
    f.open(ROOT, L_O_RDONLY)
    f.close(ROOT)
    fs.close()


def _conn(port, dialect=P.V9P2000L, aname=""):
    c = RawConn(port, dialect=dialect)
    c.version()
    r = c.rpc(P.Tattach(fid=0, afid=P.NOFID, uname="root", aname=aname, n_uname=0, tag=1))
    assert isinstance(r, P.Rattach), r
    return c


def _walk(c, names, newfid=1):
    r = c.rpc(P.Twalk(fid=0, newfid=newfid, wnames=names, tag=1))
    assert isinstance(r, P.Rwalk) and len(r.wqids) == len(names), r
    return newfid


def _lopen(c, fid, flags):
    return c.rpc(P.Tlopen(fid=fid, flags=flags, tag=1))


def _mknod(c, name, mode, major=0, minor=0):
    return c.rpc(P.Tmknod(dfid=0, name=name, mode=mode, major=major, minor=minor, gid=0,
                          tag=1))


@pytest.fixture
def dev_server(exp):
    if IS_ROOT:
        os.mknod(exp / "null", stat.S_IFCHR | 0o666, NULL)
    s = NineProc(["--export", str(exp)], free_port())
    yield s
    s.stop()


def test_wire_mknod_of_devices_refused_fifo_fine(dev_server, exp):
    c = _conn(dev_server.port)
    for fmt, major, minor in ((stat.S_IFBLK, 8, 0), (stat.S_IFCHR, 1, 1)):
        r = _mknod(c, "dev", fmt | 0o600, major, minor)
        assert isinstance(r, P.Rlerror) and r.ecode == errno.EPERM, r
    assert not os.path.lexists(exp / "dev")
    # what the Linux kernel client sends for mkfifo(1) and for a socket
    assert isinstance(_mknod(c, "fifo", stat.S_IFIFO | 0o644), P.Rmknod)
    assert isinstance(_mknod(c, "sock", stat.S_IFSOCK | 0o644), P.Rmknod)
    assert stat.S_ISFIFO(os.lstat(exp / "fifo").st_mode)
    c.close()
    # 9P2000.u: a device by Tcreate's DMDEVICE + extension is refused, a pipe is made
    u = _conn(dev_server.port, P.V9P2000U)
    _walk(u, [])
    r = u.rpc(P.Tcreate(fid=1, name="udev", perm=P.DMDEVICE | 0o600, mode=0,
                        extension="c 1 3", tag=1))
    assert isinstance(r, P.Rerror) and r.errno == errno.EPERM, r
    assert "--allow-devices" in r.ename
    _walk(u, [], newfid=2)
    r = u.rpc(P.Tcreate(fid=2, name="upipe", perm=P.DMNAMEDPIPE | 0o600, mode=0,
                        extension="", tag=1))
    assert isinstance(r, P.Rcreate), r
    assert stat.S_ISFIFO(os.lstat(exp / "upipe").st_mode)
    u.close()


@ROOT_ONLY
def test_wire_open_of_existing_device_refused(dev_server):
    c = _conn(dev_server.port)
    fid = _walk(c, ["null"])
    r = _lopen(c, fid, L_O_RDONLY)
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EACCES, r
    assert isinstance(c.rpc(P.Tgetattr(fid=fid, request_mask=0x3fff, tag=1)), P.Rgetattr)
    c.close()


@ROOT_ONLY
def test_wire_devices_with_allow_devices(exp):
    s = NineProc(["--export", str(exp), "--allow-devices"], free_port())
    try:
        c = _conn(s.port)
        assert isinstance(_mknod(c, "blk", stat.S_IFBLK | 0o600, 7, 0), P.Rmknod)
        assert isinstance(_mknod(c, "null", stat.S_IFCHR | 0o666, 1, 3), P.Rmknod)
        assert os.lstat(exp / "null").st_rdev == NULL
        fid = _walk(c, ["null"])
        assert isinstance(_lopen(c, fid, L_O_RDONLY), P.Rlopen)
        c.close()
    finally:
        s.stop()


# --- unix sockets: what listen replaces, and their mode -----------------------------------

def _listening(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    return s


def test_clear_stale_refuses_all_but_a_stale_socket(tmp_path):
    reg = tmp_path / "file"
    reg.write_bytes(b"precious\n")
    with pytest.raises(FileExistsError) as ei:
        clear_stale(str(reg))
    assert "regular file" in ei.value.strerror and reg.read_bytes() == b"precious\n"
    with pytest.raises(FileExistsError) as ei:
        clear_stale(str(tmp_path))
    assert "directory" in ei.value.strerror and tmp_path.is_dir()
    link = tmp_path / "link"
    os.symlink("file", link)
    assert _oserr(lambda: clear_stale(str(link))) == errno.EEXIST and link.is_symlink()
    live = str(tmp_path / "live.sock")
    ls = _listening(live)
    try:
        with pytest.raises(OSError) as ei:
            clear_stale(live)
        assert ei.value.errno == errno.EADDRINUSE and "listening" in ei.value.strerror
        assert stat.S_ISSOCK(os.lstat(live).st_mode)
    finally:
        ls.close()
    # the listener is gone: its socket file is stale now, and is removed
    clear_stale(live)
    assert not os.path.lexists(live)
    clear_stale(live)            # nothing there: nothing to do


def test_unix_socket_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        for mode in (0o666, 0o600, 0o660):
            path = str(tmp_path / ("s%o" % mode))
            s = unix_socket(path, mode)
            assert stat.S_IMODE(os.lstat(path).st_mode) == mode
            s.close()
    finally:
        os.umask(old)
    assert os.umask(old) == old       # the umask is back


def _serve(args, timeout=30):
    return subprocess.run([sys.executable, "-m", "nine", "serve", "-q"] + args,
                          env=ENV_ROOT, capture_output=True, timeout=timeout)


def test_serve_refuses_to_replace_a_file(tmp_path, exp):
    reg = tmp_path / "important"
    reg.write_bytes(b"keep me\n")
    p = _serve(["--listen", "unix!%s" % reg, "--export", str(exp)])
    err = p.stderr.decode()
    assert p.returncode == 1 and "regular file" in err and "not replacing" in err, err
    assert err.count("\n") == 1 and "Errno" not in err
    assert reg.read_bytes() == b"keep me\n"
    p = _serve(["--listen", "unix!%s" % tmp_path, "--export", str(exp)])
    assert p.returncode == 1 and "directory" in p.stderr.decode()
    assert exp.is_dir()


def _unix_server(path, *args):
    s = NineProc(["--listen", "unix!%s" % path] + list(args), free_port())
    wait_for(lambda: os.path.exists(path) and stat.S_ISSOCK(os.lstat(path).st_mode), 10,
             "the server's unix socket")
    return s


def _read_over_unix(path, name):
    from nine.client import Client
    c = Client("unix!%s" % path)
    try:
        return c.read_file(name)
    finally:
        c.close()


def test_serve_replaces_a_stale_socket_refuses_a_live_one(tmp_path, exp):
    path = str(tmp_path / "n.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()                    # a socket file nobody listens on
    s = _unix_server(path, "--export", str(exp))
    try:
        assert _read_over_unix(path, "reg") == b"regular\n"
        p = _serve(["--listen", "unix!%s" % path, "--export", str(exp)])
        err = p.stderr.decode()
        assert p.returncode == 1 and "listening on this socket already" in err, err
        assert _read_over_unix(path, "reg") == b"regular\n"    # the first one still serves
    finally:
        s.stop()


@pytest.mark.parametrize("args,mode", [([], 0o666), (["--no-auth"], 0o600),
                                       (["--socket-mode", "0640"], 0o640)])
def test_socket_mode(tmp_path, exp, args, mode):
    path = str(tmp_path / "n.sock")
    old = os.umask(0o022)            # inherited by the server: not what decides the mode
    try:
        s = _unix_server(path, "--export", str(exp), *args)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode
        if "--no-auth" not in args:
            assert _read_over_unix(path, "reg") == b"regular\n"
    finally:
        s.stop()


def test_bad_socket_mode_is_a_usage_error(exp):
    p = _serve(["--socket-mode", "888", "--export", str(exp)])
    assert p.returncode == 2 and "octal" in p.stderr.decode()
    p = _serve(["--socket-mode", "1777", "--export", str(exp)])
    assert p.returncode == 2 and "0777" in p.stderr.decode()


# --- --read-only: no command runs, no process is changed -----------------------------------

@pytest.fixture
def ro_server(exp):
    s = NineProc(["--read-only", "--exec", "--proc", "--export", str(exp)], free_port())
    yield s
    s.stop()


def test_read_only_exec_runs_nothing(ro_server):
    c = _conn(ro_server.port, aname="exec")
    fid = _walk(c, ["clone"], newfid=10)
    r = _lopen(c, fid, L_O_RDONLY)          # what makes a session
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EROFS, r
    # no session was made: nothing to reach a ctl through, and the tree still lists
    r = c.rpc(P.Twalk(fid=0, newfid=20, wnames=["0", "ctl"], tag=1))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.ENOENT, r
    fid = _walk(c, [], newfid=21)
    assert isinstance(_lopen(c, fid, L_O_RDONLY), P.Rlopen)
    r = c.rpc(P.Treaddir(fid=fid, offset=0, count=4096, tag=1))
    assert isinstance(r, P.Rreaddir), r
    c.close()
    # 9P2000 too (the message says why)
    u = _conn(ro_server.port, P.V9P2000, aname="exec")
    _walk(u, ["clone"])
    r = u.rpc(P.Topen(fid=1, mode=0, tag=1))
    assert isinstance(r, P.Rerror) and "read-only" in r.ename, r
    u.close()


def test_read_only_proc_changes_nothing(ro_server):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pid = str(sleeper.pid)
        c = _conn(ro_server.port, aname="proc")
        fid = 10
        for name, flags in (("ctl", L_O_WRONLY), ("ctl", P.L_O_RDWR), ("note", L_O_WRONLY),
                            ("mem", P.L_O_RDWR), ("regs", L_O_WRONLY)):
            _walk(c, [pid, name], newfid=fid)
            r = _lopen(c, fid, flags)
            assert isinstance(r, P.Rlerror) and r.ecode == errno.EROFS, (name, r)
            fid += 1
        # a thread's control files too
        _walk(c, [pid, "task", pid, "ctl"], newfid=fid)
        r = _lopen(c, fid, L_O_WRONLY)
        assert isinstance(r, P.Rlerror) and r.ecode == errno.EROFS, r
        time.sleep(0.1)
        assert sleeper.poll() is None
        # reads still work
        for name in ("status", "ctl", "cmdline"):
            fid += 1
            _walk(c, [pid, name], newfid=fid)
            assert isinstance(_lopen(c, fid, L_O_RDONLY), P.Rlopen), name
            r = c.rpc(P.Tread(fid=fid, offset=0, count=4096, tag=1))
            assert isinstance(r, P.Rread) and r.data, (name, r)
            if name == "status":
                assert r.data.split()[0] == b"sleep"
            c.rpc(P.Tclunk(fid=fid, tag=1))
        c.close()
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
