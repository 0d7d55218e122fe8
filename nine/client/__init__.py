"""nine.client: a concurrent 9P client (9P2000, 9P2000.u, 9P2000.L) on gevent, without
monkey patching.

Low level (what the multiplexer uses):
  Connection(addr, msize, version, sock=, timeout=, strict_version=)  one connection
      (imported on first use, with gevent);
      rpc(msg, timeout) -> reply, submit(msg)/wait(msg, h)/cancel(msg, h) for pipelining,
      post(msg, callback) fire-and-forget, alloc_fid()/free_fid(), close().
      Many greenlets may call rpc() at once; a killed/timed-out caller's request is
      flushed (Tflush); a dead connection fails every waiter at once.
  attach(conn, uname, aname, n_uname) -> Fid
  Fid: twalk/walk/clone, open/lopen, create/lcreate, read/write, pread/pwrite (pipelined),
      read_all, readdir (raw dirents) / entries (DirEntry, any dialect), getattr/setattr,
      stat/wstat, fstat (StatResult), statfs, readlink, symlink, mkdir, mknod, link, rename,
      renameat, unlinkat, xattrwalk/xattrcreate, fsync, lock/getlock, clunk/clunk_nowait,
      remove.
  BlockingConnection(addr, msize, version, ...): the same calls on a plain blocking
      socket, one caller, no gevent (one-shot programs: the `nine` verbs).
High level:
  Client(addr, uname, aname, version, msize, blocking=): paths, dialect-neutral
      StatResult/DirEntry, open() -> File (binary file object), read_file/write_file,
      mkdir, remove, rename, ...
Errors: NineError(OSError) with errno; subclasses also derive from FileNotFoundError,
  PermissionError, ... ; NineTimeout is a TimeoutError.
"""

from .errors import (NineError, NineProtocolError, NineTimeout, nine_error,  # noqa: F401
                     errno_from_ename, ENAME_TO_ERRNO)
from .dial import parse_addr, DEFAULT_MSIZE, DEFAULT_PORT  # noqa: F401
from .fid import (Fid, StatResult, DirEntry, attach, split_path, dm_to_st_mode,  # noqa: F401
                  st_mode_to_dm)
from .file import File  # noqa: F401
from .client import Client, parse_mode, XATTR_CREATE, XATTR_REPLACE  # noqa: F401

__all__ = ["Client", "Connection", "BlockingConnection", "Fid", "File", "StatResult",
           "DirEntry", "NineError", "NineProtocolError", "NineTimeout", "nine_error",
           "errno_from_ename", "parse_addr", "attach", "split_path", "dm_to_st_mode",
           "st_mode_to_dm", "parse_mode", "DEFAULT_MSIZE", "DEFAULT_PORT", "ENAME_TO_ERRNO",
           "XATTR_CREATE", "XATTR_REPLACE"]


def __getattr__(name):
    """Connection (gevent) and BlockingConnection, imported on first use: a program that
    needs neither, or only the blocking one, does not load gevent."""
    if name == "Connection":
        from .conn import Connection
        return Connection
    if name == "BlockingConnection":
        from .blocking import BlockingConnection
        return BlockingConnection
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
