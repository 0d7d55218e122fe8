"""Real-file export backend: serve a directory of the host's file system.

    fs = RealFS("/srv/export", read_only=False, squash=None, allow_devices=False)
    root = fs.attach(ctx)            # a Node (see nine.server.node)

Design
------
Files, not paths.  Every node holds its file: an O_PATH fd of it (a Handle of
nine.server.handles, shared by the fids that reached that file by the same name in the
same directory), never a path from the export root.  A walk opens one name at a time
relative to the fd of the directory it walks from (openat2 with RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, or, where openat2 is missing (ENOSYS, or
EPERM from an old seccomp filter), openat with O_NOFOLLOW: both refuse to follow a
symlink, and a name is never '', '.', '..' nor holds a '/').  So no path is ever longer
than one name (a tree deeper than PATH_MAX is served whole), and a fid keeps its file
when a local process renames it or a directory above it: it still reads and stats that
file, walks from a renamed directory still work, and a new file put at the old name is
not what the fid sees.

Operations act on the node's own fd, or on its directory's fd and a name:
  - getattr, statfs: fstat/fstatfs of the fd; readlink: readlinkat(fd, "");
  - open: a reopen of /proc/self/fd/N (the magic link names the inode; the kernel checks
    the acting user's permission; a symlink gives ELOOP);
  - setattr: fchownat(fd, "", AT_EMPTY_PATH), and chmod, truncate, utimensat and the
    xattr calls through /proc/self/fd/N (of a symlink: the link itself, never its target);
  - link: linkat of /proc/self/fd/N (AT_SYMLINK_FOLLOW follows the magic link only);
  - create, mkdir, symlink, mknod, unlinkat, renameat: *at calls on the directory's fd;
  - remove and rename of the node itself (Tremove, Trename): its directory's fd and its
    name, first checked to still name its file (else ENOENT: a local process moved it).
/proc must be mounted.

Confinement.  Nothing is resolved but one plain name below an fd of the export, and '..'
is lexical: the directory the fid was walked from ('..' at the root stays at the root),
never the physical parent.  A directory that a local process moves out of the export
stays reachable through the fids that already held it (as an open directory would),
never from the export's names.

Names and renames (nine.server.handles): a walk reuses a fid's Handle only while the
name still names the same inode; a rename through this server moves the Handle (every
fid of it, and of everything below a renamed directory, then knows its new name); a
removal forgets the name.  A fid whose file has lost its last name (st_nlink 0) and is
not open answers ENOENT to getattr, setattr and open, as diod and QEMU do (they name
files by path); xattrs and statfs still reach it, and an open fid stays fully usable.

The fd budget (nine.server.handles): one O_PATH fd per distinct file that fids hold
(bounded by the fids of the connections), plus at most `idle_fds` (1024) of files no
fid holds any longer (directories above the fids, files just clunked), least recently
used closed first and opened again by name when needed; an open fid holds one more fd,
its open file.  RealFS raises the soft RLIMIT_NOFILE to the hard limit; an open beyond
it answers EMFILE.

Open nodes.  getattr, setattr, read, write, fsync, xattrs, statfs and locks of an open
node use its open fd, so a file opened and then unlinked stays fully usable.  A truncate
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

readdir streams from the open directory's fd: each batch lseeks to its offset and reads
getdents64 records until `count` is filled, so a listing costs one buffer (at most
64 KiB) while it is built and nothing between batches, whatever the directory's size.
Offsets are the file system's own d_off (as diod and QEMU pass them): ext4, xfs and
btrfs (hashed or indexed offsets) and tmpfs since Linux 6.6 keep them valid across
batches, concurrent creates and deletes, a re-open, even another fid (older tmpfs only
within one fid's sequential reads).  Entries that share an offset (a hash collision)
are never split across two replies.  Each entry is lstat'ed relative to the open fd for
its qid (real qid, mount points included; done as the server: the open already passed
the permission check); names deleted meanwhile are skipped.  A batch lets other
greenlets run every 32 entries, so listing a huge directory never holds up the other
clients for long (an open directory's node therefore has may_block = True).

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

Groups.  A 9P2000.L attach carries a uid only: the groups are the group database's.
What the kernel decides with those credentials is decided by the kernel, acting as the
user: chown to a group the user is a member of, the clearing of the setgid bit by chmod
and chown and of setuid/setgid by writes.  create, mkdir, symlink and mknod carry the
creator's group (the client's fsgid, or a setgid directory's group): they are made with
that fsgid when the user may act in that group (a member, or root), so that the kernel
applies the setgid-directory and S_ISGID rules as for a local process; otherwise the
file gets the user's own group and the request's group is applied with a chown where
permitted (silently left otherwise).  What cannot be done: honour supplementary groups
the client's process has but the server's group database does not list (chown to them,
access through their group permissions, files made in them), since .L never sends
them; a user the database does not know has only its gid (ctx.gid, else its uid).

New files (create, mkdir, symlink, mknod) are made with umask 0 (the client applies its
umask; the umask is switched around the call only) and owned by the acting user.

Locks: OFD locks (F_OFD_SETLK / F_OFD_GETLK) on the node's open fd, so two fids (two
opens) conflict like two processes; a lock that cannot be had now answers LOCK_BLOCKED (the
kernel client retries).  The holder of a conflicting lock is not known to OFD locks:
getlock reports proc_id 0 and an empty client_id.

unlinkat without AT_REMOVEDIR of an empty directory removes it (the kernel never sends
that: its VFS refuses unlink(2) of a directory first; p9fs removes directories so, and
unpfs accepts it); a directory that is not empty still gets Linux's EISDIR.

read_only: every mutating operation, and any open for writing or with O_TRUNC, gets EROFS.

Devices (a mount's `nodev`): unless allow_devices, mknod of a block or character device
gets EPERM, and opening an existing one (Topen, or Tlcreate of an existing name) gets
EACCES, so that a client cannot make or reach /dev/sda or /dev/mem through a copy of the
node in an export (root's mknod did make them).  FIFOs and sockets are not devices.  The
open is refused before the device is opened when the node's type is known from its walk
(opening some devices acts: a watchdog arms, a tape rewinds), and checked again on the
opened fd.  Stat, chmod, chown, rename, link and remove of a device file stay allowed,
as under nodev.
"""

