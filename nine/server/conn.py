"""One client connection of the 9P server: the socket loop, framing, output, and the
requests in flight (one greenlet each), their tags and their ends.

Transport reads length-prefixed frames, decodes each in the connection's dialect and
hands it to its handler, a method h_Tname of the subclass (nine.server.core.Connection
holds the 9P state machine).  Each request runs in a greenlet of its own, so a blocking
read does not hold up the connection, except those the subclass lets run inline
(inline_ok: the node promises not to block).  Tversion is handled synchronously: it
ends everything in flight.

Tags: a tag in flight cannot be used again (EPROTO).  A request is ended (Tflush, or
end() from the state machine: a Tclunk ends the requests still running on its fid) by
killing its greenlet, which raises GreenletExit where it waits; end() returns only once
that greenlet is gone, then frees the tag and, where asked, answers the request with an
error.  Tflush answers Rflush after that, so the old request's reply (if it was already
queued) goes first and nothing of the old request happens after Rflush.

Output: replies from many greenlets are queued and combined into one write (a large
payload goes out with sendmsg, without a copy).

A TLS link (a gevent SSLSocket: nine.server.core.Server(tls=) made the handshake) takes
the gevent socket's own reads and writes: the fast paths below (recv_into and send on
the descriptor, sendmsg) would bypass the encryption.  A large payload is still not
copied: it is written on its own, after the small parts before it.
"""

import errno
import logging
import os
import struct
import sys

import gevent
from gevent.event import Event

from .. import protocol as P
from ..protocol import ProtocolError, V9P2000U, V9P2000L, IOHDRSZ

log = logging.getLogger("nine.server")

RECVBUF = 64 * 1024     # frames over RECVBUF/4 get a buffer of their own

_RLERROR = struct.Struct("<IBHI")
_RFLUSH = struct.Struct("<IBH")
_U32 = struct.Struct("<I").unpack_from
_TVERSION = P.BY_NAME["Tversion"].mtype
_TFLUSH = P.BY_NAME["Tflush"].mtype


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
    """One request in flight: its tag, message and greenlet.  `ending` is None while it
    runs and may answer; an Event once something ends it (set when it is gone)."""
    __slots__ = ("tag", "msg", "greenlet", "ending")

    def __init__(self, tag, msg):
        self.tag = tag
        self.msg = msg
        self.greenlet = None
        self.ending = None


