"""One client connection of the 9P server: the socket loop, framing, output, and the
requests in flight (one greenlet each), their tags and their ends.

Transport reads length-prefixed frames, decodes each in the connection's dialect and
hands it to its handler, a method h_Tname of the subclass (nine.server.core.Connection
holds the 9P state machine).  Each request runs in a greenlet of its own, so a blocking
read does not hold up the connection, except those the subclass lets run inline
(inline_ok: the node promises not to block) and those it posts (post_start: a mux's read
sent on to its child, answered from the child's reply callback, cancel() standing in
for the kill of a greenlet).  Tversion is handled synchronously: it ends everything in
flight.

The hot path: between frames the reader greenlet parks (_park) and the hub itself
receives and dispatches whole small frames from the socket's read callback
(_on_readable), so a request answered inline costs no greenlet switch; anything else (a
frame begun, a large frame, a Tversion, backpressure, EOF) is handed back to the reader,
which goes on as before.  A reply written from the hub never waits: what the socket does
not take is left to a greenlet (_drain), and the reader reads no more of that
connection until it has gone (the peer must read its replies).

Memory follows what the peer has sent (nine.server.limits): the receive buffer starts
small and grows only with bytes received, a frame over BIG bytes gets a buffer of its
own sized by the bytes that have come (never by the size its header claims), and a
frame before Tversion is at most PREVERSION_FRAME bytes.  Backpressure: while the
requests in flight reach their limit (Limits.requests), or their large frames (over
BIG) hold more than HELD_MSIZES times msize, the connection is not read until one ends
(so a client that keeps that many requests blocked must close the connection).
Fairness: a reader that has taken FAIR frames without once waiting for its socket (a
peer that pipelines, or floods) lets the other connections run before it goes on.

Tags: a tag in flight cannot be used again (EPROTO).  A request is ended (Tflush, or
end() from the state machine: a Tclunk ends the requests still running on its fid) by
killing its greenlet, which raises GreenletExit where it waits; end() returns only once
that greenlet is gone, then frees the tag and, where asked, answers the request with an
error.  Tflush answers Rflush after that, so the old request's reply (if it was already
queued) goes first and nothing of the old request happens after Rflush.  Many requests
end KILL_BATCH at a time, the other connections running between batches: ending tens of
thousands (a connection that goes with that many reads blocked) never stalls the server.

The end of a connection: shutdown() (from anywhere: a limit's sweeper, running out of
descriptors, a failed write) closes the socket and wakes the reader; the reader's
greenlet then ends every request and resets the session (close()).

Output: replies from many greenlets are queued and combined into one write (a large
payload goes out with sendmsg, without a copy).

A TLS link (a gevent SSLSocket: nine.server.core.Server(tls=) made the handshake) takes
the gevent socket's own reads and writes: the fast paths below (recv_into and send on
the descriptor, sendmsg) would bypass the encryption.  A large payload is still not
copied: it is written on its own, after the small parts before it.
"""

import errno
import fcntl
import logging
import os
import struct
import sys
import termios
import time

import gevent
from gevent.event import Event

from .. import protocol as P
from ..protocol import ProtocolError, V9P2000U, V9P2000L, IOHDRSZ
from .limits import GC_HOLD, GC_RESUME, PREVERSION_FRAME, REQUESTS_RESERVE

log = logging.getLogger("nine.server")

RECVMIN = PREVERSION_FRAME  # a new connection's receive buffer: a frame before Tversion fits
RECVBUF = 64 * 1024         # the most the receive buffer grows to (when reads fill it)
BIG = RECVBUF // 4          # frames over BIG get a buffer of their own
#: large frames in flight hold at most this many msizes per connection.  A mux link
#: carries a pipeline: a pcp block is acknowledged only once every leaf below has it,
#: so each level needs several blocks in flight; at 4, a copy to 16 hosts over 50
#: Mbit/s links ran at 61% of the link rate (and 39% to 64 hosts, 3 levels), at 16 at
#: 88%.  What it holds is bytes the peer sent (never what a header claims).
HELD_MSIZES = 16
KILL_BATCH = 128            # requests ended per turn of the hub, at most
KILL_SLICE = 0.001          # seconds of ending requests per turn of the hub, at most
                            # (many connections torn down at once take turns)
