"""Tests of nine.client.

Against a real peer, Debian's diod (9P2000.L), when installed; and, for 9P2000 and
9P2000.u, against a small scripted peer written here (the test is the server, answering
with frames encoded by nine.protocol) over a socketpair.
"""

import errno
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

import gevent
import gevent.event
import gevent.socket
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import nine.protocol as P  # noqa: E402
from nine.client import (Client, Connection, NineError, NineProtocolError,  # noqa: E402
                         NineTimeout, errno_from_ename, parse_addr, parse_mode,
                         dm_to_st_mode, st_mode_to_dm, XATTR_CREATE)
from nine.protocol.const import (DMDIR, DMSYMLINK, L_O_RDONLY, L_O_RDWR, OREAD,  # noqa: E402
                                 NOTAG, V9P2000, V9P2000L, V9P2000U)
from nine.netwait import free_port, wait_for, wait_port  # noqa: E402

DIOD = shutil.which("diod") or ("/usr/sbin/diod" if os.path.exists("/usr/sbin/diod") else None)
needs_diod = pytest.mark.skipif(DIOD is None, reason="diod is not installed")


class Diod:
    def __init__(self, export):
        self.export = export
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.proc = subprocess.Popen([DIOD, "-f", "-n", "-l", self.addr, "-e", export,
                                      "-e", "ctl", "-S"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 15, proc=self.proc)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _settle(conn, timeout=5):
    """Wait until no request is in flight (clunks are sent without waiting)."""
    t0 = time.time()
    while conn.inflight() and time.time() - t0 < timeout:
        gevent.sleep(0.005)
    return conn.inflight()


def _export_dir():
    d = tempfile.mkdtemp(prefix="nine-client-")
    os.chmod(d, 0o777)  # diod -S squashes everyone to nobody
    return d


@pytest.fixture(scope="module")
def diod():
    if DIOD is None:
        pytest.skip("diod is not installed")
    d = _export_dir()
    s = Diod(d)
    yield s
    s.kill()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cl(diod, request):
    """A client attached to a fresh, empty directory of the diod export."""
    sub = os.path.join(diod.export, request.node.name.replace("[", "_").replace("]", "_"))
    os.mkdir(sub)
    os.chmod(sub, 0o777)
    c = Client(diod.addr, aname=sub)
    c.local = sub
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _no_hang():
    """No test may hang: a gevent.Timeout in the test's greenlet after 60 s."""
    with gevent.Timeout(60):
        yield


# ---------------------------------------------------------------------------
# pure helpers

def test_parse_addr():
    assert parse_addr("127.0.0.1:564") == (socket.AF_INET, ("127.0.0.1", 564))
    assert parse_addr("tcp!localhost!5640") == (socket.AF_INET, ("localhost", 5640))
    assert parse_addr("tcp!host") == (socket.AF_INET, ("host", 564))
    assert parse_addr("net!host!9fs") == (socket.AF_INET, ("host", 564))
    assert parse_addr("unix!/tmp/x.sock") == (socket.AF_UNIX, "/tmp/x.sock")
    assert parse_addr("unix:/tmp/y") == (socket.AF_UNIX, "/tmp/y")
    assert parse_addr("/run/9p") == (socket.AF_UNIX, "/run/9p")
    assert parse_addr("[::1]:99") == (socket.AF_INET6, ("::1", 99))
    assert parse_addr("tcp!::1!99") == (socket.AF_INET6, ("::1", 99))
    assert parse_addr(("h", "7")) == (socket.AF_INET, ("h", 7))
    for bad in ("", "tcp!a!b!c", "h:0", "h:x9x", "ftp!h!1", "unix!"):
        with pytest.raises(ValueError):
            parse_addr(bad)


def test_errno_from_ename():
    assert errno_from_ename("file does not exist") == errno.ENOENT
    assert errno_from_ename("No such file or directory") == errno.ENOENT
    assert errno_from_ename("permission denied") == errno.EACCES
    assert errno_from_ename("Permission denied") == errno.EACCES
    assert errno_from_ename("file already exists") == errno.EEXIST
    assert errno_from_ename("directory not empty") == errno.ENOTEMPTY
    assert errno_from_ename("'foo' does not exist") == errno.ENOENT
    assert errno_from_ename("open /x: is a directory") == errno.EISDIR
    assert errno_from_ename("Read-only file system") == errno.EROFS
    assert errno_from_ename("the frobnicator is jammed") == errno.EIO


def test_parse_mode_and_dm_bits():
    assert parse_mode("r") == (True, False, False, False, False, False)
    assert parse_mode("wb") == (False, True, True, True, False, False)
    assert parse_mode("rw") == (True, True, False, False, False, False)
    assert parse_mode("a+") == (True, True, True, False, True, False)
    assert parse_mode("x") == (False, True, True, False, False, True)
    with pytest.raises(ValueError):
        parse_mode("q")
    assert dm_to_st_mode(DMDIR | 0o755) == stat.S_IFDIR | 0o755
    assert dm_to_st_mode(0o644) == stat.S_IFREG | 0o644
    assert dm_to_st_mode(DMSYMLINK | 0o777) == stat.S_IFLNK | 0o777
    assert dm_to_st_mode(P.DMDEVICE | 0o600, "b 8 0") == stat.S_IFBLK | 0o600
    assert dm_to_st_mode(P.DMDEVICE | 0o600, "c 1 3") == stat.S_IFCHR | 0o600
    assert dm_to_st_mode(P.DMSETUID | 0o755) == stat.S_IFREG | stat.S_ISUID | 0o755
    assert st_mode_to_dm(stat.S_IFDIR | 0o700) == DMDIR | 0o700
    assert st_mode_to_dm(stat.S_IFLNK | 0o777) == DMSYMLINK | 0o777
    assert st_mode_to_dm(stat.S_IFLNK | 0o777, dotu=False) == 0o777


# ---------------------------------------------------------------------------
# diod (9P2000.L)

@needs_diod
def test_attach_and_root(cl):
    assert cl.dialect == V9P2000L
    assert cl.msize <= 131072 + 24
    assert cl.root.qid.type & P.QTDIR
    st = cl.stat("")
    assert st.is_dir() and stat.S_ISDIR(st.st_mode)
    assert st.qid == cl.root.qid


@needs_diod
def test_version_mismatch_is_clear(diod):
    with pytest.raises(NineError) as ei:
        Connection(diod.addr, version=V9P2000)
    assert ei.value.errno == errno.EPROTONOSUPPORT
    assert "9P2000" in str(ei.value)


@needs_diod
def test_walk_and_qids(cl):
    os.makedirs(os.path.join(cl.local, "a", "b"))
    open(os.path.join(cl.local, "a", "b", "f"), "wb").close()
    f = cl.walk("a/b/f")
    assert f.qid.type == P.QTFILE
    g, qids = cl.root.twalk(["a", "b", "nope"])
    assert g is None and len(qids) == 2 and qids[0].type & P.QTDIR
    c = f.clone()
    assert c.qid == f.qid and c.fid != f.fid
    f.clunk()
    c.clunk()
    with pytest.raises(FileNotFoundError):
        cl.walk("a/zz/f")


@needs_diod
def test_walk_more_than_16_names(cl):
    names = ["d%d" % i for i in range(40)]
    os.makedirs(os.path.join(cl.local, *names))
    with open(os.path.join(cl.local, *names, "leaf"), "wb") as f:
        f.write(b"deep")
    assert cl.read_file("/".join(names + ["leaf"])) == b"deep"
    with pytest.raises(FileNotFoundError):
        cl.walk("/".join(names[:20] + ["missing"] + names[20:]))
    # no fid leaked by the failed multi-step walk
    before = len(cl.conn._free_fids)
    for _ in range(5):
        with pytest.raises(FileNotFoundError):
            cl.walk("/".join(names + ["missing"]))
    wait_for(lambda: len(cl.conn._free_fids) >= before, 5, "the fids given back", sleep=gevent.sleep)
    assert len(cl.conn._free_fids) >= before


@needs_diod
def test_write_read_seek(cl):
    with cl.open("f.txt", "w") as f:
        assert f.write(b"line one\nline two\n") == 18
        f.write(b"tail")
    assert open(os.path.join(cl.local, "f.txt"), "rb").read() == b"line one\nline two\ntail"
    with cl.open("f.txt") as f:
        assert f.read(4) == b"line"
        assert f.tell() == 4
        f.seek(0)
        assert list(f) == [b"line one\n", b"line two\n", b"tail"]
        f.seek(-4, os.SEEK_END)
        assert f.read() == b"tail"
        f.seek(5)
        b = bytearray(3)
        assert f.readinto(b) == 3 and bytes(b) == b"one"
        assert f.readline() == b"\n"
        assert f.readline(4) == b"line"
        assert f.read() == b" two\ntail"
        assert f.read() == b""
    with cl.open("f.txt", "a") as f:
        f.write(b"!")
    assert cl.read_file("f.txt") == b"line one\nline two\ntail!"
    with cl.open("f.txt", "r+") as f:
        f.seek(5)
        f.write(b"ONE")
        f.seek(0)
        assert f.read(9) == b"line ONE\n"
        f.truncate(4)
    assert cl.read_file("f.txt") == b"line"
    cl.write_file("f.txt", b"new")
    assert cl.read_file("f.txt") == b"new"
    with pytest.raises(FileExistsError):
        cl.open("f.txt", "x")
    with cl.open("g.txt", "x") as f:
        f.write(b"g")
    with pytest.raises(FileNotFoundError):
        cl.open("nothere.txt")


@needs_diod
def test_big_file_pipelined(cl):
    data = os.urandom(3 * 1024 * 1024 + 17)
    assert cl.write_file("big", data) == len(data)
    assert os.path.getsize(os.path.join(cl.local, "big")) == len(data)
    assert cl.read_file("big") == data
    with cl.open("big") as f:
        f.seek(1000)
        assert f.read(1024 * 1024) == data[1000:1000 + 1024 * 1024]
        assert f.pread(100, len(data) - 50) == data[-50:]
    assert _settle(cl.conn) == 0


@needs_diod
def test_create_mkdir_readdir_2000(cl):
    cl.mkdir("many")
    assert cl.stat("many").is_dir()
    want = set()
    for i in range(2000):
        name = "entry-%04d-%s" % (i, "x" * (i % 50))
        want.add(name)
        open(os.path.join(cl.local, "many", name), "wb").close()
    names = cl.listdir("many")
    assert len(names) == 2000 and set(names) == want
    ents = cl.readdir("many")
    assert all(e.dtype == P.DT_REG and e.qid.type == P.QTFILE for e in ents)
    # created through 9P too
    with cl.create("many/new", "w", 0o600) as f:
        f.write(b"x")
    assert "new" in cl.listdir("many")
    assert stat.S_IMODE(os.stat(os.path.join(cl.local, "many", "new")).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        cl.mkdir("many")


@needs_diod
def test_stat(cl):
    p = os.path.join(cl.local, "s")
    cl.write_file("s", b"12345")  # owned by diod's squash user, so it may chmod it
    os.utime(p, (1000000000, 1234567890))
    st = cl.stat("s")
    lst = os.stat(p)
    assert st.st_size == 5
    assert stat.S_ISREG(st.st_mode) and st.is_file()
    assert st.st_mode == lst.st_mode
    assert st.st_nlink == 1
    assert st.st_mtime == 1234567890 and st.st_atime == 1000000000
    assert st.st_ino == st.qid.path
    assert st.name == "s"
    assert cl.getsize("s") == 5
    cl.chmod("s", 0o640)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    cl.truncate("s", 2)
    assert os.path.getsize(p) == 2
    cl.utime("s", (5, 6.5))
    assert os.stat(p).st_mtime == 6.5
    assert cl.statfs()["bsize"] > 0


@needs_diod
def test_remove_rename(cl):
    cl.write_file("a", b"A")
    cl.mkdir("d")
    cl.rename("a", "b")
    assert set(cl.listdir("")) == {"b", "d"}
    cl.rename("b", "d/c")
    assert cl.listdir("d") == ["c"]
    assert cl.read_file("d/c") == b"A"
    with pytest.raises(NineError) as ei:
        cl.remove("d")
    assert ei.value.errno == errno.ENOTEMPTY
    cl.remove("d/c")
    cl.remove("d")
    assert cl.listdir("") == []
    assert not cl.exists("d")
    with pytest.raises(FileNotFoundError):
        cl.remove("d")


@needs_diod
def test_symlink_link(cl):
    cl.write_file("t", b"target")
    cl.symlink("t", "l")
    assert os.readlink(os.path.join(cl.local, "l")) == "t"
    assert cl.readlink("l") == "t"
    assert cl.stat("l").is_symlink()
    cl.link("t", "h")
    assert os.stat(os.path.join(cl.local, "h")).st_nlink == 2
    assert cl.stat("t").st_nlink == 2


@needs_diod
def test_xattrs(cl):
    cl.write_file("x", b"")
    try:
        cl.setxattr("x", "user.color", b"blue")
    except NineError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            pytest.skip("no user xattrs on this file system")
        raise
    assert cl.getxattr("x", "user.color") == b"blue"
    cl.setxattr("x", "user.shape", "round")
    assert set(cl.listxattr("x")) == {"user.color", "user.shape"}
    with pytest.raises(NineError):
        cl.setxattr("x", "user.color", b"red", XATTR_CREATE)
    cl.removexattr("x", "user.color")
    assert cl.listxattr("x") == ["user.shape"]
    with pytest.raises(NineError) as ei:
        cl.getxattr("x", "user.color")
    assert ei.value.errno == errno.ENODATA


@needs_diod
def test_errors_map_to_errno(cl):
    with pytest.raises(FileNotFoundError) as ei:
        cl.stat("missing")
    e = ei.value
    assert isinstance(e, NineError) and e.errno == errno.ENOENT
    cl.mkdir("dd")
    with pytest.raises(NineError) as ei:
        cl.open("dd", "w")
    assert ei.value.errno == errno.EISDIR
    cl.write_file("ff", b"")
    with pytest.raises(NotADirectoryError):
        cl.walk("ff/x")


@needs_diod
def test_fids_are_reused(cl):
    cl.write_file("r", b"r")
    for _ in range(50):
        cl.read_file("r")
        cl.stat("r")
    _settle(cl.conn)
    assert cl.conn._next_fid < 10
    assert _settle(cl.conn) == 0


@needs_diod
def test_ctl_aname(diod):
    c = Client(diod.addr, aname="ctl")
    try:
        assert "version" in c.listdir("")
        assert c.read_file("version").startswith(b"diod")
        with c.open("zero") as f:  # endless
            assert f.read(300000) == bytes(300000)
    finally:
        c.close()


@needs_diod
def test_many_concurrent_reads_one_connection(cl):
    blobs = {}
    for i in range(20):
        blobs["f%d" % i] = os.urandom(1000 + i * 357)
        with open(os.path.join(cl.local, "f%d" % i), "wb") as f:
            f.write(blobs["f%d" % i])
    files = {n: cl.open(n) for n in blobs}
    peak = [0]
    conn = cl.conn

    def reader(k):
        n = "f%d" % (k % 20)
        f = files[n].fid
        for j in range(10):
            off = (k * 7 + j * 13) % len(blobs[n])
            data = f.read(off, 500)
            assert data == blobs[n][off:off + 500]
            peak[0] = max(peak[0], conn.inflight())
        return k

    gs = [gevent.spawn(reader, k) for k in range(200)]
    gevent.joinall(gs, raise_error=True, timeout=60)
    assert [g.value for g in gs] == list(range(200))
    assert peak[0] >= 100  # really many in flight at once on one socket
    for f in files.values():
        f.close()
    # and many walk+getattr+clunk at once
    gs = [gevent.spawn(cl.stat, "f%d" % (k % 20)) for k in range(200)]
    gevent.joinall(gs, raise_error=True, timeout=60)
    assert all(g.value.st_size == len(blobs["f%d" % (k % 20)]) for k, g in enumerate(gs))
    assert _settle(conn) == 0


def _fifo(cl, name="fifo"):
    p = os.path.join(cl.local, name)
    os.mkfifo(p)
    os.chmod(p, 0o666)
    return p


@needs_diod
def test_flush_against_diod(cl):
    # diod's Tlopen of a fifo blocks until a writer opens it: a request held by the server.
    p = _fifo(cl)
    conn = cl.conn
    f = cl.walk("fifo")
    g = gevent.spawn(f.lopen, L_O_RDONLY)
    wait_for(lambda: conn.inflight() == 1, 5, "the Tlopen in flight", sleep=gevent.sleep)
    assert not g.ready() and conn.inflight() == 1
    held_tag = next(iter(conn._waiters))
    g.kill(timeout=2)
    assert g.dead
    # Tflush was sent; diod answers Rflush only once the open is done; the old tag stays
    # reserved until then, while other requests go on.
    wait_for(lambda: conn.inflight() == 2, 5, "the Tflush in flight", sleep=gevent.sleep)
    assert conn.inflight() == 2 and held_tag in conn._waiters
    for _ in range(20):
        assert cl.stat("").is_dir()
    assert held_tag not in conn._free_tags
    fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
    try:
        t0 = time.time()
        while conn.inflight() and time.time() - t0 < 5:
            gevent.sleep(0.01)
        assert conn.inflight() == 0 and held_tag in conn._free_tags
    finally:
        os.close(fd)
    f.clunk()
    assert cl.stat("").is_dir()


@needs_diod
def test_timeout_flushes(cl):
    _fifo(cl)
    p = os.path.join(cl.local, "fifo")
    f = cl.walk("fifo")
    t0 = time.time()
    with pytest.raises(NineTimeout) as ei:
        f.lopen(L_O_RDONLY, timeout=0.2)
    assert ei.value.errno == errno.ETIMEDOUT and isinstance(ei.value, TimeoutError)
    assert time.time() - t0 < 2
    assert cl.conn.inflight() == 2  # the old tag and the Tflush
    fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
    os.close(fd)
    t0 = time.time()
    while cl.conn.inflight() and time.time() - t0 < 5:
        gevent.sleep(0.01)
    assert _settle(cl.conn) == 0
    f.clunk()


@needs_diod
def test_walk_interrupted_releases_fid(cl):
    # gevent.Timeout around a call: the request is flushed, the connection owns the fid
    with gevent.Timeout(5):
        for _ in range(20):
            f = cl.walk("")
            f.clunk()
    assert _settle(cl.conn) == 0


@needs_diod
def test_server_killed_mid_request():
    d = _export_dir()
    s = Diod(d)
    try:
        c = Client(s.addr, aname=d)
        c.local = d
        _fifo(c)
        # (walk first: diod does not answer a walk to a fifo while an open of it blocks)
        fids = [c.walk("fifo") for i in range(10)]
        waiters = [gevent.spawn(f.lopen, L_O_RDONLY) for f in fids]
        wait_for(lambda: c.conn.inflight() == 10, 5, "the 10 Tlopens in flight", sleep=gevent.sleep)
        assert c.conn.inflight() == 10
        t0 = time.time()
        s.kill()
        gevent.joinall(waiters, timeout=5)
        assert time.time() - t0 < 3
        for g in waiters:
            assert g.ready()
            e = g.exception
            assert isinstance(e, NineError) and e.errno in (errno.ECONNRESET, errno.EPIPE)
        with pytest.raises(NineError) as ei:
            c.stat("")
        assert ei.value.errno in (errno.ECONNRESET, errno.EPIPE)
        assert c.conn.closed
        c.close()
    finally:
        s.kill()
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------
# A scripted peer: the test is the server (9P2000, 9P2000.u, and 9P2000.L corner cases)

class Node:
    _next = 100

    def __init__(self, name, kind="file", data=b"", perm=0o644, target=""):
        Node._next += 1
        self.path = Node._next
        self.name = name
        self.kind = kind
        self.data = data
        self.perm = perm
        self.target = target
        self.children = {}
        self.mtime = 1234567890

    def qid(self):
        t = {"dir": P.QTDIR, "symlink": P.QTSYMLINK}.get(self.kind, P.QTFILE)
        return P.Qid(t, 0, self.path)

    def stat(self, dotu):
        mode = self.perm
        if self.kind == "dir":
            mode |= DMDIR
        elif self.kind == "symlink" and dotu:
            mode |= DMSYMLINK
        return P.Stat(qid=self.qid(), mode=mode, atime=self.mtime, mtime=self.mtime,
                      length=len(self.data), name=self.name, uid="glenda", gid="sys",
                      muid="glenda", extension=self.target if dotu else "",
                      n_uid=1000, n_gid=100, n_muid=1000)


class FakePeer:
    """A scripted 9P2000/.u server over a socketpair, in a greenlet of this process."""

    def __init__(self, dialect=V9P2000, msize=8192, answer_version=None, errno_in_rerror=False,
                 sock=None):
        self.dialect = dialect
        self.msize = msize
        self.answer_version = answer_version
        self.errno_in_rerror = errno_in_rerror
        self.root = Node("/", "dir", perm=0o775)
        self.fids = {}
        self.dirdata = {}
        self.dirnext = {}
        self.held = {}  # tag -> request held unanswered ('block' files)
        self.hold_flush = None  # an Event: Rflush waits for it
        self.answer_before_rflush = False
        self.released = set()
        self.log = []
        if sock is None:
            a, sock = gevent.socket.socketpair()
            self.client_sock = a
        self.sock = sock
        self.g = gevent.spawn(self._serve)

    def add(self, path, kind="file", data=b"", perm=0o644, target=""):
        names = [n for n in path.split("/") if n]
        d = self.root
        for n in names[:-1]:
            d = d.children[n]
        node = Node(names[-1], kind, data, perm, target)
        d.children[names[-1]] = node
        return node

    def stop(self):
        self.g.kill()
        self.sock.close()

    def send(self, msg):
        self.sock.sendall(P.encode(msg, self.dialect))

    def error(self, tag, ename, eno=0):
        self.send(P.Rerror(ename=ename, errno=eno if self.errno_in_rerror else 0, tag=tag))

    def _serve(self):
        fr = P.Framer(self.msize)
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            for frame in fr.feed(data):
                m = P.decode(frame, self.dialect)
                self.log.append(m)
                self.handle(m)

    def _walk1(self, node, name):
        if node.kind != "dir":
            return None
        if name == "..":
            return node  # flat enough for these tests
        return node.children.get(name)

    def handle(self, m):
        name = type(m).__name__
        t = m.tag
        dotu = self.dialect != V9P2000
        if name == "Tversion":
            v = self.answer_version or m.version
            self.send(P.Rversion(msize=min(m.msize, self.msize), version=v, tag=t))
        elif name == "Tattach":
            self.fids[m.fid] = [self.root, None]
            self.send(P.Rattach(qid=self.root.qid(), tag=t))
        elif name == "Twalk":
            if m.fid not in self.fids:
                return self.error(t, "unknown fid", errno.EBADF)
            if m.newfid != m.fid and m.newfid in self.fids:
                return self.error(t, "fid already in use", errno.EBADF)
            if "hang" in m.wnames and id(m) not in self.released:
                self.held[t] = m
                return
            node = self.fids[m.fid][0]
            qids = []
            for n in m.wnames:
                nxt = self._walk1(node, n)
                if nxt is None:
                    break
                node = nxt
                qids.append(node.qid())
            if m.wnames and not qids:
                return self.error(t, "file does not exist", errno.ENOENT)
            if len(qids) == len(m.wnames):
                self.fids[m.newfid] = [node, None]
            self.send(P.Rwalk(wqids=qids, tag=t))
        elif name == "Topen":
            node = self.fids[m.fid][0]
            if node.name == "secret":
                return self.error(t, "permission denied", errno.EACCES)
            if node.name == "weird":
                return self.error(t, "the frobnicator is jammed")
            if m.mode & P.OTRUNC:
                node.data = b""
            self.fids[m.fid][1] = m.mode
            if node.kind == "dir":
                self.dirdata[m.fid] = [(c.stat(dotu)) for c in node.children.values()]
            self.send(P.Ropen(qid=node.qid(), iounit=0, tag=t))
        elif name == "Tcreate":
            d = self.fids[m.fid][0]
            if m.name in d.children:
                return self.error(t, "file already exists", errno.EEXIST)
            kind = "dir" if m.perm & DMDIR else ("symlink" if m.perm & DMSYMLINK else "file")
            node = Node(m.name, kind, perm=m.perm & 0o777, target=m.extension)
            d.children[m.name] = node
            self.fids[m.fid] = [node, m.mode]
            self.send(P.Rcreate(qid=node.qid(), iounit=0, tag=t))
        elif name == "Tread":
            node, mode = self.fids[m.fid]
            if mode is None:
                return self.error(t, "file not open", errno.EBADF)
            if node.name == "block":
                self.held[t] = m
                return
            if node.kind == "dir":
                if m.offset not in (0, self.dirnext.get(m.fid, 0)):
                    return self.error(t, "bad offset in directory read", errno.EINVAL)
                ents = self.dirdata[m.fid]
                # entries are served in order; offset must be 0 or where the last read ended
                out = b""
                pos = 0
                for st in ents:
                    b = P.pack_stat(st, self.dialect)
                    if pos >= m.offset:
                        if len(out) + len(b) > m.count:
                            break
                        out += b
                    pos += len(b)
                self.dirnext[m.fid] = m.offset + len(out)
                return self.send(P.Rread(data=out, tag=t))
            self.send(P.Rread(data=node.data[m.offset:m.offset + m.count], tag=t))
        elif name == "Twrite":
            node = self.fids[m.fid][0]
            d = node.data
            if len(d) < m.offset:
                d += b"\0" * (m.offset - len(d))
            node.data = d[:m.offset] + bytes(m.data) + d[m.offset + len(m.data):]
            self.send(P.Rwrite(count=len(m.data), tag=t))
        elif name == "Tstat":
            self.send(P.Rstat(stat=self.fids[m.fid][0].stat(dotu), tag=t))
        elif name == "Twstat":
            node = self.fids[m.fid][0]
            st = m.stat
            if st.name:
                parent = self._parent(node)
                del parent.children[node.name]
                node.name = st.name
                parent.children[st.name] = node
            if st.mode != 0xFFFFFFFF:
                node.perm = st.mode & 0o777
            if st.length != 0xFFFFFFFFFFFFFFFF:
                node.data = node.data[:st.length].ljust(st.length, b"\0")
            self.send(P.Rwstat(tag=t))
        elif name == "Tclunk":
            self.fids.pop(m.fid, None)
            self.send(P.Rclunk(tag=t))
        elif name == "Tremove":
            node = self.fids.pop(m.fid)[0]
            if node.children:
                return self.error(t, "directory not empty", errno.ENOTEMPTY)
            del self._parent(node).children[node.name]
            self.send(P.Rremove(tag=t))
        elif name == "Tflush":
            gevent.spawn(self._flush, m)
        else:
            self.error(t, "not supported: " + name, errno.EOPNOTSUPP)

    def _flush(self, m):
        if self.hold_flush is not None:
            self.hold_flush.wait()
        old = self.held.pop(m.oldtag, None)
        if old is not None and self.answer_before_rflush:
            self.released.add(id(old))  # answer the original request first, then Rflush
            self.handle(old)
        self.send(P.Rflush(tag=m.tag))

    def _parent(self, node, d=None):
        d = d or self.root
        for c in d.children.values():
            if c is node:
                return d
            if c.kind == "dir":
                p = self._parent(node, c)
                if p is not None:
                    return p
        return None


@pytest.fixture(params=[V9P2000, V9P2000U])
def peer(request):
    p = FakePeer(request.param, errno_in_rerror=False)
    p.add("hello.txt", data=b"hello from plan 9\n")
    p.add("dir", "dir", perm=0o755)
    for i in range(300):
        p.add("dir/file-%03d" % i, data=b"x" * i)
    p.add("secret", data=b"s")
    p.add("weird", data=b"w")
    p.add("block", data=b"")
    yield p
    p.stop()


def _client(peer, **kw):
    return Client(conn=Connection(sock=peer.client_sock, msize=peer.msize,
                                  version=peer.dialect, **kw), uname="glenda")


def test_fake_version_answers():
    p = FakePeer(V9P2000U, answer_version="unknown")
    try:
        with pytest.raises(NineError) as ei:
            Connection(sock=p.client_sock, version=V9P2000U)
        assert ei.value.errno == errno.EPROTONOSUPPORT and "unknown" in str(ei.value)
    finally:
        p.stop()
    p = FakePeer(V9P2000, answer_version="9P2000")
    try:
        with pytest.raises(NineError):
            Connection(sock=p.client_sock, version=V9P2000U)
    finally:
        p.stop()
    p = FakePeer(V9P2000, answer_version="9P2000")
    try:
        c = Connection(sock=p.client_sock, version=V9P2000U, strict_version=False)
        assert c.dialect == V9P2000
        assert isinstance(p.log[0], P.Tversion) and p.log[0].tag == NOTAG
        c.close()
    finally:
        p.stop()


def test_fake_stat_and_read(peer):
    c = _client(peer)
    assert c.dialect == peer.dialect
    st = c.stat("hello.txt")
    assert st.name == "hello.txt" and st.st_size == 18
    assert st.st_mode == stat.S_IFREG | 0o644
    assert st.uid == "glenda" and st.gid == "sys" and st.muid == "glenda"
    assert st.st_mtime == 1234567890
    if peer.dialect == V9P2000U:
        assert st.st_uid == 1000 and st.st_gid == 100
    else:
        assert st.st_uid is None
    assert c.stat("dir").st_mode == stat.S_IFDIR | 0o755
    assert c.read_file("hello.txt") == b"hello from plan 9\n"
    with c.open("hello.txt") as f:
        assert f.readline() == b"hello from plan 9\n"
    opens = [m for m in peer.log if isinstance(m, P.Topen)]
    assert opens and all(m.mode == OREAD for m in opens)
    c.close()


def test_fake_directory_of_stat_entries(peer):
    c = _client(peer)
    ents = c.readdir("dir")
    assert [e.name for e in ents] == ["file-%03d" % i for i in range(300)]
    assert all(e.stat.st_size == i for i, e in enumerate(ents))
    assert all(stat.S_ISREG(e.stat.st_mode) for e in ents)
    reads = [m for m in peer.log if isinstance(m, P.Tread)]
    assert len(reads) > 3  # the listing spans several reads
    assert reads[0].offset == 0 and len({r.offset for r in reads}) == len(reads)
    assert set(c.listdir("")) == {"hello.txt", "dir", "secret", "weird", "block"}
    c.close()


def test_fake_rerror_mapping(peer):
    c = _client(peer)
    with pytest.raises(FileNotFoundError) as ei:
        c.stat("nope")
    assert ei.value.errno == errno.ENOENT and "file does not exist" in str(ei.value)
    with pytest.raises(PermissionError) as ei:
        c.open("secret")
    assert ei.value.errno == errno.EACCES
    with pytest.raises(NineError) as ei:
        c.open("weird")
    assert ei.value.errno == errno.EIO and "frobnicator" in ei.value.strerror
    with pytest.raises(FileExistsError):
        c.create("hello.txt")
    with pytest.raises(NineError) as ei:
        c.remove("dir")
    assert ei.value.errno == errno.ENOTEMPTY
    c.close()


def test_fake_dotu_errno_field_wins():
    p = FakePeer(V9P2000U, errno_in_rerror=True)
    try:
        p.add("weird")
        c = _client(p)
        with pytest.raises(FileNotFoundError):
            c.stat("nope")
        with pytest.raises(NineError) as ei:
            c.open("weird")
        assert ei.value.errno == errno.EIO  # errno 0 in the reply: the string decides
        c.close()
    finally:
        p.stop()


def test_fake_create_write_mkdir_remove_rename(peer):
    c = _client(peer)
    c.write_file("new.txt", b"abc")
    assert c.read_file("new.txt") == b"abc"
    creates = [m for m in peer.log if isinstance(m, P.Tcreate)]
    assert creates[-1].perm == 0o644 and creates[-1].mode == P.OWRITE
    c.write_file("new.txt", b"Z")  # exists: Topen with OTRUNC
    assert c.read_file("new.txt") == b"Z"
    c.mkdir("sub", 0o700)
    assert c.stat("sub").st_mode == stat.S_IFDIR | 0o700
    c.rename("new.txt", "renamed.txt")
    assert "renamed.txt" in c.listdir("") and "new.txt" not in c.listdir("")
    with pytest.raises(NineError) as ei:
        c.rename("renamed.txt", "sub/x")
    assert ei.value.errno == errno.EXDEV
    c.chmod("renamed.txt", 0o600)
    assert c.stat("renamed.txt").st_mode == stat.S_IFREG | 0o600
    c.truncate("renamed.txt", 0)
    assert c.stat("renamed.txt").st_size == 0
    c.remove("renamed.txt")
    c.remove("sub")
    assert not c.exists("sub")
    if peer.dialect == V9P2000U:
        c.symlink("hello.txt", "ln")
        assert c.readlink("ln") == "hello.txt"
        assert c.stat("ln").is_symlink()
    else:
        with pytest.raises(NineError) as ei:
            c.symlink("hello.txt", "ln")
        assert ei.value.errno == errno.EOPNOTSUPP
    with pytest.raises(NineError) as ei:
        c.statfs()
    assert ei.value.errno == errno.EOPNOTSUPP
    c.close()


def test_fake_flush_protocol(peer):
    c = _client(peer)
    conn = c.conn
    f = c.open("block")
    g = gevent.spawn(f.read, 10)
    wait_for(lambda: len(peer.held) == 1, 5, "the read held", sleep=gevent.sleep)
    assert len(peer.held) == 1
    oldtag = next(iter(peer.held))
    peer.hold_flush = gevent.event.Event()
    g.kill(timeout=2)
    assert g.dead
    wait_for(lambda: any(isinstance(m, P.Tflush) for m in peer.log), 5, "the Tflush",
             sleep=gevent.sleep)
    flushes = [m for m in peer.log if isinstance(m, P.Tflush)]
    assert len(flushes) == 1 and flushes[0].oldtag == oldtag and flushes[0].tag != oldtag
    # until Rflush, the old tag is not reused
    n0 = len(peer.log)
    for _ in range(30):
        c.stat("hello.txt")
    assert all(m.tag != oldtag for m in peer.log[n0:])
    peer.hold_flush.set()
    wait_for(lambda: conn.inflight() == 0, 5, "the Rflush", sleep=gevent.sleep)
    assert conn.inflight() == 0 and oldtag in conn._free_tags
    f.close()
    c.close()


def test_fake_timeout_and_late_reply(peer):
    c = _client(peer)
    f = c.open("block")
    with pytest.raises(NineTimeout):
        f.fid.read(0, 10, timeout=0.05)
    assert _settle(c.conn) == 0  # Rflush came back at once
    f.close()
    c.close()


def test_fake_connection_death(peer):
    c = _client(peer)
    f = c.open("block")
    gs = [gevent.spawn(f.fid.read, 0, 10) for _ in range(5)]
    wait_for(lambda: len(peer.held) == 5, 5, "the 5 reads held", sleep=gevent.sleep)
    t0 = time.time()
    peer.stop()
    gevent.joinall(gs, timeout=3)
    assert time.time() - t0 < 1
    for g in gs:
        assert isinstance(g.exception, NineError)
        assert g.exception.errno in (errno.ECONNRESET, errno.EPIPE)
    with pytest.raises(NineError):
        c.stat("")


def test_fake_close_fails_waiters(peer):
    c = _client(peer)
    f = c.open("block")
    g = gevent.spawn(f.fid.read, 0, 10)
    wait_for(lambda: len(peer.held) == 1, 5, "the read held", sleep=gevent.sleep)
    c.conn.close()
    g.join(timeout=2)
    assert isinstance(g.exception, NineError) and g.exception.errno == errno.ECONNABORTED


def test_fake_protocol_garbage():
    p = FakePeer(V9P2000)
    try:
        c = _client(p)
        f = c.walk("")
        # answer with a frame of an unknown type for the next request
        p.handle = lambda m: p.sock.sendall(b"\x07\x00\x00\x00\xfe" + bytes([m.tag, 0]))
        with pytest.raises(NineProtocolError):
            f.stat()
        c.conn.close()
    finally:
        p.stop()


def test_fake_peer_over_unix_socket(tmp_path):
    path = str(tmp_path / "9p.sock")
    lsock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    peers = []

    def accept():
        s, _ = lsock.accept()
        p = FakePeer(V9P2000U, sock=s)
        p.add("f", data=b"over unix")
        peers.append(p)

    g = gevent.spawn(accept)
    try:
        c = Client("unix!" + path, version=V9P2000U, msize=8192)
        assert c.read_file("f") == b"over unix"
        c.close()
    finally:
        g.kill()
        for p in peers:
            p.stop()
        lsock.close()


@needs_diod
def test_fid_level_api(cl):
    """What the multiplexer uses: one message per call, raw qids and dirents."""
    conn = cl.conn
    d = cl.root.clone()
    q, iou = d.lcreate("raw", L_O_RDWR | P.L_O_CREAT, 0o644)
    assert q.type == P.QTFILE and d.opened
    assert d.write(0, b"abcdef") == 6
    assert d.read(2, 3) == b"cde"
    r = d.getattr()
    assert r.size == 6 and r.qid == q and stat.S_ISREG(r.mode)
    d.fsync()
    d.clunk()
    assert d.fid is None
    f, qids = cl.root.twalk(["raw"])
    assert qids == [q] and f.qid == q
    f.lopen(L_O_RDONLY)
    assert f.read_all() == b"abcdef"
    f.clunk()
    dq = cl.root.mkdir("dir", 0o755)
    assert dq.type & P.QTDIR
    dd = cl.walk("dir")
    sq = dd.symlink("s", "../raw")
    assert sq.type & P.QTSYMLINK
    dd.lopen(L_O_RDONLY | P.L_O_DIRECTORY)
    ents = dd.readdir(0)
    names = {n for q, o, t, n in ents}
    assert {"s"} <= names
    dd.clunk()
    g = cl.walk("dir/s")
    assert g.readlink() == "../raw"
    g.remove()
    root2 = cl.root.clone()
    try:
        root2.unlinkat("dir", P.AT_REMOVEDIR)
    except NineError as e:  # diod 1.0.24 has no Tunlinkat
        assert e.errno == errno.EOPNOTSUPP
        cl.walk("dir").remove()
    root2.clunk()
    assert cl.listdir("") == ["raw"]
    assert _settle(conn) == 0


@needs_diod
def test_dropped_file_is_clunked(cl):
    cl.write_file("d", b"x")
    _settle(cl.conn)
    n = cl.conn._next_fid
    for _ in range(20):
        f = cl.open("d")
        f.read()
        del f
    _settle(cl.conn)
    assert cl.conn._next_fid <= n + 2
    assert _settle(cl.conn) == 0


@pytest.mark.parametrize("answer_first", [False, True])
def test_fake_flushed_walk_releases_newfid(answer_first):
    p = FakePeer(V9P2000U)
    try:
        p.add("hang", "dir")
        p.answer_before_rflush = answer_first
        c = _client(p)
        conn = c.conn
        g = gevent.spawn(c.walk, "hang")
        wait_for(lambda: p.held, 5, "the walk held", sleep=gevent.sleep)
        walk = [m for m in p.log if isinstance(m, P.Twalk)][-1]
        g.kill(timeout=2)
        assert _settle(conn) == 0
        # the newfid of the abandoned walk is free again; if the walk had succeeded
        # (answer_first), the client clunked it first
        assert walk.newfid in conn._free_fids
        clunks = [m for m in p.log if isinstance(m, P.Tclunk) and m.fid == walk.newfid]
        assert len(clunks) == (1 if answer_first else 0)
        assert walk.newfid not in p.fids
        c.close()
    finally:
        p.stop()


# ---------------------------------------------------------------------------
# BlockingConnection (nine.client.blocking): the one-shot client of the `nine` verbs,
# against nine servers in another process (a blocking call here would stop a server
# running on this thread's hub)

def test_blocking_client_files(nine_server):
    from nine.client.blocking import BlockingConnection
    c = Client(nine_server.addr, msize=8192 + 24, blocking=True)
    try:
        assert isinstance(c.conn, BlockingConnection) and c.conn.msize == 8192 + 24
        assert c.read_file("hello.txt") == b"hello, world\n"
        assert sorted(c.listdir("")) == ["hello.txt", "sub"]
        data = os.urandom(100000)          # many iounits: pipelined writes and reads
        with c.open("big", "w") as f:
            f.write(data)
        assert (nine_server.export / "big").read_bytes() == data
        assert c.read_file("big") == data
        assert c.stat("big").st_size == len(data)
        c.mkdir("d")
        c.symlink("../hello.txt", "d/link")
        assert c.readlink("d/link") == "../hello.txt"
        with pytest.raises(FileNotFoundError):
            c.read_file("missing")
        with pytest.raises(NotADirectoryError):
            c.stat("hello.txt/x")
        c.remove("d/link")
        c.remove("d")
        # clunks sent without waiting free their fids as their replies are read
        n = c.conn._next_fid
        for _ in range(20):
            c.read_file("hello.txt")
        assert c.conn._next_fid <= n + 2
    finally:
        c.close()
    assert c.conn.closed


@pytest.mark.parametrize("dialect", [V9P2000, V9P2000U])
def test_blocking_client_older_dialects(nine_server, dialect):
    c = Client(nine_server.addr, version=dialect, blocking=True)
    try:
        assert c.dialect == dialect
        assert c.read_file("sub/inner") == b"inner\n"
        assert c.listdir("sub") == ["inner"]
        with pytest.raises(FileNotFoundError):
            c.stat("nope")
    finally:
        c.close()


def test_blocking_group(nine_server):
    g = nine_server.export / "grp"
    g.mkdir()
    for i in (1, 2, 3):
        (nine_server.export / ("m%d" % i)).write_bytes(b"same\n")
        os.symlink("../m%d" % i, g / ("n%d" % i))
    c = Client(nine_server.addr, blocking=True)
    try:
        gf = c.gopen("/grp", "rw", aggregator="equiv")
        assert gf.served and gf.labels == ["n1", "n2", "n3"]
        assert gf.classes() == {b"same\n": {"n1", "n2", "n3"}}
        gf.lseek(0)
        assert gf.write(b"SAME") == 4 and not gf.failed
        gf.close()
        assert (nine_server.export / "m2").read_bytes() == b"SAME\n"
    finally:
        c.close()


def test_blocking_loads_no_gevent(nine_server):
    """What the `nine` verbs do, in a fresh interpreter: key authentication, a read and
    a served group read, and gevent is never imported."""
    code = ("import sys; from nine.client import Client; "
            "c = Client(%r, blocking=True); d = c.read_file('hello.txt'); "
            "g = c.gopen(None, members=[('a', '/hello.txt')]); r = g.read(); c.close(); "
            "print(d == b'hello, world\\n', r, 'gevent' in sys.modules)" % nine_server.addr)
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=30)
    assert p.stdout.decode().split() == ["True", "b'a:", "hello,", "world\\n'", "False"], \
        p.stderr


def _silent_server(answer_version):
    """A listening socket whose peer answers Tversion (or not) and then nothing."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)

    def run():
        s, _ = ls.accept()
        frame = s.recv(4096)
        if answer_version:
            t = P.decode(frame)
            s.sendall(P.encode(P.Rversion(msize=t.msize, version=t.version, tag=t.tag)))
        s.recv(4096)
        time.sleep(3)
        s.close()
    import threading
    threading.Thread(target=run, daemon=True).start()
    return ls, "127.0.0.1:%d" % ls.getsockname()[1]


def test_blocking_timeouts():
    from nine.client.blocking import BlockingConnection
    ls, addr = _silent_server(False)
    with pytest.raises(NineTimeout):
        BlockingConnection(addr, connect_timeout=0.3)
    ls.close()
    ls, addr = _silent_server(True)
    conn = BlockingConnection(addr)
    t0 = time.monotonic()
    with pytest.raises(NineTimeout) as ei:
        conn.rpc(P.Tattach(fid=0, afid=P.NOFID, uname="u", aname=""), timeout=0.3)
    assert ei.value.orphaned and conn.closed and time.monotonic() - t0 < 2
    with pytest.raises(NineError):
        conn.rpc(P.Tclunk(fid=0))
    ls.close()


@needs_diod
def test_blocking_gopen_needs_group_service(diod):
    """A group the client must do itself needs gevent: on a BlockingConnection gopen
    says so (EOPNOTSUPP), and `nine gread` then connects again with gevent."""
    d = os.path.join(diod.export, "gsvc")
    os.mkdir(d)
    for n in ("a", "b"):
        with open(os.path.join(d, n), "w") as f:
            f.write("x\n")
    c = Client(diod.addr, aname=d, blocking=True)
    try:
        with pytest.raises(NineError) as ei:
            c.gopen("/", members=[("a", "/a"), ("b", "/b")])
        assert ei.value.errno == errno.EOPNOTSUPP
    finally:
        c.close()
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "nine", "gread", "-a", diod.addr, "-A", d,
                        "--member", "a=/a", "--member", "b=/b", "--agg", "equiv"],
                       capture_output=True, env=env, timeout=30)
    assert p.returncode == 0 and b"a,b (2)\n" in p.stdout, p
