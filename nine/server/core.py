"""The 9P server core: one state machine for every backend and dialect.

lib9p-style: the core owns the connection, the dialect, msize, fids and tags, and
enforces the protocol's rules once; backends implement nine.server.node.Node.
Each request runs in its own greenlet, so a blocking read does not hold up the
connection; Tflush kills the greenlet of the request it names and answers Rflush
only after that request is gone (its reply, if it was already queued, goes first).
"""

import errno
import logging
import os
import stat as S
import struct

import gevent
from gevent import socket as gsocket
from gevent.lock import Semaphore

from .. import protocol as P
from ..protocol import (ProtocolError, Qid, Stat, V9P2000, V9P2000U, V9P2000L, NOFID, NOTAG,
                        MAXWELEM, IOHDRSZ)
from .node import Context, SetAttr, Dirent, error, dtype_of_mode
from .users import USERS

log = logging.getLogger("nine.server")

DEFAULT_MSIZE = 1024 * 1024 + IOHDRSZ  # the largest the kernel client asks for, 1 MiB
MIN_MSIZE = 256

_RREAD = struct.Struct("<IBHI")
_RLERROR = struct.Struct("<IBHI")
_RCLUNK = struct.Struct("<IBH")
_RWRITE = struct.Struct("<IBHI")
_U32 = struct.Struct("<I").unpack_from
_RGETATTR = struct.Struct("<IBHQBIQIIIQQQQQ" + "Q" * 10)
_VALID = P.GETATTR_BASIC | P.GETATTR_GEN | P.GETATTR_DATA_VERSION
_VALID_BTIME = _VALID | P.GETATTR_BTIME
RECVBUF = 64 * 1024     # frames over RECVBUF/4 get a buffer of their own
# requests on a fid whose node has may_block = False are answered inline, without a greenlet
_INLINE = frozenset(P.BY_NAME[n].mtype for n in (
    "Tread", "Twrite", "Tgetattr", "Tclunk", "Twalk", "Tlopen", "Topen", "Treaddir", "Tstat",
    "Tsetattr", "Treadlink", "Txattrwalk", "Tstatfs"))


class Fid:
    __slots__ = ("fid", "node", "ctx", "open", "omode", "rclose", "is_dir", "diroff",
                 "dircookie", "dirbuf", "xattr", "busy")

    def __init__(self, fid, node, ctx):
        self.fid = fid
        self.node = node
        self.ctx = ctx
        self.open = False
        self.omode = 0          # Linux O_ACCMODE of the open
        self.rclose = False     # ORCLOSE
        self.is_dir = bool(node.qid[0] & P.QTDIR)
        self.diroff = 0         # 9P2000 directory reads: the next legal offset
        self.dircookie = 0      # backend readdir cookie
        self.dirbuf = []        # stat entries read from the backend but not yet sent
        self.xattr = None       # XattrState for xattr fids


class XattrState:
    __slots__ = ("mode", "name", "data", "size", "flags")

    def __init__(self, mode, name, data=b"", size=0, flags=0):
        self.mode = mode        # "read" or "write"
        self.name = name
        self.data = data
        self.size = size
        self.flags = flags


class Export:
    """What an aname attaches to: a callable(ctx) -> root Node."""

    def __init__(self, attach, read_only=False):
        self.attach = attach
        self.read_only = read_only


class Server:
    """One 9P server.  exports: {aname: attach callable}; the entry None (if present)
    answers every aname not listed."""

    def __init__(self, exports, msize=DEFAULT_MSIZE, squash=None, name="nine"):
        self.exports = dict(exports)
        self.msize = msize
        self.squash = squash        # (uid, gid): every user acts as this one
        self.name = name
        self.conns = set()
        self._servers = []

    # --- attach ---------------------------------------------------------------
    def lookup_export(self, aname):
        a = self.exports.get(aname)
        if a is None:
            a = self.exports.get(None)
        if a is None:
            raise error(errno.ENOENT, "no such export: %r" % aname)
        return a

    def make_context(self, conn, uname, n_uname, aname):
        if self.squash is not None:
            uid, gid = self.squash
            groups = (gid,)
            name = USERS.uname(uid)
        else:
            uid, gid, groups, name = USERS.resolve(uname, n_uname)
        return Context(uname=name, uid=uid, gid=gid, groups=groups, aname=aname,
                       dialect=conn.dialect, conn=conn, server=self)

    # --- listening --------------------------------------------------------------
    def listen(self, addr):
        """Start serving on an address (HOST:PORT, tcp!HOST!PORT, unix!PATH) in the
        background; returns the gevent server (its .address has the real port)."""
        from gevent.server import StreamServer
        from ..addr import parse_addr
        family, target = parse_addr(addr)
        if family == "unix":
            try:
                os.unlink(target)
            except FileNotFoundError:
                pass
            sock = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
            sock.bind(target)
            sock.listen(1024)
            srv = StreamServer(sock, self.handle)
        else:
            srv = StreamServer(target, self.handle, backlog=1024)
        srv.start()
        self._servers.append(srv)
        return srv

    def serve_forever(self, addrs):
        for a in addrs:
            self.listen(a)
        gevent.wait()

    def stop(self):
        for s in self._servers:
            s.stop()
        for c in list(self.conns):
            c.close()

    def handle(self, sock, address=None):
        try:
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        except OSError:
            pass
        conn = self.connection_class(self, sock, address)
        self.conns.add(conn)
        try:
            conn.run()
        finally:
            self.conns.discard(conn)


