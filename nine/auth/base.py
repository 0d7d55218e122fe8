"""The interface between the server core and an authentication method.

A Tauth makes an auth fid whose reads and writes are one conversation between the
client and the server's method; a Tattach naming that afid is allowed only when the
conversation proved a principal that may act as the attach's user.

Server side, one object per configured method:

    method = SomeMethod(...)                    # e.g. munge, shared key
    conv = method.start(peer, uname, n_uname, aname)   # at Tauth; raises OSError to refuse
    conv.write(data) -> int                     # the client's Twrite on the afid
    conv.read(count) -> bytes                   # the client's Tread on the afid
    conv.principal -> Principal or None         # set once the client proved who it is

Client side, one object per method:

    ClientMethod.authenticate(rw, uname, n_uname, aname)
        rw.read(count) -> bytes, rw.write(data) -> int on the afid; raises OSError
        (EACCES/EPERM) when the server or the credential refuses.

Conversation methods may block (they run in the request's greenlet) but must not hold
the hub: a call to an outside program or library goes through a thread pool or a
subprocess.
"""

import errno


class Principal:
    """Who a conversation proved the client to be: a user name and/or a uid."""
    __slots__ = ("uname", "uid", "method")

    def __init__(self, uname=None, uid=None, method=""):
        self.uname = uname
        self.uid = uid
        self.method = method

    def __repr__(self):
        return "Principal(uname=%r, uid=%r, method=%r)" % (self.uname, self.uid, self.method)


def refused(msg, code=errno.EACCES):
    return OSError(code, msg)


class Conversation:
    """One auth fid's conversation (server side)."""
    principal = None

    def write(self, data):
        raise refused("this authentication method takes no writes", errno.EINVAL)

    def read(self, count):
        return b""


class Method:
    """A server-side authentication method."""
    name = ""

    def start(self, peer, uname, n_uname, aname):
        raise NotImplementedError


class ClientMethod:
    """A client-side authentication method."""
    name = ""

    def authenticate(self, rw, uname, n_uname, aname):
        raise NotImplementedError
