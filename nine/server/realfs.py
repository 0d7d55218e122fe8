"""Real-file export backend: serve a directory of the host's file system.

    fs = RealFS("/srv/export", read_only=False, squash=None, allow_devices=False)
    root = fs.attach(ctx)            # a Node (see nine.server.node)

Design
------
Confinement.  RealFS keeps one O_PATH fd of the export root.  Every path operation
resolves a *relative* path (made only of plain names: never '', '.', '..', never a '/'
inside a name) against that fd with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS), so no symlink is ever followed, in any component, and nothing
outside the export can be reached, whatever a local process does to the tree meanwhile.
Operations on a name then use *at calls on an O_PATH fd of its directory, never
following the final component (AT_SYMLINK_NOFOLLOW, O_NOFOLLOW).  chmod, truncate and
xattrs of a non-symlink go through /proc/self/fd/N of an O_PATH fd of the file itself
(the magic link names the inode, not a path, so there is no window for a swap).  Where
openat2 is missing (ENOSYS, or EPERM from an old seccomp filter) resolution falls back
to openat() one component at a time with O_PATH|O_NOFOLLOW|O_DIRECTORY (both in
nine.server.syscalls).  /proc must be mounted.

Nodes and paths.  A Node holds an _Entry (parent entry + name), not an fd, so a hundred
thousand fids cost no fds; only an open node holds one.  Entries are interned per
(parent, name) in a weak dictionary, so every fid of one path shares one entry; a rename
done through this server moves the entry (so every fid of the renamed file, and of all
files below a renamed directory, follows it, as diod and QEMU do), and a name removed or
replaced through this server marks its entry dead (later path operations on those fids
get ENOENT rather than reaching a new file of the same name).  Paths are cached per
entry and recomputed lazily after any rename (a global generation counter).  '..'
is lexical (the entry's parent); that equals the physical parent because no walk ever
passes through a symlink.  '..' at the root stays at the root.

Open nodes.  getattr, setattr, read, write, fsync, xattrs, statfs and locks of an open
node use its fd, so a file opened and then unlinked stays fully usable.  A truncate
through a node opened read-only reopens /proc/self/fd/N for writing (permission checked).
Files are opened O_NONBLOCK (a FIFO or device must never block the one OS thread that all
greenlets share): reads and writes of FIFOs/char devices wait for readiness with gevent;
a write-only open of a FIFO with no reader polls until one appears (a Tflush ends it).

qids.  qid.path = (dev_index << 48) | st_ino, where dev_index is a small number given to
each st_dev in order of first sight (the export's device is 0); stable for the life of
the process.  An inode number of 48 bits or more (or more than 32k devices) gets a
sequential number with bit 63 set, from a table.  qid.version is 0 for directories,
symlinks and special files, and (mtime_ns ^ (size << 8)) & 0xffffffff for regular files
(diod and QEMU use mtime ^ (size << 8) in seconds; ns changes with every write).

readdir.  The listing includes '.' (cookie 1) and '..' (cookie 2) as diod does; every
other entry's cookie is a 63-bit hash of its name (>= 3) and the entries are returned in
cookie order from a snapshot taken when the listing starts (offset 0, or the first
readdir of the open node).  "Continue after cookie c" is a bisection, so a cookie stays
valid across batches, concurrent deletes and creates, a re-open, even another fid (like
ext4's hashed offsets).  Each emitted entry is lstat'ed relative to the open directory fd
(real qid, mount points included; done as the server: the open already passed the
permission check); names deleted since the snapshot are skipped.  Entries whose cookies
collide are never split across two replies.  Cost: the snapshot holds every name of the
directory while a listing is in progress (released on close or at the next offset 0).

Identity.  When the server runs as root, each filesystem call is made as the attaching
user (ctx.uid, ctx.gid, ctx.groups; ctx.uid None = the server's own identity), or always as
`squash` = (uid, gid) when given: the calling OS thread's fsuid, fsgid and supplementary
groups are switched (nine.server.identity, which tracks the identity in force per OS
thread for the whole process, so several RealFS agree).  With restore_identity=True
(the default) an operation that switched puts back the identity it found when it ends
(also on errors, and around any wait that lets other greenlets run), so the rest of the
process never runs as a client's user; that costs two switches per operation of a
non-root user (about 20 us here: setgroups and setfsuid allocate new credentials).
With restore_identity=False the identity is switched only when a request needs another
one and is left in force between operations (free for one user, or with squash); then
other code on that thread that touches files must call identity.reset() first.  Nothing
yields between a switch and the filesystem call it is for.
Missing ctx.gid: the user's passwd group (65534 when the uid is unknown); empty
ctx.groups: the user's group list from the group database, else just the gid.
Setting fsuid != 0 drops the file-system capabilities, but not CAP_SYS_ADMIN or
CAP_SETFCAP: so while acting as a non-root user, writing or removing 'trusted.*' and
'security.*' xattrs gets EPERM, and 'trusted.*' reads as absent (what the kernel does for
an unprivileged process).  When the server is not root it always acts as itself.

New files (create, mkdir, symlink, mknod) are made with umask 0 (the client applies its
umask; the umask is switched around the call only) and owned by the acting user; the
`gid` argument, when it differs from the group the new file got, is applied with
fchownat if permitted (silently left otherwise).

Locks: OFD locks (F_OFD_SETLK / F_OFD_GETLK) on the node's open fd, so two fids (two
opens) conflict like two processes; a lock that cannot be had now answers LOCK_BLOCKED (the
kernel client retries).  The holder of a conflicting lock is not known to OFD locks:
getlock reports proc_id 0 and an empty client_id.

read_only: every mutating operation, and any open for writing or with O_TRUNC, gets EROFS.

Devices (a mount's `nodev`): unless allow_devices, mknod of a block or character device
gets EPERM, and opening an existing one (Topen, or Tlcreate of an existing name) gets
EACCES, so that a client cannot make or reach /dev/sda or /dev/mem through a copy of the
node in an export (root's mknod did make them).  FIFOs and sockets are not devices.  The
open is refused before the device is opened when the node's type is known from its walk
(opening some devices acts: a watchdog arms, a tape rewinds), and checked again on the
opened fd (a name swapped for a device in between is closed unused).  Stat, chmod,
chown, rename, link and remove of a device file stay allowed, as under nodev.
"""

