"""Who may attach as whom: the authorization rules, enforced here and nowhere else.

A Server (nine.server.core) with a gate asks it at every Tauth and Tattach:

    gate.start(conn, uname, n_uname, aname) -> AuthNode   the auth fid's node (Tauth)
    gate.admit(conn, auth_node, uname, n_uname, aname)    before the attach (Tattach);
                                                          raises OSError to refuse

The rules (docs/security.md):
 1. With a method (munge, key) an attach must be backed by an auth fid whose conversation
    proved a principal, made by a Tauth with the same uname, n_uname and aname.
 2. A principal that is root (uid 0), a configured service uid, or a holder of the
    cluster key (the key method: whoever holds the key may act as anyone) makes the
    connection *trusted*: later attaches on it may name any user without an auth fid of
    their own.  This is how a mux serves many users over one link to each child, and how
    the Linux kernel's access=user mounts attach once per uid over a connection that
    `nine mount` authenticated (diod's rule: a connection authenticated as root may
    attach for others).
 3. Any other principal may attach as itself only, with or without an auth fid after
    its first authenticated attach on that connection.
 4. A connection's authentication survives Tversion (the kernel sends one on a socket
    that `nine mount` authenticated).
Refusals are EACCES (no or wrong proof) or EPERM (a proven user asking for another),
with one log line naming the peer (a flood of them: one line per kind of refusal and
address every few seconds, then how many more were suppressed); repeated failures from
one address are answered later and later (up to MAX_DELAY seconds), so guessing is slow.
"""

import errno
import logging
import time

import gevent

from ..protocol import Qid
from ..server.node import Attr, Node, error
from ..server.users import USERS

log = logging.getLogger("nine.auth")

QTAUTH = 0x08
#: auth fids one connection may hold at once (a Tauth flood gets EMFILE)
MAX_AUTH_FIDS = 16
#: the longest a refusal is held back (seconds), and how long an address's record lasts
MAX_DELAY = 4.0
FORGET_AFTER = 300.0
#: addresses remembered (the oldest record is dropped beyond this)
MAX_PEERS = 4096

ANY = "any"


class AuthNode(Node):
    """The node of an auth fid: reads and writes go to the method's conversation."""
    may_block = True

    def __init__(self, gate, conn, conv, uname, n_uname, aname):
        self.gate = gate
        self.conn = conn
        self.conv = conv
        self.claim = (uname, n_uname, aname)
        self.method = gate.method.name
        self.qid = Qid(QTAUTH, 0, 0)
        self.name = "auth"

    def read(self, ctx, offset, count):
        if self.conv is None:
            raise error(errno.EBADF, "auth fid closed")
        return self.conv.read(count)

    def write(self, ctx, offset, data):
        if self.conv is None:
            raise error(errno.EBADF, "auth fid closed")
        try:
            return self.conv.write(bytes(data))
        except OSError as ex:
            raise self.gate.conversation_failed(self.conn, ex) from None

    def getattr(self, ctx):
        return Attr(self.qid, 0o100600)

    def close(self, ctx):
        if self.conv is not None:
            self.conv = None
            self.gate.released(self.conn)


def _peer(conn):
    a = getattr(conn, "address", None)
    if isinstance(a, tuple) and a:
        return a[0]
    return str(a) if a else "unix socket"


