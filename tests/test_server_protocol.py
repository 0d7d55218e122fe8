"""The server core's protocol rules and its behaviour under hostile input, over real sockets."""

import errno
import os
import struct
import time

import pytest

import nine.protocol as P
from conftest import RawConn, ThreadServer
from nine.netwait import wait_for


def blocking_tree():
    import gevent.event
    from nine.synth.files import Dir, File, SynthFS
    ev = gevent.event.Event()
    state = {"reads": 0, "cancelled": 0}

    def block_read(ctx, off, count):
        state["reads"] += 1
        try:
            ev.wait()
        except BaseException:
            state["cancelled"] += 1
            raise
        return b"released\n"

    def release(ctx, off, data):
        ev.set()
        return len(data)

    root = Dir("", [
        File("block", pread=block_read),
        File("release", write=release),
        File("hello", read=lambda ctx: b"hello\n"),
        Dir("d", [File("x", read=lambda ctx: b"x")]),
    ])
    return {None: SynthFS(root).attach}, state


@pytest.fixture
def tsrv():
    holder = {}

    def make():
        exports, state = blocking_tree()
        holder["state"] = state
        return exports
    s = ThreadServer(make)
    s.state = holder["state"]
    yield s
    s.stop()


def test_version_negotiation(tsrv):
    c = RawConn(tsrv.port)
    r = c.version(msize=8192)
    assert isinstance(r, P.Rversion) and r.version == "9P2000.L" and r.msize == 8192
    r = c.rpc(P.Tversion(msize=1 << 30, version="9P2000.L", tag=P.NOTAG))
    assert r.msize <= 1 << 30 and r.msize == 1024 * 1024 + 24  # clamped to the server's
    r = c.rpc(P.Tversion(msize=8192, version="9P2000.u.extra", tag=P.NOTAG))
    assert r.version == "9P2000.u"
    c2 = RawConn(tsrv.port, dialect=P.V9P2000)
    r = c2.rpc(P.Tversion(msize=8192, version="9P3000", tag=P.NOTAG))
    assert r.version == "unknown"
    r = c2.rpc(P.Tversion(msize=8192, version="9P2000", tag=P.NOTAG))
    assert r.version == "9P2000"


def test_request_before_version_is_refused(tsrv):
    c = RawConn(tsrv.port)
    r = c.attach()
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EPROTO


def test_fid_rules(tsrv):
    c = RawConn(tsrv.port)
    c.version()
    assert isinstance(c.attach(fid=1), P.Rattach)
    # duplicate fid
    r = c.attach(fid=1)
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EBADF
    # unknown fid
    r = c.rpc(P.Tgetattr(fid=99, request_mask=P.GETATTR_BASIC, tag=2))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EBADF
    r = c.rpc(P.Tclunk(fid=99, tag=2))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EBADF
    # walk to newfid in use
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=[], tag=2))
    r = c.rpc(P.Twalk(fid=1, newfid=2, wnames=["hello"], tag=2))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EBADF
    # more than 16 names
    r = c.rpc(P.Twalk(fid=1, newfid=3, wnames=["d"] * 17, tag=2))
    assert isinstance(r, P.Rlerror)
    # partial walk: fewer qids, newfid not allocated
    r = c.rpc(P.Twalk(fid=1, newfid=3, wnames=["d", "nope"], tag=2))
    assert isinstance(r, P.Rwalk) and len(r.wqids) == 1
    r = c.rpc(P.Tgetattr(fid=3, request_mask=P.GETATTR_BASIC, tag=2))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EBADF
    # first name fails: error
    r = c.rpc(P.Twalk(fid=1, newfid=3, wnames=["nope"], tag=2))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.ENOENT
    # fid == newfid walk is legal and moves the fid
    c.rpc(P.Twalk(fid=1, newfid=4, wnames=[], tag=2))
    r = c.rpc(P.Twalk(fid=4, newfid=4, wnames=["d", "x"], tag=2))
    assert isinstance(r, P.Rwalk) and len(r.wqids) == 2
    # '..' at the root stays at the root
    root = c.rpc(P.Tgetattr(fid=1, request_mask=P.GETATTR_BASIC, tag=2)).qid
    r = c.rpc(P.Twalk(fid=1, newfid=5, wnames=["..", ".."], tag=2))
    assert r.wqids[-1] == root
    # open twice
    c.rpc(P.Twalk(fid=1, newfid=6, wnames=["hello"], tag=2))
    assert isinstance(c.rpc(P.Tlopen(fid=6, flags=0, tag=2)), P.Rlopen)
    r = c.rpc(P.Tlopen(fid=6, flags=0, tag=2))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EBUSY
    r = c.rpc(P.Tread(fid=6, offset=0, count=100, tag=2))
    assert r.data == b"hello\n"
    # read from an unopened fid
    r = c.rpc(P.Tread(fid=1, offset=0, count=100, tag=2))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EBADF
    # write to a file opened read-only
    r = c.rpc(P.Twrite(fid=6, offset=0, data=b"x", tag=2))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EBADF


