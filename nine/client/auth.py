"""Tauth on the client side: run an authentication method's conversation over an auth
fid, for the Tattach that names it (diod's handshake: Tauth afid uname aname n_uname,
reads and writes on afid, Tattach fid afid ..., Tclunk afid)."""

from ..protocol import codec
from ..protocol.const import NOFID, NONUNAME, V9P2000
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
    as "attach without one", and so do we).  Refusals of the conversation raise
    NineError (EACCES/EPERM)."""
    if conn.dialect == V9P2000:
        n_uname = NONUNAME          # 9P2000's Tauth carries no number: the server sees none
    afid = conn.alloc_fid()
    try:
        conn.rpc(_Tauth(afid=afid, uname=uname, aname=aname, n_uname=n_uname), timeout)
    except NineError as e:
        if not getattr(e, "orphaned", False):
            conn.free_fid(afid)
        if conn.closed:
            raise
        # a server that wants no authentication refuses Tauth (diod -n: ENOENT; Plan 9
        # servers: any error string): attach without an auth fid; a server that does
        # want it then refuses the attach, so nothing is weakened by trying
        return NOFID
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
