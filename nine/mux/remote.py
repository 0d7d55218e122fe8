"""The node of a mux that lives on a child: RemoteNode forwards every operation of
the Node contract to its child over the child's link (nine.mux.child.Child), one fid
of its own on that connection (see nine.mux.child for the link, users and failures)."""


import errno
import struct

from ..client.errors import NineError, nine_error
from ..protocol import codec
from ..protocol.const import (GETATTR_ALL, IOHDRSZ, SETATTR_ATIME, SETATTR_ATIME_SET,
                              SETATTR_CTIME, SETATTR_GID, SETATTR_MODE, SETATTR_MTIME,
                              SETATTR_MTIME_SET, SETATTR_SIZE, SETATTR_UID)
from ..server.node import Attr, Dirent, Node, SetAttr, StatFS

__all__ = ["RemoteNode", "DEFAULT_MSIZE"]

DEFAULT_MSIZE = 1024 * 1024 + IOHDRSZ   # what the server core offers: reads fit in one hop
XATTR_REPLACE = 2

_Tread = codec.BY_NAME["Tread"]
_Twrite = codec.BY_NAME["Twrite"]
_Treaddir = codec.BY_NAME["Treaddir"]
_RREAD = codec.BY_NAME["Rread"].mtype
_RWRITE = codec.BY_NAME["Rwrite"].mtype
_Tgetattr = codec.BY_NAME["Tgetattr"]
_Tflush = codec.BY_NAME["Tflush"]
_DIRENT = struct.Struct("<BIQQBH")
_DIRENT_SIZE = _DIRENT.size


def _join(path, names):
    """path + names, with '..' going up (never above the root) and '.' staying."""
    out = list(path)
    for n in names:
        if n == "..":
            if out:
                out.pop()
        elif n != ".":
            out.append(n)
    return tuple(out)


def _data(r):
    return r.data


def _count(r):
    return r.count


def _bad(code, text):
    return OSError(code, text)


class _Placeholder(Node):
    """An intermediate or partial-walk result: only its qid and name (no child fid)."""
    __slots__ = ("qid", "name")
    may_block = False
    maps_qids = True            # its qid came through the child's QidMap

    def __init__(self, qid, name):
        self.qid = qid
        self.name = name