import functools
import errno
import fcntl
import os
import stat as _stat
import struct

from ..protocol import Qid, QTDIR, QTSYMLINK, QTFILE
from ..protocol.const import (
    L_O_ACCMODE, L_O_RDONLY, L_O_EXCL, L_O_TRUNC, L_O_APPEND, LOCK_TYPE_UNLCK, LOCK_SUCCESS,
    LOCK_BLOCKED, AT_REMOVEDIR)
from . import identity
from .handles import Handles
from .listing import entries
from .node import Node, Attr, StatFS, Dirent, error, dtype_of_mode
from .syscalls import (
    O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, OPATH, ODIR, AT_FDCWD, AT_SYMLINK_NOFOLLOW,
    AT_EMPTY_PATH, FLOCK, LTYPE, LTYPE_BACK, F_OFD_GETLK, F_OFD_SETLK, fchownat, fstatfs,
    lock_range, oflags, raise_nofile, utimens, openat2 as _openat2)

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
_EMPTY = AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW


def _as_user(method, gid_at=None, setattr_at=None):
    """Run a node method as the identity its ctx asks for (with args[gid_at] as the
    fsgid where the user may act in that group; with trust_client_groups, the group a
    chown in the Setattr args[setattr_at] names is one of the user's for the call), and
    restore the identity in force before it (so nested calls and the rest of the process
    are unaffected)."""
    @functools.wraps(method)
    def wrapper(self, ctx, *args):
        fs = self.fs
        if fs._switch:
            want = fs._want(ctx, None if gid_at is None else args[gid_at])
            if setattr_at is not None and fs.trust_client_groups:
                g = args[setattr_at].gid      # the client's kernel checked the caller is in it
                if g not in _NOID and g != want[1] and g not in want[2]:
                    want = (want[0], want[1], want[2] + (g,))
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


def _as_creator(gid_at):
    """_as_user for a method whose args[gid_at] is the group the new file asks for."""
    return lambda method: _as_user(method, gid_at)


