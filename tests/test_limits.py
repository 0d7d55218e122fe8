"""What one peer may hold of a server (nine.server.limits): each limit, when hit, gives
the documented error or a closed connection, and the server goes on serving others;
memory follows the bytes a peer sent, not the sizes it claims; ending a connection with
thousands of requests in flight does not stall the others."""

import errno
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time

import psutil
import pytest

import nine.protocol as P
from conftest import ENV_ROOT, NineProc, RawConn, ThreadServer
from nine.assembly import make_gate
from nine.netwait import free_port, load_factor, wait_for, wait_port
from nine.server.limits import PREVERSION_FRAME, Limits
from test_server_protocol import blocking_tree


def limited(**kw):
    """A ThreadServer over blocking_tree (its state: s.state) with these limits,
    requiring authentication (the session's key) as a real server does."""
    holder = {}

    def make():
        exports, holder["state"] = blocking_tree()
        return exports
    s = ThreadServer(make, limits=Limits(**kw), gate=make_gate("key", "the test server"))
    s.state = holder["state"]
    return s


@pytest.fixture
def servers():
    made = []
    yield lambda **kw: made.append(limited(**kw)) or made[-1]
    for s in made:
        s.stop()


def serves(port, source="127.0.0.1"):
    """A new client (from source) can version, attach and walk."""
    c = RawConn(port) if source == "127.0.0.1" else _from(port, source)
    try:
        assert isinstance(c.version(), P.Rversion)
        assert isinstance(c.attach(fid=1), P.Rattach)
        assert isinstance(c.rpc(P.Twalk(fid=1, newfid=2, wnames=["hello"], tag=1)), P.Rwalk)
    finally:
        c.close()
    return True


def _from(port, source):
    """A RawConn whose socket comes from another loopback address."""
    c = RawConn.__new__(RawConn)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                      source_address=(source, 0))
    c.dialect, c.buf, c.auto_auth = P.V9P2000L, b"", True
    return c


def test_fids_per_connection(servers):
    s = servers(fids=8)
    c = RawConn(s.port)
    c.version()
    c.attach(fid=0)
    for f in range(1, 8):
        assert isinstance(c.rpc(P.Twalk(fid=0, newfid=f, wnames=[], tag=1)), P.Rwalk)
    r = c.rpc(P.Twalk(fid=0, newfid=8, wnames=[], tag=1))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EMFILE
    r = c.rpc(P.Tattach(fid=9, afid=P.NOFID, uname="root", aname="", n_uname=0, tag=1))
    assert isinstance(r, P.Rlerror) and r.ecode == errno.EMFILE
    # a walk onto its own fid makes none; a clunk makes room
    assert isinstance(c.rpc(P.Twalk(fid=7, newfid=7, wnames=["d"], tag=1)), P.Rwalk)
    assert isinstance(c.rpc(P.Tclunk(fid=7, tag=1)), P.Rclunk)
    assert isinstance(c.rpc(P.Twalk(fid=0, newfid=8, wnames=[], tag=1)), P.Rwalk)
    assert serves(s.port)


def test_connections_per_server(servers):
    s = servers(connections=3, per_peer=0)
    held = [RawConn(s.port) for _ in range(3)]
    for c in held:
        assert isinstance(c.version(), P.Rversion)
    extra = RawConn(s.port)
    assert extra.closed_by_peer()
    held.pop().close()
    assert wait_for(lambda: serves(s.port), 5, "a connection once one closed")


def test_connections_per_peer(servers, caplog):
    s = servers(per_peer=2)
    held = [RawConn(s.port) for _ in range(2)]
    for c in held:
        assert isinstance(c.version(), P.Rversion)
    for _ in range(30):                             # a flood: one log line
        assert RawConn(s.port).closed_by_peer()
    assert len([r for r in caplog.records if "--max-per-peer" in r.getMessage()]) == 1
    assert serves(s.port, source="127.0.0.2")      # another address is not held back
    held.pop().close()
    assert wait_for(lambda: serves(s.port), 5, "a connection once one closed")


