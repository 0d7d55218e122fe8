"""The one file-node interface that every backend implements.

The model is hugelgupf/p9's `File`: every fid owns one Node object.  Walking returns
new Node objects; opening, creating and xattr-creating change the node in place.  The
server core (nine.server.core) enforces all protocol rules (fids, tags, open state,
dialects) once; a backend only implements file semantics, in the vocabulary of
9P2000.L (Linux open flags, st_mode, uids), and the core translates for 9P2000 and .u.

Errors: raise OSError(errno, message) (or nine.server.node.error(errno)).  The core
answers Rlerror(errno) in .L, Rerror(strerror, errno) in .u, Rerror(strerror) in 9P2000.

Every method gets `ctx`, the Context of the request: who is asking (uid, gid, groups,
uname), the dialect and the connection.  Methods may block (they run in their own
greenlet); a Tflush kills that greenlet with GreenletExit, so a method that holds
resources across a blocking call must release them in `finally`.

Methods a backend does not support raise EOPNOTSUPP by default, except where the
kernel client needs a specific errno (noted on the method).
"""

import errno
import os
import stat as _stat

from ..protocol import Qid, QTDIR, QTSYMLINK, QTFILE


def error(code, msg=None):
    return OSError(code, msg or os.strerror(code))


class Attr:
    """File attributes, as Rgetattr carries them.  Times are integer nanoseconds."""
    __slots__ = ("qid", "mode", "uid", "gid", "nlink", "rdev", "size", "blksize", "blocks",
                 "atime", "mtime", "ctime", "btime", "gen", "data_version")

    def __init__(self, qid, mode, uid=0, gid=0, nlink=1, rdev=0, size=0, blksize=4096,
                 blocks=0, atime=0, mtime=0, ctime=0, btime=0, gen=0, data_version=0):
        self.qid = qid
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = nlink
        self.rdev = rdev
        self.size = size
        self.blksize = blksize
        self.blocks = blocks
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
        self.btime = btime
        self.gen = gen
        self.data_version = data_version

    def __repr__(self):
        return "Attr(%s)" % ", ".join("%s=%r" % (f, getattr(self, f)) for f in self.__slots__)


class SetAttr:
    """What a Tsetattr (or a translated Twstat) asks to change.  None = leave alone.
    atime/mtime: integer ns, or NOW (the server's clock)."""
    __slots__ = ("mode", "uid", "gid", "size", "atime", "mtime", "ctime")
    NOW = "now"

    def __init__(self, mode=None, uid=None, gid=None, size=None, atime=None, mtime=None,
                 ctime=False):
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime

    def __repr__(self):
        return "SetAttr(%s)" % ", ".join("%s=%r" % (f, getattr(self, f)) for f in self.__slots__
                                         if getattr(self, f) not in (None, False))


class StatFS:
    __slots__ = ("type", "bsize", "blocks", "bfree", "bavail", "files", "ffree", "fsid",
                 "namelen")

    def __init__(self, type=0x01021997, bsize=4096, blocks=0, bfree=0, bavail=0, files=0,
                 ffree=0, fsid=0, namelen=255):
        self.type = type
        self.bsize = bsize
        self.blocks = blocks
        self.bfree = bfree
        self.bavail = bavail
        self.files = files
        self.ffree = ffree
        self.fsid = fsid
        self.namelen = namelen


class Dirent:
    """One directory entry.  offset is the cookie to pass to continue after this entry;
    it must stay valid across batches and concurrent deletes."""
    __slots__ = ("qid", "offset", "type", "name")

    def __init__(self, qid, offset, type, name):
        self.qid = qid
        self.offset = offset
        self.type = type
        self.name = name

    def __repr__(self):
        return "Dirent(%r, %r, %r, %r)" % (self.qid, self.offset, self.type, self.name)


def dtype_of_mode(mode):
    return (mode >> 12) & 0o17