def test_walk_from_open_fid_9p2000(tsrv):
    c = RawConn(tsrv.port, dialect=P.V9P2000)
    c.version()
    c.rpc(P.Tattach(fid=1, afid=P.NOFID, uname="root", aname="", tag=1))
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=[], tag=1))
    assert isinstance(c.rpc(P.Topen(fid=2, mode=P.OREAD, tag=1)), P.Ropen)
    r = c.rpc(P.Twalk(fid=2, newfid=3, wnames=["d"], tag=1))
    assert isinstance(r, P.Rerror) and "open" in r.ename


def test_9p2000_directory_offsets(tsrv):
    c = RawConn(tsrv.port, dialect=P.V9P2000)
    c.version()
    c.rpc(P.Tattach(fid=1, afid=P.NOFID, uname="root", aname="", tag=1))
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=[], tag=1))
    c.rpc(P.Topen(fid=2, mode=P.OREAD, tag=1))
    r = c.rpc(P.Tread(fid=2, offset=0, count=70, tag=1))  # room for one entry at a time
    names = [s.name for s in P.unpack_stats(r.data, P.V9P2000)]
    assert len(names) == 1
    off = len(r.data)
    # an offset other than 0 or the previous end is refused
    r2 = c.rpc(P.Tread(fid=2, offset=off + 1, count=70, tag=1))
    assert isinstance(r2, P.Rerror)
    while True:
        r = c.rpc(P.Tread(fid=2, offset=off, count=70, tag=1))
        if not r.data:
            break
        names += [s.name for s in P.unpack_stats(r.data, P.V9P2000)]
        off += len(r.data)
    assert sorted(names) == ["block", "d", "hello", "release"]
    # rewinding to 0 restarts
    r = c.rpc(P.Tread(fid=2, offset=0, count=8192, tag=1))
    assert sorted(s.name for s in P.unpack_stats(r.data, P.V9P2000)) == sorted(names)


def test_tflush_blocking_read(tsrv):
    c = RawConn(tsrv.port)
    c.version()
    c.attach(fid=1)
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["block"], tag=1))
    c.rpc(P.Tlopen(fid=2, flags=0, tag=1))
    c.send(P.Tread(fid=2, offset=0, count=100, tag=7))
    wait_for(lambda: tsrv.state["reads"] == 1, 5, "the read blocked in the server")
    t0 = time.time()
    r = c.rpc(P.Tflush(oldtag=7, tag=8))
    assert isinstance(r, P.Rflush) and r.tag == 8
    assert time.time() - t0 < 2
    assert tsrv.state["cancelled"] == 1
    # the flushed tag is free again and the connection works
    r = c.rpc(P.Tgetattr(fid=1, request_mask=P.GETATTR_BASIC, tag=7))
    assert isinstance(r, P.Rgetattr)
    # flush of a tag not in flight is answered at once
    r = c.rpc(P.Tflush(oldtag=1234, tag=9))
    assert isinstance(r, P.Rflush)


def test_blocking_read_does_not_block_connection(tsrv):
    c = RawConn(tsrv.port)
    c.version()
    c.attach(fid=1)
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["block"], tag=1))
    c.rpc(P.Tlopen(fid=2, flags=0, tag=1))
    c.send(P.Tread(fid=2, offset=0, count=100, tag=7))
    # other requests on the same connection are served meanwhile
    r = c.rpc(P.Twalk(fid=1, newfid=3, wnames=["release"], tag=8))
    assert isinstance(r, P.Rwalk)
    c.rpc(P.Tlopen(fid=3, flags=P.L_O_WRONLY, tag=8))
    c.send(P.Twrite(fid=3, offset=0, data=b"go", tag=9))
    got = {}
    for _ in range(2):
        m = c.recv()
        got[m.tag] = m
    assert got[9].count == 2
    assert got[7].data == b"released\n"