def test_attach_timeout(servers):
    s = servers(attach_timeout=0.5)
    idle = RawConn(s.port)
    idle.version()
    attached = RawConn(s.port)
    attached.version()
    attached.attach(fid=1)
    t0 = time.monotonic()
    assert idle.closed_by_peer(timeout=10 * load_factor())
    assert 0.4 < time.monotonic() - t0 < 5 * load_factor()
    # the attached one stays, and keeps working
    time.sleep(1)
    assert isinstance(attached.rpc(P.Tgetattr(fid=1, request_mask=1, tag=1)), P.Rgetattr)
    assert serves(s.port)


def test_no_attach_timeout_without_authentication():
    """Without authentication an attach proves nothing (and a mux's links attach only
    once a user comes): unattached connections stay."""
    s = ThreadServer(lambda: blocking_tree()[0], limits=Limits(attach_timeout=0.2))
    try:
        c = RawConn(s.port)
        c.version()
        assert not c.closed_by_peer(timeout=1)
        assert isinstance(c.attach(fid=1), P.Rattach)
    finally:
        s.stop()


def test_frame_timeout(servers):
    s = servers(frame_timeout=0.5, attach_timeout=0)
    slow = RawConn(s.port)
    slow.version()
    idle = RawConn(s.port)                          # between frames: not a slow frame
    idle.version()
    frame = P.encode(P.Tattach(fid=1, afid=P.NOFID, uname="root", aname="", n_uname=0,
                               tag=1))
    slow.send_raw(frame[:len(frame) // 2])
    t0 = time.monotonic()
    assert slow.closed_by_peer(timeout=10 * load_factor())
    assert 0.4 < time.monotonic() - t0 < 5 * load_factor()
    assert isinstance(idle.attach(fid=1), P.Rattach)
    assert serves(s.port)


@pytest.mark.parametrize("size", [PREVERSION_FRAME + 1, 1 << 20])
def test_large_frame_before_version(servers, size):
    s = servers()
    c = RawConn(s.port, auto_auth=False)
    c.send_raw(struct.pack("<IBH", size, 100, P.NOTAG))
    assert c.closed_by_peer()
    assert serves(s.port)


def test_large_frames_arrive_whole():
    """A large Twrite arrives intact whether its bytes come at once or trickle in (the
    buffer then grows with them)."""
    got = []

    def tree():
        from nine.synth.files import Dir, File, SynthFS
        return {None: SynthFS(Dir("", [File("sink", write=lambda ctx, off, data: (
            got.append(bytes(data)), len(data))[1])])).attach}
    s = ThreadServer(tree)
    try:
        c = RawConn(s.port)
        c.version(msize=1 << 20)
        c.attach(fid=0)
        c.rpc(P.Twalk(fid=0, newfid=1, wnames=["sink"], tag=1))
        c.rpc(P.Tlopen(fid=1, flags=P.L_O_WRONLY, tag=1))
        data = os.urandom(300000)
        frame = P.encode(P.Twrite(fid=1, offset=0, data=data, tag=1))
        c.send_raw(frame)
        assert c.recv().count == len(data)
        for i in range(0, 200):                    # a trickle, then pieces
            c.send_raw(frame[i:i + 1])
        for i in range(200, len(frame), 20000):
            time.sleep(0.01)
            c.send_raw(frame[i:i + 20000])
        assert c.recv().count == len(data)
        assert got == [data, data]
    finally:
        s.stop()


def test_requests_in_flight(servers):
    """At the limit the connection is not read (backpressure) until a request ends."""
    s = servers(requests=4)
    c = RawConn(s.port)
    c.version()
    c.attach(fid=0)
    c.rpc(P.Twalk(fid=0, newfid=1, wnames=["block"], tag=1))
    c.rpc(P.Tlopen(fid=1, flags=0, tag=1))
    c.send_raw(b"".join(P.encode(P.Tread(fid=1, offset=0, count=64, tag=t))
                        for t in range(10, 20)))
    wait_for(lambda: s.state["reads"] == 4, 5, "4 reads blocked")
    time.sleep(0.3)
    assert s.state["reads"] == 4                    # the other 6 were not read
    other = RawConn(s.port)                         # others are served meanwhile
    other.version()
    other.attach(fid=0)
    other.rpc(P.Twalk(fid=0, newfid=1, wnames=["release"], tag=1))
    other.rpc(P.Tlopen(fid=1, flags=P.L_O_WRONLY, tag=1))
    assert isinstance(other.rpc(P.Twrite(fid=1, offset=0, data=b"go", tag=1)), P.Rwrite)
    tags = {c.recv().tag for _ in range(10)}
    assert tags == set(range(10, 20))


def _blocked_reads(port, n, tag0):
    """A connection that sends n reads of `block` (tags tag0...) at once."""
    c = RawConn(port)
    c.version()
    c.attach(fid=0)
    c.rpc(P.Twalk(fid=0, newfid=1, wnames=["block"], tag=1))
    c.rpc(P.Tlopen(fid=1, flags=0, tag=1))
    c.send_raw(b"".join(P.encode(P.Tread(fid=1, offset=0, count=64, tag=t))
                        for t in range(tag0, tag0 + n)))
    return c


def test_requests_in_flight_on_all_connections(servers, caplog):
    """At the server-wide limit, connections holding REQUESTS_RESERVE requests or more
    are not read (backpressure, logged once) until enough end; a connection that holds
    fewer is still served; nothing is lost."""
    from nine.server.limits import REQUESTS_RESERVE as R
    s = servers(requests=100, requests_total=24)
    a = _blocked_reads(s.port, 20, 10)
    wait_for(lambda: s.state["reads"] == 20, 5, "20 reads blocked")
    b = _blocked_reads(s.port, 20, 100)
    # b is read while it holds fewer than R (the total is over the limit by then)
    wait_for(lambda: s.state["reads"] == 20 + R, 5, "%d reads blocked" % (20 + R))
    time.sleep(0.3)
    assert s.state["reads"] == 20 + R               # the other 20 - R were not read
    assert s.server.guard.requests == 20 + R and s.server.guard.full
    other = RawConn(s.port)                         # one that holds none is served
    other.version()
    other.attach(fid=0)
    assert isinstance(other.rpc(P.Tgetattr(fid=0, request_mask=1, tag=1)), P.Rgetattr)
    lines = [r.getMessage() for r in caplog.records if "--max-requests-total" in r.getMessage()]
    assert len(lines) == 1, lines
    other.rpc(P.Twalk(fid=0, newfid=1, wnames=["release"], tag=1))
    other.rpc(P.Tlopen(fid=1, flags=P.L_O_WRONLY, tag=1))
    assert isinstance(other.rpc(P.Twrite(fid=1, offset=0, data=b"go", tag=1)), P.Rwrite)
    assert {a.recv().tag for _ in range(20)} == set(range(10, 30))
    assert {b.recv().tag for _ in range(20)} == set(range(100, 120))
    assert s.state["reads"] == 40
    wait_for(lambda: s.server.guard.requests == 0, 5, "no request in flight")
    assert not s.server.guard.full and not s.server.guard.waiting


def test_requests_total_option():
    """--max-requests-total reaches the server's limits; a negative one is refused."""
    from nine.cli.main import make_parser
    from nine.cli.serve import _limits
    args = make_parser().parse_args(["serve", "--max-requests-total", "500"])
    assert _limits(args).requests_total == 500
    assert Limits().requests_total == 8 * Limits().requests
    with pytest.raises(ValueError, match="requests_total"):
        Limits(requests_total=-1)


def test_auth_refusals_are_rate_limited(servers, caplog):
    """A flood of refused attaches from one address: one log line at once (the others
    are counted and summed up later), and still answered each."""
    s = servers()
    c = RawConn(s.port, auto_auth=False)
    c.version()
    n = 30
    c.send_raw(b"".join(P.encode(P.Tattach(fid=f, afid=P.NOFID, uname="nobody", aname="",
                                           n_uname=P.NONUNAME, tag=f))
                        for f in range(1, n + 1)))
    replies = [c.recv() for _ in range(n)]
    assert all(isinstance(r, P.Rlerror) and r.ecode == errno.EACCES for r in replies)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(lines) == 1 and "authentication required" in lines[0], lines
    assert s.server.guard.log.held()                # the other 29, to be summed up
    assert serves(s.port)


def test_rate_log_per_peer(caplog):
    """One line per kind and address; beyond LOG_PEERS addresses one line for the
    others; quiet records are forgotten (bounded memory)."""
    from nine.server.guard import RateLog
    rl = RateLog(every=0.2, peers=3)
    for i in range(100):
        for peer in ("10.0.0.%d" % p for p in range(10)):
            rl.hit("kind", "refused %s", peer, peer=peer)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["refused 10.0.0.%d" % p for p in range(4)], msgs
    time.sleep(0.25)
    rl.flush()
    summed = [r.getMessage().split(" in the last")[0] for r in caplog.records][4:]
    assert sorted(summed) == sorted(["refused 10.0.0.%d (99 more suppressed" % p
                                     for p in range(3)] +
                                    ["refused 10.0.0.9 (699 more suppressed"])
    time.sleep(0.25)
    rl.flush()
    assert not rl._kinds and not rl._npeers


def _rss(pid):
    return psutil.Process(pid).memory_info().rss


def test_header_flood_memory(tmp_path):
    """500 connections that each send a frame header claiming 1 MiB, before and after
    Tversion: the server's memory grows by what they sent, not what they claimed."""
    (tmp_path / "hello").write_bytes(b"hello\n")
    srv = NineProc(["--export", str(tmp_path), "--max-per-peer", "0"], free_port())
    try:
        assert serves(srv.port)
        before = _rss(srv.proc.pid)
        socks = []
        version = P.encode(P.Tversion(msize=1 << 20, version="9P2000.L", tag=P.NOTAG))
        header = struct.pack("<IBH", 1 << 20, P.BY_NAME["Twrite"].mtype, 1)
        for i in range(500):
            k = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            if i % 2:
                k.sendall(version)
                k.recv(100)
            k.sendall(header)
            socks.append(k)
        assert serves(srv.port)
        grown = _rss(srv.proc.pid) - before
        assert grown < 30 << 20, "RSS grew by %.1f MB" % (grown / 1e6)
        for k in socks:
            k.close()
        assert serves(srv.port)
        assert srv.alive()
    finally:
        srv.stop()


def test_teardown_of_many_blocked_reads(servers):
    """Closing a connection with 10,000 reads blocked in the server: another
    connection's requests are answered meanwhile without a long stall.  While more
    than GC_HOLD requests are in flight, the collector's full collections wait (each
    would walk every blocked request's greenlet and frames); after, they come back."""
    import gc
    from nine.server.limits import GC_HOLD
    n = 10000
    assert n > GC_HOLD
    thresholds = gc.get_threshold()
    s = servers(requests=n + 10, requests_total=n + 10)
    c = RawConn(s.port, timeout=60)
    c.version()
    c.attach(fid=0)
    c.rpc(P.Twalk(fid=0, newfid=1, wnames=["block"], tag=1))
    c.rpc(P.Tlopen(fid=1, flags=0, tag=1))
    c.send_raw(b"".join(P.encode(P.Tread(fid=1, offset=0, count=64, tag=t))
                        for t in range(1, n + 1)))
    wait_for(lambda: s.state["reads"] == n, 60, "%d reads blocked" % n)
    assert gc.get_threshold()[2] >= 1 << 30, gc.get_threshold()
    probe = RawConn(s.port)
    probe.version()
    probe.attach(fid=0)
    worst = [0.0]
    stop = threading.Event()

    def ping():
        while not stop.is_set():
            t0 = time.monotonic()
            r = probe.rpc(P.Tgetattr(fid=0, request_mask=1, tag=1))
            assert isinstance(r, P.Rgetattr)
            worst[0] = max(worst[0], time.monotonic() - t0)
            time.sleep(0.005)
    t = threading.Thread(target=ping, daemon=True)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    c.close()
    wait_for(lambda: s.state["cancelled"] == n, 60, "%d reads ended" % n)
    took = time.monotonic() - t0
    time.sleep(0.1)
    stop.set()
    t.join(10)
    bound = 0.25 * load_factor()
    print("teardown of %d blocked reads: %.2f s; probe's worst %.0f ms (bound %.0f ms)"
          % (n, took, worst[0] * 1e3, bound * 1e3))
    assert worst[0] < bound
    assert serves(s.port)
    assert gc.get_threshold() == thresholds


class FewDescriptors:
    """`nine serve` of a directory with a file `hello`, limited to 128 descriptors."""

    def __init__(self, path):
        (path / "hello").write_bytes(b"hello\n")
        self.port = free_port()

        def few_fds():      # the hard limit too: a RealFS raises the soft one to it
            resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nine", "serve", "--listen", "127.0.0.1:%d" % self.port,
             "-q", "--export", str(path), "--max-connections", "0", "--max-per-peer", "0"],
            env=ENV_ROOT, stderr=subprocess.PIPE, preexec_fn=few_fds)
        wait_port(self.port, proc=self.proc)

    def stop(self):
        """Its log."""
        self.proc.terminate()
        return self.proc.communicate(timeout=10)[1].decode()


