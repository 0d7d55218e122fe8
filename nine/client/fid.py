"""Fids: the low-level, one-message-per-method layer, plus dialect-neutral stat/dirents.

A Fid wraps a fid number on a Connection.  Its methods send exactly one 9P request each
(except where noted) and return what the reply carries, raw qids included, so the
multiplexer can forward them.  Methods that exist only in one dialect raise
NineError(EOPNOTSUPP) on a connection of another dialect.
"""

import errno
import os
import stat as _stat

from ..protocol import codec
from ..protocol.const import (DMDEVICE, DMDIR, DMNAMEDPIPE, DMSETGID, DMSETUID, DMSETVTX,
                              DMSOCKET, DMSYMLINK, DT_BLK, DT_CHR, DT_DIR, DT_FIFO, DT_LNK,
                              DT_REG, DT_SOCK, DT_UNKNOWN, GETATTR_BASIC, IOHDRSZ, MAXWELEM,
                              NOFID, NONUNAME, QTDIR, QTSYMLINK, V9P2000)
from .errors import NineError, nine_error

_M = codec.BY_NAME
Twalk = _M["Twalk"]
Tclunk = _M["Tclunk"]
Tremove = _M["Tremove"]
Topen = _M["Topen"]
Tlopen = _M["Tlopen"]
Tcreate = _M["Tcreate"]
Tlcreate = _M["Tlcreate"]
Tread = _M["Tread"]
Twrite = _M["Twrite"]
Treaddir = _M["Treaddir"]
Tgetattr = _M["Tgetattr"]
Tsetattr = _M["Tsetattr"]
Tstat = _M["Tstat"]
Twstat = _M["Twstat"]
Tstatfs = _M["Tstatfs"]
Treadlink = _M["Treadlink"]
Tsymlink = _M["Tsymlink"]
Tmkdir = _M["Tmkdir"]
Tmknod = _M["Tmknod"]
Tlink = _M["Tlink"]
Trename = _M["Trename"]
Trenameat = _M["Trenameat"]
Tunlinkat = _M["Tunlinkat"]
Txattrwalk = _M["Txattrwalk"]
Txattrcreate = _M["Txattrcreate"]
Tfsync = _M["Tfsync"]
Tlock = _M["Tlock"]
Tgetlock = _M["Tgetlock"]
Tattach = _M["Tattach"]
Stat = codec.Stat
Qid = codec.Qid

__all__ = ["Fid", "StatResult", "DirEntry", "attach", "split_path", "dm_to_st_mode",
           "st_mode_to_dm", "qid_to_dtype"]


def split_path(path):
    """Path string (or list of names) -> list of names ('' and '.' dropped)."""
    if isinstance(path, (list, tuple)):
        return list(path)
    return [p for p in path.split("/") if p and p != "."]


def _need(conn, dotl, what):
    if conn.dotl != dotl:
        raise nine_error(errno.EOPNOTSUPP, "%s is not in %s" % (what, conn.dialect))


def _walk_error(names, base, qids):
    """ENOENT for a partial walk, ENOTDIR if it stopped under a non-directory."""
    where = "/".join(names[:base + len(qids) + 1])
    if qids and not qids[-1].type & QTDIR:
        return nine_error(errno.ENOTDIR, "%s: Not a directory" % where)
    return nine_error(errno.ENOENT, "%s: No such file or directory" % where)


def attach(conn, uname="", aname="", n_uname=NONUNAME, afid=NOFID, timeout=None, auth=None):
    """Tattach: a Fid for the root of aname.  With `auth` (a nine.auth ClientMethod) the
    attach is first proved on an auth fid of its own (nine.client.auth), which is
    clunked after the attach."""
    if auth is not None and afid == NOFID:
        from .auth import authenticate, release
        afid = authenticate(conn, auth, uname, aname, n_uname, timeout)
        try:
            return attach(conn, uname, aname, n_uname, afid, timeout)
        finally:
            release(conn, afid)
    fid = conn.alloc_fid()
    try:
        r = conn.rpc(Tattach(fid=fid, afid=afid, uname=uname, aname=aname, n_uname=n_uname),
                     timeout)
    except NineError as e:
        if not getattr(e, "orphaned", False):
            conn.free_fid(fid)
        raise
    return Fid(conn, fid, r.qid)


