"""Errors raised by the 9P client.

Every error carries an errno.  Rlerror (9P2000.L) gives one directly; Rerror (9P2000, .u)
gives a string, mapped back to an errno through the strings os.strerror() produces and the
usual Plan 9 strings (``file does not exist``, ``permission denied`` ...).  An unknown
string becomes EIO, with the server's text kept as the message.

``nine_error(errno, text)`` builds an instance of a class that derives from both
NineError and the matching built-in OSError subclass, so ``except FileNotFoundError``
works as well as ``except NineError``.
"""

import errno as _errno
import os

from ..protocol.const import V9P2000


class NineError(OSError):
    """An error from a 9P peer or from the connection to it.  ``.errno`` is always set."""


class NineProtocolError(NineError):
    """The peer broke the protocol (undecodable or unexpected reply)."""


# The built-in OSError subclasses, keyed by errno (as OSError.__new__ maps them).
_BUILTIN = {
    _errno.ENOENT: FileNotFoundError,
    _errno.EEXIST: FileExistsError,
    _errno.EACCES: PermissionError,
    _errno.EPERM: PermissionError,
    _errno.EISDIR: IsADirectoryError,
    _errno.ENOTDIR: NotADirectoryError,
    _errno.ETIMEDOUT: TimeoutError,
    _errno.ECONNRESET: ConnectionResetError,
    _errno.ECONNABORTED: ConnectionAbortedError,
    _errno.ECONNREFUSED: ConnectionRefusedError,
    _errno.EPIPE: BrokenPipeError,
    _errno.ESHUTDOWN: BrokenPipeError,
    _errno.EINTR: InterruptedError,
    _errno.ECHILD: ChildProcessError,
    _errno.ESRCH: ProcessLookupError,
}

_CLASSES = {}
for _e, _base in _BUILTIN.items():
    if _base not in _CLASSES.values():
        _CLASSES[_e] = type("Nine" + _base.__name__, (NineError, _base),
                            {"__module__": __name__})
    else:
        _CLASSES[_e] = next(c for c in _CLASSES.values() if issubclass(c, _base))
globals().update({c.__name__: c for c in _CLASSES.values()})

# NineTimeout: a call's own timeout ran out; the request was flushed.
NineTimeout = _CLASSES[_errno.ETIMEDOUT]


def nine_error(eno, text=None, cls=None):
    """A NineError (of the most specific class) for errno ``eno``."""
    if text is None:
        text = os.strerror(eno) if eno else "unknown error"
    if cls is None:
        cls = _CLASSES.get(eno, NineError)
    return cls(eno, text)


def reply_error(msg, r, dialect):
    """The error to raise when request msg was answered by r, not by its own reply: the
    server's error (Rlerror; Rerror, its errno in 9P2000.u), else a NineProtocolError."""
    t = r.mtype
    if t == 7:                  # Rlerror
        return nine_error(r.ecode)
    if t == 107:                # Rerror
        e = r.errno if dialect != V9P2000 else 0
        if not 0 < e < 4096:
            e = errno_from_ename(r.ename)
        return nine_error(e, r.ename)
    return NineProtocolError(_errno.EPROTO, "%s answered with %s" % (
        type(msg).__name__, type(r).__name__))


# ---------------------------------------------------------------------------
# Rerror strings -> errno