def test_connections_leave_descriptors_for_files(tmp_path):
    """Connections never take the descriptors files need: beyond, the oldest that have
    not attached make room for a new one (soon), and files still open."""
    srv = FewDescriptors(tmp_path)
    try:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                for _ in range(200)]
        time.sleep(1)
        t0 = time.monotonic()
        c = RawConn(srv.port)
        c.version()
        c.attach(fid=0)
        assert time.monotonic() - t0 < 2 * load_factor()
        c.rpc(P.Twalk(fid=0, newfid=1, wnames=["hello"], tag=1))
        assert isinstance(c.rpc(P.Tlopen(fid=1, flags=0, tag=1)), P.Rlopen)
        assert bytes(c.rpc(P.Tread(fid=1, offset=0, count=10, tag=1)).data) == b"hello\n"
        for k in idle:
            k.close()
        assert serves(srv.port)
    finally:
        err = srv.stop()
    assert "all that the descriptors leave room for" in err
    assert len(err.splitlines()) < 10, err        # logged once, then "N such"


def test_shed_takes_the_oldest_unattached_only():
    """Guard.shed closes the oldest connections that have not attached and are old
    enough, never an attached one, from the server's ordered `unattached` (no scan of
    every connection per newcomer)."""
    from nine.server.guard import Guard

    class Conn:
        def __init__(self, born, attached=False):
            self.born, self.attached, self.closed = born, attached, False

        def shutdown(self):
            self.closed = True

    class Srv:
        pass
    now = time.monotonic()
    attached = Conn(now - 9, attached=True)     # (still listed: attached just now)
    old = [Conn(now - 5 + i) for i in range(3)]
    young = [Conn(now - 0.01) for _ in range(3)]
    srv = Srv()
    srv.unattached = dict.fromkeys([attached] + old + young)
    g = Guard(srv)
    assert g.shed(2, grace=0.5) == 2
    assert [c.closed for c in old] == [True, True, False] and not attached.closed
    assert g.shed(5, grace=0.5) == 1                # the young are spared
    assert not any(c.closed for c in young)
    assert g.shed(5, grace=0) == 3