class RemoteNode(Node):
    """A node on a child: wraps one client Fid on the child's connection.

    A node made by Child.attach (the root) holds no fid of its own: it uses the cached
    root fid of its user on the child's current connection, so it survives reconnects;
    it takes a fid of its own (a clone) only when it is opened."""

    __slots__ = ("child", "ln", "fid", "qid", "name", "iounit", "opened", "user", "path",
                 "shared")
    may_block = True
    maps_qids = True            # every qid it hands out went through child.qidmap
    can_post = True             # post_read / post_write

    def __init__(self, child, link, fid, qid, name, user, path, shared=False):
        self.child = child
        self.ln = link            # the _Link its fid lives on (None for a shared root)
        self.fid = fid            # client Fid, or None (shared root / closed)
        self.qid = qid
        self.name = name
        self.iounit = 0
        self.opened = False
        self.user = user          # the child's user key (uname, n_uname) it was walked as
        self.path = path          # names from the attach root (used to find the parent)
        self.shared = shared      # an attach root without a fid of its own

    def __repr__(self):
        return "<RemoteNode %s:%s fid=%s qid=%r>" % (
            self.child.name, self.name, None if self.fid is None else self.fid.fid, self.qid)

    # --- where it lives ----------------------------------------------------------
    def origin(self):
        return (self.child, tuple(self.path))

    def locate(self, names):
        for n in names:
            if n in ("", ".", ".."):
                return None
        return (self.child, tuple(self.path) + tuple(names))

    # --- fids --------------------------------------------------------------------
    def _use(self):
        """(link, Fid) to send a request on: this node's own fid, or for a shared root
        the root fid of its user on the current connection."""
        f = self.fid
        if f is not None:
            ln = self.ln
            if ln.conn._dead is None:
                return ln, f
            raise self.child.lost(ln)
        if self.shared:
            child = self.child
            ln = child.link()
            return ln, child.root_fid(ln, self.user)
        raise _bad(errno.EBADF, "child %s: node %r has no fid (closed or a partial walk)"
                   % (self.child.name, self.name))

    def _clone_fid(self, ln, f):
        try:
            nf, _ = f.twalk([])
        except NineError as e:
            raise self.child.error(ln, e) from None
        return nf

    def _own(self):
        """(link, Fid) of this node's own fid, cloning the shared root if need be."""
        ln, f = self._use()
        if self.fid is None:
            f = self._clone_fid(ln, f)
            self.fid = f
            self.ln = ln
            self.shared = False
        return ln, f

    def _new(self, ln, fid, qid, name, path):
        return RemoteNode(self.child, ln, fid, qid, name, self.user, path)

    # --- name space -----------------------------------------------------------
    def walk(self, ctx, names):
        ln, f = self._use()
        child = self.child
        try:
            nf, wqids = f.twalk(names)
        except NineError as e:
            raise child.error(ln, e) from None
        mq = child.qidmap.map
        qk = child.qkey
        out = [_Placeholder(mq(qk, q), n) for q, n in zip(wqids, names)]
        if nf is not None:
            last = out[-1]
            out[-1] = self._new(ln, nf, last.qid, last.name, _join(self.path, names))
        return out

    def clone(self, ctx):
        if self.shared:
            return RemoteNode(self.child, None, None, self.qid, self.name, self.user, (),
                              shared=True)
        ln, f = self._use()
        return self._new(ln, self._clone_fid(ln, f), self.qid, self.name, self.path)

    # --- attributes --------------------------------------------------------------
    def getattr(self, ctx):
        ln, f = self._use()
        try:
            r = ln.conn.rpc(_Tgetattr(fid=f.fid, request_mask=GETATTR_ALL))
        except NineError as e:
            raise self.child.error(ln, e) from None
        q = self.child.map_qid(r.qid)
        return Attr(q, r.mode, r.uid, r.gid, r.nlink, r.rdev, r.size, r.blksize, r.blocks,
                    r.atime_sec * 1000000000 + r.atime_nsec,
                    r.mtime_sec * 1000000000 + r.mtime_nsec,
                    r.ctime_sec * 1000000000 + r.ctime_nsec,
                    r.btime_sec * 1000000000 + r.btime_nsec, r.gen, r.data_version)

    def setattr(self, ctx, sa):
        valid = 0
        kw = {}
        if sa.mode is not None:
            valid |= SETATTR_MODE
            kw["mode"] = sa.mode
        if sa.uid is not None:
            valid |= SETATTR_UID
            kw["uid"] = sa.uid
        if sa.gid is not None:
            valid |= SETATTR_GID
            kw["gid"] = sa.gid
        if sa.size is not None:
            valid |= SETATTR_SIZE
            kw["size"] = sa.size
        if sa.atime is not None:
            valid |= SETATTR_ATIME
            if sa.atime != SetAttr.NOW:
                valid |= SETATTR_ATIME_SET
                kw["atime_sec"], kw["atime_nsec"] = divmod(sa.atime, 1000000000)
        if sa.mtime is not None:
            valid |= SETATTR_MTIME
            if sa.mtime != SetAttr.NOW:
                valid |= SETATTR_MTIME_SET
                kw["mtime_sec"], kw["mtime_nsec"] = divmod(sa.mtime, 1000000000)
        if sa.ctime:
            valid |= SETATTR_CTIME
        ln, f = self._use()
        try:
            f.setattr(valid, **kw)
        except NineError as e:
            raise self.child.error(ln, e) from None

    def statfs(self, ctx):
        ln, f = self._use()
        try:
            r = f.statfs()
        except NineError as e:
            raise self.child.error(ln, e) from None
        return StatFS(r.type, r.bsize, r.blocks, r.bfree, r.bavail, r.files, r.ffree,
                      r.fsid, r.namelen)

    # --- I/O ------------------------------------------------------------------------
    def open(self, ctx, flags):
        ln, f = self._own()
        try:
            q, iounit = f.lopen(flags)
        except NineError as e:
            raise self.child.error(ln, e) from None
        self.qid = self.child.map_qid(q)
        self._set_iounit(ln, iounit)
        self.opened = True

    def _set_iounit(self, ln, iounit):
        m = ln.conn.msize - IOHDRSZ
        self.iounit = iounit if 0 < iounit <= m else m

    def _open_link(self):
        """(fid, link, connection) of this open node; EBADF if not open, the child's
        error if its connection is gone."""
        f = self.fid
        if f is None:
            raise _bad(errno.EBADF, "child %s: node not open" % self.child.name)
        ln = self.ln
        conn = ln.conn
        if conn._dead is not None:
            raise self.child.lost(ln)
        return f, ln, conn

    def read(self, ctx, offset, count):
        f, ln, conn = self._open_link()
        iou = self.iounit or conn.msize - IOHDRSZ
        if count > iou:
            count = iou       # one request: a short read, which 9P allows
        try:
            return conn.rpc(_Tread(fid=f.fid, offset=offset, count=count)).data
        except NineError as e:
            raise self.child.error(ln, e) from None

    def post_read(self, offset, count, done):
        """read() without a greenlet: sends the Tread and returns at once; done(data,
        None) or done(None, error) runs later in the hub (it must not block).  Returns
        a cancel() callable (the request is flushed; done never runs).  Raises at once
        (like read) when the node is not open or its connection is gone.  A group read
        of many members uses this: one greenlet waits for all of them."""
        f, ln, conn = self._open_link()
        iou = self.iounit or conn.msize - IOHDRSZ
        if count > iou:
            count = iou
        return self._post(ln, conn, _Tread(fid=f.fid, offset=offset, count=count),
                          _RREAD, _data, done)

    def post_write(self, offset, data, done):
        """write() of at most one message's worth without a greenlet (as post_read):
        done(count, None) or done(None, error) runs in the hub; a longer data is cut
        to the iounit (a short count, which the caller continues)."""
        f, ln, conn = self._open_link()
        iou = self.iounit or conn.msize - IOHDRSZ
        if len(data) > iou:
            data = data[:iou]
        return self._post(ln, conn, _Twrite(fid=f.fid, offset=offset, data=data),
                          _RWRITE, _count, done)

    def _post(self, ln, conn, msg, rtype, value, done):
        child = self.child
        timer = None

        def reply(r):
            if timer is not None:
                timer.close()
            if r is None:                      # the connection died, or a bad reply
                done(None, child.lost(ln) if conn._dead is not None else
                     nine_error(errno.EPROTO, "child %s: undecodable reply" % child.name))
            elif r.mtype == rtype:
                done(value(r), None)
            else:
                try:
                    conn._bad_reply(msg, r)          # raises the error it carries
                    raise nine_error(errno.EPROTO, "child %s: unexpected reply %s" % (
                        child.name, type(r).__name__))
                except NineError as e:
                    done(None, child.error(ln, e))

        h = conn.post(msg, reply)
        if not h:
            raise nine_error(errno.EAGAIN, "child %s: no free tag" % child.name)
        if conn.timeout is None:
            return lambda: conn.cancel(msg, h)
        # the child's op_timeout, as read() and write() have it (conn.rpc): no answer
        # by then and the request is flushed, done told ETIMEDOUT

        def expire():
            timer.close()
            conn.cancel(msg, h)
            done(None, child.error(ln, nine_error(errno.ETIMEDOUT, "9P %s timed out after "
                                                  "%gs" % (type(msg).__name__, conn.timeout))))

        def cancel():
            timer.close()
            conn.cancel(msg, h)
        timer = conn._loop.timer(conn.timeout)
        timer.start(expire)
        return cancel

    def write(self, ctx, offset, data):
        f, ln, conn = self._open_link()
        try:
            if len(data) > (self.iounit or conn.msize - IOHDRSZ):
                return f.pwrite(offset, data)
            return conn.rpc(_Twrite(fid=f.fid, offset=offset, data=data)).count
        except NineError as e:
            raise self.child.error(ln, e) from None

    def readdir(self, ctx, offset, count):
        f, ln, conn = self._open_link()
        iou = self.iounit or conn.msize - IOHDRSZ
        try:
            data = conn.rpc(_Treaddir(fid=f.fid, offset=offset,
                                      count=count if count < iou else iou)).data
        except NineError as e:
            raise self.child.error(ln, e) from None
        mq = self.child.qidmap.map
        qk = self.child.qkey
        out = []
        o, end = 0, len(data)
        unpack = _DIRENT.unpack_from
        while o + _DIRENT_SIZE <= end:
            qt, qv, qp, off, dt, n = unpack(data, o)
            o += _DIRENT_SIZE
            name = str(data[o:o + n], "utf-8", "surrogateescape")
            o += n
            out.append(Dirent(mq(qk, (qt, qv, qp)), off, dt, name))
        return out

    def fsync(self, ctx, datasync=0):
        ln, f = self._use()
        try:
            f.fsync(datasync)
        except NineError as e:
            raise self.child.error(ln, e) from None

    def close(self, ctx):
        f = self.fid
        if f is not None:
            self.fid = None
            self.opened = False
            if self.ln.conn._dead is None:
                f.clunk_nowait()

    # --- creation and removal ---------------------------------------------------------
    def create(self, ctx, name, flags, mode, gid):
        ln, f = self._use()
        shared = self.fid is None
        if shared:
            f = self._clone_fid(ln, f)
        else:
            self.fid = None     # Tlcreate turns this fid into the new file: the node moves
        try:
            q, iounit = f.lcreate(name, flags, mode, gid)
        except NineError as e:
            if shared:
                f.clunk_nowait()
            else:
                self.fid = f    # a failed Tlcreate leaves the fid as it was
            raise self.child.error(ln, e) from None
        except BaseException:
            f.clunk_nowait()    # flushed: what the fid points at is unknown
            raise
        node = self._new(ln, f, self.child.map_qid(q), name, self.path + (name,))
        node._set_iounit(ln, iounit)
        node.opened = True
        return node

    def mkdir(self, ctx, name, mode, gid):
        ln, f = self._use()
        try:
            return self.child.map_qid(f.mkdir(name, mode, gid))
        except NineError as e:
            raise self.child.error(ln, e) from None

    def symlink(self, ctx, name, target, gid):
        ln, f = self._use()
        try:
            return self.child.map_qid(f.symlink(name, target, gid))
        except NineError as e:
            raise self.child.error(ln, e) from None

    def mknod(self, ctx, name, mode, major, minor, gid):
        ln, f = self._use()
        try:
            return self.child.map_qid(f.mknod(name, mode, major, minor, gid))
        except NineError as e:
            raise self.child.error(ln, e) from None

    def _peer(self, other, what):
        """(link, Fid) of another node of this child for link/rename, or EXDEV."""
        if not isinstance(other, RemoteNode) or other.child is not self.child:
            raise _bad(errno.EXDEV, "%s across children: %s and %s" % (
                what, self.child.name, getattr(getattr(other, "child", None), "name",
                                                 type(other).__name__)))
        return other._use()

    def link(self, ctx, target, name):
        ln, f = self._use()
        tln, tf = self._peer(target, "link")
        if tln is not ln:
            raise self.child.lost(tln if tln.conn._dead is not None else ln)
        try:
            f.link(tf, name)
        except NineError as e:
            raise self.child.error(ln, e) from None

    def renameat(self, ctx, oldname, newdir, newname):
        ln, f = self._use()
        dln, df = self._peer(newdir, "rename")
        if dln is not ln:
            raise self.child.lost(dln if dln.conn._dead is not None else ln)
        try:
            f.renameat(oldname, df, newname)
        except NineError as e:
            raise self.child.error(ln, e) from None

    def rename(self, ctx, newdir, newname):
        ln, f = self._use()
        parent = None
        try:
            if newdir is None:
                # a wstat of the name: rename within the directory (9P2000/.u)
                parent = self._parent_fid(ln)
                df = parent
                newpath = self.path[:-1] + (newname,)
            else:
                dln, df = self._peer(newdir, "rename")
                if dln is not ln:
                    raise self.child.lost(dln if dln.conn._dead is not None else ln)
                newpath = newdir.path + (newname,)
            try:
                f.rename(df, newname)
            except NineError as e:
                raise self.child.error(ln, e) from None
        finally:
            if parent is not None:
                parent.clunk_nowait()
        self.name = newname
        self.path = newpath

    def _parent_fid(self, ln):
        """A fid for this node's directory: walked from the attach root along the path,
        and checked to still hold this node (same qid) under its name."""
        path = self.path
        if not path or self.shared:
            raise _bad(errno.EBUSY, "cannot rename the root of child %s" % self.child.name)
        try:
            root = self.child.root_fid(ln, self.user)
            parent = root.walk(list(path[:-1]))
        except NineError as e:
            raise self.child.error(ln, e) from None
        try:
            g, q = parent.twalk([path[-1]])
            if g is not None:
                g.clunk_nowait()
        except NineError as e:
            parent.clunk_nowait()
            raise self.child.error(ln, e) from None
        if g is None or self.child.map_qid(q[-1]).path != self.qid.path:
            parent.clunk_nowait()
            raise _bad(errno.ENOENT, "child %s: %s was moved: cannot rename it within its "
                       "directory" % (self.child.name, "/".join(path)))
        return parent

    def unlinkat(self, ctx, name, flags):
        ln, f = self._use()
        try:
            f.unlinkat(name, flags)
        except NineError as e:
            raise self.child.error(ln, e) from None

    def remove(self, ctx):
        ln, f = self._use()
        if self.fid is None:
            f = self._clone_fid(ln, f)   # Tremove consumes the fid: never the shared root's
        else:
            self.fid = None
            self.opened = False
        try:
            f.remove()
        except NineError as e:
            raise self.child.error(ln, e) from None

    def readlink(self, ctx):
        ln, f = self._use()
        try:
            return f.readlink()
        except NineError as e:
            raise self.child.error(ln, e) from None

    # --- locks ----------------------------------------------------------------------
    def lock(self, ctx, type, flags, start, length, proc_id, client_id):
        ln, f = self._use()
        try:
            return f.lock(type, start, length, proc_id, client_id, flags)
        except NineError as e:
            raise self.child.error(ln, e) from None

    def getlock(self, ctx, type, start, length, proc_id, client_id):
        ln, f = self._use()
        try:
            r = f.getlock(type, start, length, proc_id, client_id)
        except NineError as e:
            raise self.child.error(ln, e) from None
        return (r.type, r.start, r.length, r.proc_id, r.client_id)

    # --- xattrs ------------------------------------------------------------------------
    def _xattr_read(self, name):
        ln, f = self._use()
        x = None
        try:
            x, size = f.xattrwalk(name)
            return x.pread(0, size) if size else b""
        except NineError as e:
            raise self.child.error(ln, e) from None
        finally:
            if x is not None:
                x.clunk_nowait()

    def listxattr(self, ctx):
        data = self._xattr_read("")
        return [n.decode("utf-8", "surrogateescape") for n in data.split(b"\0") if n]

    def getxattr(self, ctx, name):
        return self._xattr_read(name)

    def _xattr_write(self, name, value, flags):
        ln, f = self._use()
        c = self._clone_fid(ln, f)
        try:
            c.xattrcreate(name, len(value), flags)
            if value:
                n = c.pwrite(0, value)
                if n != len(value):
                    raise _bad(errno.EIO, "short xattr write to child %s" % self.child.name)
            c.clunk()   # the child sets (or removes) the value when the fid is clunked
        except NineError as e:
            raise self.child.error(ln, e) from None
        finally:
            c.clunk_nowait()   # a no-op once clunked

    def setxattr(self, ctx, name, value, flags):
        self._xattr_write(name, bytes(value), flags)

    def removexattr(self, ctx, name):
        self._xattr_write(name, b"", XATTR_REPLACE)
