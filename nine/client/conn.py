"""One 9P connection, multiplexing many requests from many greenlets.

Design (gevent, no monkey patching):

- The socket is a plain non-blocking socket driven by two hub io watchers.  The read
  watcher's callback runs in the hub: it receives into one buffer, cuts frames, decodes
  them and hands each reply straight to the greenlet waiting on its tag (a gevent Waiter,
  switched to from the hub, no intermediate greenlet or callback).
- Sending appends the frame to a queue and schedules one hub callback; every frame queued
  before that callback runs goes out in one send() (so 50 greenlets woken by one batch of
  replies answer with one write).  A partial send hands the rest to the write watcher.
- Tags and fids come from free lists (LIFO reuse).  A tag is reused only when its reply
  has been seen, or, for a flushed request, when its Rflush has arrived.
- A greenlet killed (GreenletExit, gevent.Timeout, the call's own timeout ...) while it
  waits turns its request into an orphan and sends Tflush(oldtag).  The old tag is freed
  by the Rflush.  A late reply that created a fid (Twalk, Txattrwalk, Tattach) has that
  fid clunked in the background.  Tclunk/Tremove are never flushed: their fid is released
  when their reply arrives.
- When the connection dies (EOF, socket error, protocol error, close()), every waiter
  gets a NineError at once (ECONNRESET, EPIPE, EPROTO or ECONNABORTED) and later calls
  fail immediately.
- TLS (``tls=`` a nine.auth.tls.client_context, over TCP): the socket is then the
  non-blocking gevent SSLSocket of the handshake, driven by the same watchers.  Its reads
  say SSLWantReadError where a plain socket says BlockingIOError, its sends write all or
  nothing (0: retry the same bytes, as the write watcher does), and decrypted bytes can
  wait inside it with nothing left on the descriptor: the read callback drains them.
"""

import errno
import os
import socket as _socket
import struct

import gevent
from gevent import Timeout
from gevent.hub import Waiter, get_hub
from gevent import socket as gsocket

from ..protocol import codec
from ..protocol.codec import ProtocolError
from ..protocol.const import (DIALECTS, HEADER, IOHDRSZ, NOFID, NOTAG, V9P2000, V9P2000L)
from .dial import DEFAULT_MSIZE, DEFAULT_PORT, parse_addr
from .errors import NineError, NineProtocolError, nine_error, reply_error

__all__ = ["Connection", "parse_addr", "DEFAULT_MSIZE", "DEFAULT_PORT"]

_HDR = struct.Struct("<IBH")
_U32 = struct.Struct("<I")
_Rread = codec.BY_NAME["Rread"]
_Rreaddir = codec.BY_NAME["Rreaddir"]
_Tversion = codec.BY_NAME["Tversion"]
_Tflush = codec.BY_NAME["Tflush"]
_Tclunk = codec.BY_NAME["Tclunk"]
_new = object.__new__
_T_RLERROR = 7
_T_RERROR = 107
_T_RREAD = 117
_T_RREADDIR = 41
# Requests that must not be flushed: they consume their fid whatever happens.
_NOFLUSH = frozenset((120, 122))  # Tclunk, Tremove
_MAXTAG = 0xFFFE


class _Orphan:
    """Stands in the waiter table for a request whose caller gave up."""
    __slots__ = ("conn", "tag", "msg", "flushing", "replied")

    def __init__(self, conn, tag, msg, flushing):
        self.conn = conn
        self.tag = tag
        self.msg = msg
        self.flushing = flushing
        self.replied = False

    def switch(self, reply):
        # the original reply, arriving after the caller left (before any Rflush)
        self.replied = True
        if not self.flushing:
            self.conn._free_tags.append(self.tag)
        self.conn._late_reply(self.msg, reply)

    def throw(self, exc):
        pass


class _FlushCall:
    """The waiter of a Tflush: frees the old tag when Rflush arrives."""
    __slots__ = ("conn", "tag", "orphan")

    def __init__(self, conn, tag, orphan):
        self.conn = conn
        self.tag = tag
        self.orphan = orphan

    def switch(self, reply):
        conn = self.conn
        conn._free_tags.append(self.tag)
        o = self.orphan
        if not o.replied:
            # Rflush first: the old request is void
            if conn._waiters.get(o.tag) is o:
                del conn._waiters[o.tag]
            conn._late_reply(o.msg, None)
        conn._free_tags.append(o.tag)

    def throw(self, exc):
        pass