class Transport:
    """One client connection: socket loop, framing, output and requests in flight.

    A subclass provides the handlers (h_Tversion and one h_Tname per message it answers;
    a handler returns the reply: a Message, its encoded bytes, a list of byte parts, or
    None when it answered itself) and may override inline_ok and reset_session."""

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
        self._out = []
        self._writing = False
        #: the link is TLS: no I/O on the descriptor itself
        self.tls = _is_tls(sock)
        # the hot path does its I/O on the gevent socket's own non-blocking socket and
        # waits for readability on one watcher of its own (gevent's recv_into/sendall
        # wrappers cost more than the syscalls for small 9P messages)
        raw = getattr(sock, "_sock", None)
        if raw is not None and not self.tls and getattr(sock, "timeout", 0) is None and \
                raw.gettimeout() == 0.0:
            self._raw = raw
            self._hub = gevent.get_hub()
            self._rwatch = self._hub.loop.io(sock.fileno(), 1)
        else:
            self._raw = self._rwatch = None
        self.handlers = {}
        for name in dir(self):
            if name.startswith("h_"):
                cls = P.BY_NAME.get(name[2:])
                if cls is not None:
                    self.handlers[cls.mtype] = getattr(self, name)

    # --- what the state machine decides ----------------------------------------------
    def inline_ok(self, typ, msg):
        """May this request (its type is in INLINE) be answered in the loop, without a
        greenlet?  Only when nothing it calls can block."""
        return False

    def reset_session(self):
        """Everything in flight has ended (Tversion, or the connection is gone): forget
        the session's state."""

    # --- the connection loop ------------------------------------------------------
    def run(self):
        """Read frames and dispatch them.  Small frames are copied out of one reusable
        receive buffer; a large frame (a big Twrite) is received straight into a buffer
        of its own and handed on as a memoryview, so its payload is never copied again."""
        sock = self.sock
        recv_into = sock.recv_into if self._raw is None else self._recv_into
        buf = bytearray(RECVBUF)
        mv = memoryview(buf)
        start = end = 0
        try:
            while not self.closed:
                if end == RECVBUF:
                    if start:
                        buf[:end - start] = mv[start:end]
                        end -= start
                        start = 0
                n = recv_into(mv[end:])
                if not n:
                    break
                end += n
                while end - start >= 4:
                    size = _U32(buf, start)[0]
                    if size < 7 or size > self.msize:
                        log.info("dropping connection %s: frame size %d (msize %d)",
                                 self.address, size, self.msize)
                        return
                    if end - start >= size:
                        frame = bytes(mv[start:start + size])
                        start += size
                        self.dispatch(frame)
                        continue
                    if size > RECVBUF // 4:
                        big = bytearray(size)
                        have = end - start
                        big[:have] = mv[start:end]
                        bmv = memoryview(big)
                        while have < size:
                            k = sock.recv_into(bmv[have:])
                            if not k:
                                return
                            have += k
                        start = end = 0
                        self.dispatch(bmv)
                    break
                if start == end:
                    start = end = 0
        except OSError:
            pass
        finally:
            self.close()

    def _recv_into(self, buf):
        raw = self._raw
        while True:
            try:
                return raw.recv_into(buf)
            except BlockingIOError:
                pass
            if self.closed:
                return 0
            self._hub.wait(self._rwatch)

    def close(self):
        """End the connection: every request ends unanswered, the session is reset."""
        if self.closed:
            return
        self.closed = True
        self.abort_all()
        w = self._rwatch
        if w is not None:
            self._rwatch = None
            self._hub.cancel_wait(w, OSError(errno.EBADF, "connection closed"))
            w.close()
        try:
            self.sock.close()
        except OSError:
            pass

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
            req = Request(tag, msg)
            self.inflight[tag] = req
            req.greenlet = gevent.spawn(self.h_Tflush, req)
            return
        if typ in self.INLINE and self.inline_ok(typ, msg):
            self._run_inline(tag, msg, handler)
            return
        req = Request(tag, msg)
        self.inflight[tag] = req
        req.greenlet = gevent.spawn(self._run, req, handler)

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
            self.inflight.pop(req.tag, None)
            self.send_error(req.tag, ex.errno or errno.EIO, ex.strerror or str(ex))
            return
        except ProtocolError as ex:
            if req.ending is not None:
                return
            self.inflight.pop(req.tag, None)
            self.send_error(req.tag, errno.EINVAL, str(ex))
            return
        except gevent.GreenletExit:
            return
        except Exception as ex:  # a backend bug must not take the server down
            _internal_error(req.msg, ex)
            if req.ending is not None:
                return
            self.inflight.pop(req.tag, None)
            self.send_error(req.tag, errno.EIO, "internal server error: %s" % ex)
            return
        if req.ending is not None:
            return
        self.inflight.pop(req.tag, None)
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
        that something else is ending already is waited for.  From the hub itself (where
        nothing may wait) the kills are only scheduled."""
        me = gevent.getcurrent()
        wait = me is not gevent.get_hub()
        mine, theirs = [], []
        for r in reqs:
            if r.ending is None:
                r.ending = Event()
                mine.append(r)
            else:
                theirs.append(r)
        try:
            gs = [r.greenlet for r in mine if r.greenlet is not None and r.greenlet is not me]
            if gs:
                gevent.killall(gs, block=wait)
        finally:
            for r in mine:
                if self.inflight.get(r.tag) is r:
                    del self.inflight[r.tag]
                    if ecode is not None:
                        self.send_error(r.tag, ecode, text)
                r.ending.set()
        if wait:
            for r in theirs:
                r.ending.wait()
                if r.greenlet is not None and r.greenlet is not me:
                    r.greenlet.join()

    def abort_all(self):
        """End every request unanswered (a Tversion, the end of the connection), then
        reset the session."""
        self.end(list(self.inflight.values()))
        self.reset_session()

    def h_Tflush(self, req):
        old = self.inflight.get(req.msg.oldtag)
        if old is not None and old is not req:
            self.end([old])
        if self.inflight.get(req.tag) is req:
            del self.inflight[req.tag]
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
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass
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
            if d == V9P2000U:
                self.send_raw(P.encode(P.Rerror(ename=msg, errno=code, tag=tag), d))
            else:
                self.send_raw(P.encode(P.Rerror(ename=msg, tag=tag), d))
