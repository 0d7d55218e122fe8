"""Tauth on the client side: run an authentication method's conversation over an auth
fid, for the Tattach that names it (diod's handshake: Tauth afid uname aname n_uname,
reads and writes on afid, Tattach fid afid ..., Tclunk afid)."""

import errno

from ..protocol import codec
from ..protocol.const import NOFID
from .errors import NineError
from .fid import Fid

_Tauth = codec.BY_NAME["Tauth"]
_Tread = codec.BY_NAME["Tread"]
_Twrite = codec.BY_NAME["Twrite"]


class AfidIO:
    """read(count)/write(data) on an auth fid, at a running offset each way."""

    def __init__(self, conn, afid, timeout=None):
        self.conn = conn
        self.afid = afid
        self.timeout = timeout
        self.roff = 0
        self.woff = 0

    def read(self, count):
        data = self.conn.rpc(_Tread(fid=self.afid, offset=self.roff, count=count),
                             self.timeout).data
        self.roff += len(data)
        return data

    def write(self, data):
        n = self.conn.rpc(_Twrite(fid=self.afid, offset=self.woff, data=bytes(data)),
                          self.timeout).count
        self.woff += n
        return n


def authenticate(conn, method, uname, aname, n_uname, timeout=None):
    """The auth fid that proves (uname, n_uname) for aname by `method`, or NOFID when
    the server requires none (it answers Tauth with an error: diod's clients take that
    as "attach without one", and so do we).  Refusals raise NineError (EACCES/EPERM)."""
    afid = conn.alloc_fid()
    try:
        conn.rpc(_Tauth(afid=afid, uname=uname, aname=aname, n_uname=n_uname), timeout)
    except NineError as e:
        if not getattr(e, "orphaned", False):
            conn.free_fid(afid)
        if e.errno in (errno.ENOENT, errno.EOPNOTSUPP, 0, None):
            return NOFID
        raise
    try:
        method.authenticate(AfidIO(conn, afid, timeout), uname, n_uname, aname)
    except BaseException:
        release(conn, afid)
        raise
    return afid


def release(conn, afid):
    """Clunk an auth fid (after the attach that used it) without waiting."""
    if afid != NOFID:
        Fid(conn, afid).clunk_nowait()
