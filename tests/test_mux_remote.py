"""The multiplexer's remote backend (nine.mux.remote): a mux is the server core with
Child.attach as its export; children are real `python -m nine serve` processes (or
ThreadServers with synthetic trees where the test must see what the child did)."""

import contextlib
import errno
import fcntl
import os
import socket
import stat
import threading
import time

import gevent
import pytest

import nine.protocol as P
from conftest import NineProc, RawConn, ThreadServer, free_port
from nine.client import Client
from nine.mux import Child, QidMap
from test_server_protocol import blocking_tree


class Mux(ThreadServer):
    """A mux in a thread: Server({aname: child.attach}, None: the first child)."""

    def __init__(self, children, default=True, **kw):
        self.children = list(children)

        def exports():
            ex = {c.name: c.attach for c in self.children}
            if default:
                ex[None] = self.children[0].attach
            return ex
        super().__init__(exports, **kw)

    def _run(self):
        try:
            super()._run()
        finally:
            for c in self.children:
                c.close()


def _drop_connections(ts):
    """Cut every connection of ThreadServer ts at the socket (from this thread: a
    shutdown is one system call), as a dying server would."""
    for conn in list(ts.server.conns):
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _mkexport(path):
    path.mkdir()
    (path / "hello.txt").write_bytes(b"hello, world\n")
    (path / "sub").mkdir()
    (path / "sub" / "inner").write_bytes(b"inner\n")
    return path


@pytest.fixture
def exp(tmp_path):
    return _mkexport(tmp_path / "export")


@pytest.fixture
def leaf(exp):
    p = NineProc(["--export", str(exp)], free_port())
    p.export = exp
    yield p
    p.stop()


@pytest.fixture
def mux(leaf):
    qm = QidMap()
    c = Child("serverA", leaf.addr, qidmap=qm)
    m = Mux([c])
    m.child = c
    yield m
    m.stop()


def _raw(port, dialect=P.V9P2000L, uname="root", n_uname=0, aname=""):
    c = RawConn(port, dialect=dialect)
    r = c.version(msize=65536)
    assert r.version == dialect
    if dialect == P.V9P2000L:
        r = c.attach(fid=0, aname=aname, uname=uname, n_uname=n_uname)
    else:
        r = c.rpc(P.Tattach(fid=0, afid=P.NOFID, uname=uname, aname=aname, n_uname=n_uname,
                            tag=1))
    assert isinstance(r, P.Rattach), r
    return c


def _ok(r, cls):
    assert isinstance(r, cls), r
    return r


def _err(r, code):
    assert isinstance(r, (P.Rlerror, P.Rerror)), r
    e = r.ecode if isinstance(r, P.Rlerror) else r.errno
    assert e == code, (r, os.strerror(e))
    return r


# --- file operations land on the child's export -----------------------------------------

def test_client_library_operations_land_on_child(mux, exp):
    c = Client(mux.addr, uname="root", n_uname=0)
    try:
        assert c.read_file("hello.txt") == b"hello, world\n"
        assert c.read_file("sub/inner") == b"inner\n"
        assert sorted(c.listdir()) == ["hello.txt", "sub"]
        c.write_file("new.txt", b"via the mux\n")
        assert (exp / "new.txt").read_bytes() == b"via the mux\n"
        c.mkdir("d")
        assert (exp / "d").is_dir()
        c.rename("new.txt", "d/moved.txt")
        assert not (exp / "new.txt").exists()
        assert (exp / "d" / "moved.txt").read_bytes() == b"via the mux\n"
        c.symlink("moved.txt", "d/ln")
        assert os.readlink(exp / "d" / "ln") == "moved.txt"
        assert c.readlink("d/ln") == "moved.txt"
        c.link("hello.txt", "d/hard")
        assert os.stat(exp / "d" / "hard").st_ino == os.stat(exp / "hello.txt").st_ino
        c.chmod("hello.txt", 0o600)
        assert stat.S_IMODE(os.stat(exp / "hello.txt").st_mode) == 0o600
        c.truncate("d/moved.txt", 3)
        assert (exp / "d" / "moved.txt").read_bytes() == b"via"
        st = c.stat("d/moved.txt")
        assert st.st_size == 3 and stat.S_ISREG(st.st_mode)
        assert c.statfs()["bsize"] > 0
        c.remove("d/ln")
        assert not os.path.lexists(exp / "d" / "ln")
        # a large file: one request per child iounit, content intact both ways
        blob = os.urandom(3 * 1024 * 1024 + 17)
        c.write_file("big", blob)
        assert (exp / "big").read_bytes() == blob
        assert c.read_file("big") == blob
        with pytest.raises(FileNotFoundError):
            c.read_file("nope")
        with pytest.raises(FileExistsError):
            c.mkdir("d")
        with pytest.raises(OSError) as ei:
            c.rmdir("d")
        assert ei.value.errno == errno.ENOTEMPTY
    finally:
        c.close()


