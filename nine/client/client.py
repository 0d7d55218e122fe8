"""The high-level, dialect-neutral client: paths in, Python values out."""

import errno
import getpass
import time

from ..protocol.codec import Stat
from ..protocol.const import (DMDIR, DMLINK, DMSYMLINK, GETATTR_SIZE,
                              L_O_APPEND, L_O_CREAT, L_O_DIRECTORY, L_O_EXCL, L_O_RDONLY,
                              L_O_RDWR, L_O_TRUNC, L_O_WRONLY, NONUNAME, OREAD, ORDWR, OTRUNC,
                              OWRITE, SETATTR_ATIME, SETATTR_ATIME_SET, SETATTR_GID,
                              SETATTR_MODE, SETATTR_MTIME, SETATTR_MTIME_SET, SETATTR_SIZE,
                              SETATTR_UID, V9P2000L)
from .dial import DEFAULT_MSIZE
from .errors import NineError, nine_error
from .fid import attach, split_path, st_mode_to_dm
from .file import File

__all__ = ["Client", "parse_mode"]

XATTR_CREATE = 1
XATTR_REPLACE = 2


def parse_mode(mode):
    """'r', 'w', 'a', 'x', 'rw', with '+' and 'b' -> (read, write, create, trunc, append,
    excl)."""
    m = mode.replace("b", "")
    if m == "rw" or m == "wr":
        m = "r+"
    if not m or m[0] not in "rwax" or any(c not in "rwax+" for c in m) or len(m) > 2 or \
            (len(m) == 2 and m[1] != "+"):
        raise ValueError("invalid mode %r" % mode)
    plus = "+" in m
    k = m[0]
    read = k == "r" or plus
    write = k != "r" or plus
    create = k in "wax"
    trunc = k == "w"
    append = k == "a"
    excl = k == "x"
    return read, write, create, trunc, append, excl