def _proc(fd):
    """The magic link of fd: it names the inode, whatever its path is now."""
    return "/proc/self/fd/%d" % fd


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


def _openat(dirfd, name, flags, mode=0):
    """One name below dirfd (flags carry O_NOFOLLOW): the fallback of openat2."""
    return os.open(name, flags, mode, dir_fd=dirfd)


# --------------------------------------------------------------------------------------

class RealFS:
    """A directory of the host exported as a 9P file tree."""

    def __init__(self, root_dir, read_only=False, squash=None, *, use_openat2=None,
                 restore_identity=True, allow_devices=False, idle_fds=1024,
                 trust_client_groups=False):
        if trust_client_groups and squash is not None:
            raise ValueError("trust_client_groups: a squashed export acts as one user")
        self.root_dir = os.path.abspath(root_dir)
        self.read_only = bool(read_only)
        self.allow_devices = bool(allow_devices)
        raise_nofile()
        root_fd = os.open(root_dir, ODIR & ~O_NOFOLLOW)
        st = os.fstat(root_fd)
        if use_openat2 is None:
            try:
                os.close(_openat2(root_fd, b".", ODIR))
                use_openat2 = True
            except OSError as e:
                if e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                    os.close(root_fd)
                    raise
                use_openat2 = False
        self._step = _openat2 if use_openat2 else _openat
        self.uses_openat2 = use_openat2
        # qid mapping
        self._dev_index = {st.st_dev: 0}
        self._big = {}
        # files and their fds (nine.server.handles)
        self.handles = Handles(root_fd, st, self._step, idle_fds)
        # identity
        self._switch = os.geteuid() == 0
        self.restore_identity = bool(restore_identity)
        self.squash = squash
        self._squash_id = None
        if squash is not None:
            suid, sgid = squash
            self._squash_id = (int(suid), int(sgid), (int(sgid),))
        self._idcache = {}
        #: take the group a create or a chown names as one of the user's for that call
        #: (the client's kernel checked it against the caller's groups: believed as far
        #: as the attach's uid is, docs/security.md)
        self.trust_client_groups = bool(trust_client_groups)

    @property
    def root_fd(self):
        return self.handles.root.fd

    def attach(self, ctx):
        return RealNode(self, self.handles.root, self._qid(os.fstat(self.root_fd)), S_IFDIR)

    def close(self):
        self.handles.close()

    # --- identity ---------------------------------------------------------------
    def _want(self, ctx, gid=None):
        if self._squash_id is not None:
            return self._squash_id
        uid = None if ctx is None else ctx.uid
        if uid is None:
            ident = identity.OWN
        else:
            groups = ctx.groups
            key = (uid, ctx.gid, groups if type(groups) is tuple else tuple(groups or ()))
            ident = self._idcache.get(key)
            if ident is None:
                ident = identity.lookup(*key)
                if len(self._idcache) > 4096:
                    self._idcache.clear()
                self._idcache[key] = ident
        if gid not in _NOID and gid != ident[1]:
            if ident[0] == 0 or gid in ident[2]:
                return (ident[0], gid, ident[2])   # make the new file in that group
            if self.trust_client_groups:
                return (ident[0], gid, ident[2] + (gid,))
        return ident

    def _acting_uid(self, ctx):
        return self._want(ctx)[0] if self._switch else identity.OWN[0]

    # --- renames ------------------------------------------------------------------
    def _rename(self, odir, oname, ndir, nname):
        hs = self.handles
        sfd = hs.fd(odir)
        dfd = hs.fd(ndir)
        s1 = same = None
        try:
            s1 = os.stat(oname, dir_fd=sfd, follow_symlinks=False)
            s2 = os.stat(nname, dir_fd=dfd, follow_symlinks=False)
            same = s1.st_ino == s2.st_ino and s1.st_dev == s2.st_dev
        except OSError:
            pass
        os.rename(oname, nname, src_dir_fd=sfd, dst_dir_fd=dfd)
        if not same:                      # renaming a hard link onto itself does nothing
            hs.moved(odir, oname, ndir, nname, s1)

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
    __slots__ = ("fs", "file", "held", "qid", "fd", "_fmt", "_seekable", "_append", "_acc")

    def __init__(self, fs, file, qid, fmt):
        fs.handles.pin(file)
        self.fs = fs
        self.file = file
        self.held = True
        self.qid = qid
        self.fd = None
        self._fmt = fmt

    @property
    def may_block(self):
        # regular files, directories and symlinks never wait (the core may answer them
        # inline); FIFOs, devices and sockets can, and so does the listing of an open
        # directory (it lets other greenlets run between chunks)
        fmt = self._fmt
        return fmt not in _NEVER_BLOCK or (fmt == S_IFDIR and self.fd is not None)

    def __repr__(self):
        return "RealNode(%r, fd=%r)" % (self.file.name, self.fd)

    @property
    def name(self):
        return self.file.name

    def _is_root(self):
        return self.file.parent is None

    # --- name space -------------------------------------------------------------
    @_as_user
    def walk(self, ctx, names):
        fs = self.fs
        f = self.file
        out = []
        try:
            for name in names:
                try:
                    if isinstance(name, (bytes, bytearray)):
                        name = os.fsdecode(bytes(name))
                    if name == "." or name == "..":
                        if f.fmt != S_IFDIR:
                            raise error(errno.ENOTDIR)
                        if name == ".." and f.parent is not None:
                            f = f.parent
                        st = fs.handles.stat(f)
                    else:
                        if not name or "/" in name or "\0" in name:
                            raise error(errno.ENOENT if name else errno.EINVAL)
                        f, st = fs.handles.lookup(f, name, name.encode("utf-8", "surrogateescape"))
                except OSError:
                    if not out:
                        raise
                    break
                out.append(RealNode(fs, f, fs._qid(st), st.st_mode & S_IFMT))
        finally:
            fs.handles.trim()
        return out

    def clone(self, ctx):
        return RealNode(self.fs, self.file, self.qid, self._fmt)

    # --- attributes ---------------------------------------------------------------
    def getattr(self, ctx):
        fd = self.fd
        fs = self.fs
        st = os.fstat(fd) if fd is not None else fs.handles.stat(self.file)
        a = fs._attr(st)
        self.qid = a.qid
        return a

    def setattr(self, ctx, sa):
        self.fs._check_rw()
        self._setattr(ctx, sa)

    @functools.partial(_as_user, setattr_at=0)
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
        f = self.file
        st = fs.handles.stat(f)
        fd = fs.handles.fd(f)
        fmt = st.st_mode & S_IFMT
        if fmt == S_IFLNK:
            if sa.mode is not None:
                raise error(errno.EOPNOTSUPP)
            if sa.size is not None:
                raise error(errno.EINVAL)
        if chown:
            fchownat(fd, b"", uid, gid, _EMPTY)
        if sa.mode is not None:
            os.chmod(_proc(fd), sa.mode & 0o7777)
        if sa.size is not None:
            if fmt == S_IFDIR:
                raise error(errno.EISDIR)
            os.truncate(_proc(fd), sa.size)
        if times:
            if fmt != S_IFLNK:
                utimens(AT_FDCWD, _proc(fd).encode(), sa.atime, sa.mtime, 0)
                return
            try:
                utimens(fd, b"", sa.atime, sa.mtime, _EMPTY)
            except OSError as e:
                if e.errno != errno.EINVAL:   # a kernel before 5.8: by name, checked
                    raise
                pfd, bname = fs.handles.named(f)
                utimens(pfd, bname, sa.atime, sa.mtime, AT_SYMLINK_NOFOLLOW)

    def _ftruncate(self, size):
        fd = self.fd
        if self._acc != L_O_RDONLY:
            os.ftruncate(fd, size)
            return
        if self._fmt == S_IFDIR:
            raise error(errno.EISDIR)
        wfd = os.open(_proc(fd), os.O_WRONLY | O_CLOEXEC | os.O_NONBLOCK)
        try:
            os.ftruncate(wfd, size)
        finally:
            os.close(wfd)

    def statfs(self, ctx):
        fd = self.fd
        if fd is None:
            fd = self.fs.handles.fd(self.file)
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

    # --- I/O ------------------------------------------------------------------------
    def open(self, ctx, flags):
        fs = self.fs
        acc = flags & L_O_ACCMODE
        if fs.read_only and (acc != L_O_RDONLY or flags & L_O_TRUNC):
            raise error(errno.EROFS)
        fs._check_nodev(self._fmt)      # before opening it: no open of a device
        self._open_as(ctx, oflags(flags) & ~O_NOFOLLOW, flags)

    @_as_user
    def _open_as(self, ctx, hflags, flags):
        fs = self.fs
        f = self.file
        fs.handles.stat(f)                     # ENOENT once removed, as by name
        if f.fmt == S_IFLNK:
            raise error(errno.ELOOP)
        try:
            fd = os.open(_proc(fs.handles.fd(f)), hflags)
        except OSError as e:
            if e.errno != errno.ENXIO or f.fmt != S_IFIFO:
                raise
            fd = self._open_fifo_writer(hflags)
        self._opened(fd, flags)

    def _open_fifo_writer(self, hflags):
        """O_WRONLY open of a FIFO with no reader: wait (gevent) until one comes."""
        fs = self.fs
        delay = 0.01
        while True:
            _sleep(delay)
            delay = min(delay * 2, 0.25)
            try:
                return os.open(_proc(fs.handles.fd(self.file)), hflags)
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
            os.close(self.fd)
        self.fd = fd
        self._fmt = fmt
        self._seekable = fmt in (S_IFREG, S_IFDIR, S_IFBLK)
        self._append = bool(flags & L_O_APPEND)
        self._acc = flags & L_O_ACCMODE
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
        if offset > _OFF_MAX:
            return []
        return entries(fd, offset, count, self._dirent)

    def _dirent(self, fd, ino, off, dtype, bname):
        """The Dirent of one getdents record (None when deleted since)."""
        fs = self.fs
        try:
            if bname == b".":
                st = os.fstat(fd)
            elif bname == b"..":
                st = os.fstat(fd) if self._is_root() else \
                    os.stat(b"..", dir_fd=fd, follow_symlinks=False)
            else:
                st = os.stat(bname, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError:                   # e.g. no search permission: what getdents said
            dev = os.fstat(fd).st_dev
            qt = QTDIR if dtype == 4 else QTSYMLINK if dtype == 10 else QTFILE
            return Dirent(Qid(qt, 0, fs._qpath(dev, ino)), off, dtype, os.fsdecode(bname))
        return Dirent(fs._qid(st), off, dtype_of_mode(st.st_mode), os.fsdecode(bname))

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
        try:
            if fd is not None:
                os.close(fd)
        finally:
            if self.held:
                self.held = False
                self.fs.handles.unpin(self.file)

    # --- creation and removal ---------------------------------------------------------
    def _apply_gid(self, fd, st, gid):
        """chgrp a freshly made file (its O_PATH or open fd) to the requested gid, where
        permitted (where it could not be made in that group)."""
        if gid in _NOID or gid == st.st_gid:
            return st
        try:
            fchownat(fd, b"", -1, gid, _EMPTY)
        except PermissionError:
            return st
        return os.fstat(fd)

    @_as_creator(3)
    def create(self, ctx, name, flags, mode, gid):
        fs = self.fs
        name, bname = _checkname(name)
        fs._check_rw()
        d = self.file
        dfd = fs.handles.fd(d)
        hflags = (oflags(flags) & ~O_DIRECTORY) | os.O_CREAT
        created = True
        old = os.umask(0)
        try:
            try:
                fd = fs._step(dfd, bname, hflags | os.O_EXCL, mode & 0o7777)
            except FileExistsError:
                if flags & L_O_EXCL:
                    raise
                created = False
                if not fs.allow_devices:
                    fs._check_nodev(os.stat(bname, dir_fd=dfd, follow_symlinks=False).st_mode)
                fd = fs._step(dfd, bname, hflags & ~os.O_CREAT)
        finally:
            os.umask(old)
        try:
            st = os.fstat(fd)
            if created:
                st = self._apply_gid(fd, st, gid)
            pfd = os.open(_proc(fd), OPATH & ~O_NOFOLLOW)    # the same inode, surely
            f = fs.handles.intern(d, name, bname, pfd, st)
        except BaseException:
            os.close(fd)
            raise
        node = RealNode(fs, f, None, st.st_mode & S_IFMT)
        try:
            node._opened(fd, flags)
        except BaseException:
            node.close(ctx)
            raise
        return node

    @_as_creator(1)
    def _make(self, ctx, name, gid, fn):
        fs = self.fs
        name, bname = _checkname(name)
        fs._check_rw()
        d = self.file
        dfd = fs.handles.fd(d)
        old = os.umask(0)
        try:
            fn(bname, dfd)
        finally:
            os.umask(old)
        fd = os.open(bname, OPATH, dir_fd=dfd)
        try:
            st = self._apply_gid(fd, os.fstat(fd), gid)
        finally:
            os.close(fd)
        fs.handles.forget(d, name)              # an earlier file of that name
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
        except OverflowError:     # glibc refuses a number the kernel cannot hold: EINVAL too
            raise error(errno.EINVAL, "device number %d, %d out of range" % (major, minor)) \
                from None
        return self._make(ctx, name, gid, lambda n, d: os.mknod(
            n, mode & (S_IFMT | 0o7777), dev, dir_fd=d))

    @_as_user
    def link(self, ctx, target, name):
        fs = self.fs
        name, bname = _checkname(name)
        fs._check_rw()
        if not isinstance(target, RealNode) or target.fs is not fs:
            raise error(errno.EXDEV)
        # the magic link names target's inode (a symlink itself: only the magic link
        # is followed); an inode with no name left cannot be linked (ENOENT)
        os.link(_proc(fs.handles.fd(target.file)), bname, dst_dir_fd=fs.handles.fd(self.file),
                follow_symlinks=True)
        fs.handles.forget(self.file, name)

    @_as_user
    def renameat(self, ctx, oldname, newdir, newname):
        fs = self.fs
        oldname, _ = _checkname(oldname)
        newname, _ = _checkname(newname)
        fs._check_rw()
        if not isinstance(newdir, RealNode) or newdir.fs is not fs:
            raise error(errno.EXDEV)
        fs._rename(self.file, oldname, newdir.file, newname)

    @_as_user
    def rename(self, ctx, newdir, newname):
        fs = self.fs
        newname, _ = _checkname(newname)
        fs._check_rw()
        if newdir is not None and (not isinstance(newdir, RealNode) or newdir.fs is not fs):
            raise error(errno.EXDEV)
        f = self.file
        fs.handles.named(f)
        fs._rename(f.parent, f.name, f.parent if newdir is None else newdir.file, newname)

    @_as_user
    def unlinkat(self, ctx, name, flags):
        fs = self.fs
        name, bname = _checkname(name)
        fs._check_rw()
        dfd = fs.handles.fd(self.file)
        if flags & AT_REMOVEDIR:
            os.rmdir(bname, dir_fd=dfd)
        else:
            try:
                os.unlink(bname, dir_fd=dfd)
            except IsADirectoryError as e:
                # lenient (p9fs, unpfs): an empty directory goes; any other keeps EISDIR
                try:
                    os.rmdir(bname, dir_fd=dfd)
                except OSError:
                    raise e from None
        fs.handles.forget(self.file, name)

    @_as_user
    def remove(self, ctx):
        fs = self.fs
        fs._check_rw()
        f = self.file
        pfd, bname = fs.handles.named(f)
        if f.fmt == S_IFDIR:
            os.rmdir(bname, dir_fd=pfd)
        else:
            os.unlink(bname, dir_fd=pfd)
        fs.handles.forget(f.parent, f.name)

    def readlink(self, ctx):
        f = self.file
        if f.fmt != S_IFLNK:
            raise error(errno.EINVAL)
        return os.readlink(b"", dir_fd=self.fs.handles.fd(f)).decode("utf-8", "surrogateescape")

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
        """Run an os.*xattr function on this node: its open fd, else its O_PATH fd's
        magic link (of a symlink: the link's own xattrs, never its target's)."""
        fd = self.fd
        if fd is not None:
            return fn(fd, *args)
        return fn(_proc(self.fs.handles.fd(self.file)), *args)

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