class Gate:
    """Authorization for one server: `method` (nine.auth.base.Method) is required at
    every attach; service_uids may attach for others once authenticated."""

    def __init__(self, method, service_uids=(0,)):
        self.method = method
        self.service_uids = frozenset(service_uids)
        self._failures = {}       # address -> (count, time of the last failure)

    # --- Tauth -------------------------------------------------------------------
    def start(self, conn, uname, n_uname, aname):
        held = getattr(conn, "auth_fids", 0)
        if held >= MAX_AUTH_FIDS:
            raise self._refuse(conn, errno.EMFILE, "too many auth fids on one connection",
                               "auth_fids")
        conv = self.method.start(_peer(conn), uname, n_uname, aname)
        conn.auth_fids = held + 1
        return AuthNode(self, conn, conv, uname, n_uname, aname)

    def released(self, conn):
        """An auth fid was clunked."""
        conn.auth_fids = max(0, getattr(conn, "auth_fids", 1) - 1)

    # --- Tattach -----------------------------------------------------------------
    def admit(self, conn, auth_node, uname, n_uname, aname):
        """Allow the attach or raise; records what the connection has proved."""
        uid = USERS.resolve(uname, n_uname)[0]
        trusted = getattr(conn, "auth_uids", None)
        if auth_node is None:
            if trusted is ANY or (trusted and uid in trusted):
                return
            raise self._refuse(conn, errno.EACCES, "authentication required (%s): attach "
                               "as %s with an auth fid" % (self.method.name,
                                                            _who(uname, n_uname)),
                               "no_auth_fid")
        conv = auth_node.conv
        principal = conv.principal if conv is not None else None
        if principal is None:
            raise self._refuse(conn, errno.EACCES, "the auth fid has proved nothing "
                               "(the %s conversation is not complete)" % auth_node.method,
                               "unproven")
        if auth_node.claim != (uname, n_uname, aname):
            raise self._refuse(conn, errno.EACCES, "the auth fid was made for %s, aname %r, "
                               "not for %s, aname %r" % (
                                   _who(*auth_node.claim[:2]), auth_node.claim[2],
                                   _who(uname, n_uname), aname), "other_claim")
        if principal.method == "key" or principal.uid in self.service_uids:
            conn.auth_uids = ANY
        else:
            if principal.uid != uid:
                raise self._refuse(conn, errno.EPERM, "uid %s is proven, not %s" % (
                    principal.uid, _who(uname, n_uname)), "other_uid")
            if trusted is not ANY:
                conn.auth_uids = (trusted or frozenset()) | {uid}
        self._failures.pop(_peer(conn), None)

    # --- refusals --------------------------------------------------------------------
    def _refuse(self, conn, code, msg, why="failed"):
        """An OSError for a refusal, logged with the peer (why: the kind of refusal; a
        flood is logged once per kind and address every few seconds, with how many more
        were suppressed: nine.server.guard.RateLog); the caller's greenlet is held back
        by the address's recent failures first."""
        peer = _peer(conn)
        now = time.monotonic()
        count, last = self._failures.pop(peer, (0, now))
        if now - last > FORGET_AFTER:
            count = 0
        count += 1
        self._failures[peer] = (count, now)
        if len(self._failures) > MAX_PEERS:
            self._failures.pop(next(iter(self._failures)))
        _ratelog(conn).hit("auth_" + why, "refused %s: %s (failure %d from this address)",
                           peer, msg, count, peer=peer, logger=log)
        if count > 1:
            gevent.sleep(min(MAX_DELAY, 0.05 * 2 ** (count - 2)))
        return error(code, msg)

    def conversation_failed(self, conn, ex):
        """A conversation refused a write (wrong key, bad credential): logged and
        counted like a refused attach; returns the error to answer."""
        code = ex.errno if isinstance(ex, OSError) and ex.errno else errno.EACCES
        return self._refuse(conn, code, ex.strerror or str(ex))


_RATELOG = None


def _ratelog(conn):
    """Where refusals are logged: the server's RateLog (nine.server.guard), which its
    sweeper flushes; one of this module's for a connection without a server."""
    guard = getattr(getattr(conn, "server", None), "guard", None)
    if guard is not None:
        return guard.log
    global _RATELOG
    if _RATELOG is None:
        from ..server.guard import RateLog
        _RATELOG = RateLog()
    return _RATELOG


def _who(uname, n_uname):
    if n_uname is not None and n_uname != 0xFFFFFFFF:
        return "uid %d" % n_uname
    return "user %r" % uname