def test_raw_9p_through_mux(mux, exp):
    c = _raw(mux.port)
    # one walk of several names; a partial walk returns fewer qids and no fid
    r = _ok(c.rpc(P.Twalk(fid=0, newfid=1, wnames=["sub", "inner"], tag=2)), P.Rwalk)
    assert len(r.wqids) == 2 and r.wqids[0].type & P.QTDIR
    r = _ok(c.rpc(P.Twalk(fid=0, newfid=2, wnames=["sub", "nope", "x"], tag=2)), P.Rwalk)
    assert len(r.wqids) == 1
    _err(c.rpc(P.Tgetattr(fid=2, request_mask=P.GETATTR_BASIC, tag=2)), errno.EBADF)
    _err(c.rpc(P.Twalk(fid=0, newfid=2, wnames=["nope"], tag=2)), errno.ENOENT)
    _ok(c.rpc(P.Tlopen(fid=1, flags=P.L_O_RDONLY, tag=3)), P.Rlopen)
    assert _ok(c.rpc(P.Tread(fid=1, offset=0, count=100, tag=3)), P.Rread).data == b"inner\n"
    # Tlopen with O_CREAT|O_NONBLOCK on a file that exists (what the kernel sends)
    _ok(c.rpc(P.Twalk(fid=0, newfid=3, wnames=["hello.txt"], tag=2)), P.Rwalk)
    r = _ok(c.rpc(P.Tlopen(fid=3, flags=P.L_O_RDWR | P.L_O_CREAT | P.L_O_NONBLOCK, tag=4)),
            P.Rlopen)
    assert r.iounit > 0
    assert _ok(c.rpc(P.Twrite(fid=3, offset=0, data=b"HELLO", tag=4)), P.Rwrite).count == 5
    assert (exp / "hello.txt").read_bytes() == b"HELLO, world\n"
    # create, mkdir, symlink, mknod, renameat, unlinkat
    _ok(c.rpc(P.Twalk(fid=0, newfid=4, wnames=[], tag=2)), P.Rwalk)
    r = _ok(c.rpc(P.Tlcreate(fid=4, name="c.txt", flags=P.L_O_RDWR | P.L_O_CREAT, mode=0o640,
                             gid=0, tag=5)), P.Rlcreate)
    _ok(c.rpc(P.Twrite(fid=4, offset=0, data=b"created", tag=5)), P.Rwrite)
    assert (exp / "c.txt").read_bytes() == b"created"
    assert stat.S_IMODE(os.stat(exp / "c.txt").st_mode) == 0o640
    _ok(c.rpc(P.Tmkdir(dfid=0, name="dd", mode=0o700, gid=0, tag=6)), P.Rmkdir)
    _ok(c.rpc(P.Tsymlink(fid=0, name="sl", symtgt="c.txt", gid=0, tag=6)), P.Rsymlink)
    _ok(c.rpc(P.Tmknod(dfid=0, name="fifo", mode=stat.S_IFIFO | 0o600, major=0, minor=0,
                       gid=0, tag=6)), P.Rmknod)
    assert stat.S_ISFIFO(os.lstat(exp / "fifo").st_mode)
    _ok(c.rpc(P.Twalk(fid=0, newfid=5, wnames=["dd"], tag=2)), P.Rwalk)
    _ok(c.rpc(P.Trenameat(olddirfid=0, oldname="c.txt", newdirfid=5, newname="c2", tag=7)),
        P.Rrenameat)
    assert (exp / "dd" / "c2").read_bytes() == b"created"
    _ok(c.rpc(P.Tunlinkat(dirfid=5, name="c2", flags=0, tag=7)), P.Runlinkat)
    _ok(c.rpc(P.Tunlinkat(dirfid=0, name="dd", flags=P.AT_REMOVEDIR, tag=7)), P.Runlinkat)
    assert not (exp / "dd").exists()
    # Trename of a walked file; readlink; statfs; fsync
    _ok(c.rpc(P.Twalk(fid=0, newfid=6, wnames=["sl"], tag=2)), P.Rwalk)
    assert _ok(c.rpc(P.Treadlink(fid=6, tag=8)), P.Rreadlink).target == "c.txt"
    _ok(c.rpc(P.Trename(fid=6, dfid=0, name="sl2", tag=8)), P.Rrename)
    assert os.readlink(exp / "sl2") == "c.txt"
    _ok(c.rpc(P.Tstatfs(fid=0, tag=8)), P.Rstatfs)
    _ok(c.rpc(P.Tfsync(fid=3, datasync=0, tag=8)), P.Rfsync)
    # Tremove of a walked file
    _ok(c.rpc(P.Twalk(fid=0, newfid=7, wnames=["fifo"], tag=2)), P.Rwalk)
    _ok(c.rpc(P.Tremove(fid=7, tag=9)), P.Rremove)
    assert not os.path.lexists(exp / "fifo")
    # Tlopen/readdir on the attach fid itself (it is the shared root of this user)
    _ok(c.rpc(P.Twalk(fid=0, newfid=8, wnames=[], tag=2)), P.Rwalk)
    _ok(c.rpc(P.Tlopen(fid=8, flags=P.L_O_RDONLY, tag=10)), P.Rlopen)
    data = _ok(c.rpc(P.Treaddir(fid=8, offset=0, count=8192, tag=10)), P.Rreaddir).data
    names = {e[3] for e in P.unpack_dirents(data)}
    assert {"hello.txt", "sub", "sl2", ".", ".."} <= names
    for f in (1, 3, 4, 5, 6, 8, 0):
        _ok(c.rpc(P.Tclunk(fid=f, tag=11)), P.Rclunk)
    c.close()


