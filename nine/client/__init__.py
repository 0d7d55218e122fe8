"""nine.client: a concurrent 9P client (9P2000, 9P2000.u, 9P2000.L) on gevent.

Low level: Connection (tags, fids, multiplexed rpc, Tflush) and Fid (one message per
method, raw qids).  High level: Client (paths, dialect-neutral stat/readdir) and File.
"""

from .errors import (NineError, NineProtocolError, NineTimeout, nine_error,  # noqa: F401
                     errno_from_ename, ENAME_TO_ERRNO)
from .conn import Connection, parse_addr, DEFAULT_MSIZE, DEFAULT_PORT  # noqa: F401
from .fid import (Fid, StatResult, DirEntry, attach, split_path, dm_to_st_mode,  # noqa: F401
                  st_mode_to_dm)
from .file import File  # noqa: F401
from .client import Client, parse_mode, XATTR_CREATE, XATTR_REPLACE  # noqa: F401

__all__ = ["Client", "Connection", "Fid", "File", "StatResult", "DirEntry", "NineError",
           "NineProtocolError", "NineTimeout", "nine_error", "errno_from_ename", "parse_addr",
           "attach", "split_path", "dm_to_st_mode", "st_mode_to_dm", "parse_mode",
           "DEFAULT_MSIZE", "DEFAULT_PORT", "ENAME_TO_ERRNO", "XATTR_CREATE", "XATTR_REPLACE"]