def test_duplicate_tag(tsrv):
    c = RawConn(tsrv.port)
    c.version()
    c.attach(fid=1)
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["block"], tag=1))
    c.rpc(P.Tlopen(fid=2, flags=0, tag=1))
    c.send(P.Tread(fid=2, offset=0, count=100, tag=7))
    wait_for(lambda: tsrv.state["reads"] == 1, 5, "the read blocked in the server")
    r = c.rpc(P.Tgetattr(fid=1, request_mask=P.GETATTR_BASIC, tag=7))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EPROTO
    assert isinstance(c.rpc(P.Tflush(oldtag=7, tag=8)), P.Rflush)


def test_new_version_resets_session(tsrv):
    c = RawConn(tsrv.port)
    c.version()
    c.attach(fid=1)
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["block"], tag=1))
    c.rpc(P.Tlopen(fid=2, flags=0, tag=1))
    c.send(P.Tread(fid=2, offset=0, count=100, tag=7))
    wait_for(lambda: tsrv.state["reads"] == 1, 5, "the read blocked in the server")
    r = c.version()
    assert isinstance(r, P.Rversion)  # no reply to the aborted read
    r = c.rpc(P.Tgetattr(fid=1, request_mask=P.GETATTR_BASIC, tag=2))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EBADF  # fids are gone
    assert tsrv.state["cancelled"] == 1


def _other_client_works(port):
    c = RawConn(port)
    c.version()
    assert isinstance(c.attach(fid=1), P.Rattach)
    r = c.rpc(P.Twalk(fid=1, newfid=2, wnames=["hello"], tag=1))
    assert isinstance(r, P.Rwalk)
    c.close()


@pytest.mark.parametrize("payload", [
    b"\x03\x00\x00\x00",                         # size smaller than a header
    struct.pack("<IBH", 1 << 30, 100, 0),         # size over msize
    os.urandom(64) + b"\xff\xff\xff\x7f",          # garbage
])
def test_bad_framing_drops_only_that_connection(tsrv, payload):
    c = RawConn(tsrv.port)
    other = RawConn(tsrv.port)
    other.version()
    other.attach(fid=1)
    c.version(msize=8192)
    c.send_raw(payload)
    assert c.closed_by_peer() or payload[:4] != b"\x03\x00\x00\x00"
    # the other, already open connection still works, and new ones too
    assert isinstance(other.rpc(P.Tgetattr(fid=1, request_mask=1, tag=3)), P.Rgetattr)
    _other_client_works(tsrv.port)


def test_malformed_messages_get_errors(tsrv):
    c = RawConn(tsrv.port)
    c.version()
    c.attach(fid=1)
    # unknown type, correct framing
    c.send_raw(struct.pack("<IBH", 11, 200, 5) + b"\0\0\0\0")
    r = c.recv()
    assert isinstance(r, P.Rlerror) and r.tag == 5 and r.ecode == errno.EOPNOTSUPP
    # a reply type sent to the server
    c.send_raw(P.encode(P.Rclunk(tag=6)))
    r = c.recv()
    assert isinstance(r, P.Rlerror) and r.tag == 6
    # a string whose length overruns the frame
    c.send_raw(struct.pack("<IBHIIH", 19, 110, 9, 1, 2, 1) + b"\xff\x00")
    r = c.recv()
    assert isinstance(r, P.Rlerror) and r.tag == 9 and r.ecode == errno.EPROTO
    # bad UTF-8 in a name
    frame = struct.pack("<IBHIIHH", 7 + 4 + 4 + 2 + 2 + 2, 110, 10, 1, 2, 1, 2) + b"\xc3\x28"
    c.send_raw(frame)
    r = c.recv()
    assert isinstance(r, P.Rlerror) and r.tag == 10
    # truncated body (header says 8 bytes of body, the message needs 12)
    c.send_raw(struct.pack("<IBH", 15, 24, 11) + b"\x01\0\0\0\0\0\0\0")
    r = c.recv()
    assert isinstance(r, P.Rlerror) and r.tag == 11
    # the connection is still fine
    assert isinstance(c.rpc(P.Tgetattr(fid=1, request_mask=1, tag=12)), P.Rgetattr)


def test_65536_fids(tsrv):
    # the most one connection may hold by default (Limits.fids; tests/test_limits.py)
    c = RawConn(tsrv.port, timeout=60)
    c.version()
    c.attach(fid=0)
    n = 65535
    batch = 2000
    for start in range(1, n + 1, batch):
        c.send_raw(b"".join(P.encode(P.Twalk(fid=0, newfid=f, wnames=["d"], tag=f % 60000))
                            for f in range(start, min(start + batch, n + 1))))
        for _ in range(start, min(start + batch, n + 1)):
            assert isinstance(c.recv(), P.Rwalk)
    r = c.rpc(P.Tgetattr(fid=n, request_mask=1, tag=1))
    assert isinstance(r, P.Rgetattr)
    for start in range(1, n + 1, batch):
        c.send_raw(b"".join(P.encode(P.Tclunk(fid=f, tag=f % 60000))
                            for f in range(start, min(start + batch, n + 1))))
        for _ in range(start, min(start + batch, n + 1)):
            assert isinstance(c.recv(), P.Rclunk)
    r = c.rpc(P.Tgetattr(fid=n, request_mask=1, tag=1))
    assert isinstance(r, P.Rlerror)
    _other_client_works(tsrv.port)