def test_xattrs_through_mux(mux, exp):
    c = Client(mux.addr, uname="root", n_uname=0)
    try:
        c.setxattr("hello.txt", "user.color", b"blue")
        assert os.getxattr(exp / "hello.txt", "user.color") == b"blue"
        assert c.getxattr("hello.txt", "user.color") == b"blue"
        assert "user.color" in c.listxattr("hello.txt")
        big = os.urandom(3000)
        c.setxattr("hello.txt", "user.big", big)
        assert c.getxattr("hello.txt", "user.big") == big
        with pytest.raises(OSError) as ei:
            c.getxattr("hello.txt", "user.none")
        assert ei.value.errno == errno.ENODATA
        c.removexattr("hello.txt", "user.color")
        assert "user.color" not in os.listxattr(exp / "hello.txt")
        with pytest.raises(OSError) as ei:
            c.removexattr("hello.txt", "user.color")
        assert ei.value.errno == errno.ENODATA
        with pytest.raises(OSError) as ei:
            c.setxattr("hello.txt", "user.big", b"x", flags=1)   # XATTR_CREATE: exists
        assert ei.value.errno == errno.EEXIST
    finally:
        c.close()


def test_locks_through_mux(mux, exp):
    c1 = Client(mux.addr, uname="root", n_uname=0)
    c2 = Client(mux.addr, uname="root", n_uname=0)
    try:
        f1 = c1.walk("hello.txt")
        f1.lopen(P.L_O_RDWR)
        assert f1.lock(P.LOCK_TYPE_WRLCK, 0, 0, proc_id=11, client_id="a") == P.LOCK_SUCCESS
        # the lock is real on the child's file: this process cannot take it
        fd = os.open(exp / "hello.txt", os.O_RDWR)
        try:
            with pytest.raises(OSError):
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            f2 = c2.walk("hello.txt")
            f2.lopen(P.L_O_RDWR)
            assert f2.lock(P.LOCK_TYPE_WRLCK, 0, 0, proc_id=12, client_id="b") == \
                P.LOCK_BLOCKED
            r = f2.getlock(P.LOCK_TYPE_WRLCK, 0, 0, proc_id=12, client_id="b")
            assert r.type == P.LOCK_TYPE_WRLCK
            assert f1.lock(P.LOCK_TYPE_UNLCK, 0, 0, proc_id=11, client_id="a") == \
                P.LOCK_SUCCESS
            r = f2.getlock(P.LOCK_TYPE_WRLCK, 0, 0, proc_id=12, client_id="b")
            assert r.type == P.LOCK_TYPE_UNLCK
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        c1.close()
        c2.close()