FAIR = 64                   # frames taken in a row before the other connections' turn

_RLERROR = struct.Struct("<IBHI")
_INT = struct.Struct("i")
_INT0 = bytes(4)
_ENOENT_TEXT = os.strerror(errno.ENOENT)
_RFLUSH = struct.Struct("<IBH")
_U32 = struct.Struct("<I").unpack_from
_HDR = struct.Struct("<IBH").unpack_from
_TVERSION = P.BY_NAME["Tversion"].mtype
_TFLUSH = P.BY_NAME["Tflush"].mtype
_now = time.monotonic


def _pause(seconds=0.0005):
    """Let the hub poll and run everything else before going on (gevent.sleep(0) only
    queues behind other callbacks: the loop may not poll for dozens of them)."""
    gevent.sleep(seconds)


def _queued(sock):
    """Bytes received by the kernel on sock and not read yet (0 if it cannot say: also
    when sock was closed meanwhile, fileno -1, by a shutdown from another greenlet)."""
    try:
        return _INT.unpack(fcntl.ioctl(sock.fileno(), termios.FIONREAD, _INT0))[0]
    except (OSError, ValueError):
        return 0


_HANDLERS = {}      # Transport subclass -> ((message type, name of its handler), ...)


def _handler_names(cls):
    """The handlers (h_Tname methods) of a Transport subclass, found once per class (a
    flood of connections must cost little each)."""
    names = _HANDLERS.get(cls)
    if names is None:
        names = _HANDLERS[cls] = tuple((P.BY_NAME[n[2:]].mtype, n) for n in dir(cls)
                                       if n.startswith("h_") and n[2:] in P.BY_NAME)
    return names


def _is_tls(sock):
    """Is sock a TLS socket (gevent.ssl.SSLSocket)?  Asked without importing ssl: a
    process that never made a TLS context has none (and a plain server does not pay for
    loading ssl)."""
    gssl = sys.modules.get("gevent.ssl")
    return gssl is not None and isinstance(sock, gssl.SSLSocket)


def _internal_error(msg, ex):
    """A handler raised something other than OSError (a bug; its request is answered
    EIO): one line per request at ERROR, its traceback at DEBUG."""
    name = type(msg).__name__
    log.error("internal error in %s: %s: %s", name, type(ex).__name__, ex)
    log.debug("traceback of the internal error in %s", name, exc_info=ex)


class _NoWait:
    """sendmsg on a non-blocking socket that says None where it would wait."""
    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = raw

    def sendmsg(self, bufs):
        try:
            return self.raw.sendmsg(bufs)
        except BlockingIOError:
            return None


class Request:
    """One request in flight: its tag, message, frame size (0 for a small frame: only
    large ones count against HELD_MSIZES) and greenlet, or for a posted request (no
    greenlet: Transport.post_start) the cancel() of what it posted.  `ending` is
    None while it runs and may answer; an Event once something ends it (set when it is
    gone)."""
    __slots__ = ("tag", "msg", "size", "greenlet", "ending", "cancel")

    def __init__(self, tag, msg, size):
        self.tag = tag
        self.msg = msg
        self.size = size
        self.greenlet = None
        self.ending = None
        self.cancel = None


