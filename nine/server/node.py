"""The one file-node interface that every backend implements, and its contract.

The model is hugelgupf/p9's `File`: every fid owns one Node object.  Walking returns
new Node objects; opening, creating and xattr-creating change the node in place.  The
server core (nine.server.core) enforces all protocol rules (fids, tags, open state,
dialects) once; a backend only implements file semantics, in the vocabulary of
9P2000.L (Linux open flags, st_mode, uids), and the core translates for 9P2000 and .u.

Every method gets `ctx`, the Context of the request: who is asking (uid, gid, groups,
uname), the dialect and the connection.

Concurrency.  Every greenlet of the process shares one OS thread: a method runs alone
until it waits (network, a FIFO, an event, a sleep), and other greenlets run only while
it waits.  Each request runs in a greenlet of its own, and the core does NOT serialise
requests on a node: the Linux client sends concurrent reads, writes and getattrs on one
fid, and walks, creates and renames in one directory through several fids.  So, as
p9's "none" guarantee, a method may be running (waiting) while any other method of the
same node or of any node of the backend runs, including the same method; a backend keeps
its own state consistent across its waits.  What the core does guarantee:

  - close() is called exactly once on each node the core holds, when its fid lets go of
    it (Tclunk, Tremove, a walk or create that moves the fid to another node, Tversion,
    the end of the connection), and never while another request on that fid still runs
    in the node: the core first ends those requests (as a Tflush does, below) and waits
    until they are gone.  No method is called on a node after its close().
  - A node passed to a method as an argument (link's target, rename's and renameat's
    newdir) belongs to another fid: a Tclunk of that fid ends the call first.
  - Nodes a walk returns that the core does not keep (the intermediate ones, a partial
    walk, the entries a 9P2000 directory read walks to stat) are closed at once, never
    opened.
  - open() is called only on a node whose fid is not open; read(), write(), readdir(),
    lock() and getlock() only on a node whose open() succeeded (read() not after an
    O_WRONLY open, write() not after O_RDONLY, readdir() only on a directory).  Two racing
    opens of one fid (a client bug) may both reach open().
  - A method that may_block = False names (see below) is called in the connection's own
    loop, before the next request of the connection is read: it must never wait.
  - Ending a request (Tflush; a Tclunk or Tremove of its fid; Tversion; the connection's
    end) kills its greenlet: GreenletExit is raised where the method waits.  A method
    that holds resources across a wait releases them in `finally`; it must not catch
    GreenletExit and go on.

Errors: raise OSError(errno, message) (or error(errno)).  The core answers Rlerror(errno)
in .L, Rerror(strerror, errno) in .u, Rerror(strerror) in 9P2000.  Any other exception
is a backend bug: it is logged and answered EIO, and the server goes on.  Unreachable (an
OSError) marks a failure that resolving the node again may cure.  The errnos the Linux
client needs are noted on the methods; a read-only export answers EROFS to every change.
Methods a backend does not support raise EOPNOTSUPP by default, except where the client
needs another errno (noted on the method).
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

    def wait_up(self, timeout):
        """Wait until the link to this backend is up (at once if it is), at most timeout
        seconds; returns whether it is.  Blocks (a greenlet's wait): the group floor
        calls it before it opens again a member whose child went away, so that a
        restarted host is followed on as soon as it is reached."""
        return True


class Node:
    """Base class: every method raises EOPNOTSUPP unless a backend overrides it.

    Each method's docstring says when the core calls it ("Called:") and what it may
    run concurrently with beyond the module's rules ("Concurrency:"); "none" means any
    method of any node, this one included, may be running meanwhile (see the module's
    docstring: the core serialises nothing on a node but close())."""

    #: the qid of this node (set by the backend; may change after open/create: the core
    #: reads it again after them)
    qid = Qid(0, 0, 0)
    #: the name of this node in its parent (the root's name is "/")
    name = "/"
    #: iounit to advertise in Ropen/Rlopen (0 = msize - 24); read after open/create
    iounit = 0
    #: False promises that what Tread, Twrite, Tgetattr, Tclunk, Twalk, Tlopen, Topen,
    #: Treaddir, Tstat, Tsetattr, Treadlink, Txattrwalk and Tstatfs call on this node
    #: never waits (no network, no blocking callback): walk, clone, open, read, write,
    #: readdir, getattr, setattr, readlink, statfs, getxattr, listxattr, close, and at a
    #: clunk remove (ORCLOSE) and setxattr/removexattr (an xattr fid).  The core then
    #: answers those requests from the connection's loop, without a greenlet of their own
    may_block = True
    #: True when the backend maps its qids into the mux's QidMap itself (a mux's remote
    #: node): a composition must not map them a second time
    maps_qids = False
    #: True when post_read/post_write are implemented (requests without a greenlet)
    can_post = False

    # --- where a node comes from (used by the mux, FiNAL and group floors) ---------
    def origin(self):
        """(Remote, path tuple in it) when this node lives on a remote child, else None.
        Never blocks.  Not called by the core."""
        return None

    def locate(self, names):
        """(Remote, path tuple in it) that `names` walked from this directory lead to,
        when that is known without asking anyone (no rule applies below, the path lies
        in one child); None when it cannot be known so: walk instead.  The path is not
        checked to exist.  Never blocks.  Not called by the core."""
        return None

    def post_read(self, offset, count, done):
        """read() without a greenlet (only where can_post): send the request and return
        a cancel() callable at once; done(data, None) or done(None, error) runs later in
        the hub and must not block.  Raises at once when the node is not open.
        Not called by the core (the group floor uses it); the caller keeps the node
        open until done ran or it cancelled."""
        raise error(errno.EOPNOTSUPP)

    def post_write(self, offset, data, done):
        """write() of at most one message's worth without a greenlet (as post_read);
        done(count, None) or done(None, error).  A short count is continued by the
        caller."""
        raise error(errno.EOPNOTSUPP)

    # --- name space -------------------------------------------------------
    def walk(self, ctx, names):
        """Walk `names` from this directory; return the list of new Nodes reached, one
        per name walked (a shorter list is a partial walk).

        Called: names are 1 to 16, each non-empty, without '/' or NUL ('.' and '..' may
        come: '..' at the root stays at the root).  In 9P2000/.u never on an open fid;
        in .L also on an open one (to another fid).
        Concurrency: none.
        Errors: raise when the FIRST name cannot be walked (ENOENT, ENOTDIR, EACCES ...);
        a later failure is a shorter list, never an error.  Not a directory: ENOTDIR."""
        raise error(errno.ENOTDIR)

    def clone(self, ctx):
        """A new Node for the same file (Twalk with no names; Txattrwalk's fid).
        Called: as walk.  Concurrency: none."""
        raise error(errno.EOPNOTSUPP)

    # --- attributes ---------------------------------------------------------
    def getattr(self, ctx):
        """Return an Attr.  Called: on any node, open or not.  Concurrency: none (also
        with a read or write of the same node: the kernel stats files it reads)."""
        raise error(errno.EOPNOTSUPP)

    def setattr(self, ctx, sa):
        """Apply a SetAttr (Tsetattr; a Twstat).  Called: on any node, open or not (a
        truncate of a file the kernel has open comes as setattr(size)).
        Concurrency: none.  Errors: EPERM/EACCES as the file system says; EROFS."""
        raise error(errno.EOPNOTSUPP)

    def statfs(self, ctx):
        """Return a StatFS.  Called: on any node.  Concurrency: none."""
        return StatFS()

    # --- I/O ----------------------------------------------------------------
    def open(self, ctx, flags):
        """Open with Linux open flags.  O_CREAT, O_EXCL and O_NOCTTY are taken out by the
        core for Tlopen; O_NONBLOCK and the like may be present: ignore what does not
        apply.  O_TRUNC truncates.

        Called: on a node whose fid is not open, at most once per fid (but see the
        module's note on racing opens); in 9P2000/.u a directory only for reading.
        Concurrency: none.  Errors: EACCES, EISDIR, EROFS, ENXIO as the file system."""
        raise error(errno.EOPNOTSUPP)

    def read(self, ctx, offset, count):
        """Read up to count bytes at offset; b'' at EOF.  A shorter result is a short
        read (a blocking file may return as soon as it has data); a longer one is cut.

        Called: after open() succeeded, not for O_WRONLY; count is at most msize - 24;
        never on a directory (the core answers EISDIR in .L, and 9P2000 directory reads
        go through readdir()).
        Concurrency: none: several reads of one fid may wait in the node at once; a read
        that waits is ended (GreenletExit) by a Tflush of it, or a Tclunk/Tremove of
        its fid, before close() runs."""
        raise error(errno.EOPNOTSUPP)

    def write(self, ctx, offset, data):
        """Write data at offset; return the count written (a short count is allowed).
        Called: after open() succeeded, not for O_RDONLY, never on a directory; data is
        at most msize - 24 bytes.  Concurrency: as read()."""
        raise error(errno.EOPNOTSUPP)

    def readdir(self, ctx, offset, count):
        """Entries of the open directory after cookie `offset` (0 = the start), at most
        about `count` bytes worth (a hint).  Return a list of Dirent; [] at the end.
        Include '.' and '..' only if the backend wants them listed.

        Called: after open() of a directory succeeded.
        Concurrency: none (also with creates and removes in the directory: a Dirent's
        offset must stay valid across batches and concurrent deletes).
        Errors: not a directory: ENOTDIR.  The core answers EINVAL when the first
        entry does not fit in count."""
        raise error(errno.ENOTDIR)

    def fsync(self, ctx, datasync=0):
        """Flush the file to stable storage.  Called: on any node, open or not (a
        9P2000 wstat that changes nothing is an fsync).  Concurrency: none."""

    def close(self, ctx):
        """The fid lets go of this node (Tclunk, Tremove, the fid moved to another node,
        Tversion, the connection is gone).  Release everything.

        Called: exactly once per node the core holds, open or not.
        Concurrency: no other request on this node's fid is running in it (the core
        ended them and waited); nothing is called on the node afterwards.
        Errors: must not fail (what it raises is logged or answered; the fid is gone
        either way)."""

    # --- creation and removal (self is the directory) -----------------------------
    # Called (all): `name` is non-empty, not '.' or '..', without '/' or NUL; create,
    # mkdir, symlink, mknod and link only on a fid that is not open.  gid None or
    # 0xFFFFFFFF: no group asked.  Concurrency: none (two creates of one name may race:
    # the file system decides; EEXIST for the loser).  EROFS on a read-only export.
    def create(self, ctx, name, flags, mode, gid):
        """Create and open a regular file; return the new, open Node.  flags: Linux open
        flags with O_CREAT (O_EXCL taken out).  The fid moves to the returned node; the
        core then closes this directory node (once nothing else runs in it)."""
        raise error(errno.EOPNOTSUPP)

    def mkdir(self, ctx, name, mode, gid):
        """Return the qid of the new directory."""
        raise error(errno.EOPNOTSUPP)

    def symlink(self, ctx, name, target, gid):
        """Return the qid of the new symbolic link."""
        raise error(errno.EOPNOTSUPP)

    def mknod(self, ctx, name, mode, major, minor, gid):
        """Return the qid of the new special file (mode carries its S_IFMT)."""
        raise error(errno.EOPNOTSUPP)

    def link(self, ctx, target, name):
        """Hard link `target` (a Node of another fid) as `name` in this directory.
        Errors: EXDEV when target is not of this backend."""
        raise error(errno.EOPNOTSUPP)

    def renameat(self, ctx, oldname, newdir, newname):
        """Rename oldname in this directory to newname in newdir (a Node).  Errors:
        EXDEV across backends; EOPNOTSUPP makes the Linux client fall back to Trename."""
        raise error(errno.EOPNOTSUPP)

    def rename(self, ctx, newdir, newname):
        """Rename this node to newname in newdir (Trename), or within its own directory
        when newdir is None (a wstat of the name).  Errors: EXDEV across backends."""
        raise error(errno.EOPNOTSUPP)

    def unlinkat(self, ctx, name, flags):
        """Remove name from this directory (flags & AT_REMOVEDIR for a directory).
        Errors: EOPNOTSUPP makes the Linux client fall back to Tremove."""
        raise error(errno.EOPNOTSUPP)

    def remove(self, ctx):
        """Remove this node's file (Tremove; a clunk of an ORCLOSE fid).
        Called: after the other requests on the fid ended; close() follows whatever it
        raises (the fid is gone either way)."""
        raise error(errno.EOPNOTSUPP)

    def readlink(self, ctx):
        """The target of this symbolic link.  Called: on any node.  Concurrency: none.
        Errors: not a symbolic link: EINVAL."""
        raise error(errno.EINVAL)

    # --- locks and xattrs ----------------------------------------------------------
    def lock(self, ctx, type, flags, start, length, proc_id, client_id):
        """POSIX/BSD lock on the open node; return a LOCK_* status.  Called: after open()
        succeeded.  Concurrency: none.  Never waits for a lock: LOCK_BLOCKED when it
        cannot be had now (the client retries)."""
        raise error(errno.EOPNOTSUPP)

    def getlock(self, ctx, type, start, length, proc_id, client_id):
        """Return (type, start, length, proc_id, client_id) of a conflicting lock, or
        type LOCK_TYPE_UNLCK when none.  Called: after open() succeeded."""
        raise error(errno.EOPNOTSUPP)

    # Called (xattrs): on any node.  getxattr/listxattr at Txattrwalk (the core keeps
    # the value it reads); setxattr/removexattr when the fid of a Txattrcreate is
    # clunked, before its close().  Concurrency: none.
    def listxattr(self, ctx):
        """List of xattr names."""
        raise error(errno.EOPNOTSUPP)

    def getxattr(self, ctx, name):
        """The value (bytes).  Errors: ENODATA when absent, EOPNOTSUPP when unsupported:
        never EINVAL or ENOENT (the Linux client asks for security.capability on
        writes; those errnos break exec and ls)."""
        raise error(errno.ENODATA)

    def setxattr(self, ctx, name, value, flags):
        """Set an xattr (flags: XATTR_CREATE 1, XATTR_REPLACE 2)."""
        raise error(errno.EOPNOTSUPP)

    def removexattr(self, ctx, name):
        """Remove an xattr.  Errors: ENODATA when absent."""
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