class _Callback:
    """The waiter of a fire-and-forget request (post())."""
    __slots__ = ("conn", "tag", "fn")

    def __init__(self, conn, tag, fn):
        self.conn = conn
        self.tag = tag
        self.fn = fn

    def switch(self, reply):
        self.conn._free_tags.append(self.tag)
        if self.fn is not None:
            try:
                self.fn(reply)
            except Exception:  # a callback must not break the reader
                pass

    def throw(self, exc):
        if self.fn is not None:
            try:
                self.fn(None)
            except Exception:
                pass


class Connection:
    """A 9P client connection: version negotiation, tags, fids, multiplexed RPC.

    ``Connection(addr, msize=DEFAULT_MSIZE, version='9P2000.L')`` connects and negotiates.
    ``sock=`` gives an already connected socket instead of ``addr``.  ``timeout`` is the
    default per-call timeout (None: wait forever).  With ``strict_version=False`` a server
    answering an older known dialect than asked for is accepted (``.dialect`` tells).
    ``tls=`` a client-side gevent SSLContext (nine.auth.tls.client_context): a TCP link
    then starts with a TLS handshake that verifies the server's certificate and shows
    ours (a unix socket stays plain, as the server's end does).
    """

    def __init__(self, addr=None, msize=DEFAULT_MSIZE, version=V9P2000L, *, sock=None,
                 timeout=None, connect_timeout=10.0, strict_version=True, negotiate=True,
                 tls=None):
        if version not in DIALECTS:
            raise ValueError("unknown 9P version %r (want one of %s)" % (version, DIALECTS))
        if msize < 256:
            raise ValueError("msize %d too small" % msize)
        self.addr = addr
        self.dialect = version
        self.version = version
        self.msize = msize
        self.timeout = timeout
        self._hub = hub = get_hub()
        self._loop = hub.loop
        self._waiters = {}
        self._free_tags = []
        self._next_tag = 0
        self._free_fids = []
        self._next_fid = 0
        self._wq = []
        self._wsched = False
        self._wblocked = False
        self._wpend = None
        self._dead = None
        self._sock = None
        self._enc = codec._ENCODERS[version]
        self.requests = 0
        self.bytes_in = 0           # bytes received from the server (frames and all)
        self.bytes_out = 0          # bytes sent to it
        if sock is None:
            if addr is None:
                raise ValueError("need addr or sock")
            sock = self._connect(addr, connect_timeout, tls)
        else:
            sock = _plain(sock)
        sock.setblocking(False)
        self._sock = sock
        #: the link is TLS (tls= given and addr is TCP): a gevent SSLSocket
        self.tls = type(sock) is not _socket.socket
        if sock.family in (_socket.AF_INET, _socket.AF_INET6):
            try:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            except OSError:
                pass
        # the receive buffer starts small and grows to the largest frame seen (a mux holds
        # thousands of connections: 2 x msize each would be gigabytes)
        self._rbuf = bytearray(65536)
        self._rmv = memoryview(self._rbuf)
        self._rstart = 0
        self._rend = 0
        fd = sock.fileno()
        self._rwatch = self._loop.io(fd, 1)
        self._wwatch = self._loop.io(fd, 2)
        self._rwatch.start(self._on_readable_tls if self.tls else self._on_readable)
        if negotiate:
            try:
                self._negotiate(msize, version, strict_version, connect_timeout)
            except BaseException:
                self.close()
                raise

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _connect(addr, timeout, tls=None):
        """A connected socket: a plain one, or over TCP with a tls context the gevent
        SSLSocket of a verified handshake (the server's certificate must name the host
        dialled)."""
        fam, sa = parse_addr(addr)
        try:
            if fam == _socket.AF_UNIX:
                g = gsocket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                g.settimeout(timeout)
                try:
                    g.connect(sa)
                except BaseException:
                    g.close()
                    raise
            else:
                g = gsocket.create_connection(sa, timeout=timeout)
        except _socket.timeout:
            raise nine_error(errno.ETIMEDOUT, "connect to %s timed out" % addr) from None
        except OSError as e:
            raise nine_error(e.errno or errno.ECONNREFUSED,
                             "connect to %s: %s" % (addr, e.strerror or e)) from None
        if tls is None or fam == _socket.AF_UNIX:
            return _plain(g)
        from ..auth.tls import dial
        try:
            # no Nagle delay for the handshake's last flight either (40 ms otherwise)
            g.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            return dial(g, tls, sa[0], timeout)
        except _socket.timeout:
            raise nine_error(errno.ETIMEDOUT, "TLS handshake with %s timed out" % addr) \
                from None
        except OSError as e:    # ssl.SSLError's errno is OpenSSL's, not the system's
            raise nine_error(errno.EPROTO, "TLS handshake with %s: %s" % (
                addr, e.strerror or e)) from None

    def _negotiate(self, msize, version, strict, timeout):
        w = Waiter(self._hub)
        self._waiters[NOTAG] = w
        self._send(codec.encode(_Tversion(msize=msize, version=version, tag=NOTAG), version))
        t = Timeout.start_new(timeout) if timeout else None
        try:
            r = w.get()
        except Timeout as e:
            if e is not t:
                raise
            raise nine_error(errno.ETIMEDOUT, "no answer to Tversion from %s" % (self.addr,)) \
                from None
        except NineProtocolError as e:
            raise NineError(errno.EPROTONOSUPPORT, "server at %s refused %s: %s" % (
                self.addr, version, e.strerror)) from None
        finally:
            if t is not None:
                t.cancel()
            self._waiters.pop(NOTAG, None)
        if r.mtype in (_T_RLERROR, _T_RERROR):
            text = os.strerror(r.ecode) if r.mtype == _T_RLERROR else r.ename
            raise NineError(errno.EPROTONOSUPPORT, "server at %s refused version %s: %s" % (
                self.addr, version, text))
        if r.mtype != 101:
            raise NineProtocolError(errno.EPROTO, "answer to Tversion is %s" % type(r).__name__)
        if r.version != version:
            ok = (not strict and r.version in DIALECTS and
                  DIALECTS.index(r.version) < DIALECTS.index(version))
            if not ok:
                raise NineError(errno.EPROTONOSUPPORT,
                                "server at %s does not speak %s (it answered version %r)" % (
                                    self.addr, version, r.version))
            self.dialect = self.version = r.version
            self._enc = codec._ENCODERS[r.version]
        if r.msize > msize or r.msize < 256:
            raise NineProtocolError(errno.EPROTO, "server msize %d (asked %d)" % (r.msize, msize))
        self.msize = r.msize

    # ------------------------------------------------------------------ properties

    @property
    def closed(self):
        return self._dead is not None

    @property
    def dotu(self):
        return self.dialect != V9P2000

    @property
    def dotl(self):
        return self.dialect == V9P2000L

    @property
    def iounit(self):
        """The largest read/write payload msize allows."""
        return self.msize - IOHDRSZ

    def inflight(self):
        """Number of tags in use (requests awaiting a reply, flushes included)."""
        return self._next_tag - len(self._free_tags)

    def __repr__(self):
        return "<Connection %s %s msize=%d%s>" % (self.addr, self.dialect, self.msize,
                                                   " dead" if self._dead else "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ fids

    def alloc_fid(self):
        """A fid number not in use on this connection."""
        f = self._free_fids
        if f:
            return f.pop()
        n = self._next_fid
        if n >= NOFID:
            raise nine_error(errno.EMFILE, "out of fids")
        self._next_fid = n + 1
        return n

    def free_fid(self, fid):
        """Give back a fid number that the server no longer knows."""
        self._free_fids.append(fid)

    # ------------------------------------------------------------------ rpc

    def _alloc_tag(self, block=True):
        n = self._next_tag
        if n <= _MAXTAG:
            self._next_tag = n + 1
            return n
        while not self._free_tags:
            if not block:
                return None
            if self._dead is not None:
                raise self._dead_error()
            gevent.sleep(0.001)
        return self._free_tags.pop()

    def rpc(self, msg, timeout=None):
        """Send a T-message and return its R-message.

        Raises NineError (the server's error, or the connection's death), NineTimeout
        (``timeout`` or the connection's default ran out; the request was flushed).
        """
        if self._dead is not None:
            raise self._dead_error()
        free = self._free_tags
        tag = free.pop() if free else self._alloc_tag()
        msg.tag = tag
        try:
            frame = self._enc[msg.mtype](msg)
        except Exception:
            free.append(tag)
            codec.encode(msg, self.dialect)  # raises the proper ProtocolError
            raise
        w = Waiter(self._hub)
        self._waiters[tag] = w
        self._wq.append(frame)
        if not self._wsched:
            self._wsched = True
            self._loop.run_callback(self._flush)
        self.requests += 1
        if timeout is None:
            timeout = self.timeout
        if timeout is None:
            try:
                r = w.get()
            except BaseException:
                self._abandon(tag, w, msg)
                raise
        else:
            r = self._get_timeout(tag, w, msg, timeout)
        if r.mtype != msg.mtype + 1:
            self._bad_reply(msg, r)
        return r

    def submit(self, msg):
        """Send a T-message without waiting; returns a handle for wait()/cancel()."""
        if self._dead is not None:
            raise self._dead_error()
        free = self._free_tags
        tag = free.pop() if free else self._alloc_tag()
        msg.tag = tag
        try:
            frame = self._enc[msg.mtype](msg)
        except Exception:
            free.append(tag)
            codec.encode(msg, self.dialect)
            raise
        w = Waiter(self._hub)
        self._waiters[tag] = w
        self._send(frame)
        self.requests += 1
        return w

    def wait(self, msg, handle, timeout=None):
        """The reply to a submit()ted message (same errors as rpc())."""
        if timeout is None:
            timeout = self.timeout
        if timeout is None:
            try:
                r = handle.get()
            except BaseException:
                self._abandon(msg.tag, handle, msg)
                raise
        else:
            r = self._get_timeout(msg.tag, handle, msg, timeout)
        if r.mtype != msg.mtype + 1:
            self._bad_reply(msg, r)
        return r

    def cancel(self, msg, handle):
        """Give up on a submit()ted message: flush it if it is still outstanding."""
        self._abandon(msg.tag, handle, msg)

    def post(self, msg, callback=None):
        """Send a T-message and do not wait; ``callback(reply_or_None)`` runs in the hub.

        Never blocks (safe from __del__ and hub callbacks); returns False when it could
        not send (connection dead, or all tags busy), else a handle for cancel()
        (which flushes the request; the callback then never runs)."""
        if self._dead is not None:
            return False
        free = self._free_tags
        tag = free.pop() if free else self._alloc_tag(block=False)
        if tag is None:
            return False
        msg.tag = tag
        try:
            frame = self._enc[msg.mtype](msg)
        except Exception:
            free.append(tag)
            return False
        h = self._waiters[tag] = _Callback(self, tag, callback)
        self._send(frame)
        self.requests += 1
        return h

    def _get_timeout(self, tag, w, msg, timeout):
        t = Timeout.start_new(timeout)
        try:
            return w.get()
        except Timeout as e:
            self._abandon(tag, w, msg)
            if e is not t:
                raise
            exc = nine_error(errno.ETIMEDOUT, "9P %s timed out after %gs" % (
                type(msg).__name__, timeout))
            exc.orphaned = True
            raise exc from None
        except BaseException:
            self._abandon(tag, w, msg)
            raise
        finally:
            t.cancel()

    def _abandon(self, tag, w, msg):
        """The caller stopped waiting for tag: flush it if it is still outstanding."""
        waiters = self._waiters
        if self._dead is not None or waiters.get(tag) is not w:
            return  # replied (value kept in w) or the connection died
        flush = msg.mtype not in _NOFLUSH
        o = _Orphan(self, tag, msg, flush)
        waiters[tag] = o
        if not flush:
            return
        ftag = self._alloc_tag(block=False)
        if ftag is None:
            o.flushing = False  # no tag for Tflush: just wait for the reply
            return
        waiters[ftag] = _FlushCall(self, ftag, o)
        self._send(self._enc[108](_Tflush(oldtag=tag, tag=ftag)))

    def _late_reply(self, msg, reply):
        """A request abandoned by its caller is over (reply None: flushed, never done)."""
        t = msg.mtype
        ok = reply is not None and reply.mtype == t + 1
        if t == 110:  # Twalk
            if msg.newfid == msg.fid:
                return
            if ok and len(reply.wqids) == len(msg.wnames):
                self._clunk_later(msg.newfid)
            else:
                self.free_fid(msg.newfid)
        elif t == 30:  # Txattrwalk
            if ok:
                self._clunk_later(msg.newfid)
            else:
                self.free_fid(msg.newfid)
        elif t in (104, 102):  # Tattach, Tauth
            f = msg.fid if t == 104 else msg.afid
            if ok:
                self._clunk_later(f)
            else:
                self.free_fid(f)
        elif t in _NOFLUSH:
            if reply is not None:
                self.free_fid(msg.fid)

    def _clunk_later(self, fid):
        def done(reply, fid=fid):
            if reply is not None:
                self.free_fid(fid)
        self.post(_Tclunk(fid=fid), done)

    def _bad_reply(self, msg, r):
        raise reply_error(msg, r, self.dialect)

    def _dead_error(self):
        eno, text = self._dead
        return nine_error(eno, text)

    # ------------------------------------------------------------------ writing

    def _send(self, frame):
        self._wq.append(frame)
        if not self._wsched:
            self._wsched = True
            self._loop.run_callback(self._flush)

    def _flush(self):
        # hub callback: send all queued frames at once
        self._wsched = False
        wq = self._wq
        if self._wblocked or not wq or self._dead is not None:
            return
        data = wq[0] if len(wq) == 1 else b"".join(wq)
        wq.clear()
        try:
            n = self._sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._die(self._send_errno(e), "send: %s" % (e.strerror or e))
            return
        self.bytes_out += n
        if n < len(data):
            self._wpend = memoryview(data)[n:]
            self._wblocked = True
            self._wwatch.start(self._on_writable)

    def _send_errno(self, e):
        if self.tls:    # (a TLS send that must wait returns 0: never "not now" here)
            return _tls_errno(e, errno.EPIPE) or errno.EPIPE
        return e.errno or errno.EPIPE

    def _on_writable(self):
        while True:
            data = self._wpend
            try:
                n = self._sock.send(data)
            except BlockingIOError:
                return
            except OSError as e:
                self._die(self._send_errno(e), "send: %s" % (e.strerror or e))
                return
            self.bytes_out += n
            if n < len(data):
                self._wpend = data[n:]
                return
            wq = self._wq
            if not wq:
                break
            self._wpend = memoryview(wq[0] if len(wq) == 1 else b"".join(wq))
            wq.clear()
        self._wpend = None
        self._wblocked = False
        self._wwatch.stop()

    # ------------------------------------------------------------------ reading

    def _on_readable_tls(self):
        # decrypted bytes can wait inside the TLS socket with nothing left on the fd
        self._on_readable()
        sock = self._sock
        while self._dead is None and sock.pending():
            self._on_readable()

    def _on_readable(self):
        # hub callback: receive, cut frames, hand replies to their waiters
        if self._dead is not None:
            return
        buf = self._rbuf
        end = self._rend
        try:
            n = self._sock.recv_into(self._rmv[end:])
        except BlockingIOError:
            return
        except OSError as e:
            eno = _tls_errno(e, errno.ECONNRESET) if self.tls else e.errno or errno.ECONNRESET
            if eno is not None:
                self._die(eno, "recv: %s" % (e.strerror or e))
            return
        if n == 0:
            self._die(errno.ECONNRESET, "connection closed by the server")
            return
        self.bytes_in += n
        end += n
        o = self._rstart
        mv = self._rmv
        waiters = self._waiters
        free_tags = self._free_tags
        dialect = self.dialect
        try:
            while end - o >= HEADER:
                size, typ, tag = _HDR.unpack_from(buf, o)
                if size > end - o:
                    if size > self.msize:
                        raise ProtocolError("reply of %d bytes exceeds msize %d" % (
                            size, self.msize))
                    break
                if size < HEADER:
                    raise ProtocolError("frame size %d" % size)
                w = waiters.pop(tag, None)
                if w is None:
                    o += size
                    continue  # unknown tag: ignore
                try:
                    if typ == _T_RREAD or typ == _T_RREADDIR:
                        if size < 11 or _U32.unpack_from(buf, o + 7)[0] != size - 11:
                            raise ProtocolError("bad Rread count")
                        r = _new(_Rread if typ == _T_RREAD else _Rreaddir)
                        r.tag = tag
                        r.data = bytes(mv[o + 11:o + size])
                    else:
                        frame = bytes(mv[o:o + size])
                        try:
                            r = codec.decode(frame, dialect)
                        except ProtocolError:
                            if tag != NOTAG:
                                raise
                            r = codec.decode(frame, V9P2000L)
                except ProtocolError as e:
                    o += size
                    if type(w) is Waiter:
                        free_tags.append(tag)
                        self._loop.run_callback(w.throw, NineProtocolError(
                            errno.EPROTO, "undecodable reply: %s" % e))
                    continue
                o += size
                if type(w) is Waiter:
                    if tag != NOTAG:
                        free_tags.append(tag)
                    w.switch(r)
                else:
                    w.switch(r)
                if self._dead is not None:
                    return
        except ProtocolError as e:
            self._die(errno.EPROTO, "protocol error from server: %s" % e)
            return
        except Exception as e:  # pragma: no cover - a bug here must not hang everyone
            self._die(errno.EPROTO, "client error while reading: %r" % (e,))
            return
        if o == end:
            self._rstart = self._rend = 0
            return
        # a partial frame is pending: make sure all of it fits, from the buffer's start
        need = _U32.unpack_from(buf, o)[0] if end - o >= 4 else HEADER
        need = max(need, HEADER)
        if len(buf) - o >= need and len(buf) - end >= 4096:
            self._rstart = o
            self._rend = end
            return
        rest = bytes(mv[o:end])
        if need > len(buf):
            self._rbuf = buf = bytearray(max(need, min(2 * len(buf), 2 * self.msize)))
            self._rmv = memoryview(buf)
        buf[:len(rest)] = rest
        self._rstart = 0
        self._rend = len(rest)

    # ------------------------------------------------------------------ death

    def _die(self, eno, text):
        if self._dead is not None:
            return
        self._dead = (eno, text)
        try:
            self._rwatch.stop()
            self._wwatch.stop()
            self._rwatch.close()
            self._wwatch.close()
        except Exception:
            pass
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._wq.clear()
        waiters = self._waiters
        self._waiters = {}
        run = self._loop.run_callback
        for w in waiters.values():
            run(w.throw, nine_error(eno, text))

    def close(self):
        """Close the connection; requests in flight fail with ECONNABORTED."""
        if self._dead is None:
            if self._wq and not self._wblocked and self._sock is not None:
                try:  # last queued frames (clunks) go out if they can
                    self._sock.send(b"".join(self._wq))
                except OSError:
                    pass
            self._die(errno.ECONNABORTED, "connection closed")


def _tls_errno(e, default):
    """What an OSError from a TLS socket means: None for "not now" (SSLWantReadError,
    SSLWantWriteError), else the errno to report (an ssl.SSLError carries OpenSSL's code,
    not the system's: default)."""
    import ssl
    if isinstance(e, (ssl.SSLWantReadError, ssl.SSLWantWriteError)):
        return None
    return default if isinstance(e, ssl.SSLError) else e.errno or default


def _plain(sock):
    """A plain (non-gevent) socket object for sock, taking over its descriptor."""
    if type(sock) is _socket.socket:
        return sock
    fam, typ, proto = sock.family, sock.type, sock.proto
    fd = sock.detach()
    return _socket.socket(fam, typ, proto, fileno=fd)