def test_unlinked_open_file_stays_readable(mux, exp):
    c = Client(mux.addr, uname="root", n_uname=0)
    try:
        (exp / "gone").write_bytes(b"still here\n")
        f = c.walk("gone")
        f.lopen(P.L_O_RDWR)
        c.remove("gone")
        assert not (exp / "gone").exists()
        assert f.read(0, 100) == b"still here\n"
        assert f.fstat().st_size == 11
        f.setattr(P.SETATTR_SIZE, size=5)
        assert f.read(0, 100) == b"still"
        f.clunk()
    finally:
        c.close()


# --- qids ---------------------------------------------------------------------------------

def test_qids_unique_across_children_and_stable(exp):
    # two children exporting the SAME directory: same inode numbers underneath
    a = NineProc(["--export", str(exp)], free_port())
    b = NineProc(["--export", str(exp)], free_port())
    qm = QidMap()
    m = Mux([Child("a", a.addr, qidmap=qm), Child("b", b.addr, qidmap=qm)], default=False)
    try:
        ca = Client(m.addr, aname="a", uname="root", n_uname=0)
        cb = Client(m.addr, aname="b", uname="root", n_uname=0)
        direct = Client(a.addr, uname="root", n_uname=0)
        qa = {p: ca.stat(p).qid.path for p in ("", "hello.txt", "sub", "sub/inner")}
        qb = {p: cb.stat(p).qid.path for p in ("", "hello.txt", "sub", "sub/inner")}
        qd = {p: direct.stat(p).qid.path for p in ("", "hello.txt", "sub", "sub/inner")}
        assert len(set(qd.values())) == 4
        assert len(set(qa.values()) | set(qb.values())) == 8    # no collision at all
        # the same file gives the same qid path each time, by walk, open and readdir
        for _ in range(3):
            assert ca.stat("hello.txt").qid.path == qa["hello.txt"]
            assert cb.stat("sub/inner").qid.path == qb["sub/inner"]
        with ca.open("hello.txt") as f:
            assert f.qid.path == qa["hello.txt"]
        ents = {e.name: e.qid.path for e in ca.readdir("")}
        assert ents["hello.txt"] == qa["hello.txt"] and ents["sub"] == qa["sub"]
        ents = {e.name: e.qid.path for e in cb.readdir("sub")}
        assert ents["inner"] == qb["sub/inner"]
        # hard links keep sharing one qid path (one inode), per child
        os.link(exp / "hello.txt", exp / "hl")
        assert ca.stat("hl").qid.path == qa["hello.txt"]
        assert cb.stat("hl").qid.path == qb["hello.txt"]
        # a new file gets a new path, the same through walk and mkdir's reply
        q = ca.mkdir("newdir")
        assert ca.stat("newdir").qid.path == q.path
        assert q.path not in set(qa.values()) | set(qb.values())
        for x in (ca, cb, direct):
            x.close()
    finally:
        m.stop()
        a.stop()
        b.stop()