class Client:
    """A 9P client for one attach on one connection.

    ``Client(addr, uname=None, aname='', version='9P2000.L', msize=DEFAULT_MSIZE)``
    connects (or takes ``conn=`` an existing Connection), negotiates, authenticates and
    attaches.  ``auth``: a nine.auth ClientMethod, None (attach without an auth fid), or
    "find" (the default: the method nine.auth.client_method finds on this host: $NINE_AUTH,
    a key file, a running munged; none found attaches without one).  ``tls``: a
    nine.auth.tls.client_context for a TCP link over TLS (Connection's tls=).
    ``blocking``: connect with a nine.client.blocking.BlockingConnection (no gevent: for
    a one-shot program in one thread; a TLS link still takes a Connection).
    Paths are '/'-separated and relative to the attach root ('' or '/' is the root).
    Errors are NineError subclasses carrying errno (FileNotFoundError etc. too).
    All methods may be called from many greenlets at once (on a Connection).
    """

    def __init__(self, addr=None, uname=None, aname="", version=V9P2000L, msize=DEFAULT_MSIZE,
                 n_uname=NONUNAME, *, conn=None, timeout=None, connect_timeout=10.0,
                 strict_version=True, gid=NONUNAME, depth=8, auth="find", tls=None,
                 blocking=False):
        if conn is None:
            if blocking and tls is None:
                from .blocking import BlockingConnection
                conn = BlockingConnection(addr, msize, version, timeout=timeout,
                                          connect_timeout=connect_timeout,
                                          strict_version=strict_version)
            else:
                from .conn import Connection
                conn = Connection(addr, msize, version, timeout=timeout,
                                  connect_timeout=connect_timeout,
                                  strict_version=strict_version, tls=tls)
            self._own = True
        else:
            self._own = False
        self.conn = conn
        if uname is None:
            try:
                uname = getpass.getuser()
            except Exception:
                uname = "none"
        self.uname = uname
        self.n_uname = n_uname
        self.aname = aname
        self.gid = gid
        self.depth = depth
        try:
            if auth == "find":
                from ..auth import client_method
                auth = client_method()
            self.root = attach(conn, uname, aname, n_uname, auth=auth)
        except BaseException:
            if self._own:
                conn.close()
            raise

    @property
    def dialect(self):
        return self.conn.dialect

    @property
    def msize(self):
        return self.conn.msize

    def close(self):
        """Clunk the root and close the connection (if this client opened it)."""
        if self.root is not None and not self.conn.closed:
            try:
                self.root.clunk()
            except NineError:
                pass
        self.root = None
        if self._own:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<Client %s aname=%r>" % (self.conn, self.aname)

    def gopen(self, path, mode="r", aggregator="concat", sync="all", timeout=None,
              members=None, use_server=True, sources=None, **params):
        """A group descriptor (nine.client.group.GroupFile) on the files of directory
        `path` (or the targets of its symlinks), or on `members` [(name, path)];
        `sources`: the paths of files a relay() copies from."""
        from .group import GroupFile
        return GroupFile(self, path, mode, members=members, aggregator=aggregator,
                         sync=sync, timeout=timeout, use_server=use_server,
                         sources=sources, **params)

    # ------------------------------------------------------------------ helpers

    def walk(self, path=""):
        """A new Fid for path (the caller clunks it; ``with client.walk(p) as f:``)."""
        return self.root.walk(split_path(path))

    def _parent(self, path):
        names = split_path(path)
        if not names:
            raise nine_error(errno.EINVAL, "%r has no parent" % path)
        return names[:-1], names[-1]

    def _walk_parent(self, path):
        d, name = self._parent(path)
        return self.root.walk(d), name

    # ------------------------------------------------------------------ open/create

    def open(self, path, mode="r", perm=0o666, depth=None):
        """Open path; mode 'r', 'w' (create+truncate), 'a' (create+append), 'x' (create
        exclusively), 'rw'/'r+' (read-write), 'w+', 'a+'; 'b' is ignored (always binary).
        Returns a File."""
        read, write, create, trunc, append, excl = parse_mode(mode)
        dotl = self.conn.dotl
        f = None
        if not excl:
            try:
                f = self.walk(path)
            except FileNotFoundError:
                if not create:
                    raise
        if f is None:
            return self.create(path, mode, perm, depth=depth)
        try:
            if dotl:
                flags = L_O_RDWR if (read and write) else (L_O_WRONLY if write else L_O_RDONLY)
                if trunc:
                    flags |= L_O_TRUNC
                if append:
                    flags |= L_O_APPEND
                f.lopen(flags)
            else:
                m = ORDWR if (read and write) else (OWRITE if write else OREAD)
                if trunc:
                    m |= OTRUNC
                f.open(m)
            pos = f.fstat().st_size if append else 0
        except BaseException:
            f.clunk_nowait()
            raise
        return File(f, mode, path, read, write, append, pos,
                    self.depth if depth is None else depth)

    def create(self, path, mode="w", perm=0o644, depth=None):
        """Create path (fails with EEXIST if it exists) and return it opened as a File."""
        read, write, _c, _t, append, _e = parse_mode(mode.replace("r", "w") if mode[0] == "r"
                                                      else mode)
        d, name = self._walk_parent(path)
        try:
            if self.conn.dotl:
                flags = L_O_RDWR if read and write else L_O_WRONLY
                d.lcreate(name, flags | L_O_CREAT | L_O_EXCL, perm & 0o7777, self.gid)
            else:
                m = ORDWR if read and write else OWRITE
                d.create(name, st_mode_to_dm(perm & 0o7777, self.conn.dotu), m)
        except BaseException:
            d.clunk_nowait()
            raise
        return File(d, mode, path, read, write, append, 0,
                    self.depth if depth is None else depth)

    def read_file(self, path):
        """The whole content of path."""
        f = self.walk(path)
        try:
            if self.conn.dotl:
                f.lopen(L_O_RDONLY)
            else:
                f.open(OREAD)
            return f.read_all(0, self.depth)
        finally:
            f.clunk_nowait()

    def write_file(self, path, data, append=False, perm=0o644):
        """Write data to path (created if missing, truncated unless append).  Returns the
        count written."""
        with self.open(path, "a" if append else "w", perm) as f:
            return f.write(data)

    # ------------------------------------------------------------------ names

    def mkdir(self, path, perm=0o755):
        """Create directory path; returns its qid."""
        d, name = self._walk_parent(path)
        try:
            if self.conn.dotl:
                return d.mkdir(name, perm & 0o7777, self.gid)
            q, _ = d.create(name, DMDIR | st_mode_to_dm(perm & 0o7777, self.conn.dotu), OREAD)
            return q
        finally:
            d.clunk_nowait()

    def makedirs(self, path, perm=0o755, exist_ok=True):
        names = split_path(path)
        for i in range(1, len(names) + 1):
            try:
                self.mkdir(names[:i], perm)
            except FileExistsError:
                if i == len(names) and not exist_ok:
                    raise

    def remove(self, path):
        """Remove a file or an empty directory (Tremove)."""
        self.walk(path).remove()

    unlink = remove
    rmdir = remove

    def rename(self, old, new):
        """Rename old to new.  9P2000.L: Trenameat (Trename when unsupported); 9P2000/.u:
        Twstat of the name (same directory only, else EXDEV)."""
        od, oname = self._parent(old)
        nd, nname = self._parent(new)
        if self.conn.dotl:
            odf = self.root.walk(od)
            try:
                ndf = self.root.walk(nd) if nd != od else odf
                try:
                    try:
                        odf.renameat(oname, ndf, nname)
                        return
                    except NineError as e:
                        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                            raise
                    with odf.walk([oname]) as f:
                        f.rename(ndf, nname)
                finally:
                    if ndf is not odf:
                        ndf.clunk_nowait()
            finally:
                odf.clunk_nowait()
            return
        if od != nd:
            raise nine_error(errno.EXDEV, "9P2000 can only rename within a directory")
        st = Stat.dont_touch()
        st.name = nname
        with self.walk(old) as f:
            f.wstat(st)

    def symlink(self, target, path):
        """Create symlink path pointing at target."""
        d, name = self._walk_parent(path)
        try:
            if self.conn.dotl:
                return d.symlink(name, target, self.gid)
            if not self.conn.dotu:
                raise nine_error(errno.EOPNOTSUPP, "9P2000 has no symlinks")
            q, _ = d.create(name, DMSYMLINK | 0o777, OREAD, extension=target)
            return q
        finally:
            d.clunk_nowait()

    def readlink(self, path):
        with self.walk(path) as f:
            if self.conn.dotl:
                return f.readlink()
            st = f.stat()
            if not self.conn.dotu or not st.mode & DMSYMLINK:
                raise nine_error(errno.EINVAL, "%s is not a symlink" % path)
            return st.extension

    def link(self, src, dst):
        """Hard link dst to src."""
        with self.walk(src) as s:
            d, name = self._walk_parent(dst)
            try:
                if self.conn.dotl:
                    d.link(s, name)
                elif self.conn.dotu:
                    d.create(name, DMLINK | 0o777, OREAD, extension="%d" % s.fid)
                else:
                    raise nine_error(errno.EOPNOTSUPP, "9P2000 has no hard links")
            finally:
                d.clunk_nowait()

    # ------------------------------------------------------------------ attributes

    def stat(self, path=""):
        """Dialect-neutral attributes of path: a StatResult (symlinks are not followed)."""
        with self.walk(path) as f:
            s = f.fstat()
        if s.name is None:
            names = split_path(path)
            s.name = names[-1] if names else "/"
        return s

    lstat = stat

    def exists(self, path):
        try:
            self.walk(path).clunk_nowait()
            return True
        except FileNotFoundError:
            return False

    def isdir(self, path):
        try:
            return self.stat(path).is_dir()
        except FileNotFoundError:
            return False

    def setattr(self, path, mode=None, uid=None, gid=None, size=None, atime=None, mtime=None):
        """Change attributes; None leaves one alone.  Times are float seconds or 'now'.
        In 9P2000/.u, uid/gid may be names (str) or numbers (.u)."""
        with self.walk(path) as f:
            if self.conn.dotl:
                valid = 0
                kw = {}
                if mode is not None:
                    valid |= SETATTR_MODE
                    kw["mode"] = mode
                if uid is not None:
                    valid |= SETATTR_UID
                    kw["uid"] = uid
                if gid is not None:
                    valid |= SETATTR_GID
                    kw["gid"] = gid
                if size is not None:
                    valid |= SETATTR_SIZE
                    kw["size"] = size
                for key, t, bit, bitset in (("atime", atime, SETATTR_ATIME, SETATTR_ATIME_SET),
                                            ("mtime", mtime, SETATTR_MTIME, SETATTR_MTIME_SET)):
                    if t is None:
                        continue
                    valid |= bit
                    if t != "now":
                        valid |= bitset
                        ns = int(round(t * 1e9))
                        kw[key + "_sec"], kw[key + "_nsec"] = divmod(ns, 1000000000)
                f.setattr(valid, **kw)
                return
            st = Stat.dont_touch()
            if mode is not None:
                cur = f.stat().mode
                st.mode = (cur & ~0o7777 & 0xFFFFFFFF & ~0x000F0000) | \
                    (st_mode_to_dm(mode & 0o7777, self.conn.dotu) & ~DMDIR)
            if size is not None:
                st.length = size
            now = int(time.time())
            if mtime is not None:
                st.mtime = now if mtime == "now" else int(mtime)
            if atime is not None:
                st.atime = now if atime == "now" else int(atime)
            for name, v in (("uid", uid), ("gid", gid)):
                if v is None:
                    continue
                if isinstance(v, str):
                    setattr(st, name, v)
                elif self.conn.dotu:
                    setattr(st, "n_" + name, v)
                else:
                    raise nine_error(errno.EINVAL, "9P2000 owners are names")
            f.wstat(st)

    def chmod(self, path, mode):
        self.setattr(path, mode=mode & 0o7777)

    def chown(self, path, uid, gid):
        self.setattr(path, uid=uid, gid=gid)

    def truncate(self, path, size=0):
        self.setattr(path, size=size)

    def utime(self, path, times=None):
        if times is None:
            self.setattr(path, atime="now", mtime="now")
        else:
            self.setattr(path, atime=times[0], mtime=times[1])

    def statfs(self, path=""):
        """Tstatfs (9P2000.L): a dict of the Rstatfs fields."""
        with self.walk(path) as f:
            r = f.statfs()
        return {k: getattr(r, k) for k in r.__slots__}

    def getsize(self, path):
        with self.walk(path) as f:
            if self.conn.dotl:
                return f.getattr(GETATTR_SIZE).size
            return f.stat().length

    # ------------------------------------------------------------------ directories

    def readdir(self, path=""):
        """Directory entries of path as DirEntry objects ('.' and '..' left out);
        9P2000/.u entries carry a StatResult in .stat."""
        with self.walk(path) as f:
            if self.conn.dotl:
                f.lopen(L_O_RDONLY | L_O_DIRECTORY)
            else:
                f.open(OREAD)
            ents = f.entries()
        return [e for e in ents if e.name not in (".", "..")]

    def listdir(self, path=""):
        """Names in directory path ('.' and '..' left out)."""
        return [e.name for e in self.readdir(path)]

    # ------------------------------------------------------------------ xattrs (.L)

    def getxattr(self, path, name):
        """The value (bytes) of extended attribute name (ENODATA if absent)."""
        with self.walk(path) as f:
            x, size = f.xattrwalk(name)
            with x:
                return x.read_all(0) if size else b""

    def listxattr(self, path):
        """Names of path's extended attributes."""
        with self.walk(path) as f:
            x, size = f.xattrwalk("")
            with x:
                data = x.read_all(0) if size else b""
        return [n.decode("utf-8", "surrogateescape") for n in data.split(b"\0") if n]

    def setxattr(self, path, name, value, flags=0):
        """Set extended attribute name to value (bytes or str); flags XATTR_CREATE (1) /
        XATTR_REPLACE (2)."""
        if isinstance(value, str):
            value = value.encode()
        with self.walk(path) as f:
            f.xattrcreate(name, len(value), flags)
            if value:
                n = f.pwrite(0, value)
                if n != len(value):
                    raise nine_error(errno.EIO, "short xattr write")
            f.clunk()  # the value is set by the clunk: its error counts

    def removexattr(self, path, name):
        """Remove extended attribute name (Txattrcreate of size 0, XATTR_REPLACE)."""
        with self.walk(path) as f:
            f.xattrcreate(name, 0, XATTR_REPLACE)
            f.clunk()