def test_errors_per_dialect(tsrv):
    for dialect in (P.V9P2000, P.V9P2000U):
        c = RawConn(tsrv.port, dialect=dialect)
        c.version()
        c.rpc(P.Tattach(fid=1, afid=P.NOFID, uname="root", aname="", n_uname=0, tag=1))
        r = c.rpc(P.Twalk(fid=1, newfid=2, wnames=["missing"], tag=1))
        # ENOENT in lib9p's words (p9fs recognises no other; the kernel maps both)
        assert isinstance(r, P.Rerror) and r.ename == "file not found"
        if dialect == P.V9P2000U:
            assert r.errno == errno.ENOENT
        # .L-only messages do not exist in 9P2000/.u
        r = c.rpc(P.Tclunk(fid=1, tag=3))
        assert isinstance(r, P.Rclunk)
        c.close()


def test_tauth_not_required(tsrv):
    c = RawConn(tsrv.port)
    c.version()
    r = c.rpc(P.Tauth(afid=5, uname="root", aname="", n_uname=0, tag=1))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.ENOENT
    r = c.rpc(P.Tattach(fid=1, afid=5, uname="root", aname="", n_uname=0, tag=1))
    assert isinstance(r, P.Rlerror)


def test_getattr_fast_path_matches_codec(tsrv):
    """The core packs Rgetattr by hand: the frame decodes to the same message."""
    c = RawConn(tsrv.port)
    c.version()
    c.attach(fid=1)
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["d"], tag=1))
    c.send(P.Tgetattr(fid=2, request_mask=P.GETATTR_ALL, tag=33))
    while len(c.buf) < 4:
        c.buf += c.sock.recv(65536)
    n = struct.unpack("<I", c.buf[:4])[0]
    while len(c.buf) < n:
        c.buf += c.sock.recv(65536)
    frame, c.buf = c.buf[:n], c.buf[n:]
    r = P.decode(frame)
    assert isinstance(r, P.Rgetattr) and r.tag == 33
    assert P.encode(r) == frame
    assert r.qid.type & P.QTDIR and r.mode & 0o40000 and r.nlink == 2
    assert r.valid & P.GETATTR_BASIC == P.GETATTR_BASIC


def test_clunk_ends_a_read_in_flight_before_close():
    """A Tclunk of a fid whose read still blocks in its node: the read is ended (answered
    EBADF) before the node's close() runs, and the server goes on serving."""
    from nine.server.node import Node
    events = []

    class Blocking(Node):
        qid = P.Qid(0, 0, 2)
        name = "block"

        def open(self, ctx, flags):
            pass

        def read(self, ctx, offset, count):
            import gevent
            events.append("read")
            try:
                gevent.sleep(3600)
            finally:
                events.append("read ended")

        def close(self, ctx):
            events.append("close")

    class Root(Node):
        qid = P.Qid(P.QTDIR, 0, 1)

        def walk(self, ctx, names):
            return [Blocking()]

    s = ThreadServer({None: lambda ctx: Root()})
    try:
        c = RawConn(s.port)
        c.version()
        c.attach(fid=1)
        c.rpc(P.Twalk(fid=1, newfid=2, wnames=["block"], tag=1))
        c.rpc(P.Tlopen(fid=2, flags=0, tag=1))
        c.send(P.Tread(fid=2, offset=0, count=100, tag=7))
        deadline = time.time() + 5
        while "read" not in events and time.time() < deadline:
            time.sleep(0.01)
        c.send(P.Tclunk(fid=2, tag=8))
        first, second = c.recv(), c.recv()
        assert isinstance(first, P.Rlerror) and first.tag == 7 and first.ecode == errno.EBADF
        assert isinstance(second, P.Rclunk) and second.tag == 8
        assert events == ["read", "read ended", "close"]
        assert isinstance(c.rpc(P.Twalk(fid=1, newfid=3, wnames=["block"], tag=9)), P.Rwalk)
        assert isinstance(RawConn(s.port).version(), P.Rversion)
    finally:
        s.stop()
