"""A blocking 9P client connection for one-shot programs (the `nine` verbs): a plain
socket, requests answered in the calling thread, nothing of gevent loaded (its import
and hub cost a short command more than all its 9P work).

BlockingConnection offers what nine.client.Fid, attach(), nine.client.auth and Client use
of a Connection, over the same codec: rpc(), submit()/wait()/cancel() (pipelined reads
and writes), post() (a clunk nobody waits for), fids, the negotiated dialect and msize.
Requests are queued and go out together when the caller next waits for a reply (or at
close), so a clunk_nowait() costs no system call of its own.  What it does not do:
callers in several greenlets or threads at once, and TLS (nine.auth.tls contexts are
gevent's: use Connection).  Its timeouts are those of the socket: a call that runs out
of time closes the connection (ETIMEDOUT), as there is no hub to take the late reply.
"""

import errno
import os
import socket
import struct
import time

from ..protocol import codec
from ..protocol.codec import ProtocolError
from ..protocol.const import DIALECTS, HEADER, IOHDRSZ, NOFID, NOTAG, V9P2000, V9P2000L
from .dial import DEFAULT_MSIZE, parse_addr
from .errors import NineError, NineProtocolError, nine_error, reply_error

__all__ = ["BlockingConnection"]

_U32 = struct.Struct("<I")
_Tversion = codec.BY_NAME["Tversion"]
_Tclunk = codec.BY_NAME["Tclunk"]
_MAXTAG = 0xFFFE
_WAITED = None          # the entry of a request whose caller takes the reply (rpc, submit)