def test_readdir_2000_entries_none_lost_or_repeated(mux, exp):
    big = exp / "big"
    big.mkdir()
    names = {"f%04d-%s" % (i, "x" * (i % 37)) for i in range(2000)}
    for n in names:
        (big / n).write_bytes(b"")
    c = _raw(mux.port)
    _ok(c.rpc(P.Twalk(fid=0, newfid=1, wnames=["big"], tag=2)), P.Rwalk)
    _ok(c.rpc(P.Tlopen(fid=1, flags=P.L_O_RDONLY, tag=2)), P.Rlopen)
    seen = []
    qpaths = set()
    off = 0
    batches = 0
    while True:
        r = _ok(c.rpc(P.Treaddir(fid=1, offset=off, count=2048, tag=3)), P.Rreaddir)
        ents = P.unpack_dirents(r.data)
        if not ents:
            break
        batches += 1
        for q, o, t, name in ents:
            if name not in (".", ".."):
                seen.append(name)
                qpaths.add(q.path)
        off = ents[-1][1]
    assert batches > 20
    assert len(seen) == len(set(seen)) == 2000
    assert set(seen) == names
    assert len(qpaths) == 2000
    c.close()
    # the client library (one big batch) agrees
    cl = Client(mux.addr, uname="root", n_uname=0)
    assert set(cl.listdir("big")) == names
    cl.close()


# --- dialects -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [P.V9P2000, P.V9P2000U])
def test_9p2000_and_u_clients_of_the_mux(mux, exp, version):
    c = Client(mux.addr, uname="root", n_uname=0, version=version)
    try:
        assert c.dialect == version
        assert c.read_file("hello.txt") == b"hello, world\n"
        assert sorted(c.listdir()) == ["hello.txt", "sub"]
        assert c.stat("sub/inner").st_size == 6
        c.write_file("w.txt", b"written in " + version.encode())
        assert (exp / "w.txt").read_bytes() == b"written in " + version.encode()
        c.mkdir("dir")
        assert (exp / "dir").is_dir()
        c.rename("w.txt", "w2.txt")     # a wstat of the name
        assert (exp / "w2.txt").exists() and not (exp / "w.txt").exists()
        if version == P.V9P2000U:
            c.symlink("w2.txt", "sl")
            assert os.readlink(exp / "sl") == "w2.txt"
            assert c.readlink("sl") == "w2.txt"
        c.remove("w2.txt")
        assert not (exp / "w2.txt").exists()
    finally:
        c.close()


# --- users -----------------------------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_one_attach_per_user(mux, exp):
    os.chmod(exp, 0o777)
    root = Client(mux.addr, uname="root", n_uname=0)
    nobody = Client(mux.addr, uname="nobody", n_uname=65534)
    nobody2 = Client(mux.addr, uname="nobody", n_uname=65534)
    try:
        nobody.write_file("by-nobody", b"x")
        root.write_file("by-root", b"y")
        assert os.stat(exp / "by-nobody").st_uid == 65534
        assert os.stat(exp / "by-root").st_uid == 0
        os.chmod(exp / "by-root", 0o600)
        with pytest.raises(PermissionError):
            nobody2.read_file("by-root")
        ln = mux.child._link
        assert len(ln.roots) == 2       # one Tattach per user, shared by their clients
        assert mux.child.connects == 1
    finally:
        for c in (root, nobody, nobody2):
            c.close()