import bisect
import functools
import errno
import fcntl
import os
import stat as _stat
import struct
import weakref

from ..protocol import Qid, QTDIR, QTSYMLINK, QTFILE
from ..protocol.const import (
    L_O_ACCMODE, L_O_RDONLY, L_O_EXCL, L_O_TRUNC, L_O_APPEND, LOCK_TYPE_UNLCK, LOCK_SUCCESS,
    LOCK_BLOCKED, AT_REMOVEDIR)
from . import identity
from .node import Node, Attr, StatFS, Dirent, error, dtype_of_mode
from .syscalls import (
    O_PATH, O_CLOEXEC, O_DIRECTORY, OPATH, ODIR, AT_FDCWD, AT_SYMLINK_NOFOLLOW, FLOCK, LTYPE,
    LTYPE_BACK, F_OFD_GETLK, F_OFD_SETLK, fstatfs, lock_range, oflags, utimens,
    openat2 as _openat2, openat_walk as _openat_walk)

__all__ = ["RealFS", "RealNode"]

S_IFMT = 0o170000
S_IFDIR = _stat.S_IFDIR
S_IFREG = _stat.S_IFREG
S_IFLNK = _stat.S_IFLNK
S_IFBLK = _stat.S_IFBLK
S_IFCHR = _stat.S_IFCHR
S_IFIFO = _stat.S_IFIFO
_DEVICES = (S_IFBLK, S_IFCHR)

_SUID_SGID = _stat.S_ISUID | _stat.S_ISGID
_NOID = (None, -1, 0xFFFFFFFF)           # "no gid" in create-type requests
_OFF_MAX = (1 << 63) - 1                 # a larger offset is negative to pread (EINVAL)



def _as_user(method):
    """Run a node method as the identity its ctx asks for, and restore the identity in
    force before it (so nested calls and the rest of the process are unaffected)."""
    @functools.wraps(method)
    def wrapper(self, ctx, *args):
        fs = self.fs
        if fs._switch:
            want = fs._want(ctx)
            cur = identity.current()
            if want != cur:
                if not fs.restore_identity:
                    identity.switch(want)         # and leave it in force
                    return method(self, ctx, *args)
                try:
                    identity.switch(want)
                    return method(self, ctx, *args)
                finally:
                    identity.switch(identity.OWN if cur is None else cur)
        return method(self, ctx, *args)
    return wrapper


# --------------------------------------------------------------------------------------
# names, waits

def _checkname(name):
    """A name to create, remove or rename: a plain component.  Returns (str, bytes)."""
    if isinstance(name, (bytes, bytearray)):
        name = os.fsdecode(bytes(name))
    if not name or name == "." or name == ".." or "/" in name or "\0" in name:
        raise error(errno.EINVAL, "invalid file name %r" % (name,))
    return name, name.encode("utf-8", "surrogateescape")


def _wait(fd, write):
    identity.as_own(_wait1, fd, write)


def _wait1(fd, write):
    try:
        from gevent.socket import wait_read, wait_write
    except ImportError:                  # pragma: no cover
        import select
        if write:
            select.select([], [fd], [])
        else:
            select.select([fd], [], [])
        return
    (wait_write if write else wait_read)(fd)


def _sleep(t):
    identity.as_own(_sleep1, t)