def qtype_of_mode(mode):
    if _stat.S_ISDIR(mode):
        return QTDIR
    if _stat.S_ISLNK(mode):
        return QTSYMLINK
    return QTFILE


class Unreachable(OSError):
    """The backend holding a node cannot be reached now (a mux's child is down, or the
    node was made on a connection that has since been replaced).  Upper floors treat it
    as healable: resolving the node again (walking from a fresh root) may cure it."""


class Remote:
    """A backend reached over a link (a mux's child), as the upper floors may use it.
    Node.origin() and Node.locate() name one."""

    #: the child's name in its mux
    name = ""

    def group_root(self, ctx):
        """(link, root Fid) of the child's own group service for ctx's user; raises
        EOPNOTSUPP when the child offers none.  May block (a network round trip)."""
        raise error(errno.EOPNOTSUPP)


class Node:
    """Base class: every method raises EOPNOTSUPP unless a backend overrides it."""

    #: the qid of this node (set by the backend; may change after open/create)
    qid = Qid(0, 0, 0)
    #: the name of this node in its parent (the root's name is "/")
    name = "/"
    #: iounit to advertise in Ropen/Rlopen (0 = msize - 24)
    iounit = 0
    #: False promises that walk/open/read/write/getattr/setattr/readdir/readlink/clunk/
    #: statfs/xattr reads on this node never wait (no network, no blocking callback), so
    #: the core may answer them without a greenlet of their own
    may_block = True
    #: True when the backend maps its qids into the mux's QidMap itself (a mux's remote
    #: node): a composition must not map them a second time
    maps_qids = False
    #: True when post_read/post_write are implemented (requests without a greenlet)
    can_post = False

    # --- where a node comes from (used by the mux, FiNAL and group floors) ---------
    def origin(self):
        """(Remote, path tuple in it) when this node lives on a remote child, else None.
        Never blocks."""
        return None

    def locate(self, names):
        """(Remote, path tuple in it) that `names` walked from this directory lead to,
        when that is known without asking anyone (no rule applies below, the path lies
        in one child); None when it cannot be known so: walk instead.  The path is not
        checked to exist.  Never blocks."""
        return None

    def post_read(self, offset, count, done):
        """read() without a greenlet (only where can_post): send the request and return
        a cancel() callable at once; done(data, None) or done(None, error) runs later in
        the hub and must not block.  Raises at once when the node is not open."""
        raise error(errno.EOPNOTSUPP)

    def post_write(self, offset, data, done):
        """write() of at most one message's worth without a greenlet (as post_read);
        done(count, None) or done(None, error).  A short count is continued by the
        caller."""
        raise error(errno.EOPNOTSUPP)

    # --- name space -------------------------------------------------------
    def walk(self, ctx, names):
        """Walk `names` (1 to 16 names) from this directory.  Return the list of Nodes
        reached, one per name walked (a shorter list is a partial walk).  Raise an OSError
        when the first name cannot be walked.  '..' at the root stays at the root."""
        raise error(errno.ENOTDIR)

    def clone(self, ctx):
        """A new Node for the same file (Twalk with no names)."""
        raise error(errno.EOPNOTSUPP)

    # --- attributes ---------------------------------------------------------
    def getattr(self, ctx):
        """Return an Attr."""
        raise error(errno.EOPNOTSUPP)

    def setattr(self, ctx, sa):
        """Apply a SetAttr."""
        raise error(errno.EOPNOTSUPP)

    def statfs(self, ctx):
        return StatFS()

    # --- I/O ----------------------------------------------------------------
    def open(self, ctx, flags):
        """Open with Linux open flags (O_CREAT/O_NONBLOCK etc. may be present: ignore what
        does not apply).  O_TRUNC truncates."""
        raise error(errno.EOPNOTSUPP)

    def read(self, ctx, offset, count):
        """Read up to count bytes at offset from the open node; b'' at EOF."""
        raise error(errno.EOPNOTSUPP)

    def write(self, ctx, offset, data):
        """Write data at offset; return the count written."""
        raise error(errno.EOPNOTSUPP)

    def readdir(self, ctx, offset, count):
        """Entries of the open directory after cookie `offset` (0 = the start), at most
        about `count` bytes worth (a hint).  Return a list of Dirent; [] at the end.
        Include '.' and '..' only if the backend wants them listed."""
        raise error(errno.ENOTDIR)

    def fsync(self, ctx, datasync=0):
        pass

    def close(self, ctx):
        """The fid is clunked (or the connection is gone).  Release everything."""

    # --- creation and removal (self is the directory) -----------------------------
    def create(self, ctx, name, flags, mode, gid):
        """Create and open a regular file; return the new, open Node (the fid moves to it)."""
        raise error(errno.EOPNOTSUPP)

    def mkdir(self, ctx, name, mode, gid):
        """Return the qid of the new directory."""
        raise error(errno.EOPNOTSUPP)

    def symlink(self, ctx, name, target, gid):
        raise error(errno.EOPNOTSUPP)

    def mknod(self, ctx, name, mode, major, minor, gid):
        raise error(errno.EOPNOTSUPP)

    def link(self, ctx, target, name):
        """Hard link `target` (a Node of this backend) as `name` in this directory."""
        raise error(errno.EOPNOTSUPP)

    def renameat(self, ctx, oldname, newdir, newname):
        """Rename oldname in this directory to newname in newdir (a Node)."""
        raise error(errno.EOPNOTSUPP)

    def rename(self, ctx, newdir, newname):
        """Rename this node to newname in newdir (Trename), or within its own directory
        when newdir is None (a wstat of the name)."""
        raise error(errno.EOPNOTSUPP)

    def unlinkat(self, ctx, name, flags):
        """Remove name from this directory (flags & AT_REMOVEDIR for a directory)."""
        raise error(errno.EOPNOTSUPP)

    def remove(self, ctx):
        """Remove this node's file (Tremove)."""
        raise error(errno.EOPNOTSUPP)

    def readlink(self, ctx):
        raise error(errno.EINVAL)

    # --- locks and xattrs ----------------------------------------------------------
    def lock(self, ctx, type, flags, start, length, proc_id, client_id):
        """POSIX/BSD lock on the open node; return a LOCK_* status (BLOCKED when it cannot
        be had now: the client retries)."""
        raise error(errno.EOPNOTSUPP)

    def getlock(self, ctx, type, start, length, proc_id, client_id):
        """Return (type, start, length, proc_id, client_id) of a conflicting lock, or
        type LOCK_TYPE_UNLCK when none."""
        raise error(errno.EOPNOTSUPP)

    def listxattr(self, ctx):
        """List of xattr names."""
        raise error(errno.EOPNOTSUPP)

    def getxattr(self, ctx, name):
        """The value (bytes); ENODATA when absent, EOPNOTSUPP when unsupported."""
        raise error(errno.ENODATA)

    def setxattr(self, ctx, name, value, flags):
        raise error(errno.EOPNOTSUPP)

    def removexattr(self, ctx, name):
        raise error(errno.EOPNOTSUPP)


class Context:
    """Who is asking, over which connection and dialect.  One per attach; requests on
    fids walked from that attach share it."""
    __slots__ = ("uname", "uid", "gid", "groups", "aname", "dialect", "conn", "server")

    def __init__(self, uname="", uid=None, gid=None, groups=(), aname="", dialect=None,
                 conn=None, server=None):
        self.uname = uname
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.aname = aname
        self.dialect = dialect
        self.conn = conn
        self.server = server

    def __repr__(self):
        return "Context(uname=%r, uid=%r, gid=%r, aname=%r, dialect=%r)" % (
            self.uname, self.uid, self.gid, self.aname, self.dialect)