# --- cross-child operations -------------------------------------------------------------------

def test_cross_child_rename_and_link_are_exdev(tmp_path):
    ea = _mkexport(tmp_path / "a")
    eb = _mkexport(tmp_path / "b")
    a = NineProc(["--export", str(ea)], free_port())
    b = NineProc(["--export", str(eb)], free_port())
    m = Mux([Child("a", a.addr), Child("b", b.addr)], default=False)
    try:
        c = RawConn(m.port)
        c.version()
        _ok(c.attach(fid=0, aname="a"), P.Rattach)
        _ok(c.attach(fid=1, aname="b"), P.Rattach)
        _err(c.rpc(P.Trenameat(olddirfid=0, oldname="hello.txt", newdirfid=1,
                               newname="x", tag=2)), errno.EXDEV)
        _ok(c.rpc(P.Twalk(fid=0, newfid=2, wnames=["hello.txt"], tag=2)), P.Rwalk)
        _err(c.rpc(P.Trename(fid=2, dfid=1, name="x", tag=2)), errno.EXDEV)
        _err(c.rpc(P.Tlink(dfid=1, fid=2, name="x", tag=2)), errno.EXDEV)
        assert (ea / "hello.txt").exists() and not (eb / "x").exists()
        c.close()
    finally:
        m.stop()
        a.stop()
        b.stop()


# --- failures and recovery --------------------------------------------------------------------

def test_killed_child_fails_fast_other_child_works_and_recovers(tmp_path):
    ea = _mkexport(tmp_path / "a")
    eb = _mkexport(tmp_path / "b")
    port_a = free_port()
    a = NineProc(["--export", str(ea)], port_a)
    b = NineProc(["--export", str(eb)], free_port())
    ca = Child("serverA", a.addr)
    cb = Child("serverB", b.addr)
    m = Mux([ca, cb], default=False)
    try:
        cla = Client(m.addr, aname="serverA", uname="root", n_uname=0)
        clb = Client(m.addr, aname="serverB", uname="root", n_uname=0)
        assert cla.read_file("hello.txt") == b"hello, world\n"
        assert ca.state == "up" and "serverA" in ca.status_line() and " up " in \
            ca.status_line()
        f = cla.walk("sub/inner")
        f.lopen(P.L_O_RDONLY)
        assert f.read(0, 10) == b"inner\n"

        a.proc.kill()
        a.proc.wait()
        t0 = time.time()
        while ca.state == "up" and time.time() - t0 < 2:
            time.sleep(0.01)
        assert ca.state in ("down", "connecting")
        # requests on child A fail promptly with a clear error naming the child
        for op in (lambda: f.read(0, 10), lambda: cla.read_file("hello.txt"),
                   lambda: cla.stat("")):
            t1 = time.time()
            with pytest.raises(OSError) as ei:
                op()
            assert time.time() - t1 < 2
            assert ei.value.errno == errno.EHOSTDOWN, ei.value
        assert "serverA" in ca.status_line() and "down" in ca.status_line()
        assert ca.last_error
        # child B keeps working meanwhile
        assert clb.read_file("hello.txt") == b"hello, world\n"
        clb.write_file("b.txt", b"b")
        assert (eb / "b.txt").read_bytes() == b"b"

        # restart A on the same port: the mux comes back by itself
        a = NineProc(["--export", str(ea)], port_a)
        t0 = time.time()
        while True:
            try:
                data = cla.read_file("hello.txt")   # a fresh walk from the attach fid
                break
            except OSError as e:
                assert e.errno == errno.EHOSTDOWN
                assert time.time() - t0 < 10, "no recovery: %s" % ca.status_line()
                time.sleep(0.1)
        assert data == b"hello, world\n"
        assert ca.state == "up" and ca.connects == 2
        # a node from the old connection is stale, with a clear error
        with pytest.raises(OSError) as ei:
            f.read(0, 10)
        assert ei.value.errno == errno.EIO
        f.clunk()
        cla.write_file("after.txt", b"after")
        assert (ea / "after.txt").read_bytes() == b"after"
        cla.close()
        clb.close()
    finally:
        m.stop()
        a.stop()
        b.stop()