def _sleep1(t):
    try:
        import gevent
        gevent.sleep(t)
    except ImportError:                  # pragma: no cover
        import time
        time.sleep(t)


# --------------------------------------------------------------------------------------

class _Entry:
    """One path in the export: parent entry + name.  Shared by all nodes of that path."""
    __slots__ = ("parent", "name", "bname", "dead", "path", "gen", "__weakref__")

    def __init__(self, parent, name, bname):
        self.parent = parent
        self.name = name
        self.bname = bname
        self.dead = False
        self.path = None
        self.gen = -1


class RealFS:
    """A directory of the host exported as a 9P file tree."""

    def __init__(self, root_dir, read_only=False, squash=None, *, use_openat2=None,
                 restore_identity=True, allow_devices=False):
        self.root_dir = os.path.abspath(root_dir)
        self.read_only = bool(read_only)
        self.allow_devices = bool(allow_devices)
        self.root_fd = os.open(root_dir, O_PATH | O_DIRECTORY | O_CLOEXEC)
        st = os.fstat(self.root_fd)
        if use_openat2 is None:
            try:
                os.close(_openat2(self.root_fd, b".", ODIR))
                use_openat2 = True
            except OSError as e:
                if e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                    raise
                use_openat2 = False
        self._resolve = _openat2 if use_openat2 else _openat_walk
        self.uses_openat2 = use_openat2
        # qid mapping
        self._dev_index = {st.st_dev: 0}
        self._big = {}
        # entries
        self.gen = 0
        self._entries = weakref.WeakValueDictionary()
        self.root_entry = _Entry(None, "/", b".")
        self.root_entry.path = b"."
        # identity
        self._switch = os.geteuid() == 0
        self.restore_identity = bool(restore_identity)
        self.squash = squash
        self._squash_id = None
        if squash is not None:
            suid, sgid = squash
            self._squash_id = (int(suid), int(sgid), (int(sgid),))
        self._idcache = {}

    def attach(self, ctx):
        node = RealNode(self, self.root_entry, None, S_IFDIR)
        node.qid = self._qid(os.fstat(self.root_fd))
        return node

    def close(self):
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None

    # --- identity ---------------------------------------------------------------
    def _want(self, ctx):
        if self._squash_id is not None:
            return self._squash_id
        uid = None if ctx is None else ctx.uid
        if uid is None:
            return identity.OWN
        groups = ctx.groups
        key = (uid, ctx.gid, groups if type(groups) is tuple else tuple(groups or ()))
        ident = self._idcache.get(key)
        if ident is None:
            ident = identity.lookup(*key)
            if len(self._idcache) > 4096:
                self._idcache.clear()
            self._idcache[key] = ident
        return ident

    def _acting_uid(self, ctx):
        return self._want(ctx)[0] if self._switch else identity.OWN[0]

    # --- paths --------------------------------------------------------------------
    def _path(self, e):
        if e.gen == self.gen:
            return e.path
        if e.dead:
            raise error(errno.ENOENT)
        p = e.parent
        if p is None:
            path = b"."
        else:
            pp = self._path(p)
            path = e.bname if pp == b"." else pp + b"/" + e.bname
        e.path = path
        e.gen = self.gen
        return path

    def _open(self, e, flags, mode=0):
        return self._resolve(self.root_fd, self._path(e), flags, mode)

    def _child(self, e, name, bname):
        key = (e, name)
        c = self._entries.get(key)
        if c is None:
            c = _Entry(e, name, bname)
            self._entries[key] = c
        return c

    def _kill(self, e):
        e.dead = True
        e.gen = -1

    def _removed(self, dir_e, name):
        c = self._entries.pop((dir_e, name), None)
        if c is not None:
            self.gen += 1
            self._kill(c)

    def _moved(self, odir, oname, ndir, nname):
        self.gen += 1
        src = self._entries.pop((odir, oname), None)
        tgt = self._entries.pop((ndir, nname), None)
        if tgt is not None and tgt is not src:
            self._kill(tgt)
        if src is not None:
            src.parent = ndir
            src.name = nname
            src.bname = nname.encode("utf-8", "surrogateescape")
            self._entries[(ndir, nname)] = src

    def _rename(self, odir, oname, ndir, nname):
        sfd = self._open(odir, ODIR)
        try:
            dfd = sfd if ndir is odir else self._open(ndir, ODIR)
            try:
                same = False
                try:
                    s2 = os.stat(nname, dir_fd=dfd, follow_symlinks=False)
                    s1 = os.stat(oname, dir_fd=sfd, follow_symlinks=False)
                    same = s1.st_ino == s2.st_ino and s1.st_dev == s2.st_dev
                except OSError:
                    pass
                os.rename(oname, nname, src_dir_fd=sfd, dst_dir_fd=dfd)
            finally:
                if dfd != sfd:
                    os.close(dfd)
        finally:
            os.close(sfd)
        if not same:                      # renaming a hard link onto itself does nothing
            self._moved(odir, oname, ndir, nname)

    # --- qids ---------------------------------------------------------------------
    def _qpath(self, dev, ino):
        idx = self._dev_index.get(dev)
        if idx is None:
            idx = self._dev_index[dev] = len(self._dev_index)
        if idx < 0x7FFF and ino < 0x1000000000000:
            return (idx << 48) | ino
        key = (dev, ino)
        path = self._big.get(key)
        if path is None:
            path = self._big[key] = (1 << 63) | (len(self._big) + 1)
        return path

    def _qid(self, st):
        idx = self._dev_index.get(st.st_dev)
        ino = st.st_ino
        if idx is not None and idx < 0x7FFF and ino < 0x1000000000000:
            path = (idx << 48) | ino
        else:
            path = self._qpath(st.st_dev, ino)
        fmt = st.st_mode & S_IFMT
        if fmt == S_IFREG:
            return Qid(QTFILE, (st.st_mtime_ns ^ (st.st_size << 8)) & 0xFFFFFFFF, path)
        if fmt == S_IFDIR:
            return Qid(QTDIR, 0, path)
        if fmt == S_IFLNK:
            return Qid(QTSYMLINK, 0, path)
        return Qid(QTFILE, 0, path)

    def _attr(self, st):
        return Attr(self._qid(st), st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev,
                    st.st_size, st.st_blksize, st.st_blocks, st.st_atime_ns, st.st_mtime_ns,
                    st.st_ctime_ns)

    def _lstat(self, e):
        if e is self.root_entry:
            return os.fstat(self.root_fd)
        return self._lstat_path(self._path(e))

    def _lstat_path(self, path):
        fd = self._resolve(self.root_fd, path, OPATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def _check_rw(self):
        if self.read_only:
            raise error(errno.EROFS)

    def _check_nodev(self, mode):
        """EACCES for a device of an export without allow_devices (mount's nodev)."""
        if (mode & S_IFMT) in _DEVICES and not self.allow_devices:
            raise error(errno.EACCES, "device files cannot be opened in this export (the "
                        "server runs without --allow-devices)")

    def _xattr_denied(self, uid, name, write):
        """Capabilities that fsuid does not drop (CAP_SYS_ADMIN, CAP_SETFCAP)."""
        if not self._switch or uid == 0:
            return False
        if name.startswith("trusted."):
            return True
        return write and name.startswith("security.")


_NEVER_BLOCK = frozenset((_stat.S_IFREG, _stat.S_IFDIR, _stat.S_IFLNK))


class RealNode(Node):
    __slots__ = ("fs", "entry", "qid", "fd", "_fmt", "_seekable", "_append", "_acc", "_snap")

    def __init__(self, fs, entry, qid=None, fmt=None):
        self.fs = fs
        self.entry = entry
        self.qid = qid if qid is not None else Qid(0, 0, 0)
        self.fd = None
        self._snap = None
        self._fmt = fmt

    @property
    def may_block(self):
        # regular files, directories and symlinks never wait (the core may answer them
        # inline); FIFOs, devices and sockets can
        return self._fmt not in _NEVER_BLOCK

    def __repr__(self):
        return "RealNode(%r, fd=%r)" % (self.entry.path or self.entry.name, self.fd)

    @property
    def name(self):
        return "/" if self.entry.parent is None else self.entry.name

    def _is_root(self):
        return self.entry.parent is None

    def _parent_fd(self):
        """O_PATH fd of this node's directory (caller closes) and this node's name."""
        e = self.entry
        if e.parent is None:
            raise error(errno.EBUSY)
        return self.fs._open(e.parent, ODIR), e.name

    # --- name space -------------------------------------------------------------
    @_as_user
    def walk(self, ctx, names):
        fs = self.fs
        e = self.entry
        isdir = None
        out = []
        for name in names:
            try:
                if isinstance(name, (bytes, bytearray)):
                    name = os.fsdecode(bytes(name))
                if name == "." or name == "..":
                    if isdir is None:
                        st = os.fstat(self.fd) if self.fd is not None else fs._lstat(e)
                        isdir = (st.st_mode & S_IFMT) == S_IFDIR
                    if not isdir:
                        raise error(errno.ENOTDIR)
                    if name == ".." and e.parent is not None:
                        e = e.parent
                    if e.dead:
                        raise error(errno.ENOENT)
                else:
                    if not name or "/" in name or "\0" in name:
                        raise error(errno.ENOENT if name else errno.EINVAL)
                    e = fs._child(e, name, name.encode("utf-8", "surrogateescape"))
                st = fs._lstat(e)
            except OSError:
                if not out:
                    raise
                break
            isdir = (st.st_mode & S_IFMT) == S_IFDIR
            out.append(RealNode(fs, e, fs._qid(st), st.st_mode & S_IFMT))
        return out

    def clone(self, ctx):
        return RealNode(self.fs, self.entry, self.qid, self._fmt)

    # --- attributes ---------------------------------------------------------------
    def getattr(self, ctx):
        fd = self.fd
        fs = self.fs
        st = os.fstat(fd) if fd is not None else self._lstat(ctx)
        a = fs._attr(st)
        self.qid = a.qid
        return a

    @_as_user
    def _lstat(self, ctx):
        return self.fs._lstat(self.entry)

    def setattr(self, ctx, sa):
        self.fs._check_rw()
        self._setattr(ctx, sa)

    @_as_user
    def _setattr(self, ctx, sa):
        fs = self.fs
        uid = -1 if sa.uid in _NOID else sa.uid
        gid = -1 if sa.gid in _NOID else sa.gid
        chown = uid != -1 or gid != -1
        times = sa.atime is not None or sa.mtime is not None
        fd = self.fd
        if fd is not None:
            if chown:
                os.fchown(fd, uid, gid)
            if sa.mode is not None:
                os.fchmod(fd, sa.mode & 0o7777)
            if sa.size is not None:
                self._ftruncate(sa.size)
            if times:
                utimens(fd, None, sa.atime, sa.mtime, 0)
            return
        opath = fs._resolve(fs.root_fd, fs._path(self.entry), OPATH) \
            if not self._is_root() else os.open(".", ODIR, dir_fd=fs.root_fd)
        try:
            st = os.fstat(opath)
            if (st.st_mode & S_IFMT) == S_IFLNK:
                if sa.mode is not None:
                    raise error(errno.EOPNOTSUPP)
                if sa.size is not None:
                    raise error(errno.EINVAL)
                pfd, name = self._parent_fd()
                try:
                    if chown:
                        os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
                    if times:
                        utimens(pfd, name.encode("utf-8", "surrogateescape"), sa.atime,
                                 sa.mtime, AT_SYMLINK_NOFOLLOW)
                finally:
                    os.close(pfd)
                return
            proc = "/proc/self/fd/%d" % opath
            if chown:
                os.chown(proc, uid, gid)
            if sa.mode is not None:
                os.chmod(proc, sa.mode & 0o7777)
            if sa.size is not None:
                if (st.st_mode & S_IFMT) == S_IFDIR:
                    raise error(errno.EISDIR)
                os.truncate(proc, sa.size)
            if times:
                utimens(AT_FDCWD, proc.encode(), sa.atime, sa.mtime, 0)
        finally:
            os.close(opath)

    def _ftruncate(self, size):
        fd = self.fd
        if self._acc != L_O_RDONLY:
            os.ftruncate(fd, size)
            return
        if self._fmt == S_IFDIR:
            raise error(errno.EISDIR)
        wfd = os.open("/proc/self/fd/%d" % fd, os.O_WRONLY | O_CLOEXEC | os.O_NONBLOCK)
        try:
            os.ftruncate(wfd, size)
        finally:
            os.close(wfd)

    @_as_user
    def statfs(self, ctx):
        fs = self.fs
        fd = self.fd
        if fd is None:
            fd = fs._open(self.entry, OPATH)
            close = True
        else:
            close = False
        try:
            try:
                b = fstatfs(fd)
                return StatFS(b.f_type & 0xFFFFFFFF, b.f_bsize, b.f_blocks, b.f_bfree,
                              b.f_bavail, b.f_files, b.f_ffree,
                              (b.f_fsid[0] & 0xFFFFFFFF) | ((b.f_fsid[1] & 0xFFFFFFFF) << 32),
                              b.f_namelen)
            except (AttributeError, OSError):
                v = os.fstatvfs(fd)
                return StatFS(bsize=v.f_bsize, blocks=v.f_blocks, bfree=v.f_bfree,
                              bavail=v.f_bavail, files=v.f_files, ffree=v.f_ffree,
                              fsid=v.f_fsid, namelen=v.f_namemax)
        finally:
            if close:
                os.close(fd)

    # --- I/O ------------------------------------------------------------------------
    def open(self, ctx, flags):
        fs = self.fs
        acc = flags & L_O_ACCMODE
        if fs.read_only and (acc != L_O_RDONLY or flags & L_O_TRUNC):
            raise error(errno.EROFS)
        fs._check_nodev(self._fmt)      # before opening it: no open of a device
        self._open_as(ctx, oflags(flags), flags)

    @_as_user
    def _open_as(self, ctx, hflags, flags):
        fs = self.fs
        try:
            fd = fs._open(self.entry, hflags)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            fd = self._open_fifo_writer(hflags)
        self._opened(fd, flags)

    def _open_fifo_writer(self, hflags):
        """O_WRONLY open of a FIFO with no reader: wait (gevent) until one comes."""
        fs = self.fs
        if (fs._lstat(self.entry).st_mode & S_IFMT) != S_IFIFO:
            raise error(errno.ENXIO)
        delay = 0.01
        while True:
            _sleep(delay)
            delay = min(delay * 2, 0.25)
            try:
                return fs._open(self.entry, hflags)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise

    def _opened(self, fd, flags):
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        fmt = st.st_mode & S_IFMT
        if fmt in _DEVICES and not self.fs.allow_devices:
            os.close(fd)
            self.fs._check_nodev(fmt)
        if self.fd is not None:
            self.close(None)
        self.fd = fd
        self._fmt = fmt
        self._seekable = fmt in (S_IFREG, S_IFDIR, S_IFBLK)
        self._append = bool(flags & L_O_APPEND)
        self._acc = flags & L_O_ACCMODE
        self._snap = None
        self.qid = self.fs._qid(st)

    def read(self, ctx, offset, count):
        fd = self.fd
        if fd is None:
            raise error(errno.EBADF)
        if self._seekable:
            if offset > _OFF_MAX:
                raise error(errno.EINVAL, "offset beyond the largest file offset")
            return os.pread(fd, count, offset)
        if self._fmt == S_IFIFO:
            # a blocking open would have waited for a writer: wait for data, or for the
            # hang-up of a writer that came and went (epoll reports nothing before that)
            _wait(fd, False)
        while True:
            try:
                return os.read(fd, count)
            except BlockingIOError:
                _wait(fd, False)

    def write(self, ctx, offset, data):
        fd = self.fd
        if fd is None:
            raise error(errno.EBADF)
        if self._seekable:
            if offset > _OFF_MAX:
                raise error(errno.EINVAL, "offset beyond the largest file offset")
            if self.fs._switch and os.fstat(fd).st_mode & _SUID_SGID:
                return self._write_as(ctx, fd, offset, data)
            if self._append:
                return os.write(fd, data)
            return os.pwrite(fd, data, offset)
        while True:
            try:
                return os.write(fd, data)
            except BlockingIOError:
                _wait(fd, True)

    @_as_user
    def _write_as(self, ctx, fd, offset, data):
        # as the user, so that the write clears setuid/setgid bits as the kernel would
        # for that user (the only effect of a write that depends on the writer)
        if self._append:
            return os.write(fd, data)
        return os.pwrite(fd, data, offset)

    def readdir(self, ctx, offset, count):
        fd = self.fd
        if fd is None:
            raise error(errno.EBADF)
        if self._fmt != S_IFDIR:
            raise error(errno.ENOTDIR)
        fs = self.fs
        snap = self._snap
        if snap is None or offset == 0:
            snap = self._snap = self._snapshot()
        cookies, ents = snap
        i = bisect.bisect_right(cookies, offset)
        n = len(ents)
        out = []
        used = 0
        qid_of = fs._qid
        stat = os.stat
        dev = None
        while i < n:
            cookie, name, ino, dtype = ents[i]
            i += 1
            size = 24 + len(name.encode("utf-8", "surrogateescape"))
            if out and used + size > count:
                # never split entries of one cookie (a hash collision) across replies
                while len(out) > 1 and out[-1].offset == cookie:
                    out.pop()
                break
            try:
                if cookie == 1:
                    st = os.fstat(fd)
                elif cookie == 2:
                    st = os.fstat(fd) if self._is_root() else \
                        stat("..", dir_fd=fd, follow_symlinks=False)
                else:
                    st = stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue                  # deleted since the snapshot
            except OSError:               # e.g. no search permission: what getdents said
                if dev is None:
                    dev = os.fstat(fd).st_dev
                qt = QTDIR if dtype == 4 else QTSYMLINK if dtype == 10 else QTFILE
                out.append(Dirent(Qid(qt, 0, fs._qpath(dev, ino)), cookie, dtype, name))
                used += size
                continue
            out.append(Dirent(qid_of(st), cookie, dtype_of_mode(st.st_mode), name))
            used += size
        return out

    def _snapshot(self):
        fd = self.fd
        os.lseek(fd, 0, os.SEEK_SET)
        ents = [(1, ".", 0, 4), (2, "..", 0, 4)]
        mask = (1 << 63) - 1
        with os.scandir(fd) as it:
            for d in it:
                name = d.name
                c = hash(name) & mask
                if c < 3:
                    c += 3
                try:
                    dt = (4 if d.is_dir(follow_symlinks=False) else
                          10 if d.is_symlink() else
                          8 if d.is_file(follow_symlinks=False) else 0)
                except OSError:
                    dt = 0
                ents.append((c, name, d.inode(), dt))
        os.lseek(fd, 0, os.SEEK_SET)
        ents.sort()
        return [t[0] for t in ents], ents

    def fsync(self, ctx, datasync=0):
        fd = self.fd
        if fd is None:
            return
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    def close(self, ctx):
        fd = self.fd
        self.fd = None
        self._snap = None
        if fd is not None:
            os.close(fd)

    # --- creation and removal ---------------------------------------------------------
    def _apply_gid(self, fd, name, st, gid):
        """chgrp a freshly made file to the requested gid, where permitted."""
        if gid in _NOID or gid == st.st_gid:
            return st
        try:
            if fd is not None:
                os.fchown(fd, -1, gid)
                return os.fstat(fd)
            os.chown(name[1], -1, gid, dir_fd=name[0], follow_symlinks=False)
            return os.stat(name[1], dir_fd=name[0], follow_symlinks=False)
        except PermissionError:
            return st

    @_as_user
    def create(self, ctx, name, flags, mode, gid):
        fs = self.fs
        name, bname = _checkname(name)
        fs._check_rw()
        dpath = fs._path(self.entry)
        cpath = bname if dpath == b"." else dpath + b"/" + bname
        hflags = (oflags(flags) & ~O_DIRECTORY) | os.O_CREAT
        created = True
        old = os.umask(0)
        try:
            try:
                fd = fs._resolve(fs.root_fd, cpath, hflags | os.O_EXCL, mode & 0o7777)
            except FileExistsError:
                if flags & L_O_EXCL:
                    raise
                created = False
                if not fs.allow_devices:
                    fs._check_nodev(fs._lstat_path(cpath).st_mode)
                fd = fs._resolve(fs.root_fd, cpath, hflags & ~os.O_CREAT)
        finally:
            os.umask(old)
        try:
            if created:
                self._apply_gid(fd, None, os.fstat(fd), gid)
                fs._removed(self.entry, name)     # fids of an earlier file of that name
        except BaseException:
            os.close(fd)
            raise
        node = RealNode(fs, fs._child(self.entry, name, bname), None, S_IFREG)
        node._opened(fd, flags)
        return node

    @_as_user
    def _make(self, ctx, name, gid, fn):
        fs = self.fs
        name, bname = _checkname(name)
        fs._check_rw()
        dfd = fs._open(self.entry, ODIR)
        try:
            old = os.umask(0)
            try:
                fn(name, dfd)
            finally:
                os.umask(old)
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            st = self._apply_gid(None, (dfd, name), st, gid)
        finally:
            os.close(dfd)
        fs._removed(self.entry, name)     # a stale entry of an earlier file of that name
        return fs._qid(st)

    def mkdir(self, ctx, name, mode, gid):
        return self._make(ctx, name, gid,
                          lambda n, d: os.mkdir(n, mode & 0o7777, dir_fd=d))

    def symlink(self, ctx, name, target, gid):
        if isinstance(target, (bytes, bytearray)):
            target = os.fsdecode(bytes(target))
        if not target or "\0" in target:
            raise error(errno.EINVAL if target else errno.ENOENT)
        return self._make(ctx, name, gid, lambda n, d: os.symlink(target, n, dir_fd=d))

    def mknod(self, ctx, name, mode, major, minor, gid):
        fmt = mode & S_IFMT
        if fmt == 0:
            mode |= S_IFREG
        elif fmt == S_IFDIR or fmt == S_IFLNK:
            raise error(errno.EINVAL)
        elif fmt in _DEVICES and not self.fs.allow_devices:
            raise error(errno.EPERM, "device files cannot be made in this export (the "
                        "server runs without --allow-devices)")
        try:
            dev = os.makedev(major, minor)
        except OverflowError:     # as glibc's EINVAL for a number the kernel cannot hold
            raise error(errno.EINVAL, "device number out of range") from None
        return self._make(ctx, name, gid, lambda n, d: os.mknod(
            n, mode & (S_IFMT | 0o7777), dev, dir_fd=d))

    @_as_user
    def link(self, ctx, target, name):
        fs = self.fs
        name, bname = _checkname(name)
        fs._check_rw()
        if not isinstance(target, RealNode) or target.fs is not fs:
            raise error(errno.EXDEV)
        tpfd, tname = target._parent_fd()
        try:
            dfd = fs._open(self.entry, ODIR)
            try:
                os.link(tname, name, src_dir_fd=tpfd, dst_dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(dfd)
        finally:
            os.close(tpfd)
        fs._removed(self.entry, name)

    @_as_user
    def renameat(self, ctx, oldname, newdir, newname):
        fs = self.fs
        oldname, _ = _checkname(oldname)
        newname, _ = _checkname(newname)
        fs._check_rw()
        if not isinstance(newdir, RealNode) or newdir.fs is not fs:
            raise error(errno.EXDEV)
        fs._rename(self.entry, oldname, newdir.entry, newname)

    @_as_user
    def rename(self, ctx, newdir, newname):
        fs = self.fs
        newname, _ = _checkname(newname)
        fs._check_rw()
        if newdir is not None and (not isinstance(newdir, RealNode) or newdir.fs is not fs):
            raise error(errno.EXDEV)
        e = self.entry
        if e.parent is None:
            raise error(errno.EBUSY)
        if e.dead:
            raise error(errno.ENOENT)
        fs._rename(e.parent, e.name, e.parent if newdir is None else newdir.entry, newname)

    @_as_user
    def unlinkat(self, ctx, name, flags):
        fs = self.fs
        name, _ = _checkname(name)
        fs._check_rw()
        dfd = fs._open(self.entry, ODIR)
        try:
            if flags & AT_REMOVEDIR:
                os.rmdir(name, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
        fs._removed(self.entry, name)

    @_as_user
    def remove(self, ctx):
        fs = self.fs
        fs._check_rw()
        e = self.entry
        if e.parent is None:
            raise error(errno.EBUSY)
        pfd, name = self._parent_fd()
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if (st.st_mode & S_IFMT) == S_IFDIR:
                os.rmdir(name, dir_fd=pfd)
            else:
                os.unlink(name, dir_fd=pfd)
        finally:
            os.close(pfd)
        fs._removed(e.parent, name)

    @_as_user
    def readlink(self, ctx):
        if self._is_root():
            raise error(errno.EINVAL)
        pfd, name = self._parent_fd()
        try:
            return os.readlink(name, dir_fd=pfd)
        finally:
            os.close(pfd)

    # --- locks --------------------------------------------------------------------------
    def lock(self, ctx, type, flags, start, length, proc_id, client_id):
        fd = self.fd
        if fd is None:
            raise error(errno.EBADF)
        try:
            lt = LTYPE[type]
        except KeyError:
            raise error(errno.EINVAL) from None
        start, length = lock_range(start, length)
        try:
            fcntl.fcntl(fd, F_OFD_SETLK, struct.pack(FLOCK, lt, os.SEEK_SET, start, length, 0))
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return LOCK_BLOCKED
            raise
        return LOCK_SUCCESS

    def getlock(self, ctx, type, start, length, proc_id, client_id):
        fd = self.fd
        if fd is None:
            raise error(errno.EBADF)
        try:
            lt = LTYPE[type]
        except KeyError:
            raise error(errno.EINVAL) from None
        if lt == fcntl.F_UNLCK:
            return (LOCK_TYPE_UNLCK, start, length, proc_id, client_id)
        s, ln = lock_range(start, length)
        r = fcntl.fcntl(fd, F_OFD_GETLK, struct.pack(FLOCK, lt, os.SEEK_SET, s, ln, 0))
        rt, _, rs, rl, rpid = struct.unpack(FLOCK, r)
        if rt == fcntl.F_UNLCK:
            return (LOCK_TYPE_UNLCK, start, length, proc_id, client_id)
        return (LTYPE_BACK[rt], rs, rl, rpid if rpid > 0 else 0, "")

    # --- xattrs -----------------------------------------------------------------------------
    def _xattr(self, ctx, fn, *args):
        """Run an os.*xattr function on this node, through its fd when open."""
        fd = self.fd
        if fd is not None:
            return fn(fd, *args)
        fs = self.fs
        if self._is_root():
            return fn("/proc/self/fd/%d" % fs.root_fd, *args)
        pfd, name = self._parent_fd()
        try:
            return fn("/proc/self/fd/%d/%s" % (pfd, name), *args, follow_symlinks=False)
        finally:
            os.close(pfd)

    @_as_user
    def listxattr(self, ctx):
        fs = self.fs
        uid = fs._acting_uid(ctx)
        names = self._xattr(ctx, os.listxattr)
        if fs._switch and uid != 0:
            names = [n for n in names if not n.startswith("trusted.")]
        return names

    @_as_user
    def getxattr(self, ctx, name):
        fs = self.fs
        uid = fs._acting_uid(ctx)
        if fs._xattr_denied(uid, name, False):
            raise error(errno.ENODATA)
        return self._xattr(ctx, os.getxattr, name)

    @_as_user
    def setxattr(self, ctx, name, value, flags):
        fs = self.fs
        fs._check_rw()
        uid = fs._acting_uid(ctx)
        if fs._xattr_denied(uid, name, True):
            raise error(errno.EPERM)
        self._xattr(ctx, os.setxattr, name, bytes(value), flags)

    @_as_user
    def removexattr(self, ctx, name):
        fs = self.fs
        fs._check_rw()
        uid = fs._acting_uid(ctx)
        if fs._xattr_denied(uid, name, True):
            raise error(errno.EPERM)
        self._xattr(ctx, os.removexattr, name)
