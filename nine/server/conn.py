"""One client connection of the 9P server: the socket loop, framing, output, and the
requests in flight (one greenlet each), their tags and their ends.

Transport reads length-prefixed frames, decodes each in the connection's dialect and
hands it to its handler, a method h_Tname of the subclass (nine.server.core.Connection
holds the 9P state machine).  Each request runs in a greenlet of its own, so a blocking
read does not hold up the connection, except those the subclass lets run inline
(inline_ok: the node promises not to block).  Tversion is handled synchronously: it
ends everything in flight.

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
from .limits import PREVERSION_FRAME

log = logging.getLogger("nine.server")

RECVMIN = PREVERSION_FRAME  # a new connection's receive buffer: a frame before Tversion fits
RECVBUF = 64 * 1024         # the most the receive buffer grows to (when reads fill it)
BIG = RECVBUF // 4          # frames over BIG get a buffer of their own
HELD_MSIZES = 4             # large frames in flight hold at most this many msizes
KILL_BATCH = 128            # requests ended per turn of the hub
FAIR = 64                   # frames taken in a row before the other connections' turn

_RLERROR = struct.Struct("<IBHI")
_INT = struct.Struct("i")
_INT0 = bytes(4)
_ENOENT_TEXT = os.strerror(errno.ENOENT)
_RFLUSH = struct.Struct("<IBH")
_U32 = struct.Struct("<I").unpack_from
_TVERSION = P.BY_NAME["Tversion"].mtype
_TFLUSH = P.BY_NAME["Tflush"].mtype
_now = time.monotonic


def _pause(seconds=0.0005):
    """Let the hub poll and run everything else before going on (gevent.sleep(0) only
    queues behind other callbacks: the loop may not poll for dozens of them)."""
    gevent.sleep(seconds)


def _queued(sock):
    """Bytes received by the kernel on sock and not read yet (0 if it cannot say)."""
    try:
        return _INT.unpack(fcntl.ioctl(sock.fileno(), termios.FIONREAD, _INT0))[0]
    except OSError:
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


class Request:
    """One request in flight: its tag, message, frame size (0 for a small frame: only
    large ones count against HELD_MSIZES) and greenlet.  `ending` is
    None while it runs and may answer; an Event once something ends it (set when it is
    gone)."""
    __slots__ = ("tag", "msg", "size", "greenlet", "ending")

    def __init__(self, tag, msg, size):
        self.tag = tag
        self.msg = msg
        self.size = size
        self.greenlet = None
        self.ending = None


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
        self.handlers = {t: getattr(self, name) for t, name in _handler_names(type(self))}

    # --- what the state machine decides ----------------------------------------------
    def inline_ok(self, typ, msg):
        """May this request (its type is in INLINE) be answered in the loop, without a
        greenlet?  Only when nothing it calls can block."""
        return False

    def reset_session(self):
        """Everything in flight has ended (Tversion, or the connection is gone): forget
        the session's state."""

    def over_limit(self, kind, code, text):
        """The OSError that answers a request beyond a limit of nine.server.limits (kind:
        its field), logged (once per kind, then how many more)."""
        self.server.guard.log.hit(kind, "%s: %s", self.address, text)
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

    def _full(self):
        """Backpressure: are the requests in flight at their limit, or their large
        frames over theirs?"""
        return len(self.inflight) >= self._max_requests or self._held > self._max_held

    def _wait_room(self):
        """Backpressure: wait, not reading, until a request in flight ends (or the
        connection is shut).  Meanwhile no frame is the peer's to finish."""
        self.since = None
        room = self._room = Event()
        try:
            room.wait()
        finally:
            self._room = None

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
            self._hub.cancel_wait(w, OSError(errno.EBADF, "connection closed"))
            w.close()
        try:
            self.sock.close()
        except OSError:
            pass
        room = self._room
        if room is not None:
            room.set()

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
        size, typ, tag = P.peek_header(frame)
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
        req.greenlet = gevent.spawn(self._run, req, handler)

    def _forget(self, req):
        """req is over: free its tag and what its frame held, and wake the reader if it
        waits for room.  Whether the tag was still req's."""
        if self.inflight.get(req.tag) is not req:
            return False
        del self.inflight[req.tag]
        self._held -= req.size
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
                batch = mine[done:done + KILL_BATCH]
                gs = [r.greenlet for r in batch if r.greenlet is not None and r.greenlet is not me]
                if gs:
                    gevent.killall(gs, block=wait)
                done += len(batch)
                self._ended(batch, ecode, text)
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
        if data.__class__ is list:
            self._out.extend(data)
        else:
            self._out.append(data)
        if self._writing:
            return
        self._writing = True
        try:
            while self._out:
                out = self._out
                self._out = []
                if len(out) == 1:
                    self._send_all(out[0])
                elif len(out) <= 64 and sum(map(len, out)) > 32768:
                    # large payloads: no copy into one buffer
                    (self._send_parts if self.tls else self._sendv)(out)
                else:
                    self._send_all(b"".join(out))
        except OSError:
            self._out = []
            self.shutdown()
        finally:
            self._writing = False
    def _send_all(self, data):
        raw = self._raw
        if raw is not None:
            try:
                n = raw.send(data)
            except BlockingIOError:
                n = 0
            if n == len(data):
                return
            data = memoryview(data)[n:]
        self.sock.sendall(data)

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
        bufs = [memoryview(b).cast("B") for b in bufs]
        sock = self.sock
        while bufs:
            n = sock.sendmsg(bufs)
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