def test_down_error_text_reaches_9p2000u_clients(tmp_path):
    ea = _mkexport(tmp_path / "a")
    port = free_port()
    a = NineProc(["--export", str(ea)], port)
    ca = Child("serverA", a.addr)
    m = Mux([ca])
    try:
        c = _raw(m.port, dialect=P.V9P2000U)
        a.stop()
        t0 = time.time()
        while ca.state == "up" and time.time() - t0 < 3:
            time.sleep(0.01)
        r = c.rpc(P.Twalk(fid=0, newfid=1, wnames=["hello.txt"], tag=2))
        assert isinstance(r, P.Rerror) and r.errno == errno.EHOSTDOWN
        assert "child serverA (127.0.0.1:%d) is down" % port in r.ename, r.ename
        c.close()
    finally:
        m.stop()
        a.stop()


def test_child_never_up_fails_fast():
    port = free_port()
    ch = Child("ghost", "127.0.0.1:%d" % port)
    m = Mux([ch])
    try:
        for _ in range(3):
            c = RawConn(m.port)
            c.version()
            t0 = time.time()
            r = c.attach()
            assert time.time() - t0 < 1
            _err(r, errno.EHOSTDOWN)
            c.close()
        assert ch.state in ("down", "connecting")
        assert "refused" in ch.last_error
        assert "ghost" in ch.status_line()
        # and once it is up, it is found without any request retrying by hand
        tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "nine-ghost-%d" % port)
        os.makedirs(tmp, exist_ok=True)
        p = NineProc(["--export", tmp], port)
        try:
            t0 = time.time()
            while ch.state != "up":
                assert time.time() - t0 < 10, ch.status_line()
                time.sleep(0.05)
            c = RawConn(m.port)
            c.version()
            _ok(c.attach(), P.Rattach)
            c.close()
        finally:
            p.stop()
    finally:
        m.stop()


@contextlib.contextmanager
def _blocky_mux(**child_kw):
    """A mux over one child whose file `block` never answers a read: (mux, Child, child
    server, the child's state {"reads", "cancelled"}); everything stops afterwards."""
    holder = {}

    def make():
        ex, st = blocking_tree()
        holder["state"] = st
        return ex
    child = ThreadServer(make)
    ch = Child("blocky", child.addr, **child_kw)
    m = Mux([ch])
    try:
        yield m, ch, child, holder["state"]
    finally:
        m.stop()
        child.stop()


def _read_blocked(m, st):
    """A raw 9P2000.L connection to the mux with a Tread (tag 7) of `block` in flight,
    arrived at the child."""
    c = _raw(m.port)
    _ok(c.rpc(P.Twalk(fid=0, newfid=1, wnames=["block"], tag=2)), P.Rwalk)
    _ok(c.rpc(P.Tlopen(fid=1, flags=P.L_O_RDONLY, tag=2)), P.Rlopen)
    c.send(P.Tread(fid=1, offset=0, count=100, tag=7))
    t0 = time.time()
    while st["reads"] == 0:
        assert time.time() - t0 < 5
        time.sleep(0.01)
    return c


def test_outstanding_request_fails_when_child_dies():
    with _blocky_mux() as (m, ch, child, st):
        c = _read_blocked(m, st)
        _drop_connections(child)   # the child goes away with the read in flight
        t0 = time.time()
        r = c.recv()
        assert time.time() - t0 < 2
        assert r.tag == 7
        _err(r, errno.EHOSTDOWN)
        c.close()


