"""Linux system calls the real-file backend needs beyond the os module, and the
translation of the wire's Linux (asm-generic) open flags and lock types to the host's.

  openat2(dirfd, path, flags, mode)      resolution confined beneath dirfd, no symlink
                                         followed in any component, no magic link
  utimens(dirfd, path, atime, mtime, flags)   utimensat/futimens with SetAttr.NOW
  fchownat(dirfd, path, uid, gid, flags) fchownat(2) (AT_EMPTY_PATH: the O_PATH fd itself)
  fstatfs(fd)                            the statfs(2) buffer (f_type and f_fsid included)
  getdents(fd, size)                     one getdents64(2): [(d_ino, d_off, d_type, name)]
  raise_nofile()                         the soft limit of open files up to the hard one
  oflags(lflags)                         wire open flags -> host flags to act on
  lock_range(start, length), LTYPE, LTYPE_BACK, FLOCK, F_OFD_SETLK, F_OFD_GETLK
                                         OFD locks
"""

import ctypes
import errno
import fcntl
import os
import resource
import struct

from ..protocol.const import (
    L_O_ACCMODE, L_O_TRUNC, L_O_APPEND, L_O_DSYNC, L_O_SYNC, L_O_DIRECTORY,
    LOCK_TYPE_RDLCK, LOCK_TYPE_WRLCK, LOCK_TYPE_UNLCK)
from .node import SetAttr, error

libc = ctypes.CDLL(None, use_errno=True)
_syscall = libc.syscall
_syscall.restype = ctypes.c_long

_SYS_OPENAT2 = 437                      # the same on every architecture

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

O_PATH = os.O_PATH
O_CLOEXEC = os.O_CLOEXEC
O_NOFOLLOW = os.O_NOFOLLOW
O_DIRECTORY = os.O_DIRECTORY
OPATH = O_PATH | O_NOFOLLOW | O_CLOEXEC                   # a handle on a name itself
ODIR = O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC      # a handle on a directory

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _StatfsBuf(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long),
                ("f_blocks", ctypes.c_ulong), ("f_bfree", ctypes.c_ulong),
                ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2),
                ("f_namelen", ctypes.c_long), ("f_frsize", ctypes.c_long),
                ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


_HOW_SIZE = ctypes.c_size_t(ctypes.sizeof(_OpenHow))
_c_int = ctypes.c_int
_c_char_p = ctypes.c_char_p
_byref = ctypes.byref
_get_errno = ctypes.get_errno
_SYSNR_OPENAT2 = ctypes.c_long(_SYS_OPENAT2)
_how_cache = {}


def oserror(e, path=None):
    """The OSError for errno e."""
    return OSError(e, os.strerror(e)) if path is None else OSError(e, os.strerror(e), path)


def openat2(dirfd, path, flags, mode=0):
    """openat2(dirfd, path, flags, mode) confined beneath dirfd, no symlinks at all."""
    how = _how_cache.get(flags) if not mode else None
    if how is None:
        how = _OpenHow(flags, mode, _RESOLVE)
        if not mode:
            _how_cache[flags] = how
    for _ in range(8):
        fd = _syscall(_SYSNR_OPENAT2, _c_int(dirfd), _c_char_p(path), _byref(how), _HOW_SIZE)
        if fd >= 0:
            return fd
        e = _get_errno()
        if e != errno.EAGAIN and e != errno.EINTR:
            raise oserror(e)
    raise oserror(errno.EAGAIN)


def utimens(dirfd, path, atime, mtime, flags):
    """Set atime and mtime (integer ns, SetAttr.NOW, or None to leave) of path relative
    to dirfd, or of the open file dirfd itself when path is None."""
    ts = (_Timespec * 2)()
    for i, t in ((0, atime), (1, mtime)):
        if t is None:
            ts[i].tv_nsec = UTIME_OMIT
        elif t == SetAttr.NOW:
            ts[i].tv_nsec = UTIME_NOW
        else:
            ts[i].tv_sec, ts[i].tv_nsec = divmod(int(t), 1000000000)
    if path is None:                      # glibc's utimensat() refuses a NULL path
        r = libc.futimens(_c_int(dirfd), ts)
    else:
        r = libc.utimensat(_c_int(dirfd), _c_char_p(path), ts, _c_int(flags))
    if r != 0:
        raise oserror(_get_errno())