def test_accept_pauses_while_out_of_descriptors(tmp_path):
    """Files hold every descriptor: new connections wait (accept pauses briefly, logged
    once, no busy loop) and get in soon after files are closed."""
    srv = FewDescriptors(tmp_path)
    try:
        c = RawConn(srv.port)
        c.version()
        c.attach(fid=0)
        fid = 1
        while True:                                 # walks and opens hold descriptors
            r = c.rpc(P.Twalk(fid=0, newfid=fid, wnames=["hello"], tag=1))
            if isinstance(r, P.Rwalk):
                r = c.rpc(P.Tlopen(fid=fid, flags=0, tag=1))
                fid += 1
            if isinstance(r, P.Rlerror):
                assert r.ecode == errno.EMFILE
                break
        late = RawConn(srv.port, timeout=30)
        late.send(P.Tversion(msize=8192, version="9P2000.L", tag=P.NOTAG))
        time.sleep(0.5)
        cpu = psutil.Process(srv.proc.pid).cpu_percent(0.5)
        assert cpu < 50, "accept spins: %.0f%% CPU" % cpu
        for f in range(1, fid - 10):
            c.rpc(P.Tclunk(fid=f, tag=1))
        t0 = time.monotonic()
        assert isinstance(late.recv(), P.Rversion)
        assert time.monotonic() - t0 < load_factor()
        assert serves(srv.port)
    finally:
        err = srv.stop()
    assert "not accepting" in err
    assert len(err.splitlines()) < 10, err