def test_tflush_through_mux_reaches_child():
    with _blocky_mux() as (m, ch, child, st):
        c = _read_blocked(m, st)
        assert st["cancelled"] == 0
        r = c.rpc(P.Tflush(oldtag=7, tag=8))
        assert isinstance(r, P.Rflush) and r.tag == 8
        t0 = time.time()
        while st["cancelled"] == 0:          # the child saw the Tflush: its read is gone
            assert time.time() - t0 < 5, st
            time.sleep(0.01)
        assert st["cancelled"] == 1
        # the flushed tag is free, the connections work
        _ok(c.rpc(P.Twalk(fid=0, newfid=2, wnames=["hello"], tag=9)), P.Rwalk)
        _ok(c.rpc(P.Tlopen(fid=2, flags=P.L_O_RDONLY, tag=9)), P.Rlopen)
        assert _ok(c.rpc(P.Tread(fid=2, offset=0, count=100, tag=9)), P.Rread).data == \
            b"hello\n"
        assert ch._link.conn.inflight() == 0
        c.close()


def test_op_timeout_flushes_the_child_request():
    with _blocky_mux(op_timeout=0.3) as (m, ch, child, st):
        c = _raw(m.port, dialect=P.V9P2000U)
        _ok(c.rpc(P.Twalk(fid=0, newfid=1, wnames=["block"], tag=2)), P.Rwalk)
        _ok(c.rpc(P.Topen(fid=1, mode=P.OREAD, tag=2)), P.Ropen)
        t0 = time.time()
        r = c.rpc(P.Tread(fid=1, offset=0, count=100, tag=7))
        assert 0.25 < time.time() - t0 < 2
        assert isinstance(r, P.Rerror) and r.errno == errno.ETIMEDOUT
        assert "blocky" in r.ename, r.ename
        t0 = time.time()
        while st["cancelled"] == 0:
            assert time.time() - t0 < 5
            time.sleep(0.01)
        assert ch.state == "up"        # a slow request is not a dead child
        c.close()


# --- concurrency ------------------------------------------------------------------------------

def test_many_concurrent_clients_share_one_child_connection(mux, exp):
    n = 50
    for i in range(n):
        (exp / ("f%02d" % i)).write_bytes(("file %d\n" % i).encode() * (i + 1) * 50)
    errors = []

    def worker(i):
        try:
            c = Client(mux.addr, uname="root", n_uname=0)
            try:
                for k in range(5):
                    want = ("file %d\n" % i).encode() * (i + 1) * 50
                    assert c.read_file("f%02d" % i) == want
                    c.write_file("out%02d" % i, b"%d:%d" % (i, k))
                    assert c.stat("f%02d" % ((i + k) % n)).st_size == \
                        len(("file %d\n" % ((i + k) % n)).encode()) * ((i + k) % n + 1) * 50
            finally:
                c.close()
        except BaseException as e:      # noqa: B902
            errors.append((i, repr(e)))
    gs = [gevent.spawn(worker, i) for i in range(n)]
    gevent.joinall(gs, timeout=60)
    assert not errors, errors[:5]
    assert all(g.dead for g in gs)
    for i in range(n):
        assert (exp / ("out%02d" % i)).read_bytes() == b"%d:4" % i
    assert mux.child.connects == 1            # every client went over one connection
    assert mux.child._link.conn.requests > n * 5 * 4


def test_threads_as_clients(mux, exp):
    # plain blocking sockets from OS threads, interleaved on the one child connection
    errors = []

    def worker(i):
        try:
            c = _raw(mux.port)
            for k in range(20):
                r = c.rpc(P.Twalk(fid=0, newfid=1, wnames=["sub", "inner"], tag=2))
                assert len(r.wqids) == 2
                _ok(c.rpc(P.Tlopen(fid=1, flags=0, tag=2)), P.Rlopen)
                assert c.rpc(P.Tread(fid=1, offset=0, count=64, tag=2)).data == b"inner\n"
                _ok(c.rpc(P.Tclunk(fid=1, tag=2)), P.Rclunk)
            c.close()
        except BaseException as e:      # noqa: B902
            errors.append(repr(e))
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:3]
