"""The server's connection loop answering in the hub (nine.server.conn: the reader parked,
whole small frames of requests that never block answered from the socket's read
callback): replies the peer does not read, ordering, Tflush, and the other connections
meanwhile, over real sockets."""

import threading
import time

import nine.protocol as P
from conftest import RawConn, ThreadServer
from nine.netwait import load_factor, wait_for

SIZE = 1 << 19              # a large read: a few fill the sockets between the peers


def content(off, count):
    """What `big` holds at off: its offset in ten digits, repeated."""
    return ((b"%010d" % off) * (count // 10 + 1))[:count]


def tree(state=None):
    import gevent.event
    from nine.synth.files import Dir, File, SynthFS
    ev = gevent.event.Event()
    state = {} if state is None else state
    state["big"] = 0

    def block_read(ctx, off, count):
        ev.wait()
        return b"released\n"

    def big(ctx, off, count):
        state["big"] += 1
        return content(off, count)

    root = Dir("", [
        # blocking=False: the core answers its reads inline (in the hub)
        File("big", pread=big, blocking=False),
        File("block", pread=block_read),
        File("hello", read=lambda ctx: b"hello\n", blocking=False),
    ])
    return {None: SynthFS(root).attach}


def _open(c, name, fid=1, msize=65536):
    c.version(msize=msize)
    c.attach(fid=0)
    assert isinstance(c.rpc(P.Twalk(fid=0, newfid=fid, wnames=[name], tag=1)), P.Rwalk)
    assert isinstance(c.rpc(P.Tlopen(fid=fid, flags=0, tag=1)), P.Rlopen)


def test_replies_the_peer_does_not_read():
    """A peer that pipelines many large inline reads and reads nothing: the server stops
    reading that connection once the socket is full (TCP backpressure: it does not answer
    them all into its memory), serves the other connections meanwhile, and then sends
    every reply, in order, whole."""
    state = {}
    s = ThreadServer(lambda: tree(state))
    try:
        c = RawConn(s.port, timeout=60)
        _open(c, "big", msize=SIZE + 4096)
        n = 200                                     # 100 MB of replies: more than sockets hold
        c.send_raw(b"".join(P.encode(P.Tread(fid=1, offset=i * SIZE, count=SIZE, tag=i + 1))
                            for i in range(n)))
        other = RawConn(s.port)
        _open(other, "hello", fid=3)
        time.sleep(0.5)                             # the server's socket is full now
        for _ in range(5):
            t0 = time.monotonic()
            r = other.rpc(P.Tread(fid=3, offset=0, count=100, tag=2))
            assert bytes(r.data) == b"hello\n"
            assert time.monotonic() - t0 < 1.0 * load_factor()
        answered = state["big"]
        assert answered < n // 2, "%d of %d reads answered for a peer that reads none" % (
            answered, n)
        for i in range(n):
            r = c.recv()
            assert isinstance(r, P.Rread) and r.tag == i + 1, r
            assert bytes(r.data) == content(i * SIZE, SIZE)
        assert isinstance(c.rpc(P.Tread(fid=1, offset=0, count=8, tag=7)), P.Rread)
    finally:
        s.stop()


def test_inline_and_blocking_requests_pipelined():
    """Pipelined in one write: inline reads are answered at once and in order, a blocked
    read does not hold them up, Tflush of an inline read that was answered gives Rflush
    after its reply, Tflush of the blocked read ends it (Rflush, no Rread)."""
    s = ThreadServer(tree)
    try:
        c = RawConn(s.port)
        _open(c, "block", fid=1)
        assert isinstance(c.rpc(P.Twalk(fid=0, newfid=2, wnames=["big"], tag=1)), P.Rwalk)
        assert isinstance(c.rpc(P.Tlopen(fid=2, flags=0, tag=1)), P.Rlopen)
        frames = [P.Tread(fid=1, offset=0, count=64, tag=10)]          # blocks
        frames += [P.Tread(fid=2, offset=8 * i, count=8, tag=20 + i) for i in range(30)]
        frames += [P.Tflush(oldtag=25, tag=60), P.Tflush(oldtag=10, tag=61)]
        c.send_raw(b"".join(P.encode(m) for m in frames))
        got = [c.recv() for _ in range(32)]
        reads = [r for r in got if isinstance(r, P.Rread)]
        assert [r.tag for r in reads] == list(range(20, 50))
        assert [bytes(r.data) for r in reads] == [content(8 * i, 8) for i in range(30)]
        flushes = [(i, r.tag) for i, r in enumerate(got) if isinstance(r, P.Rflush)]
        assert sorted(t for _, t in flushes) == [60, 61]
        pos = {r.tag: i for i, r in enumerate(got)}
        assert pos[60] > pos[25]                    # the answered read's reply came first
        assert 10 not in pos                        # the flushed blocked read: no reply
        assert isinstance(c.rpc(P.Tread(fid=2, offset=0, count=8, tag=3)), P.Rread)
    finally:
        s.stop()


def test_many_connections_answered_inline():
    """Many connections, each sending one inline read at a time: every answer is right
    (the hub's receive buffer is each connection's own)."""
    s = ThreadServer(tree)
    errors = []

    def client(k):
        try:
            c = RawConn(s.port)
            _open(c, "big", fid=1)
            for i in range(200):
                off = 10 * (k * 1000 + i)
                r = c.rpc(P.Tread(fid=1, offset=off, count=20, tag=1 + i % 5))
                assert bytes(r.data) == content(off, 20), (k, i)
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    try:
        ts = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not errors, errors
    finally:
        s.stop()


# --- a mux's reads are posted to its child (no greenlet waits for each) ---------------

def _posted(m, tag):
    """The mux's request `tag` in flight is posted (no greenlet of its own).  (The mux
    runs in a thread of its own: the child may see the request before the mux has put
    down its cancel().)"""
    def found():
        reqs = [c.inflight.get(tag) for c in list(m.server.conns)]
        reqs = [r for r in reqs if r is not None]
        return len(reqs) == 1 and reqs[0].greenlet is None and reqs[0].cancel is not None
    wait_for(found, 5, "request %d posted" % tag)


def test_posted_read_ended_by_clunk_and_version():
    """A read through a mux is posted to the child; a Tclunk of its fid ends it (EBADF,
    then Rclunk) and the child's request is flushed; so does a Tversion."""
    import errno
    from test_mux_remote import _blocky_mux, _err, _ok, _read_blocked
    with _blocky_mux() as (m, ch, child, st):
        c = _read_blocked(m, st)
        _posted(m, 7)
        c.send(P.Tclunk(fid=1, tag=8))
        r = c.recv()
        assert r.tag == 7
        _err(r, errno.EBADF)
        _ok(c.recv(), P.Rclunk)
        t0 = time.monotonic()
        while st["cancelled"] < 1:
            assert time.monotonic() - t0 < 5 * load_factor(), st
            time.sleep(0.01)
        wait_for(lambda: ch._link.conn.inflight() == 0, 5, "the child's Rflush and Rclunk")
        c.close()
        c = _read_blocked(m, st)
        t0 = time.monotonic()
        while st["reads"] < 2:                      # the second read reached the child
            assert time.monotonic() - t0 < 5 * load_factor(), st
            time.sleep(0.01)
        _posted(m, 7)
        r = c.rpc(P.Tversion(msize=65536, version=P.V9P2000L, tag=P.NOTAG))
        assert isinstance(r, P.Rversion)
        t0 = time.monotonic()
        while st["cancelled"] < 2:
            assert time.monotonic() - t0 < 5 * load_factor(), st
            time.sleep(0.01)
        c.close()


def test_reader_of_a_connection_shut_meanwhile_ends_quietly():
    """A connection shut by another greenlet (its socket closed: fileno -1) while its
    reader is about to receive a large frame: the reader ends, no ValueError from the
    FIONREAD of a closed socket (the live fuzz slice found one in CI)."""
    import socket
    from nine.server.conn import Transport, _queued
    a, b = socket.socketpair()
    b.sendall(b"x" * 100)
    assert _queued(a) == 100
    a.close()
    assert _queued(a) == 0
    b.close()

    class Shut:                 # (a stand-in for a Transport whose shutdown ran)
        closed = True
        sock = a
        _raw = None
    assert Transport._recv_big(Shut(), memoryview(b"\0" * 7), 1 << 20) is None