class Transport:
    """One client connection: socket loop, framing, output and requests in flight.

    A subclass provides the handlers (h_Tversion and one h_Tname per message it answers;
    a handler returns the reply: a Message, its encoded bytes, a list of byte parts, or
    None when it answered itself) and may override inline_ok and reset_session.

    What nine.server.guard reads: `born` and `since` (time.monotonic() of the accept,
    and of the first byte of the frame being received: None between frames and while
    the connection is not read), `attached` (set by the subclass at its first Tattach)
    and `closed`."""

    #: message types that may be answered inline (in the loop) when inline_ok says so
    INLINE = frozenset()
    #: message types that may be posted (post_start) instead of run in a greenlet
    POSTED = frozenset()

    def __init__(self, server, sock, address):
        self.server = server
        self.sock = sock
        self.address = address
        self.dialect = None
        self.msize = server.msize
        self.iounit = self.msize - IOHDRSZ
        self.inflight = {}          # tag -> Request
        self.closed = False
        self.attached = False
        self.born = _now()
        self.since = None
        lim = server.limits
        #: the most fids the subclass may hold (Limits.fids)
        self.max_fids = lim.fids or sys.maxsize
        self._max_requests = lim.requests or sys.maxsize
        self._max_total = lim.requests_total or sys.maxsize     # on all connections
        self._guard = server.guard
        self._max_frame = PREVERSION_FRAME
        self._max_held = HELD_MSIZES * self.msize
        self._held = 0              # bytes of the large frames of the requests in flight
        self._room = None           # the Event the reader waits on for backpressure
        self._waited = False        # the reader waited for its socket (the hub ran)
        self._torn = False
        self._out = []
        self._writing = False
        self._hub = gevent.get_hub()
        #: the link is TLS: no I/O on the descriptor itself
        self.tls = _is_tls(sock)
        # the hot path does its I/O on the gevent socket's own non-blocking socket and
        # waits for readability on one watcher of its own (gevent's recv_into/sendall
        # wrappers cost more than the syscalls for small 9P messages)
        raw = getattr(sock, "_sock", None)
        if raw is not None and not self.tls and getattr(sock, "timeout", 0) is None and \
                raw.gettimeout() == 0.0:
            self._raw = raw
            self._rwatch = self._hub.loop.io(sock.fileno(), 1)
        else:
            self._raw = self._rwatch = None
        # the reader parked (_park): the hub answers whole small frames itself
        self._reader = None
        self._parked = False
        self._pmv = None
        self._fair = False
        self._draining = None       # an Event while _drain writes what the hub could not
        self._on_readable_cb = self._on_readable
        self.handlers = {t: getattr(self, name) for t, name in _handler_names(type(self))}

    # --- what the state machine decides ----------------------------------------------
    def inline_ok(self, typ, msg):
        """May this request (its type is in INLINE) be answered in the loop, without a
        greenlet?  Only when nothing it calls can block."""
        return False

    def post_start(self, req):
        """Start req (its type is in POSTED) without a greenlet: send what answers it and
        return a cancel() callable, having arranged that posted_reply(req, reply) or
        posted_error(req, exc) runs once it is answered (in the hub, maybe before this
        returns); None: it cannot be posted (it runs in a greenlet).  Raising answers it
        with the error at once.  cancel() (Tflush, Tclunk of its fid, Tversion, the end
        of the connection) stops it: nothing answers it after that."""
        return None

    def reset_session(self):
        """Everything in flight has ended (Tversion, or the connection is gone): forget
        the session's state."""

    def over_limit(self, kind, code, text):
        """The OSError that answers a request beyond a limit of nine.server.limits (kind:
        its field), logged (once per kind, then how many more)."""
        self.server.guard.log.hit(kind, "%s: %s", self.address, text,
                                  peer=self.address[0] if type(self.address) is tuple else None)
        return OSError(code, text)

    def breathe(self, i):
        """Long loops over a connection's things call this with their index: every
        KILL_BATCH items it lets the other connections run (outside the hub)."""
        if i and not i % KILL_BATCH and gevent.getcurrent() is not self._hub:
            _pause()

    # --- the connection loop ------------------------------------------------------
    def run(self):
        """Read frames and dispatch them.  Small frames are copied out of the receive
        buffer; a large frame (a big Twrite) is received into a buffer of its own
        (_recv_big) and handed on as a memoryview, so its payload is not copied again."""
        sock = self.sock
        recv_into = sock.recv_into if self._raw is None else self._recv_into
        buf = bytearray(RECVMIN)
        mv = memoryview(buf)
        start = end = 0
        need = 0            # the size of the small frame begun at start, once known
        grow = False        # the last read filled the buffer
        taken = 0           # frames since the other connections' last turn
        self._reader = gevent.getcurrent()
        try:
            while not self.closed:
                if self.inflight and self._full():
                    self._wait_room()
                    if start != end:
                        self.since = _now()
                    continue
                cap = len(buf)
                if end == cap or start + need > cap:
                    # no room after end: move what is left to the front, in a larger
                    # buffer if the frame begun needs one or reads have been filling it
                    want = cap
                    while want < need or grow and want < RECVBUF:
                        want *= 2
                        grow = False
                    if want != cap:
                        nb = bytearray(want)
                        nb[:end - start] = mv[start:end]
                        mv.release()
                        buf, mv = nb, memoryview(nb)
                    elif start:
                        buf[:end - start] = mv[start:end]
                    end -= start
                    start = 0
                if start == end and self._rwatch is not None:
                    # nothing of a frame begun: the hub answers what it can (_park)
                    start, n = self._park(mv)
                    end = start
                    n -= start
                    if self._fair:          # the hub took FAIR frames: the others' turn
                        self._fair = False
                        taken = 0
                        _pause(1e-6)
                    if self.closed:
                        break
                    if not n:               # EOF or an error: the socket says which
                        n = recv_into(mv)
                else:
                    n = recv_into(mv[end:])
                if not n:
                    break
                grow = end + n == len(buf)
                end += n
                progress = False
                need = 0
                while end - start >= 4:
                    size = _U32(buf, start)[0]
                    if size < 7 or size > self._max_frame:
                        self._bad_size(size)
                        return
                    if end - start >= size:
                        if self.inflight and self._full():
                            self._wait_room()       # backpressure (see the module)
                            if self.closed:
                                return
                            continue
                        if self._draining is not None:
                            self._wait_drain()      # replies the peer does not take
                            if self.closed:
                                return
                            continue
                        frame = bytes(mv[start:start + size])
                        start += size
                        progress = True
                        self.dispatch(frame)
                        taken += 1
                        if taken == FAIR:
                            # a peer that pipelines many requests (or sends faster than
                            # they are taken) must not keep the others waiting: unless
                            # the reader waited for its socket meanwhile, their turn
                            taken = 0
                            if self._waited:
                                self._waited = False
                            else:
                                _pause(1e-6)
                                if self.closed:
                                    return
                        continue
                    if size <= BIG:
                        need = size             # a small frame: the rest comes next
                        break
                    if self.inflight and self._full():
                        self._wait_room()
                        if self.closed:
                            return
                        continue
                    if progress or self.since is None:
                        self.since = _now()
                    frame = self._recv_big(mv[start:end], size)
                    start = end = 0
                    if frame is None:
                        return
                    if grow and len(buf) < RECVBUF:
                        # large frames fill reads: read more of the next one at once
                        mv.release()
                        buf = bytearray(RECVBUF)
                        mv = memoryview(buf)
                        grow = False
                    self.since = None
                    self.dispatch(frame)
                    break
                if start == end:
                    start = end = 0
                    self.since = None
                elif progress or self.since is None:
                    self.since = _now()
        except OSError:
            pass
        finally:
            self.close()

    def _bad_size(self, size):
        if size < 7:
            what = "shorter than a header"
        elif self.dialect is None:
            what = "before Tversion: at most %d" % self._max_frame
        else:
            what = "msize %d" % self._max_frame
        self.server.guard.log.hit("frame_size", "dropped the connection of %s: a frame of "
                                  "%d bytes (%s)", self.address, size, what)

    def _recv_big(self, head, size):
        """The whole frame of size bytes that begins with head, as a memoryview; None if
        the connection ends first.  Its buffer holds at most twice what the peer has sent
        (received, or queued in the kernel), however large the size: allocated for
        what has come, doubled when full (a frame that has come whole is received in one
        buffer of its size, its payload not copied again)."""
        if self.closed:                 # shut meanwhile (by another greenlet)
            return None
        have = len(head)
        cap = min(size, 2 * (have if 2 * have >= size else have + _queued(self.sock)))
        buf = bytearray(cap)
        buf[:have] = head
        mv = memoryview(buf)
        recv_into = self.sock.recv_into if self._raw is None else self._recv_into
        while have < size:
            if have == cap:
                cap = min(size, max(2 * cap, have + _queued(self.sock)))
                nb = bytearray(cap)
                nb[:have] = mv
                mv.release()
                buf, mv = nb, memoryview(nb)
            n = recv_into(mv[have:])
            if not n:
                return None
            have += n
        return mv

    def _recv_into(self, buf):
        raw = self._raw
        while True:
            try:
                return raw.recv_into(buf)
            except BlockingIOError:
                pass
            if self.closed:
                return 0
            self._waited = True
            self._hub.wait(self._rwatch)

    def _park(self, mv):
        """Wait for the socket, the reader parked: meanwhile the hub itself receives into
        mv and answers the whole small frames that come (_on_readable), without waking
        this greenlet.  Returns (handled, received) once the hub hands over: mv[:received]
        holds what came, the frames before `handled` already dispatched ((0, 0): the
        connection ended, or the socket has an error or EOF to tell)."""
        w = self._rwatch
        self._pmv = mv
        self._parked = True
        w.start(self._on_readable_cb)
        try:
            return self._hub.switch()
        finally:
            self._pmv = None
            if self._parked:            # killed while parked
                self._parked = False
                w.stop()
            self._waited = True

    def _on_readable(self):
        """The parked reader's socket is readable (in the hub): receive once, dispatch
        the whole frames that need nothing of the reader (small, after Tversion, not a
        Tversion, room in flight); hand the rest (a partial or large frame, a Tversion,
        backpressure, EOF, an error, FAIR frames taken) to the reader.  A frame whose
        request may block gets its greenlet as in the reader; one answered inline is
        answered here: its node promised never to wait (Node.may_block)."""
        mv = self._pmv
        if mv is None or not self._parked:
            return
        try:
            n = self._raw.recv_into(mv)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        o = 0
        taken = 0
        max_frame = BIG if BIG < self._max_frame else self._max_frame
        try:
            while n - o >= 7:
                size = _U32(mv, o)[0]
                if size > n - o or size < 7 or size > max_frame or mv[o + 4] == _TVERSION \
                        or self._writing or self.inflight and self._full():
                    break
                if taken == FAIR:
                    self._fair = True
                    break
                frame = bytes(mv[o:o + size])
                o += size
                taken += 1
                self.dispatch(frame)
                if not self._parked:        # shut meanwhile
                    return
        except Exception as ex:     # a bug: the reader would have died of it too
            log.error("%s: error in the connection's loop: %s: %s", self.address,
                      type(ex).__name__, ex)
            log.debug("traceback", exc_info=ex)
            self.shutdown()
            return
        if n and o == n and not self.closed:
            self._fair = False
            return                  # all answered: stay parked
        self._parked = False
        self._rwatch.stop()
        self._reader.switch((o, n))

    def _wait_drain(self):
        """Backpressure on output: wait, not reading, until what the hub left to _drain
        has gone (the peer reads its replies), or the connection is shut."""
        self.since = None
        self._draining.wait()

    def _wake_closed(self):
        """shutdown() of a parked reader (scheduled by it): wake the reader to end."""
        if self._pmv is not None:
            self._reader.switch((0, 0))

    def _full(self):
        """Backpressure: are the requests in flight at their limit, or their large
        frames over theirs?"""
        n = len(self.inflight)
        if n >= self._max_requests or self._held > self._max_held:
            return True
        g = self._guard     # server-wide (nine.server.guard: full, and its reserve)
        return n >= REQUESTS_RESERVE and (g.full or g.requests >= self._max_total and
                                          g.fill(self._max_total))

    def _wait_room(self):
        """Backpressure: wait, not reading, until a request in flight ends (or the
        connection is shut).  Meanwhile no frame is the peer's to finish."""
        self.since = None
        room = self._room = Event()
        if self._guard.full:
            self._guard.waiting[self] = room
        try:
            room.wait()
        finally:
            self._room = None
            self._guard.waiting.pop(self, None)

    def shutdown(self):
        """Stop the link now, from anywhere (the hub included): nothing more is sent,
        the socket is closed (its descriptor free at once), and the reader wakes to end
        the connection in its own greenlet (close())."""
        if self.closed:
            return
        self.closed = True
        w = self._rwatch
        if w is not None:
            self._rwatch = None
            if self._parked:            # the reader waits in _park, not in hub.wait
                self._parked = False
                w.stop()
                self._hub.loop.run_callback(self._wake_closed)
            else:
                self._hub.cancel_wait(w, OSError(errno.EBADF, "connection closed"))
            w.close()
        try:
            self.sock.close()
        except OSError:
            pass
        room = self._room
        if room is not None:
            room.set()
        drained = self._draining
        if drained is not None:
            drained.set()

    def close(self):
        """End the connection: shut it, then every request ends unanswered and the
        session is reset (once)."""
        self.shutdown()
        if self._torn:
            return
        self._torn = True
        self.abort_all()

    # --- requests -------------------------------------------------------------------
    def dispatch(self, frame):
        size, typ, tag = _HDR(frame, 0)       # the loop checked that it has a header
        dialect = self.dialect or V9P2000L
        try:
            msg = P.decode(frame, dialect)
        except ProtocolError as ex:
            # the frame is intact (the loop checked its size): answer only this request
            self.send_error(tag, errno.EPROTO if typ in P.TYPES else errno.EOPNOTSUPP, str(ex))
            return
        if typ == _TVERSION:  # synchronous: it ends everything in flight
            self.h_Tversion(msg)
            self._max_frame = self.msize if self.dialect is not None else PREVERSION_FRAME
            self._max_held = HELD_MSIZES * self.msize
            return
        if self.dialect is None:
            self.send_error(tag, errno.EPROTO, "Tversion must come first")
            return
        handler = self.handlers.get(typ)
        if handler is None:
            self.send_error(tag, errno.EOPNOTSUPP, "unexpected message %s" % type(msg).__name__)
            return
        if tag in self.inflight:
            self.send_error(tag, errno.EPROTO, "duplicate tag %d" % tag)
            return
        if typ == _TFLUSH:
            req = Request(tag, msg, 0)
            self.inflight[tag] = req
            self._guard.requests += 1
            req.greenlet = gevent.spawn(self.h_Tflush, req)
            return
        if typ in self.INLINE and self.inline_ok(typ, msg):
            self._run_inline(tag, msg, handler)
            return
        if size > BIG:
            self._held += size
        else:
            size = 0
        req = Request(tag, msg, size)
        self.inflight[tag] = req
        g = self._guard
        g.requests += 1
        if g.requests > GC_HOLD and not g.gc_held:
            g.hold_gc()
        if typ in self.POSTED and self._start_posted(req):
            return
        req.greenlet = gevent.spawn(self._run, req, handler)

    def _forget(self, req):
        """req is over: free its tag and what its frame held, and wake the reader if it
        waits for room.  Whether the tag was still req's."""
        if self.inflight.get(req.tag) is not req:
            return False
        del self.inflight[req.tag]
        self._held -= req.size
        g = self._guard
        g.requests -= 1
        if g.full and g.requests <= g.low:
            g.drain()
        if g.gc_held and g.requests < GC_RESUME:
            g.resume_gc()
        room = self._room
        if room is not None:
            room.set()
        return True

    def _run_inline(self, tag, msg, handler):
        try:
            reply = handler(msg)
        except OSError as ex:
            self.send_error(tag, ex.errno or errno.EIO, ex.strerror or str(ex))
            return
        except ProtocolError as ex:
            self.send_error(tag, errno.EINVAL, str(ex))
            return
        except Exception as ex:
            _internal_error(msg, ex)
            self.send_error(tag, errno.EIO, "internal server error: %s" % ex)
            return
        self._reply(tag, reply)

    def _start_posted(self, req):
        """post_start(req): whether it was posted (or answered at once)."""
        try:
            cancel = self.post_start(req)
        except OSError as ex:
            self.posted_error(req, ex)
            return True
        except ProtocolError as ex:
            self.posted_error(req, OSError(errno.EINVAL, str(ex)))
            return True
        except Exception as ex:
            _internal_error(req.msg, ex)
            self.posted_error(req, OSError(errno.EIO, "internal server error: %s" % ex))
            return True
        if cancel is None:
            return False
        if req.ending is None and self.inflight.get(req.tag) is req:
            req.cancel = cancel         # not answered yet
        return True

    def posted_reply(self, req, reply):
        """The reply of a posted request (as a handler's)."""
        if req.ending is None and self._forget(req):
            self._reply(req.tag, reply)

    def posted_error(self, req, ex):
        """A posted request failed with ex (an OSError)."""
        if req.ending is None and self._forget(req):
            self.send_error(req.tag, getattr(ex, "errno", None) or errno.EIO,
                            getattr(ex, "strerror", None) or str(ex))

    def _run(self, req, handler):
        try:
            reply = handler(req.msg)
        except OSError as ex:
            if req.ending is not None:
                return
            self._forget(req)
            self.send_error(req.tag, ex.errno or errno.EIO, ex.strerror or str(ex))
            return
        except ProtocolError as ex:
            if req.ending is not None:
                return
            self._forget(req)
            self.send_error(req.tag, errno.EINVAL, str(ex))
            return
        except gevent.GreenletExit:
            return
        except Exception as ex:  # a backend bug must not take the server down
            _internal_error(req.msg, ex)
            if req.ending is not None:
                return
            self._forget(req)
            self.send_error(req.tag, errno.EIO, "internal server error: %s" % ex)
            return
        if req.ending is not None:
            return
        self._forget(req)
        self._reply(req.tag, reply)

    def _reply(self, tag, reply):
        if reply is not None:
            if reply.__class__ is bytes or reply.__class__ is list:
                self.send_raw(reply)
            else:
                reply.tag = tag
                self.send_raw(P.encode(reply, self.dialect))

    def end(self, reqs, ecode=None, text=None):
        """End requests in flight: kill their greenlets and wait until they are gone;
        then free their tags and, given ecode, answer each with that error.  A request
        that something else is ending already is waited for.  They end KILL_BATCH at a
        time, the hub running between batches.  From the hub itself (where nothing may
        wait) the kills are only scheduled."""
        me = gevent.getcurrent()
        wait = me is not self._hub
        ending = Event()
        mine, theirs = [], []
        # the newest first: a greenlet killed while waiting stops its watcher, and
        # libev keeps the watchers of one descriptor newest first (each stop then finds
        # its own at once, where oldest first would walk all the others)
        for r in reversed(reqs):
            if r.ending is None:
                r.ending = ending
                mine.append(r)
            else:
                theirs.append(r)
        done = 0
        try:
            while done < len(mine):
                if done and wait:
                    _pause()
                t0 = _now()
                for k in range(done, min(len(mine), done + KILL_BATCH), 8):
                    batch = mine[k:k + 8]
                    for r in batch:
                        cancel = r.cancel
                        if cancel is not None:     # posted: no greenlet, it stops
                            r.cancel = None
                            try:
                                cancel()
                            except Exception:
                                pass
                    gs = [r.greenlet for r in batch
                          if r.greenlet is not None and r.greenlet is not me]
                    if gs:
                        gevent.killall(gs, block=wait)
                    done += len(batch)
                    self._ended(batch, ecode, text)
                    if wait and _now() - t0 > KILL_SLICE:
                        break
        finally:
            self._ended(mine[done:], ecode, text)
            ending.set()
        if wait:
            for r in theirs:
                r.ending.wait()
                if r.greenlet is not None and r.greenlet is not me:
                    r.greenlet.join()

    def _ended(self, reqs, ecode, text):
        for r in reqs:
            if self._forget(r) and ecode is not None:
                self.send_error(r.tag, ecode, text)

    def abort_all(self):
        """End every request unanswered (a Tversion, the end of the connection), then
        reset the session."""
        self.end(list(self.inflight.values()))
        self.reset_session()

    def h_Tflush(self, req):
        old = self.inflight.get(req.msg.oldtag)
        if old is not None and old is not req:
            self.end([old])
        if self._forget(req):
            self.send_raw(_RFLUSH.pack(7, 109, req.tag))

    # --- output -------------------------------------------------------------------
    def send_raw(self, data):
        """Queue one encoded reply (bytes, or a list of bytes parts) and write it out.
        Concurrent senders are combined into one write."""
        if self.closed:
            return
        raw = self._raw
        if raw is not None and data.__class__ is bytes and not self._writing and \
                not self._out:
            # nothing queued before it: straight out (the common case of one reply)
            try:
                n = raw.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self.shutdown()
                return
            if n == len(data):
                return
            data = memoryview(data)[n:]
        if data.__class__ is list:
            self._out.extend(data)
        else:
            self._out.append(data)
        if self._writing:
            return
        self._writing = True
        self._write_out()

    def _write_out(self):
        """Write what is queued (_writing is set).  In the hub (the reader parked
        answers there), where nothing may wait, what the socket does not take at once is
        left to a greenlet (_drain), and _writing stays set until it has gone: replies
        keep their order."""
        handed = False
        try:
            while self._out:
                out = self._out
                self._out = []
                if len(out) == 1:
                    rest = self._send_all(out[0])
                elif len(out) <= 64 and sum(map(len, out)) > 32768:
                    # large payloads: no copy into one buffer
                    if self.tls:
                        rest = out if gevent.getcurrent() is self._hub else \
                            self._send_parts(out)
                    else:
                        rest = self._sendv(out)
                else:
                    rest = self._send_all(b"".join(out))
                if rest is not None:
                    self._out[:0] = rest if rest.__class__ is list else [rest]
                    if self._draining is None:
                        self._draining = Event()
                    gevent.spawn(self._drain)
                    handed = True
                    return
        except OSError:
            self._out = []
            self.shutdown()
        finally:
            if not handed:
                self._writing = False

    def _drain(self):
        """What the hub could not write without waiting (_write_out), in a greenlet;
        then the reader may go on (_wait_drain)."""
        try:
            if self.closed:
                self._out = []
                self._writing = False
                return
            self._write_out()
        finally:
            drained = self._draining
            if drained is not None and not self._writing:
                self._draining = None
                drained.set()

    def _send_all(self, data):
        """Send data; None once sent.  In the hub what the socket does not take at once
        is returned instead."""
        raw = self._raw
        if raw is not None:
            try:
                n = raw.send(data)
            except BlockingIOError:
                n = 0
            if n == len(data):
                return None
            data = memoryview(data)[n:]
        if gevent.getcurrent() is self._hub:
            return data
        self.sock.sendall(data)
        return None

    def _send_parts(self, bufs):
        """_sendv for a TLS link (where sendmsg would bypass the encryption): small parts
        are joined, a large one goes out as it is."""
        sendall = self.sock.sendall
        small = []
        for b in bufs:
            if len(b) < 16384:          # a TLS record's worth
                small.append(b)
                continue
            if small:
                sendall(b"".join(small))
                small = []
            sendall(b)
        if small:
            sendall(b"".join(small))

    def _sendv(self, bufs):
        """sendmsg of the parts; None once sent (in the hub: the parts the socket did not
        take at once, returned)."""
        bufs = [memoryview(b).cast("B") for b in bufs]
        sock = self.sock
        if gevent.getcurrent() is self._hub:
            if self._raw is None:
                return bufs
            sock = _NoWait(self._raw)
        while bufs:
            n = sock.sendmsg(bufs)
            if n is None:
                return bufs
            while n:
                b = bufs[0]
                if n >= len(b):
                    n -= len(b)
                    bufs.pop(0)
                else:
                    bufs[0] = b[n:]
                    n = 0
            while bufs and not len(bufs[0]):
                bufs.pop(0)

    def send_error(self, tag, code, text=None):
        """Answer tag with an error in the connection's dialect: Rlerror(errno) in .L,
        Rerror(text, errno) in .u, Rerror(text) in 9P2000."""
        d = self.dialect
        if d == V9P2000L or d is None:
            self.send_raw(_RLERROR.pack(11, 7, tag, code))
        else:
            msg = text or os.strerror(code)
            if code == errno.ENOENT and msg == _ENOENT_TEXT:
                msg = "file not found"   # lib9p's words: p9fs knows no other for ENOENT
            if d == V9P2000U:
                self.send_raw(P.encode(P.Rerror(ename=msg, errno=code, tag=tag), d))
            else:
                self.send_raw(P.encode(P.Rerror(ename=msg, tag=tag), d))