class Request:
    __slots__ = ("tag", "msg", "greenlet", "flushed", "done")

    def __init__(self, tag, msg):
        self.tag = tag
        self.msg = msg
        self.greenlet = None
        self.flushed = False
        self.done = False


class Connection:
    def __init__(self, server, sock, address):
        self.server = server
        self.sock = sock
        self.address = address
        self.dialect = None
        self.msize = server.msize
        self.iounit = self.msize - IOHDRSZ
        self.fids = {}
        self.inflight = {}
        self.closed = False
        self._out = []
        self._writing = False
        self._wlock = Semaphore()
        self.framer = P.Framer(server.msize)
        # the hot path does its I/O on the gevent socket's own non-blocking socket and
        # waits for readability on one watcher of its own (gevent's recv_into/sendall
        # wrappers cost more than the syscalls for small 9P messages)
        raw = getattr(sock, "_sock", None)
        if raw is not None and getattr(sock, "timeout", 0) is None and \
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

    def close(self):
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

    def abort_all(self):
        reqs = list(self.inflight.values())
        self.inflight.clear()
        for r in reqs:
            r.flushed = True
            if r.greenlet is not None:
                r.greenlet.kill(block=False)
        fids = list(self.fids.values())
        self.fids.clear()
        for f in fids:
            self._close_fid(f)

    def dispatch(self, frame):
        size, typ, tag = P.peek_header(frame)
        dialect = self.dialect or V9P2000L
        try:
            msg = P.decode(frame, dialect)
        except ProtocolError as ex:
            # the frame is intact (the framer checked its size): answer only this request
            self.send_error(tag, errno.EPROTO if typ in P.TYPES else errno.EOPNOTSUPP, str(ex))
            return
        if typ == 100:  # Tversion: synchronous, resets everything
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
        if typ == 108:  # Tflush
            req = Request(tag, msg)
            self.inflight[tag] = req
            req.greenlet = gevent.spawn(self.h_Tflush, req)
            return
        if typ in _INLINE:
            f = self.fids.get(msg.fid)
            if f is not None and not f.node.may_block:
                # the node promises not to block: answer at once, without a greenlet
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
            log.exception("internal error in %s", type(msg).__name__)
            self.send_error(tag, errno.EIO, "internal server error: %s" % ex)
            return
        self._reply(tag, reply)

    def _run(self, req, handler):
        try:
            reply = handler(req.msg)
        except OSError as ex:
            if req.flushed:
                return
            self.inflight.pop(req.tag, None)
            self.send_error(req.tag, ex.errno or errno.EIO, ex.strerror or str(ex))
            return
        except ProtocolError as ex:
            if req.flushed:
                return
            self.inflight.pop(req.tag, None)
            self.send_error(req.tag, errno.EINVAL, str(ex))
            return
        except gevent.GreenletExit:
            return
        except Exception as ex:  # a backend bug must not take the server down
            log.exception("internal error in %s", type(req.msg).__name__)
            if req.flushed:
                return
            self.inflight.pop(req.tag, None)
            self.send_error(req.tag, errno.EIO, "internal server error: %s" % ex)
            return
        if req.flushed:
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
                    self._sendv(out)    # large payloads: no copy into one buffer
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
        d = self.dialect
        if d == V9P2000L or d is None:
            self.send_raw(_RLERROR.pack(11, 7, tag, code))
        else:
            msg = text or os.strerror(code)
            if d == V9P2000U:
                self.send_raw(P.encode(P.Rerror(ename=msg, errno=code, tag=tag), d))
            else:
                self.send_raw(P.encode(P.Rerror(ename=msg, tag=tag), d))

    # --- fid helpers ---------------------------------------------------------------
    def getfid(self, fid):
        f = self.fids.get(fid)
        if f is None:
            raise error(errno.EBADF, "unknown fid %d" % fid)
        return f

    def newfid_check(self, fid):
        if fid in self.fids:
            raise error(errno.EBADF, "fid %d already in use" % fid)
        if fid == NOFID:
            raise error(errno.EBADF, "NOFID cannot be used")

    def _close_fid(self, f):
        try:
            if f.xattr is not None and f.xattr.mode == "write":
                return
            if f.rclose:
                try:
                    f.node.remove(f.ctx)
                except OSError:
                    pass
            f.node.close(f.ctx)
        except Exception:
            log.exception("close of fid %d failed", f.fid)

    # --- version, auth, attach, flush -----------------------------------------
    def h_Tversion(self, m):
        # a new Tversion aborts all outstanding I/O and clunks every fid
        self.abort_all()
        v = m.version
        if v.startswith("9P2000.L"):
            dialect = V9P2000L
        elif v.startswith("9P2000.u"):
            dialect = V9P2000U
        elif v.startswith("9P2000"):
            dialect = V9P2000
        else:
            dialect = None
        msize = min(m.msize, self.server.msize)
        if dialect is None or msize < MIN_MSIZE:
            self.dialect = None
            self.send_raw(P.encode(P.Rversion(msize=msize, version="unknown", tag=m.tag),
                                   V9P2000))
            return
        self.dialect = dialect
        self.msize = msize
        self.iounit = msize - IOHDRSZ
        self.framer.msize = msize
        self.send_raw(P.encode(P.Rversion(msize=msize, version=dialect, tag=m.tag), dialect))

    def h_Tauth(self, m):
        # like diod without auth: ENOENT tells clients to attach with afid = NOFID
        raise error(errno.ENOENT, "authentication not required")

    def h_Tattach(self, m):
        self.newfid_check(m.fid)
        if m.afid != NOFID:
            raise error(errno.EBADF, "no authentication fid expected")
        export = self.server.lookup_export(m.aname)
        ctx = self.server.make_context(self, m.uname, m.n_uname, m.aname)
        node = export(ctx)
        if m.fid in self.fids:  # raced with another attach on the same fid
            node.close(ctx)
            raise error(errno.EBADF, "fid %d already in use" % m.fid)
        self.fids[m.fid] = Fid(m.fid, node, ctx)
        return P.Rattach(qid=node.qid)

    def h_Tflush(self, req):
        old = self.inflight.get(req.msg.oldtag)
        if old is not None and old is not req and not old.flushed:
            old.flushed = True
            self.inflight.pop(old.tag, None)
            if old.greenlet is not None:
                old.greenlet.kill(block=True)
        if self.inflight.get(req.tag) is req:
            del self.inflight[req.tag]
            self.send_raw(_RCLUNK.pack(7, 109, req.tag))

    # --- walk ----------------------------------------------------------------------
    def h_Twalk(self, m):
        f = self.getfid(m.fid)
        if f.open and (self.dialect != V9P2000L or m.newfid == m.fid):
            # 9P2000 forbids walking from an open fid; 9P2000.L peers (diod's clients
            # among them) clone open directory fids, which diod allows, so .L does too
            raise error(errno.EBUSY, "walk from an open fid")
        if m.newfid != m.fid:
            self.newfid_check(m.newfid)
        names = m.wnames
        if len(names) > MAXWELEM:
            raise error(errno.E2BIG, "more than %d names in a walk" % MAXWELEM)
        ctx = f.ctx
        if not names:
            node = f.node.clone(ctx)
            qids = []
        else:
            for n in names:
                if "/" in n or n == "" or "\0" in n:
                    raise error(errno.EINVAL, "invalid name in walk: %r" % n)
            nodes = f.node.walk(ctx, names)
            if not nodes:
                raise error(errno.ENOENT)
            qids = [n.qid for n in nodes]
            if len(nodes) < len(names):
                for n in nodes:
                    n.close(ctx)
                return P.Rwalk(wqids=qids)
            for n in nodes[:-1]:
                n.close(ctx)
            node = nodes[-1]
        if m.newfid == m.fid:
            if m.newfid not in self.fids:
                node.close(ctx)
                raise error(errno.EBADF, "fid %d clunked during walk" % m.fid)
            old = self.fids[m.fid]
            self.fids[m.fid] = Fid(m.fid, node, ctx)
            old.node.close(ctx)
        else:
            if m.newfid in self.fids:
                node.close(ctx)
                raise error(errno.EBADF, "fid %d already in use" % m.newfid)
            self.fids[m.newfid] = Fid(m.newfid, node, ctx)
        return P.Rwalk(wqids=qids)

    # --- open, create ------------------------------------------------------------
    def _open_common(self, f, lflags):
        if f.open:
            raise error(errno.EBUSY, "fid already open")
        if f.xattr is not None:
            raise error(errno.EINVAL, "xattr fid")
        f.node.open(f.ctx, lflags)
        f.open = True
        f.omode = lflags & P.L_O_ACCMODE
        f.is_dir = bool(f.node.qid[0] & P.QTDIR)
        return f.node.iounit or self.iounit

    def h_Tlopen(self, m):
        f = self.getfid(m.fid)
        iounit = self._open_common(f, m.flags & ~(P.L_O_CREAT | P.L_O_EXCL | P.L_O_NOCTTY))
        return P.Rlopen(qid=f.node.qid, iounit=iounit)

    def h_Topen(self, m):
        f = self.getfid(m.fid)
        flags = _omode_to_lflags(m.mode)
        if f.node.qid[0] & P.QTDIR and (flags & P.L_O_ACCMODE) != P.L_O_RDONLY:
            raise error(errno.EISDIR, "cannot open a directory for writing")
        iounit = self._open_common(f, flags)
        f.rclose = bool(m.mode & P.ORCLOSE)
        return P.Ropen(qid=f.node.qid, iounit=iounit)

    def _check_name(self, name):
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise error(errno.EINVAL, "invalid file name %r" % name)

    def _dir_fid(self, fid):
        f = self.getfid(fid)
        if f.open:
            raise error(errno.EBUSY, "fid is open")
        return f

    def h_Tlcreate(self, m):
        f = self._dir_fid(m.fid)
        self._check_name(m.name)
        node = f.node.create(f.ctx, m.name, m.flags & ~P.L_O_EXCL | P.L_O_CREAT, m.mode, m.gid)
        old = f.node
        f.node = node
        f.open = True
        f.omode = m.flags & P.L_O_ACCMODE
        f.is_dir = False
        if old is not node:
            old.close(f.ctx)
        return P.Rlcreate(qid=node.qid, iounit=node.iounit or self.iounit)

    def h_Tcreate(self, m):
        f = self._dir_fid(m.fid)
        self._check_name(m.name)
        ctx = f.ctx
        perm = m.perm
        dotu = self.dialect == V9P2000U
        if not f.node.qid[0] & P.QTDIR:
            raise error(errno.ENOTDIR)
        if perm & P.DMDIR:
            f.node.mkdir(ctx, m.name, perm & 0o777, ctx.gid if ctx.gid is not None else 0xFFFFFFFF)
            node = f.node.walk(ctx, [m.name])[0]
            lflags = _omode_to_lflags(m.mode & 3)
            node.open(ctx, lflags & ~P.L_O_TRUNC)
        elif dotu and perm & (P.DMSYMLINK | P.DMLINK | P.DMDEVICE | P.DMNAMEDPIPE | P.DMSOCKET):
            gid = ctx.gid if ctx.gid is not None else 0xFFFFFFFF
            if perm & P.DMSYMLINK:
                f.node.symlink(ctx, m.name, m.extension, gid)
            elif perm & P.DMLINK:
                try:
                    target = self.getfid(int(m.extension.strip()))
                except ValueError:
                    raise error(errno.EINVAL, "bad link extension %r" % m.extension) from None
                f.node.link(ctx, target.node, m.name)
            elif perm & P.DMDEVICE:
                parts = m.extension.split()
                if len(parts) != 3 or parts[0] not in ("b", "c"):
                    raise error(errno.EINVAL, "bad device extension %r" % m.extension)
                kind = S.S_IFBLK if parts[0] == "b" else S.S_IFCHR
                f.node.mknod(ctx, m.name, kind | (perm & 0o777), int(parts[1]), int(parts[2]), gid)
            elif perm & P.DMNAMEDPIPE:
                f.node.mknod(ctx, m.name, S.S_IFIFO | (perm & 0o777), 0, 0, gid)
            else:
                f.node.mknod(ctx, m.name, S.S_IFSOCK | (perm & 0o777), 0, 0, gid)
            node = f.node.walk(ctx, [m.name])[0]
            # special files are not opened for I/O; the fid still moves to them
            old = f.node
            f.node = node
            f.open = True
            f.omode = P.L_O_RDONLY
            f.is_dir = False
            old.close(ctx)
            return P.Rcreate(qid=node.qid, iounit=self.iounit)
        else:
            lflags = _omode_to_lflags(m.mode) | P.L_O_CREAT
            mode = perm & 0o777
            if dotu:
                mode |= _dm_to_suid(perm)
            node = f.node.create(ctx, m.name, lflags, mode,
                                 ctx.gid if ctx.gid is not None else 0xFFFFFFFF)
        old = f.node
        f.node = node
        f.open = True
        f.omode = _omode_to_lflags(m.mode) & P.L_O_ACCMODE
        f.rclose = bool(m.mode & P.ORCLOSE)
        f.is_dir = bool(node.qid[0] & P.QTDIR)
        if old is not node:
            old.close(ctx)
        return P.Rcreate(qid=node.qid, iounit=node.iounit or self.iounit)

    # --- read, write -----------------------------------------------------------------
    def h_Tread(self, m):
        f = self.fids.get(m.fid)
        if f is None:
            raise error(errno.EBADF, "unknown fid %d" % m.fid)
        count = m.count
        if count > self.iounit:
            count = self.iounit
        if f.xattr is not None:
            x = f.xattr
            if x.mode != "read":
                raise error(errno.EBADF, "xattr fid is for writing")
            data = x.data[m.offset:m.offset + count]
        else:
            if not f.open:
                raise error(errno.EBADF, "fid not open")
            if f.omode == P.L_O_WRONLY:
                raise error(errno.EBADF, "fid not open for reading")
            if f.is_dir:
                if self.dialect == V9P2000L:
                    raise error(errno.EISDIR)
                return self._read_dir_stats(f, m.offset, count, m.tag)
            data = f.node.read(f.ctx, m.offset, count)
            if len(data) > count:
                data = data[:count]
        n = len(data)
        hdr = _RREAD.pack(11 + n, 117, m.tag, n)
        return [hdr, data] if n > 256 else hdr + data

    def h_Twrite(self, m):
        f = self.fids.get(m.fid)
        if f is None:
            raise error(errno.EBADF, "unknown fid %d" % m.fid)
        if f.xattr is not None:
            x = f.xattr
            if x.mode != "write":
                raise error(errno.EBADF, "xattr fid is for reading")
            if m.offset != len(x.data):
                raise error(errno.EINVAL, "xattr writes must be sequential")
            if len(x.data) + len(m.data) > x.size:
                raise error(errno.E2BIG, "xattr value larger than announced")
            x.data += bytes(m.data)
            n = len(m.data)
        else:
            if not f.open:
                raise error(errno.EBADF, "fid not open")
            if f.omode == P.L_O_RDONLY:
                raise error(errno.EBADF, "fid not open for writing")
            if f.is_dir:
                raise error(errno.EISDIR)
            n = f.node.write(f.ctx, m.offset, m.data)
        return _RWRITE.pack(11, 119, m.tag, n)

    # --- clunk, remove -------------------------------------------------------------
    def h_Tclunk(self, m):
        f = self.fids.pop(m.fid, None)
        if f is None:
            raise error(errno.EBADF, "unknown fid %d" % m.fid)
        if f.xattr is not None and f.xattr.mode == "write":
            x = f.xattr
            try:
                if len(x.data) != x.size:
                    raise error(errno.EINVAL, "xattr value shorter than announced")
                if x.size == 0 and not x.flags & 1:
                    # removexattr arrives as an xattrcreate of size 0 (Linux sends it with
                    # XATTR_REPLACE); only XATTR_CREATE of an empty value sets one
                    f.node.removexattr(f.ctx, x.name)  # ENODATA when absent, as Linux
                else:
                    f.node.setxattr(f.ctx, x.name, x.data, x.flags)
            finally:
                f.node.close(f.ctx)
        else:
            self._close_fid(f)
        return _RCLUNK.pack(7, 121, m.tag)

    def h_Tremove(self, m):
        f = self.fids.pop(m.fid, None)
        if f is None:
            raise error(errno.EBADF, "unknown fid %d" % m.fid)
        try:
            f.node.remove(f.ctx)
        finally:
            f.rclose = False
            self._close_fid(f)
        return P.Rremove()

    # --- 9P2000.L metadata -----------------------------------------------------------
    def h_Tgetattr(self, m):
        f = self.fids.get(m.fid)
        if f is None:
            raise error(errno.EBADF, "unknown fid %d" % m.fid)
        a = f.node.getattr(f.ctx)
        q = a.qid
        # the hot path of stat storms: one struct call, no message object (same bytes as
        # encode(Rgetattr(...)); tests/test_server_protocol.py checks it)
        return _RGETATTR.pack(
            _RGETATTR.size, 25, m.tag,
            _VALID_BTIME if a.btime else _VALID,
            q[0], q[1], q[2], a.mode, a.uid, a.gid, a.nlink, a.rdev, a.size, a.blksize,
            a.blocks, a.atime // 1000000000, a.atime % 1000000000,
            a.mtime // 1000000000, a.mtime % 1000000000,
            a.ctime // 1000000000, a.ctime % 1000000000,
            a.btime // 1000000000, a.btime % 1000000000, a.gen, a.data_version)

    def h_Tsetattr(self, m):
        f = self.getfid(m.fid)
        v = m.valid
        sa = SetAttr()
        if v & P.SETATTR_MODE:
            sa.mode = m.mode & 0o7777
        if v & P.SETATTR_UID:
            sa.uid = m.uid
        if v & P.SETATTR_GID:
            sa.gid = m.gid
        if v & P.SETATTR_SIZE:
            sa.size = m.size
        if v & P.SETATTR_ATIME:
            sa.atime = (m.atime_sec * 1000000000 + m.atime_nsec) if v & P.SETATTR_ATIME_SET \
                else SetAttr.NOW
        if v & P.SETATTR_MTIME:
            sa.mtime = (m.mtime_sec * 1000000000 + m.mtime_nsec) if v & P.SETATTR_MTIME_SET \
                else SetAttr.NOW
        if v & P.SETATTR_CTIME:
            sa.ctime = True
        f.node.setattr(f.ctx, sa)
        return P.Rsetattr()

    def h_Tstatfs(self, m):
        f = self.getfid(m.fid)
        s = f.node.statfs(f.ctx)
        return P.Rstatfs(type=s.type, bsize=s.bsize, blocks=s.blocks, bfree=s.bfree,
                         bavail=s.bavail, files=s.files, ffree=s.ffree, fsid=s.fsid,
                         namelen=s.namelen)

    def h_Treaddir(self, m):
        f = self.getfid(m.fid)
        if not f.open:
            raise error(errno.EBADF, "fid not open")
        if not f.is_dir:
            raise error(errno.ENOTDIR)
        count = min(m.count, self.iounit)
        ents = f.node.readdir(f.ctx, m.offset, count)
        parts = []
        n = 0
        for e in ents:
            b = P.pack_dirent(e.qid, e.offset, e.type, e.name)
            if n + len(b) > count:
                break
            parts.append(b)
            n += len(b)
        if ents and not parts:
            raise error(errno.EINVAL, "readdir count too small for one entry")
        return [P.rreaddir_header(m.tag, n)] + parts

    def h_Tfsync(self, m):
        f = self.getfid(m.fid)
        f.node.fsync(f.ctx, m.datasync)
        return P.Rfsync()

    def h_Tlock(self, m):
        f = self.getfid(m.fid)
        if not f.open:
            raise error(errno.EBADF, "fid not open")
        st = f.node.lock(f.ctx, m.type, m.flags, m.start, m.length, m.proc_id, m.client_id)
        return P.Rlock(status=st)

    def h_Tgetlock(self, m):
        f = self.getfid(m.fid)
        if not f.open:
            raise error(errno.EBADF, "fid not open")
        t, start, length, pid, cid = f.node.getlock(f.ctx, m.type, m.start, m.length,
                                                    m.proc_id, m.client_id)
        return P.Rgetlock(type=t, start=start, length=length, proc_id=pid, client_id=cid)

    def h_Treadlink(self, m):
        f = self.getfid(m.fid)
        return P.Rreadlink(target=f.node.readlink(f.ctx))

    def h_Tsymlink(self, m):
        f = self._dir_fid(m.fid)
        self._check_name(m.name)
        return P.Rsymlink(qid=f.node.symlink(f.ctx, m.name, m.symtgt, m.gid))

    def h_Tmknod(self, m):
        f = self._dir_fid(m.dfid)
        self._check_name(m.name)
        return P.Rmknod(qid=f.node.mknod(f.ctx, m.name, m.mode, m.major, m.minor, m.gid))

    def h_Tmkdir(self, m):
        f = self._dir_fid(m.dfid)
        self._check_name(m.name)
        return P.Rmkdir(qid=f.node.mkdir(f.ctx, m.name, m.mode, m.gid))

    def h_Tlink(self, m):
        d = self._dir_fid(m.dfid)
        t = self.getfid(m.fid)
        self._check_name(m.name)
        d.node.link(d.ctx, t.node, m.name)
        return P.Rlink()

    def h_Trename(self, m):
        f = self.getfid(m.fid)
        d = self.getfid(m.dfid)
        self._check_name(m.name)
        f.node.rename(f.ctx, d.node, m.name)
        return P.Rrename()

    def h_Trenameat(self, m):
        od = self.getfid(m.olddirfid)
        nd = self.getfid(m.newdirfid)
        self._check_name(m.oldname)
        self._check_name(m.newname)
        od.node.renameat(od.ctx, m.oldname, nd.node, m.newname)
        return P.Rrenameat()

    def h_Tunlinkat(self, m):
        d = self.getfid(m.dirfid)
        self._check_name(m.name)
        d.node.unlinkat(d.ctx, m.name, m.flags)
        return P.Runlinkat()

    def h_Txattrwalk(self, m):
        f = self.getfid(m.fid)
        if m.newfid != m.fid:
            self.newfid_check(m.newfid)
        ctx = f.ctx
        if m.name == "":
            names = f.node.listxattr(ctx)
            data = b"".join(n.encode() + b"\0" for n in names)
        else:
            data = bytes(f.node.getxattr(ctx, m.name))
        node = f.node.clone(ctx)
        nf = Fid(m.newfid, node, ctx)
        nf.xattr = XattrState("read", m.name, data, len(data))
        if m.newfid == m.fid:
            old = self.fids.get(m.fid)
            if old is not None:
                old.node.close(ctx)
        self.fids[m.newfid] = nf
        return P.Rxattrwalk(size=len(data))

    def h_Txattrcreate(self, m):
        f = self.getfid(m.fid)
        if f.open:
            raise error(errno.EBUSY, "fid is open")
        if m.attr_size > 65536:
            raise error(errno.E2BIG, "xattr value too large")
        f.xattr = XattrState("write", m.name, b"", m.attr_size, m.flags)
        return P.Rxattrcreate()

    # --- 9P2000 and .u: stat, wstat, directory reads ---------------------------------
    def h_Tstat(self, m):
        f = self.getfid(m.fid)
        return P.Rstat(stat=self.make_stat(f.node, f.ctx))

    def make_stat(self, node, ctx, attr=None):
        a = attr or node.getattr(ctx)
        mode = a.mode
        dotu = self.dialect == V9P2000U
        dm = mode & 0o777
        ext = ""
        fmt = S.S_IFMT(mode)
        if fmt == S.S_IFDIR:
            dm |= P.DMDIR
        elif dotu:
            if fmt == S.S_IFLNK:
                dm |= P.DMSYMLINK
                try:
                    ext = node.readlink(ctx)
                except OSError:
                    ext = ""
            elif fmt in (S.S_IFCHR, S.S_IFBLK):
                dm |= P.DMDEVICE
                ext = "%s %d %d" % ("c" if fmt == S.S_IFCHR else "b", os.major(a.rdev),
                                    os.minor(a.rdev))
            elif fmt == S.S_IFIFO:
                dm |= P.DMNAMEDPIPE
            elif fmt == S.S_IFSOCK:
                dm |= P.DMSOCKET
            if mode & S.S_ISUID:
                dm |= P.DMSETUID
            if mode & S.S_ISGID:
                dm |= P.DMSETGID
            if mode & S.S_ISVTX:
                dm |= P.DMSETVTX
        if a.qid[0] & P.QTAPPEND:
            dm |= P.DMAPPEND
        if a.qid[0] & P.QTEXCL:
            dm |= P.DMEXCL
        if a.qid[0] & P.QTTMP:
            dm |= P.DMTMP
        st = Stat(type=0, dev=0, qid=a.qid, mode=dm, atime=(a.atime // 1000000000) & 0xFFFFFFFF,
                  mtime=(a.mtime // 1000000000) & 0xFFFFFFFF,
                  length=0 if fmt == S.S_IFDIR else a.size,
                  name=node.name, uid=USERS.uname(a.uid), gid=USERS.gname(a.gid), muid="")
        if dotu:
            st.extension = ext
            st.n_uid = a.uid
            st.n_gid = a.gid
            st.n_muid = 0xFFFFFFFF
        return st

    def _read_dir_stats(self, f, offset, count, tag):
        if offset == 0:
            f.diroff = 0
            f.dircookie = 0
            f.dirbuf = []
        elif offset != f.diroff:
            raise error(errno.EINVAL, "bad offset in directory read")
        out = []
        n = 0
        ctx = f.ctx
        while True:
            if not f.dirbuf:
                ents = f.node.readdir(ctx, f.dircookie, count)
                if not ents:
                    break
                for e in ents:
                    f.dircookie = e.offset
                    if e.name in (".", ".."):
                        continue
                    try:
                        child = f.node.walk(ctx, [e.name])
                        if not child:
                            continue
                        c = child[0]
                        try:
                            st = self.make_stat(c, ctx)
                        finally:
                            c.close(ctx)
                    except OSError:
                        continue  # removed meanwhile
                    f.dirbuf.append(P.pack_stat(st, self.dialect))
                if not f.dirbuf:
                    continue
            b = f.dirbuf[0]
            if n + len(b) > count:
                if not out:
                    raise error(errno.EINVAL, "read count too small for a directory entry")
                break
            out.append(b)
            n += len(b)
            f.dirbuf.pop(0)
        f.diroff = offset + n
        return [_RREAD.pack(11 + n, 117, tag, n)] + out

    def h_Twstat(self, m):
        f = self.getfid(m.fid)
        st = m.stat
        ctx = f.ctx
        dotu = self.dialect == V9P2000U
        sa = SetAttr()
        touched = False
        if st.mode != 0xFFFFFFFF:
            touched = True
            cur = f.node.getattr(ctx)
            if bool(st.mode & P.DMDIR) != S.S_ISDIR(cur.mode):
                raise error(errno.EINVAL, "wstat cannot change the directory bit")
            sa.mode = (st.mode & 0o777) | (_dm_to_suid(st.mode) if dotu else 0)
        if st.length != 0xFFFFFFFFFFFFFFFF:
            touched = True
            sa.size = st.length
        if st.mtime != 0xFFFFFFFF:
            touched = True
            sa.mtime = st.mtime * 1000000000
        if st.atime != 0xFFFFFFFF:
            touched = True
            sa.atime = st.atime * 1000000000
        if dotu and st.n_uid != 0xFFFFFFFF:
            touched = True
            sa.uid = st.n_uid
        elif st.uid:
            touched = True
            uid = USERS.uid_of(st.uid)
            if uid is None:
                raise error(errno.EINVAL, "unknown user %r" % st.uid)
            sa.uid = uid
        if dotu and st.n_gid != 0xFFFFFFFF:
            touched = True
            sa.gid = st.n_gid
        elif st.gid:
            touched = True
            gid = USERS.gid_of(st.gid)
            if gid is None:
                raise error(errno.EINVAL, "unknown group %r" % st.gid)
            sa.gid = gid
        if st.name:
            touched = True
        if not touched:
            f.node.fsync(ctx, 0)
            return P.Rwstat()
        if any(getattr(sa, k) is not None for k in ("mode", "uid", "gid", "size", "atime",
                                                      "mtime")):
            f.node.setattr(ctx, sa)
        if st.name and st.name != f.node.name:
            self._check_name(st.name)
            f.node.rename(ctx, None, st.name)  # wstat renames within the directory
        return P.Rwstat()


def _omode_to_lflags(mode):
    acc = mode & 3
    flags = {P.OREAD: P.L_O_RDONLY, P.OWRITE: P.L_O_WRONLY, P.ORDWR: P.L_O_RDWR,
             P.OEXEC: P.L_O_RDONLY}[acc]
    if mode & P.OTRUNC:
        flags |= P.L_O_TRUNC
    if mode & P.OAPPEND:
        flags |= P.L_O_APPEND
    return flags


def _dm_to_suid(perm):
    m = 0
    if perm & P.DMSETUID:
        m |= S.S_ISUID
    if perm & P.DMSETGID:
        m |= S.S_ISGID
    if perm & P.DMSETVTX:
        m |= S.S_ISVTX
    return m


#: the per-connection state machine a Server makes for each client (a subclass may
#: change how replies go out, as bench/group_bench.py's simulated link latency does)
Server.connection_class = Connection