class BlockingConnection:
    """``BlockingConnection(addr, msize=DEFAULT_MSIZE, version='9P2000.L')`` connects and
    negotiates (or takes ``sock=`` a connected socket); ``timeout`` is every call's
    default (None: wait for ever); ``strict_version`` as Connection's."""

    def __init__(self, addr=None, msize=DEFAULT_MSIZE, version=V9P2000L, *, sock=None,
                 timeout=None, connect_timeout=10.0, strict_version=True):
        if version not in DIALECTS:
            raise ValueError("unknown 9P version %r (want one of %s)" % (version, DIALECTS))
        if msize < 256:
            raise ValueError("msize %d too small" % msize)
        self.addr = addr
        self.dialect = self.version = version
        self.msize = msize
        self.timeout = timeout
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._enc = codec._ENCODERS[version]
        self._out = {}          # tag -> _WAITED, or fn(reply) run when the reply comes
        self._replies = {}      # tag -> a reply read while waiting for another
        self._free_tags = []
        self._next_tag = 0
        self._free_fids = []
        self._next_fid = 0
        self._wq = []           # frames not sent yet
        self._rbuf = bytearray()
        self._dead = None
        self._sock = self._connect(addr, connect_timeout) if sock is None else sock
        self._tmo = self._sock.gettimeout()     # (settimeout costs two system calls)
        if self._sock.family in (socket.AF_INET, socket.AF_INET6):
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._negotiate(msize, version, strict_version, connect_timeout)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _connect(addr, timeout):
        if addr is None:
            raise ValueError("need addr or sock")
        fam, sa = parse_addr(addr)
        try:
            if fam == socket.AF_UNIX:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(timeout)
                try:
                    s.connect(sa)
                except BaseException:
                    s.close()
                    raise
            else:
                s = socket.create_connection(sa, timeout=timeout)
        except socket.timeout:
            raise nine_error(errno.ETIMEDOUT, "connect to %s timed out" % addr) from None
        except OSError as e:
            raise nine_error(e.errno or errno.ECONNREFUSED,
                             "connect to %s: %s" % (addr, e.strerror or e)) from None
        return s

    def _negotiate(self, msize, version, strict, timeout):
        self._out[NOTAG] = _WAITED
        self._wq.append(codec.encode(_Tversion(msize=msize, version=version, tag=NOTAG),
                                     version))
        try:
            r = self._reply(NOTAG, timeout)
        except NineProtocolError as e:
            raise NineError(errno.EPROTONOSUPPORT, "server at %s refused %s: %s" % (
                self.addr, version, e.strerror)) from None
        except TimeoutError:
            raise nine_error(errno.ETIMEDOUT, "no answer to Tversion from %s" % (self.addr,)) \
                from None
        if r.mtype in (7, 107):     # Rlerror, Rerror
            text = os.strerror(r.ecode) if r.mtype == 7 else r.ename
            raise NineError(errno.EPROTONOSUPPORT, "server at %s refused version %s: %s" % (
                self.addr, version, text))
        if r.mtype != 101:
            raise NineProtocolError(errno.EPROTO, "answer to Tversion is %s" % type(r).__name__)
        if r.version != version:
            if strict or r.version not in DIALECTS or \
                    DIALECTS.index(r.version) >= DIALECTS.index(version):
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
        return self.msize - IOHDRSZ

    def __repr__(self):
        return "<BlockingConnection %s %s msize=%d%s>" % (
            self.addr, self.dialect, self.msize, " dead" if self._dead else "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ fids

    def alloc_fid(self):
        """A fid number not in use on this connection."""
        if self._free_fids:
            return self._free_fids.pop()
        n = self._next_fid
        if n >= NOFID:
            raise nine_error(errno.EMFILE, "out of fids")
        self._next_fid = n + 1
        return n

    def free_fid(self, fid):
        """Give back a fid number that the server no longer knows."""
        self._free_fids.append(fid)

    # ------------------------------------------------------------------ requests

    def _queue(self, msg, entry):
        """Give msg a tag and queue its frame; None when every tag is in use."""
        if self._dead is not None:
            raise self._dead_error()
        if self._free_tags:
            tag = self._free_tags.pop()
        elif self._next_tag <= _MAXTAG:
            tag = self._next_tag
            self._next_tag += 1
        else:
            return None
        msg.tag = tag
        try:
            frame = self._enc[msg.mtype](msg)
        except Exception:
            self._free_tags.append(tag)
            codec.encode(msg, self.dialect)  # raises the proper ProtocolError
            raise
        self._out[tag] = entry
        self._wq.append(frame)
        self.requests += 1
        return tag

    def rpc(self, msg, timeout=None):
        """Send a T-message and return its R-message (the server's error raised as a
        NineError; a timeout closes the connection: NineTimeout)."""
        return self.wait(msg, self.submit(msg), timeout)

    def submit(self, msg):
        """Queue a T-message; returns a handle for wait()/cancel()."""
        tag = self._queue(msg, _WAITED)
        if tag is None:
            raise nine_error(errno.EAGAIN, "all 9P tags are in use")
        return tag

    def wait(self, msg, handle, timeout=None):
        """The reply to a submit()ted message (same errors as rpc())."""
        r = self._reply(handle, self.timeout if timeout is None else timeout)
        if r.mtype != msg.mtype + 1:
            raise reply_error(msg, r, self.dialect)
        return r

    def cancel(self, msg, handle):
        """Give up on a submit()ted message: its reply, whenever it is read, is dropped
        (the fid a walk made is clunked)."""
        if handle in self._replies:
            self._free_tags.append(handle)
            self._late_reply(msg, self._replies.pop(handle))
        elif handle in self._out:
            self._out[handle] = lambda reply: self._late_reply(msg, reply)

    def post(self, msg, callback=None):
        """Queue a T-message nobody waits for: ``callback(reply)`` runs when its reply is
        read (while waiting for another).  False when it cannot be sent, else a handle."""
        if self._dead is not None:
            return False
        try:
            tag = self._queue(msg, callback or _ignore)
        except Exception:
            return False
        return False if tag is None else tag

    def _late_reply(self, msg, reply):
        """A request given up by its caller is answered: release what it made."""
        t = msg.mtype
        if t == 110 and msg.newfid == msg.fid:          # Twalk of a fid onto itself
            return
        if t in (110, 30, 104, 102):                    # Twalk, Txattrwalk, Tattach, Tauth
            fid = msg.fid if t == 104 else msg.afid if t == 102 else msg.newfid
            made = reply.mtype == t + 1 and (t != 110 or len(reply.wqids) == len(msg.wnames))
            if made:
                self.post(_Tclunk(fid=fid), lambda r: self.free_fid(fid))
            else:
                self.free_fid(fid)
        elif t in (120, 122):                           # Tclunk, Tremove
            self.free_fid(msg.fid)

    # ------------------------------------------------------------------ i/o

    def _flush(self):
        wq = self._wq
        if not wq:
            return
        data = wq[0] if len(wq) == 1 else b"".join(wq)
        wq.clear()
        try:
            self._sock.sendall(data)
        except socket.timeout:
            self._die(errno.ETIMEDOUT, "send timed out")
            raise self._dead_error() from None
        except OSError as e:
            self._die(e.errno or errno.EPIPE, "send: %s" % (e.strerror or e))
            raise self._dead_error() from None
        self.bytes_out += len(data)

    def _settimeout(self, timeout):
        if timeout != self._tmo:
            self._sock.settimeout(timeout)
            self._tmo = timeout

    def _reply(self, tag, timeout):
        """Read until the reply to tag is in; other replies are kept or handed to their
        callbacks on the way."""
        r = self._replies.pop(tag, None)
        if r is not None:
            self._free_tags.append(tag)
            return r
        if self._dead is not None:
            raise self._dead_error()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._settimeout(timeout)
        self._flush()
        while True:
            t, r = self._read_reply(deadline)
            if t not in self._out:
                continue                # not a tag of ours: ignored, as Connection does
            entry = self._out.pop(t)
            if t != NOTAG:
                if entry is _WAITED and t != tag:
                    self._replies[t] = r
                    continue
                self._free_tags.append(t)
            if t == tag:
                return r
            if entry is not _WAITED:
                try:
                    entry(r)
                except Exception:       # (as Connection's: a callback cannot break reads)
                    pass

    def _read_reply(self, deadline):
        """(tag, reply) of the next frame from the server."""
        buf = self._rbuf
        try:
            while True:
                n = len(buf)
                if n >= 4:
                    size = _U32.unpack_from(buf)[0]
                    if size < HEADER or size > self.msize:
                        raise ProtocolError("reply of %d bytes (msize %d)" % (size, self.msize))
                    if n >= size:
                        frame = bytes(buf[:size])
                        del buf[:size]
                        tag = frame[5] | frame[6] << 8
                        try:
                            return tag, codec.decode(frame, self.dialect)
                        except ProtocolError:
                            if tag != NOTAG:
                                raise
                            return tag, codec.decode(frame, V9P2000L)
                if deadline is not None:
                    self._settimeout(max(deadline - time.monotonic(), 1e-6))
                data = self._sock.recv(max(65536, (size if n >= 4 else 0) - n))
                if not data:
                    self._die(errno.ECONNRESET, "connection closed by the server")
                    break
                self.bytes_in += len(data)
                buf += data
        except socket.timeout:
            self._die(errno.ETIMEDOUT, "9P request timed out")
            e = self._dead_error()
            e.orphaned = True
            raise e from None
        except ProtocolError as e:
            self._die(errno.EPROTO, "protocol error from server: %s" % e)
        except OSError as e:
            self._die(e.errno or errno.ECONNRESET, "recv: %s" % (e.strerror or e))
        raise self._dead_error()

    # ------------------------------------------------------------------ death

    def _dead_error(self):
        eno, text = self._dead
        return nine_error(eno, text, NineProtocolError if eno == errno.EPROTO else None)

    def _die(self, eno, text):
        if self._dead is None:
            self._dead = (eno, text)
            self._sock.close()

    def close(self):
        """Close the connection; the frames still queued (clunks) go out first."""
        if self._dead is None:
            if self._wq:
                try:
                    self._settimeout(0)
                    self._sock.send(b"".join(self._wq))
                except OSError:
                    pass
            self._die(errno.ECONNABORTED, "connection closed")


def _ignore(reply):
    """The entry of a reply nobody wants (a post() without callback)."""