class Fid:
    """A fid on a connection.  ``qid`` is the qid of what it points at (None if unknown);
    ``iounit`` is set once opened."""

    __slots__ = ("conn", "fid", "qid", "iounit", "opened", "__weakref__")

    def __init__(self, conn, fid, qid=None):
        self.conn = conn
        self.fid = fid
        self.qid = qid
        self.iounit = 0
        self.opened = False

    def __repr__(self):
        return "<Fid %d qid=%r%s>" % (self.fid, self.qid, " open" if self.opened else "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # clunk without waiting: saves a round trip, the fid number comes back with Rclunk
        self.clunk_nowait()

    def _iou(self):
        iou = self.iounit
        m = self.conn.msize - IOHDRSZ
        return iou if 0 < iou <= m else m

    # ------------------------------------------------------------------ walking

    def twalk(self, names, newfid=None, timeout=None):
        """One Twalk (at most 16 names).  Returns (Fid or None, wqids): the Fid only when
        every name was walked (a partial walk leaves no new fid, as in the protocol)."""
        conn = self.conn
        if len(names) > MAXWELEM:
            raise ValueError("Twalk takes at most %d names" % MAXWELEM)
        nf = conn.alloc_fid() if newfid is None else newfid
        try:
            r = conn.rpc(Twalk(fid=self.fid, newfid=nf, wnames=names), timeout)
        except NineError as e:
            if newfid is None and not getattr(e, "orphaned", False):
                conn.free_fid(nf)
            raise
        q = r.wqids
        if len(q) != len(names):
            if newfid is None:
                conn.free_fid(nf)
            return None, q
        return Fid(conn, nf, q[-1] if q else self.qid), q

    def walk(self, path=(), timeout=None):
        """A new Fid for path (a 'a/b/c' string or a list of names), relative to this one.

        Splits into Twalks of at most 16 names; a missing name raises ENOENT."""
        names = split_path(path)
        first = names[:MAXWELEM]
        f, q = self.twalk(first, timeout=timeout)
        if f is None:
            raise self._partial_walk_error(names, 0, first, q, timeout)
        i = MAXWELEM
        while i < len(names):
            chunk = names[i:i + MAXWELEM]
            try:
                g, q = f.twalk(chunk, newfid=f.fid, timeout=timeout)
            except BaseException:
                f.clunk_nowait()
                raise
            if g is None:
                err = f._partial_walk_error(names, i, chunk, q, timeout)
                f.clunk_nowait()
                raise err
            f.qid = g.qid
            i += MAXWELEM
        return f

    def _partial_walk_error(self, names, base, chunk, qids, timeout):
        """The error of a partial walk.  A partial Rwalk carries no errno, so when the walk
        stopped after its first name, the failing name is walked again alone to learn the
        real reason (EHOSTDOWN from a mux whose child is down, EACCES, ...); ENOENT or
        ENOTDIR when that tells nothing more."""
        default = _walk_error(names, base, qids)
        k = len(qids)
        if k == 0 or k >= len(chunk) or not qids[-1].type & QTDIR:
            return default
        try:
            g, q = self.twalk(chunk[:k], timeout=timeout)
        except NineError:
            return default
        if g is None:
            return default
        try:
            h, _ = g.twalk(chunk[k:k + 1], timeout=timeout)
            if h is not None:
                h.clunk_nowait()
            return default
        except NineError as e:
            if e.errno in (errno.ENOENT, None):
                return default
            return nine_error(e.errno, "/".join(names[:base + k + 1]) + ": " +
                              (e.strerror or os.strerror(e.errno)))
        finally:
            g.clunk_nowait()

    def clone(self, timeout=None):
        """A new Fid for the same file (Twalk with no names)."""
        f, _ = self.twalk([], timeout=timeout)
        return f

    # ------------------------------------------------------------------ clunk/remove

    def clunk(self, timeout=None):
        """Tclunk; the fid number is released whatever the answer.  A no-op on a fid
        already clunked or a closed connection."""
        fid = self.fid
        if fid is None:
            return
        self.fid = None
        conn = self.conn
        try:
            conn.rpc(Tclunk(fid=fid), timeout)
        except NineError as e:
            if getattr(e, "orphaned", False):
                return  # the connection frees the fid when the reply comes
            conn.free_fid(fid)
            if conn.closed:
                return
            raise
        conn.free_fid(fid)

    def clunk_nowait(self):
        """Send Tclunk without waiting (never blocks; usable in __del__)."""
        fid = self.fid
        if fid is None:
            return
        self.fid = None
        conn = self.conn

        def done(reply):
            if reply is not None:
                conn.free_fid(fid)
        conn.post(Tclunk(fid=fid), done)

    def remove(self, timeout=None):
        """Tremove: remove the file; the fid is clunked whatever the answer."""
        fid = self.fid
        if fid is None:
            raise nine_error(errno.EBADF, "fid already clunked")
        self.fid = None
        conn = self.conn
        try:
            conn.rpc(Tremove(fid=fid), timeout)
        except NineError as e:
            if not getattr(e, "orphaned", False):
                conn.free_fid(fid)
            raise
        conn.free_fid(fid)

    # ------------------------------------------------------------------ open/create

    def open(self, mode, timeout=None):
        """Topen (9P2000/.u): mode is OREAD/OWRITE/ORDWR/OEXEC | OTRUNC | ORCLOSE.
        Returns (qid, iounit)."""
        _need(self.conn, False, "Topen")
        r = self.conn.rpc(Topen(fid=self.fid, mode=mode), timeout)
        self.qid, self.iounit, self.opened = r.qid, r.iounit, True
        return r.qid, r.iounit

    def lopen(self, flags, timeout=None):
        """Tlopen (9P2000.L): flags are Linux open flags.  Returns (qid, iounit)."""
        _need(self.conn, True, "Tlopen")
        r = self.conn.rpc(Tlopen(fid=self.fid, flags=flags), timeout)
        self.qid, self.iounit, self.opened = r.qid, r.iounit, True
        return r.qid, r.iounit

    def create(self, name, perm, mode, extension="", timeout=None):
        """Tcreate (9P2000/.u): this fid becomes the new, opened file.  (qid, iounit)."""
        _need(self.conn, False, "Tcreate")
        r = self.conn.rpc(Tcreate(fid=self.fid, name=name, perm=perm, mode=mode,
                                  extension=extension), timeout)
        self.qid, self.iounit, self.opened = r.qid, r.iounit, True
        return r.qid, r.iounit

    def lcreate(self, name, flags, mode, gid=NONUNAME, timeout=None):
        """Tlcreate (9P2000.L): this fid becomes the new, opened file.  (qid, iounit)."""
        _need(self.conn, True, "Tlcreate")
        r = self.conn.rpc(Tlcreate(fid=self.fid, name=name, flags=flags, mode=mode, gid=gid),
                          timeout)
        self.qid, self.iounit, self.opened = r.qid, r.iounit, True
        return r.qid, r.iounit

    # ------------------------------------------------------------------ I/O

    def read(self, offset, count, timeout=None):
        """One Tread: at most count bytes at offset."""
        return self.conn.rpc(Tread(fid=self.fid, offset=offset, count=count), timeout).data

    def write(self, offset, data, timeout=None):
        """One Twrite; returns the count written."""
        return self.conn.rpc(Twrite(fid=self.fid, offset=offset, data=data), timeout).count

    def pread(self, offset, size, depth=8, timeout=None):
        """Read up to size bytes at offset with up to ``depth`` iounit-sized Treads in
        flight.  Returns fewer bytes only at end of file (a short read)."""
        iou = self._iou()
        if size <= iou:
            return self.read(offset, size, timeout)
        conn = self.conn
        fid = self.fid
        pending = []  # (msg, handle, want)
        out = []
        nxt = offset
        stop = offset + size
        try:
            while True:
                while len(pending) < depth and nxt < stop:
                    n = min(iou, stop - nxt)
                    m = Tread(fid=fid, offset=nxt, count=n)
                    pending.append((m, conn.submit(m), n))
                    nxt += n
                if not pending:
                    break
                m, h, n = pending.pop(0)
                d = conn.wait(m, h, timeout).data
                out.append(d)
                if len(d) < n:
                    break
        except BaseException:
            for m, h, n in pending:
                conn.cancel(m, h)
            raise
        for m, h, n in pending:
            conn.cancel(m, h)
        return out[0] if len(out) == 1 else b"".join(out)

    def pwrite(self, offset, data, depth=8, timeout=None):
        """Write all of data at offset with up to ``depth`` Twrites in flight.  Returns the
        count written (less than len(data) only if the server wrote short)."""
        iou = self._iou()
        n = len(data)
        if n <= iou:
            return self.write(offset, data, timeout)
        conn = self.conn
        fid = self.fid
        mv = memoryview(data)
        pending = []
        pos = 0
        done = 0
        try:
            while True:
                while len(pending) < depth and pos < n:
                    chunk = bytes(mv[pos:pos + iou])
                    m = Twrite(fid=fid, offset=offset + pos, data=chunk)
                    pending.append((m, conn.submit(m), len(chunk)))
                    pos += len(chunk)
                if not pending:
                    break
                m, h, k = pending.pop(0)
                c = conn.wait(m, h, timeout).count
                done += c
                if c < k:
                    break
        except BaseException:
            for m, h, k in pending:
                conn.cancel(m, h)
            raise
        for m, h, k in pending:
            try:
                conn.wait(m, h, timeout)
            except NineError:
                pass
        return done

    def read_all(self, offset=0, depth=8, timeout=None):
        """Everything from offset to end of file (a zero-length read)."""
        iou = self._iou()
        out = []
        d = 1
        while True:
            data = self.pread(offset, iou * d, depth=d, timeout=timeout)
            if not data:
                break
            out.append(data)
            offset += len(data)
            if len(data) < iou * d:
                d = 1
            elif d < depth:
                d *= 2
        return b"".join(out)

    # ------------------------------------------------------------------ directories

    def readdir(self, offset=0, count=None, timeout=None):
        """One Treaddir (9P2000.L): list of (qid, offset, dtype, name)."""
        _need(self.conn, True, "Treaddir")
        if count is None:
            count = self.conn.msize - IOHDRSZ
        r = self.conn.rpc(Treaddir(fid=self.fid, offset=offset, count=count), timeout)
        return codec.unpack_dirents(r.data)

    def entries(self, timeout=None):
        """All entries of this opened directory, as DirEntry objects (any dialect;
        9P2000/.u entries carry their StatResult in .stat)."""
        conn = self.conn
        out = []
        if conn.dotl:
            off = 0
            while True:
                ents = self.readdir(off, timeout=timeout)
                if not ents:
                    break
                for q, o, t, name in ents:
                    out.append(DirEntry(name, q, t, o))
                off = ents[-1][1]
        else:
            off = 0
            count = self._iou()
            dialect = conn.dialect
            while True:
                data = self.read(off, count, timeout)
                if not data:
                    break
                off += len(data)
                for st in codec.unpack_stats(data, dialect):
                    s = StatResult.from_stat(st, dialect)
                    out.append(DirEntry(st.name, st.qid, qid_to_dtype(st.qid, s.st_mode), off, s))
        return out

    # ------------------------------------------------------------------ attributes

    def getattr(self, mask=GETATTR_BASIC, timeout=None):
        """Tgetattr (9P2000.L): the Rgetattr message."""
        _need(self.conn, True, "Tgetattr")
        return self.conn.rpc(Tgetattr(fid=self.fid, request_mask=mask), timeout)

    def setattr(self, valid, mode=0, uid=0, gid=0, size=0, atime_sec=0, atime_nsec=0,
                mtime_sec=0, mtime_nsec=0, timeout=None):
        """Tsetattr (9P2000.L); valid is a SETATTR_* mask."""
        _need(self.conn, True, "Tsetattr")
        self.conn.rpc(Tsetattr(fid=self.fid, valid=valid, mode=mode, uid=uid, gid=gid,
                               size=size, atime_sec=atime_sec, atime_nsec=atime_nsec,
                               mtime_sec=mtime_sec, mtime_nsec=mtime_nsec), timeout)

    def stat(self, timeout=None):
        """Tstat (9P2000/.u): the Stat structure."""
        _need(self.conn, False, "Tstat")
        return self.conn.rpc(Tstat(fid=self.fid), timeout).stat

    def wstat(self, st, timeout=None):
        """Twstat (9P2000/.u).  Start from Stat.dont_touch() and set what changes."""
        _need(self.conn, False, "Twstat")
        self.conn.rpc(Twstat(fid=self.fid, stat=st), timeout)

    def fstat(self, timeout=None):
        """Dialect-neutral stat of this fid (Tgetattr or Tstat): a StatResult."""
        conn = self.conn
        if conn.dotl:
            return StatResult.from_getattr(self.getattr(GETATTR_BASIC, timeout))
        return StatResult.from_stat(self.stat(timeout), conn.dialect)

    def statfs(self, timeout=None):
        """Tstatfs (9P2000.L): the Rstatfs message."""
        _need(self.conn, True, "Tstatfs")
        return self.conn.rpc(Tstatfs(fid=self.fid), timeout)

    def fsync(self, datasync=0, timeout=None):
        _need(self.conn, True, "Tfsync")
        self.conn.rpc(Tfsync(fid=self.fid, datasync=datasync), timeout)

    # ------------------------------------------------------------------ 9P2000.L names

    def readlink(self, timeout=None):
        _need(self.conn, True, "Treadlink")
        return self.conn.rpc(Treadlink(fid=self.fid), timeout).target

    def symlink(self, name, target, gid=NONUNAME, timeout=None):
        """Tsymlink in this directory; returns the qid."""
        _need(self.conn, True, "Tsymlink")
        return self.conn.rpc(Tsymlink(fid=self.fid, name=name, symtgt=target, gid=gid),
                             timeout).qid

    def mkdir(self, name, mode=0o755, gid=NONUNAME, timeout=None):
        """Tmkdir in this directory; returns the qid."""
        _need(self.conn, True, "Tmkdir")
        return self.conn.rpc(Tmkdir(dfid=self.fid, name=name, mode=mode, gid=gid), timeout).qid

    def mknod(self, name, mode, major=0, minor=0, gid=NONUNAME, timeout=None):
        _need(self.conn, True, "Tmknod")
        return self.conn.rpc(Tmknod(dfid=self.fid, name=name, mode=mode, major=major,
                                    minor=minor, gid=gid), timeout).qid

    def link(self, target, name, timeout=None):
        """Tlink: a hard link called name in this directory to the file of Fid target."""
        _need(self.conn, True, "Tlink")
        self.conn.rpc(Tlink(dfid=self.fid, fid=target.fid, name=name), timeout)

    def rename(self, newdir, name, timeout=None):
        """Trename: move this file into directory Fid newdir as name."""
        _need(self.conn, True, "Trename")
        self.conn.rpc(Trename(fid=self.fid, dfid=newdir.fid, name=name), timeout)

    def renameat(self, oldname, newdir, newname, timeout=None):
        """Trenameat: this fid is the old directory."""
        _need(self.conn, True, "Trenameat")
        self.conn.rpc(Trenameat(olddirfid=self.fid, oldname=oldname, newdirfid=newdir.fid,
                                newname=newname), timeout)

    def unlinkat(self, name, flags=0, timeout=None):
        """Tunlinkat in this directory (flags AT_REMOVEDIR for a directory)."""
        _need(self.conn, True, "Tunlinkat")
        self.conn.rpc(Tunlinkat(dirfid=self.fid, name=name, flags=flags), timeout)

    def xattrwalk(self, name="", timeout=None):
        """Txattrwalk: (Fid to read the value from, size).  name '' lists names."""
        _need(self.conn, True, "Txattrwalk")
        conn = self.conn
        nf = conn.alloc_fid()
        try:
            r = conn.rpc(Txattrwalk(fid=self.fid, newfid=nf, name=name), timeout)
        except NineError as e:
            if not getattr(e, "orphaned", False):
                conn.free_fid(nf)
            raise
        f = Fid(conn, nf, None)
        f.opened = True
        return f, r.size

    def xattrcreate(self, name, size, flags=0, timeout=None):
        """Txattrcreate: this fid then takes the value by Twrite; set on Tclunk."""
        _need(self.conn, True, "Txattrcreate")
        self.conn.rpc(Txattrcreate(fid=self.fid, name=name, attr_size=size, flags=flags),
                      timeout)
        self.opened = True

    def lock(self, type, start=0, length=0, proc_id=0, client_id="", flags=0, timeout=None):
        """Tlock: the status (LOCK_SUCCESS, LOCK_BLOCKED ...)."""
        _need(self.conn, True, "Tlock")
        return self.conn.rpc(Tlock(fid=self.fid, type=type, flags=flags, start=start,
                                   length=length, proc_id=proc_id, client_id=client_id),
                             timeout).status

    def getlock(self, type, start=0, length=0, proc_id=0, client_id="", timeout=None):
        _need(self.conn, True, "Tgetlock")
        return self.conn.rpc(Tgetlock(fid=self.fid, type=type, start=start, length=length,
                                      proc_id=proc_id, client_id=client_id), timeout)


# ---------------------------------------------------------------------------
# dialect-neutral results

def dm_to_st_mode(dm, extension=""):
    """9P2000(.u) stat.mode (DM* bits + permissions) -> st_mode."""
    m = dm & 0o777
    if dm & DMDIR:
        m |= _stat.S_IFDIR
    elif dm & DMSYMLINK:
        m |= _stat.S_IFLNK
    elif dm & DMDEVICE:
        m |= _stat.S_IFBLK if extension[:1] == "b" else _stat.S_IFCHR
    elif dm & DMNAMEDPIPE:
        m |= _stat.S_IFIFO
    elif dm & DMSOCKET:
        m |= _stat.S_IFSOCK
    else:
        m |= _stat.S_IFREG
    if dm & DMSETUID:
        m |= _stat.S_ISUID
    if dm & DMSETGID:
        m |= _stat.S_ISGID
    if dm & DMSETVTX:
        m |= _stat.S_ISVTX
    return m


def st_mode_to_dm(mode, dotu=True):
    """st_mode (or bare permissions) -> 9P2000(.u) DM* mode."""
    dm = mode & 0o777
    fmt = _stat.S_IFMT(mode)
    if fmt == _stat.S_IFDIR:
        dm |= DMDIR
    elif dotu:
        if fmt == _stat.S_IFLNK:
            dm |= DMSYMLINK
        elif fmt in (_stat.S_IFCHR, _stat.S_IFBLK):
            dm |= DMDEVICE
        elif fmt == _stat.S_IFIFO:
            dm |= DMNAMEDPIPE
        elif fmt == _stat.S_IFSOCK:
            dm |= DMSOCKET
    if dotu:
        if mode & _stat.S_ISUID:
            dm |= DMSETUID
        if mode & _stat.S_ISGID:
            dm |= DMSETGID
        if mode & _stat.S_ISVTX:
            dm |= DMSETVTX
    return dm


_FMT_DT = {_stat.S_IFDIR: DT_DIR, _stat.S_IFREG: DT_REG, _stat.S_IFLNK: DT_LNK,
           _stat.S_IFCHR: DT_CHR, _stat.S_IFBLK: DT_BLK, _stat.S_IFIFO: DT_FIFO,
           _stat.S_IFSOCK: DT_SOCK}


def qid_to_dtype(qid, st_mode=None):
    if st_mode is not None:
        return _FMT_DT.get(_stat.S_IFMT(st_mode), DT_UNKNOWN)
    if qid.type & QTDIR:
        return DT_DIR
    if qid.type & QTSYMLINK:
        return DT_LNK
    return DT_REG


class StatResult:
    """Dialect-neutral file attributes (names follow os.stat_result).

    name: the file name (9P2000/.u; None from Tgetattr); qid; st_mode (S_IF* | perms);
    st_ino (qid.path); st_size; st_nlink (None in 9P2000/.u); st_uid/st_gid (numbers, None
    when unknown); uid/gid/muid (names, 9P2000/.u); st_atime/st_mtime/st_ctime (float
    seconds) and *_ns; st_rdev, st_blocks, st_blksize (.L); extension (.u); raw (the
    Rgetattr or Stat it came from).
    """

    __slots__ = ("name", "qid", "st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid",
                 "st_size", "st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns",
                 "st_ctime_ns", "st_rdev", "st_blocks", "st_blksize", "uid", "gid", "muid",
                 "extension", "raw")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    @classmethod
    def from_getattr(cls, r, name=None):
        s = _new(cls)
        s.name = name
        s.qid = r.qid
        s.st_mode = r.mode
        s.st_ino = r.qid.path
        s.st_dev = 0
        s.st_nlink = r.nlink
        s.st_uid = r.uid
        s.st_gid = r.gid
        s.st_size = r.size
        s.st_atime_ns = r.atime_sec * 1000000000 + r.atime_nsec
        s.st_mtime_ns = r.mtime_sec * 1000000000 + r.mtime_nsec
        s.st_ctime_ns = r.ctime_sec * 1000000000 + r.ctime_nsec
        s.st_atime = r.atime_sec + r.atime_nsec * 1e-9
        s.st_mtime = r.mtime_sec + r.mtime_nsec * 1e-9
        s.st_ctime = r.ctime_sec + r.ctime_nsec * 1e-9
        s.st_rdev = r.rdev
        s.st_blocks = r.blocks
        s.st_blksize = r.blksize
        s.uid = s.gid = s.muid = None
        s.extension = None
        s.raw = r
        return s

    @classmethod
    def from_stat(cls, st, dialect=V9P2000):
        s = _new(cls)
        dotu = dialect != V9P2000
        s.name = st.name
        s.qid = st.qid
        s.st_mode = dm_to_st_mode(st.mode, st.extension if dotu else "")
        s.st_ino = st.qid.path
        s.st_dev = st.dev
        s.st_nlink = None
        s.st_uid = st.n_uid if dotu and st.n_uid != NONUNAME else None
        s.st_gid = st.n_gid if dotu and st.n_gid != NONUNAME else None
        s.st_size = st.length
        s.st_atime = float(st.atime)
        s.st_mtime = float(st.mtime)
        s.st_ctime = float(st.mtime)
        s.st_atime_ns = st.atime * 1000000000
        s.st_mtime_ns = st.mtime * 1000000000
        s.st_ctime_ns = s.st_mtime_ns
        s.st_rdev = None
        s.st_blocks = None
        s.st_blksize = None
        s.uid = st.uid
        s.gid = st.gid
        s.muid = st.muid
        s.extension = st.extension if dotu else None
        s.raw = st
        return s

    def is_dir(self):
        return _stat.S_ISDIR(self.st_mode)

    def is_file(self):
        return _stat.S_ISREG(self.st_mode)

    def is_symlink(self):
        return _stat.S_ISLNK(self.st_mode)

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__ if k != "raw"}

    def __getitem__(self, k):
        return getattr(self, k)

    def __repr__(self):
        return "StatResult(name=%r, st_mode=%s, st_size=%r, qid=%r)" % (
            self.name, oct(self.st_mode or 0), self.st_size, self.qid)


_new = object.__new__


class DirEntry:
    """One directory entry: name, qid, dtype (DT_*), offset (resume cookie), and for
    9P2000/.u the entry's StatResult in ``stat``."""

    __slots__ = ("name", "qid", "dtype", "offset", "stat")

    def __init__(self, name, qid, dtype, offset, stat=None):
        self.name = name
        self.qid = qid
        self.dtype = dtype
        self.offset = offset
        self.stat = stat

    def is_dir(self):
        return self.dtype == DT_DIR or (self.dtype == DT_UNKNOWN and self.qid.type & QTDIR)

    def is_symlink(self):
        return self.dtype == DT_LNK

    def __repr__(self):
        return "DirEntry(%r, qid=%r, dtype=%d)" % (self.name, self.qid, self.dtype)

    def __iter__(self):  # unpack as (qid, offset, dtype, name)
        return iter((self.qid, self.offset, self.dtype, self.name))