def _build_map():
    m = {}
    for name in dir(_errno):
        if not name.startswith("E"):
            continue
        num = getattr(_errno, name)
        if not isinstance(num, int):
            continue
        s = os.strerror(num).lower()
        if s.startswith("unknown error"):
            continue
        m.setdefault(s, num)
    plan9 = {
        # Plan 9 / Inferno / 9front / plan9port lib9p strings
        "file does not exist": _errno.ENOENT,
        "file not found": _errno.ENOENT,
        "not found": _errno.ENOENT,
        "no such file": _errno.ENOENT,
        "directory entry not found": _errno.ENOENT,
        "file does not exist or is not a directory": _errno.ENOENT,
        "permission denied": _errno.EACCES,
        "access permission denied": _errno.EACCES,
        "create prohibited": _errno.EPERM,
        "wstat prohibited": _errno.EPERM,
        "remove prohibited": _errno.EPERM,
        "operation not permitted": _errno.EPERM,
        "file already exists": _errno.EEXIST,
        "file exists": _errno.EEXIST,
        "is a directory": _errno.EISDIR,
        "file is a directory": _errno.EISDIR,
        "not a directory": _errno.ENOTDIR,
        "walk in non-directory": _errno.ENOTDIR,
        "directory not empty": _errno.ENOTEMPTY,
        "remove of non-empty directory": _errno.ENOTEMPTY,
        "unknown fid": _errno.EBADF,
        "fid unknown or out of range": _errno.EBADF,
        "fid not found": _errno.EBADF,
        "fid already in use": _errno.EBADF,
        "duplicate fid": _errno.EBADF,
        "file not open": _errno.EBADF,
        "fid not open": _errno.EBADF,
        "file already open": _errno.EBADF,
        "fid already opened": _errno.EBADF,
        "open for write": _errno.EBADF,
        "open for read": _errno.EBADF,
        "bad use of fid": _errno.EBADF,
        "bad offset": _errno.EINVAL,
        "bad offset in directory read": _errno.EINVAL,
        "bad count": _errno.EINVAL,
        "bad mode": _errno.EINVAL,
        "invalid argument": _errno.EINVAL,
        "illegal mode": _errno.EINVAL,
        "bad character in file name": _errno.EINVAL,
        "bad attach specifier": _errno.EINVAL,
        "unknown aname": _errno.ENOENT,
        "exclusive use file already open": _errno.EBUSY,
        "file in use": _errno.EBUSY,
        "device or object busy": _errno.EBUSY,
        "file is locked": _errno.EBUSY,
        "i/o error": _errno.EIO,
        "input/output error": _errno.EIO,
        "i/o on hungup channel": _errno.EPIPE,
        "write on closed pipe": _errno.EPIPE,
        "interrupted": _errno.EINTR,
        "read-only file system": _errno.EROFS,
        "file system read only": _errno.EROFS,
        "no space left on device": _errno.ENOSPC,
        "file system full": _errno.ENOSPC,
        "file name too long": _errno.ENAMETOOLONG,
        "name too long": _errno.ENAMETOOLONG,
        "operation not supported": _errno.EOPNOTSUPP,
        "not supported": _errno.EOPNOTSUPP,
        "function not implemented": _errno.ENOSYS,
        "not implemented": _errno.ENOSYS,
        "too many open files": _errno.EMFILE,
        "resource temporarily unavailable": _errno.EAGAIN,
        "timed out": _errno.ETIMEDOUT,
        "protocol botch": _errno.EPROTO,
        "protocol error": _errno.EPROTO,
        "authentication failed": _errno.EACCES,
        "authentication required": _errno.EACCES,
        "no authentication required": _errno.EINVAL,
        "unknown user": _errno.EINVAL,
        "cross-device link": _errno.EXDEV,
        "flush": _errno.EINTR,
    }
    m.update(plan9)
    return m


ENAME_TO_ERRNO = _build_map()


def errno_from_ename(ename):
    """The errno a 9P2000 error string stands for, EIO when unknown."""
    s = ename.strip().lower()
    e = ENAME_TO_ERRNO.get(s)
    if e is not None:
        return e
    # "'foo' file does not exist", "open: permission denied", "foo: No such file or directory"
    for sep in (": ", "' "):
        i = s.rfind(sep)
        if i >= 0:
            e = ENAME_TO_ERRNO.get(s[i + len(sep):])
            if e is not None:
                return e
    for key, e in _SUBSTRINGS:
        if key in s:
            return e
    return _errno.EIO


_SUBSTRINGS = (("does not exist", _errno.ENOENT), ("not found", _errno.ENOENT),
               ("no such file", _errno.ENOENT), ("permission denied", _errno.EACCES),
               ("already exists", _errno.EEXIST), ("not a directory", _errno.ENOTDIR),
               ("is a directory", _errno.EISDIR), ("not empty", _errno.ENOTEMPTY),
               ("read-only", _errno.EROFS), ("in use", _errno.EBUSY))