def test_rate_log(caplog):
    """A flood of one kind: its first line at once, then one saying how many more."""
    from nine.server.guard import RateLog
    rl = RateLog(every=0.2)
    for i in range(50):
        rl.hit("kind", "refused %d", i)
    rl.hit("other", "another kind")
    assert [r.getMessage() for r in caplog.records] == ["refused 0", "another kind"]
    assert rl.held()
    time.sleep(0.25)
    rl.flush()
    assert caplog.records[-1].getMessage().startswith(
        "refused 49 (49 more suppressed in the last")
    assert not rl.held()


def test_large_listings_take_turns_and_free_their_turn(export_dir):
    """Large directory listings wait for one of a few slots (nine.server.listing
    LISTINGS), a small one never does; a listing whose connection goes away frees its
    slot: six concurrent whole listings of 3,000 entries, each begun and dropped
    several times first, all come back whole, and a small listing meanwhile too."""
    import gevent
    from nine.client import Client
    big = export_dir / "big"
    big.mkdir()
    for i in range(3000):
        (big / ("f%05d" % i)).write_bytes(b"")
    srv = NineProc(["--export", str(export_dir)], free_port())
    try:
        port = srv.port
        # large Treaddirs begun on connections that close at once (more than the slots)
        for _ in range(6):
            c = RawConn(port)
            c.rpc(P.Tversion(msize=1 << 20, version=P.V9P2000L, tag=P.NOTAG))
            c.rpc(P.Tattach(fid=0, afid=P.NOFID, uname="", aname="", n_uname=0, tag=1))
            c.rpc(P.Twalk(fid=0, newfid=1, wnames=["big"], tag=1))
            c.rpc(P.Tlopen(fid=1, flags=P.L_O_RDONLY, tag=1))
            c.send(P.Treaddir(fid=1, offset=0, count=128 * 1024, tag=2))
            c.close()
        want = sorted("f%05d" % i for i in range(3000))

        def whole(path):
            cl = Client(srv.addr)
            try:
                return sorted(cl.listdir(path))
            finally:
                cl.close()
        jobs = [gevent.spawn(whole, "big") for _ in range(6)] + [gevent.spawn(whole, "sub")]
        gevent.joinall(jobs, timeout=60 * load_factor(), raise_error=True)
        assert all(j.ready() for j in jobs), "a listing never ended (a slot kept)"
        assert [j.value for j in jobs[:6]] == [want] * 6
        assert jobs[6].value == ["inner"]
    finally:
        srv.stop()


def test_background_work_lets_the_hub_poll_between_turns():
    """Long work (a listing) takes its turns with guard.background: a socket that turns
    readable is served within a few turns of two such loops, not after the hub has run
    callbacks for its whole switch interval (with gevent.sleep(0) there were thousands
    of turns before the hub polled)."""
    import gevent
    from gevent import socket as gsocket
    from nine.server.guard import background
    turns = [0]
    done = []

    def spin():
        while not done:
            turns[0] += 1
            background()
    a, b = gsocket.socketpair()
    try:
        spinners = [gevent.spawn(spin) for _ in range(2)]
        gevent.sleep(0.01)           # both loops under way
        reader = gevent.spawn(lambda: (a.recv(10), turns[0]))
        gevent.sleep(0)              # the reader waits in recv
        start = turns[0]
        b.send(b"x")
        data, at = reader.get(timeout=10 * load_factor())
        done.append(1)
        gevent.joinall(spinners, timeout=10)
        assert data == b"x"
        assert at - start < 50, "%d turns of background work before the hub polled" % (
            at - start)
    finally:
        a.close()
        b.close()