def fchownat(dirfd, path, uid, gid, flags):
    """fchownat(2); with AT_EMPTY_PATH and path b"" it changes the file of dirfd, an
    O_PATH fd included (a symbolic link itself with AT_SYMLINK_NOFOLLOW)."""
    if libc.fchownat(_c_int(dirfd), _c_char_p(path), ctypes.c_uint(uid & 0xFFFFFFFF),
                     ctypes.c_uint(gid & 0xFFFFFFFF), _c_int(flags)) != 0:
        raise oserror(_get_errno())


def fstatfs(fd):
    buf = _StatfsBuf()
    if libc.fstatfs(_c_int(fd), _byref(buf)) != 0:
        raise oserror(_get_errno())
    return buf


_DIRENT = struct.Struct("<QqHB")          # struct linux_dirent64 up to d_name
_dents_buf = {}
_getdents64 = libc.getdents64            # glibc 2.30 and later
_getdents64.restype = ctypes.c_ssize_t


def getdents(fd, size):
    """One getdents64(2) of at most size bytes from the directory fd's position:
    [(d_ino, d_off, d_type, name bytes)], [] at the end.  d_off is the position after
    the entry (lseek there to continue after it)."""
    buf = _dents_buf.get(size)
    if buf is None:
        buf = _dents_buf[size] = ctypes.create_string_buffer(size)
    n = _getdents64(_c_int(fd), buf, ctypes.c_size_t(size))
    if n < 0:
        raise oserror(_get_errno())
    data = ctypes.string_at(buf, n)
    out = []
    unpack = _DIRENT.unpack_from
    find = data.find
    pos = 0
    while pos < n:
        ino, off, reclen, typ = unpack(data, pos)
        end = find(b"\0", pos + 19, pos + reclen)
        out.append((ino, off, typ, data[pos + 19:end if end >= 0 else pos + reclen]))
        pos += reclen
    return out


def raise_nofile():
    """Raise the soft limit of open files to the hard limit (each fid holds an fd)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):     # an infinite hard limit the kernel refuses
            pass


# --------------------------------------------------------------------------------------
# flags and locks

_FLAGMAP = ((L_O_TRUNC, os.O_TRUNC), (L_O_APPEND, os.O_APPEND), (L_O_DSYNC, os.O_DSYNC),
            (L_O_SYNC, os.O_SYNC), (L_O_DIRECTORY, os.O_DIRECTORY))
_ACC = {0: os.O_RDONLY, 1: os.O_WRONLY, 2: os.O_RDWR}


def oflags(lflags):
    """Linux (asm-generic) open flags from the wire -> host flags we act on.  Dropped:
    O_CREAT/O_EXCL/O_NOCTTY (open of an existing file), O_NONBLOCK (always set by us),
    O_DIRECT (unaligned buffers), O_NOATIME (EPERM for non-owners), O_LARGEFILE, FASYNC."""
    try:
        f = _ACC[lflags & L_O_ACCMODE]
    except KeyError:
        raise error(errno.EINVAL) from None
    for lf, hf in _FLAGMAP:
        if lflags & lf:
            f |= hf
    return f | O_NOFOLLOW | O_CLOEXEC | os.O_NONBLOCK


def lock_range(start, length):
    """(start, length) of a lock request for fcntl; EINVAL when out of range."""
    omax = (1 << 63) - 1
    if start < 0 or start > omax or length < 0:
        raise error(errno.EINVAL)
    if length > omax - start:
        length = 0                        # to the end of the file
    return start, length


FLOCK = "hhqqi4x"                         # struct flock
LTYPE = {LOCK_TYPE_RDLCK: fcntl.F_RDLCK, LOCK_TYPE_WRLCK: fcntl.F_WRLCK,
         LOCK_TYPE_UNLCK: fcntl.F_UNLCK}
LTYPE_BACK = {v: k for k, v in LTYPE.items()}
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
