"""The link to one child server of a mux: its connection, users, status, watchdog.


A mux is the ordinary server core (nine.server.core) whose nodes are RemoteNodes.  Like
plan9port's 9pserve, it keeps ONE 9P2000.L connection per child and multiplexes every
client's requests onto it: the core owns the clients' fids and tags, each RemoteNode owns
one fid on the child's connection (allocated by the client library), and the client
library owns the child connection's tags.  Clients of any dialect work: the core
translates 9P2000 and 9P2000.u into node calls; the link to the child is always .L.

    child = Child("serverA", "127.0.0.1:5641", qidmap=qm)
    server = Server({None: child.attach})          # or a FiNAL union of many children

Child (a nine.server.node.Remote; its failures ChildDown and StaleNode are Unreachable)
  - the connection is opened lazily, by the first request that needs it, and shared by
    every client of the mux (thread-affine: use a Child from one gevent hub only);
  - one Tattach per distinct user (n_uname = ctx.uid, uname = the mux's name for it;
    ctx.uid None -> the mux's own identity); root fids are cached for the link's life;
  - state 'up' / 'down' / 'connecting' / 'hung', last_error, since, status_line();
  - addr None: a child whose address comes later, by its first retarget (a launcher
    that starts a mux in the same round as its children, nine.launch.ssh); until then
    it is down, and says why;
  - retarget(addr): the child is reached at another address from now on (a replacement
    the launcher started on another host when this one's was lost: nine.launch.watch);
    the reconnect loop dials it at once, and status_line() says where it was;
  - when the connection dies, every outstanding request fails at once with
    ChildDown(EHOSTDOWN, "child NAME (ADDR) is down: REASON"); while down, requests fail
    at once the same way (no connect attempt per request); a background greenlet
    reconnects with backoff (0.2 s, then every 0.5 s) and the child comes back by itself.
    A child never reached yet is tried in the foreground by the first request (and its
    concurrent companions wait for that one attempt, at most connect_timeout).
  - a child that stops answering (a stopped process, a wedged host that keeps its TCP
    connection) is found by a watchdog per connection: while requests are outstanding
    and nothing came back for hang_timeout seconds (10 by default), it sends a probe, a
    Tflush of NOTAG (no request has that tag: every 9P server answers it at once, diod
    in its reading thread, nine in its connection loop, even while its own requests
    block); no answer within hang_timeout again and the child is `hung`: the
    connection is dropped, every outstanding request fails with ChildDown(EHOSTDOWN,
    "child NAME (ADDR) is hung: no answer for N s"), and the reconnect loop takes over
    (the state stays `hung` while the child takes connections but does not answer
    them).  The probe is the judge, never the age of one request: a read that blocks
    for minutes (a `wait` file, a stream) on a live child goes on;
  - nodes made on a connection that has since died fail with StaleNode(EIO, "... walk
    again from the root") once the child is back (ChildDown while it is still down); the
    attach root survives reconnects (it is rebound to the new connection's root fid), so
    a fresh walk from a client's root fid works again.

RemoteNode (maps_qids, can_post; origin() and locate() name its child and path)
  - walk: ONE Twalk for all names; intermediate and partial-walk nodes are placeholders
    carrying only the mapped qid (the child allocated no fid for them);
  - every qid the child sends (walk, getattr, open, create, mkdir, readdir entries ...)
    is mapped through the QidMap, so qid paths are unique across children and stable
    for the life of the mux (inode = qid.path + 2 on Linux);
  - reads/writes are forwarded as single requests; the node advertises the child's
    iounit, a larger read is clamped to it (a short read), a larger write is split;
  - a flushed request (the core kills its greenlet) is flushed on the child: the client
    library sends Tflush for a waiter that is killed.
  - link/rename/renameat between nodes of different children (or non-remote nodes):
    EXDEV.
"""

import errno
import os
import select
import socket as _socket
import struct
import time

import gevent
from gevent.event import AsyncResult, Event

from ..client.conn import Connection
from ..client.errors import NineError, NineTimeout, nine_error
from ..client.fid import attach as _attach
from ..protocol import codec
from ..protocol.const import NOTAG, V9P2000L
from ..server.node import Remote, Unreachable
from ..server.qidmap import QidMap
from .remote import RemoteNode, DEFAULT_MSIZE
from ..server.users import USERS

__all__ = ["Child", "ChildDown", "StaleNode", "DEFAULT_QIDMAP"]

XATTR_REPLACE = 2
BACKOFF_MIN = 0.2
BACKOFF_MAX = 0.5           # a restarted leaf is reached within half a second; a refused
                            # connect costs a SYN and a RST: retrying twice a second is cheap
#: seconds of silence, with requests outstanding, before a child is probed; as long again
#: without an answer to the probe and it is hung
HANG_TIMEOUT = 10.0
#: why a child made without an address (None) is down until its first retarget
NO_ADDRESS = "no address yet (a launcher gives it: `retarget NAME ADDR` in mux/ctl)"

#: the QidMap used by Children created without one: one qid space for the whole process
DEFAULT_QIDMAP = QidMap()

_Tread = codec.BY_NAME["Tread"]
_Twrite = codec.BY_NAME["Twrite"]
_Treaddir = codec.BY_NAME["Treaddir"]
_RREAD = codec.BY_NAME["Rread"].mtype
_RWRITE = codec.BY_NAME["Rwrite"].mtype
_Tgetattr = codec.BY_NAME["Tgetattr"]
_Tflush = codec.BY_NAME["Tflush"]
_DIRENT = struct.Struct("<BIQQBH")
_DIRENT_SIZE = _DIRENT.size


class ChildDown(Unreachable):
    """The child's connection is down (errno EHOSTDOWN)."""


class StaleNode(Unreachable):
    """The node was made on a connection to the child that has since been replaced."""


class _ChildConn(Connection):
    """A client Connection that tells its Child when it dies."""
    on_death = None

    def _die(self, eno, text):
        first = self._dead is None
        Connection._die(self, eno, text)
        if first:
            cb = self.on_death
            self.on_death = None
            if cb is not None:
                cb(self, eno, text)

    def drop(self, eno, text):
        """End the connection as one that died: every outstanding request fails at once
        with NineError(eno, text)."""
        self._die(eno, text)


class _Link:
    """One connection to a child, with its per-user root fids."""
    __slots__ = ("conn", "gen", "roots", "attaching", "since", "death", "groups", "hung")

    def __init__(self, conn, gen):
        self.conn = conn
        self.gen = gen
        self.roots = {}          # user key -> client Fid of the attach root
        self.attaching = {}      # user key -> AsyncResult of an attach in progress
        self.since = time.time()
        self.death = None        # (errno, text) once dead
        self.groups = None       # does the child offer a group service? (None: not asked)
        self.hung = None         # why the watchdog gave up on it (text), if it did


class Child(Remote):
    """One child server (a leaf server or another mux), reached over one shared 9P2000.L
    connection.  `attach` is an attach callable for nine.server.core.Server."""

    def __init__(self, name, addr, aname="", msize=DEFAULT_MSIZE, qidmap=None,
                 connect_timeout=5.0, op_timeout=None, uname=None, n_uname=None,
                 backoff=(BACKOFF_MIN, BACKOFF_MAX), auth="find", tls=None,
                 hang_timeout=HANG_TIMEOUT):
        self.name = name
        if auth == "find":
            from ..auth import client_method
            auth = client_method()
        #: the nine.auth ClientMethod each new connection authenticates with, as this
        #: process's own user (uname/n_uname below), before the per-user attaches: a
        #: child that trusts that principal (root, a key holder) then takes them without
        #: auth fids of their own; None: attach without authenticating; "find" (the
        #: default): what nine.auth.client_method finds on this host
        self.auth = auth
        #: a nine.auth.tls.client_context: every connection to the child is TLS (None:
        #: plain TCP)
        self.tls = tls
        self.addr = addr
        self.aname = aname
        self.msize = msize
        self.qidmap = DEFAULT_QIDMAP if qidmap is None else qidmap
        #: the key of this child in the QidMap: the same file of the same child keeps its
        #: mux qid across reconnects (not across a retarget: see there)
        self.qkey = (name, str(addr), aname)
        #: (time, old address, note) of the last retarget, None if never
        self.moved = None
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout
        #: seconds of silence with requests outstanding before a probe, and for the
        #: probe's answer (see the module's docstring); None or 0: never judged hung
        self.hang_timeout = hang_timeout
        euid = os.geteuid()
        #: the identity used for requests whose ctx.uid is None (the mux's own)
        self.own_uname = uname if uname is not None else USERS.uname(euid)
        self.own_n_uname = n_uname if n_uname is not None else euid
        self.backoff = backoff
        self.state = "down"
        #: text of the last failure, None if never failed
        self.last_error = None if addr is not None else NO_ADDRESS
        self.since = time.time()     # when state last changed
        self.closed = False
        self.connects = 0            # successful connections made
        self.failures = 0            # failed connection attempts
        self._link = None            # the live _Link, if any
        self._gen = 0
        self._pending = None         # greenlet of a foreground (first) connect attempt
        self._retry = None           # greenlet of the background reconnect loop
        self._next_retry = None      # time of the next background attempt
        self._wake = None            # wakes the reconnect loop early (retry_now)
        self._up = Event()           # set while the state is "up" (wait_up)

    def __repr__(self):
        return "<Child %s %s %s>" % (self.name, self.addr, self.state)

    # --- status ------------------------------------------------------------------
    def _where(self):
        """Its address as status lines and errors show it ("-": none yet)."""
        return "-" if self.addr is None else str(self.addr)

    def status_line(self):
        """One line for a status file: name, address, state, since, reason, counters."""
        now = time.time()
        parts = [self.name, self._where()]
        if self.aname:
            parts.append("aname=%s" % self.aname)
        parts.append(self.state)
        parts.append("since=%s (%.1fs)" % (time.strftime("%Y-%m-%dT%H:%M:%S",
                                                          time.localtime(self.since)),
                                            now - self.since))
        link = self._link
        if link is not None and self.state == "up":
            c = link.conn
            parts.append("msize=%d users=%d requests=%d inflight=%d" % (
                c.msize, len(link.roots), c.requests, c.inflight()))
            if c.tls:
                parts.append("tls")
        if self.last_error and self.state != "up":
            parts.append("error=%r" % self.last_error)
        if self._next_retry is not None and self.state in ("down", "hung"):
            parts.append("retry_in=%.1fs" % max(0.0, self._next_retry - now))
        parts.append("connects=%d failures=%d" % (self.connects, self.failures))
        if self.moved is not None:
            t, old, note = self.moved
            parts.append("retargeted at %s: was %s%s" % (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)), old,
                " (%s)" % note if note else ""))
        return " ".join(parts)

    def _set_state(self, state, error=None):
        if (state == "up") != (self.state == "up"):
            self.since = time.time()    # when it last came up or went down
            if state == "up":
                self._up.set()
            else:
                self._up.clear()
        self.state = state
        if error is not None:
            self.last_error = error

    def _down_error(self, reason=None):
        reason = reason or self.last_error or "not connected"
        word = "hung" if self.state == "hung" else "down"
        if self.closed:
            reason, word = "closed", "down"
        return ChildDown(errno.EHOSTDOWN, "child %s (%s) is %s: %s" % (
            self.name, self._where(), word, reason))

    # --- the connection ------------------------------------------------------------
    def link(self):
        """The live _Link, connecting if this child was never tried; raises ChildDown.

        While the child is down (a background reconnect loop runs) this fails at once."""
        ln = self._link
        if ln is not None and ln.conn._dead is None:
            return ln
        if self.closed or self._retry is not None or self.addr is None:
            raise self._down_error()
        g = self._pending
        if g is None:
            g = self._pending = gevent.spawn(self._connect_once, False)
        g.join()
        ln = self._link
        if ln is not None and ln.conn._dead is None:
            return ln
        raise self._down_error()

    def _connect_once(self, background):
        """One connection attempt (in a greenlet of its own).  Returns the new _Link or
        None; never raises.  A failed foreground attempt starts the reconnect loop."""
        if self.state != "hung":
            self._set_state("connecting")
        try:
            try:
                conn = _ChildConn(self.addr, self.msize, V9P2000L, timeout=self.op_timeout,
                                  connect_timeout=self.connect_timeout, tls=self.tls)
            except (OSError, ValueError) as e:
                self.failures += 1
                self._failed(e)
                if not background:
                    self._start_retry()
                return None
            if self.closed:
                conn.close()
                self._set_state("down", "closed")
                return None
            if self.auth is not None:
                try:
                    # bounded like the connect: a child that stalls mid-handshake
                    # is not up yet, so no watchdog looks after it
                    _attach(conn, self.own_uname, self.aname, self.own_n_uname,
                            timeout=self.connect_timeout, auth=self.auth).clunk_nowait()
                except (OSError, ValueError) as e:
                    conn.close()
                    self.failures += 1
                    self._set_state("down", "authentication: %s" % _reason(e))
                    if not background:
                        self._start_retry()
                    return None
            _keepalive(conn)
            self._gen += 1
            ln = _Link(conn, self._gen)
            conn.on_death = lambda c, eno, text, ln=ln: self._died(ln, eno, text)
            self._link = ln
            self.connects += 1
            self._set_state("up")
            if self.hang_timeout:
                gevent.spawn(self._watch, ln)
            return ln
        finally:
            if self._pending is gevent.getcurrent():
                self._pending = None

    def _failed(self, e):
        """A connection attempt failed with e: the child is down, unless it was hung and
        still is (it takes the connection but does not answer: a timeout)."""
        if self.state != "hung" or getattr(e, "errno", None) != errno.ETIMEDOUT:
            self._set_state("down", _reason(e))

    def _died(self, ln, eno, text):
        """The connection of ln died (called by the client library, maybe in the hub):
        its waiters are failing right now; mark the child down (or hung, when the
        watchdog ended it) and start reconnecting."""
        ln.death = (eno, _reason_text(eno, text))
        if self._link is ln:
            self._link = None
            if not self.closed:
                if ln.hung:
                    self._set_state("hung", ln.hung)
                else:
                    self._set_state("down", ln.death[1])
                self._start_retry()

    # --- hang detection --------------------------------------------------------------
    def _watch(self, ln):
        """The watchdog of link ln, for its life: while requests are outstanding and
        nothing came back for hang_timeout, probe the child; no answer to the probe
        either: the child is hung."""
        conn = ln.conn
        limit = self.hang_timeout
        seen = conn.bytes_in
        heard = time.monotonic()     # when bytes last came in, or nothing was awaited
        while conn._dead is None:
            gevent.sleep(limit / 4.0)
            now = time.monotonic()
            if conn.bytes_in != seen or not conn.inflight():
                seen = conn.bytes_in
                heard = now
            elif now - heard >= limit:
                if self._probe(conn, limit):
                    seen = conn.bytes_in
                    heard = time.monotonic()
                elif conn._dead is None:
                    self._hang_up(ln, time.monotonic() - heard)

    @staticmethod
    def _probe(conn, limit):
        """Does the child answer a Tflush of NOTAG within limit seconds?  (Without a free
        tag for it: does anything come back.)  Bytes that wait in the socket unread count
        as an answer: this process, not the child, was too busy to read them."""
        answered = Event()
        before = conn.bytes_in
        if conn.post(_Tflush(oldtag=NOTAG), lambda r: answered.set()):
            if answered.wait(limit):
                return True
        else:
            gevent.sleep(limit)
            if conn.bytes_in != before:
                return True
        return conn._dead is not None or _unread(conn._sock)

    def _hang_up(self, ln, quiet):
        """The child of link ln is hung: drop the connection (its requests fail with
        the reason) and reconnect as after a death."""
        ln.hung = "no answer for %.1f s" % quiet
        ln.conn.drop(errno.EHOSTDOWN, "child %s (%s) is hung: %s" % (
            self.name, self.addr, ln.hung))

    def _start_retry(self):
        if self._retry is None and not self.closed:
            self._wake = Event()    # before the loop runs: retry_now() reaches it at once
            self._retry = gevent.spawn(self._retry_loop, self._wake)

    def _retry_loop(self, wake):
        delay, top = self.backoff
        me = gevent.getcurrent()
        try:
            while not self.closed:
                self._next_retry = time.time() + delay
                wake.wait(delay)
                wake.clear()
                self._next_retry = None
                if self.closed:
                    return
                if self._connect_once(True) is not None:
                    return
                delay = min(delay * 2, top)
        finally:
            if self._retry is me:
                self._retry = None
            self._next_retry = None
            self._wake = None

    def wait_up(self, timeout):
        """See Remote.wait_up: returns as soon as a reconnect succeeds."""
        if self.closed:
            return False
        return self._up.wait(timeout)

    def retry_now(self):
        """Make the reconnect loop try at once (e.g. from a ctl file)."""
        w = self._wake
        if w is not None:
            w.set()

    def retarget(self, addr, note=None):
        """Reach this child at addr from now on: the launcher started a replacement of
        it elsewhere (nine.launch.watch, through the mux's ctl file).  A live connection
        to the old address is dropped (its requests fail with ChildDown; nodes walked on
        it are stale: a walk from the root, or a group's healing, finds them again); the
        reconnect loop dials addr at once; a child never reached yet is dialled there by
        its first request.  status_line() says where it was, and why (note).  Its files
        get new mux qids: the replacement's qid space is its own, so mapping its qids
        under the old key would make different files one."""
        old = self.addr
        self.addr = addr
        self.qkey = (self.name, str(addr), self.aname)
        if old is None:             # its first address: nothing moved
            if self.last_error == NO_ADDRESS:
                self.last_error = None
            return
        self.moved = (time.time(), old, note)
        ln = self._link
        if ln is not None and ln.conn._dead is None:
            ln.conn.drop(errno.EHOSTDOWN, "child %s (%s) moved to %s" % (self.name, old, addr))
        self.retry_now()

    def close(self):
        """Close the connection and stop reconnecting; later requests fail."""
        self.closed = True
        g = self._retry
        self._retry = None
        if g is not None:
            g.kill(block=False)
        ln = self._link
        self._link = None
        if ln is not None:
            ln.conn.close()
        self._set_state("down", "closed")

    # --- users and roots ----------------------------------------------------------
    def user_key(self, ctx):
        """(uname, n_uname) the child is attached as for this request's user: one per
        uid (the name is the mux's name for that uid; the child goes by the number)."""
        uid = None if ctx is None else ctx.uid
        if uid is None:
            return (self.own_uname, self.own_n_uname)
        return (USERS.uname(uid), uid)

    def root_fid(self, ln, key, aname=None):
        """The attach fid of user `key` on link ln: one Tattach per user and link, made
        in a greenlet of its own (a flushed request does not abort it for the others).
        aname: another aname than the child's (the group service)."""
        rk = key if aname is None else (key, aname)
        f = ln.roots.get(rk)
        if f is not None:
            return f
        ar = ln.attaching.get(rk)
        if ar is None:
            ar = ln.attaching[rk] = AsyncResult()
            gevent.spawn(self._do_attach, ln, key, ar, aname)
        return ar.get()

    def _do_attach(self, ln, key, ar, aname=None):
        rk = key if aname is None else (key, aname)
        an = self.aname if aname is None else aname
        try:
            f = _attach(ln.conn, key[0], an, key[1])
        except NineError as e:
            err = self.error(ln, e)
            if err is e:
                err = nine_error(e.errno, "child %s (%s): attach as %s (%d) to %r: %s" % (
                    self.name, self.addr, key[0], key[1], an, e.strerror))
            ar.set_exception(err)
            return
        except BaseException:
            ar.set_exception(self._down_error("attach interrupted"))
            raise
        finally:
            ln.attaching.pop(rk, None)
        ln.roots[rk] = f
        ar.set(f)

    def group_aname(self):
        return "groups:" + self.aname if self.aname else "groups"

    def group_root(self, ctx):
        """(link, Fid) of the root of the child's group service (nine.group.service) for
        ctx's user.  EOPNOTSUPP when the child has none (diod, another 9P server): asked
        once per connection, by reading its `features` file."""
        key = self.user_key(ctx)
        ln = self.link()
        if ln.groups is False:
            raise nine_error(errno.EOPNOTSUPP, "child %s offers no group service" % self.name)
        try:
            f = self.root_fid(ln, key, self.group_aname())
        except NineError:
            if ln.conn._dead is None:
                ln.groups = False
            raise
        if ln.groups is None:
            ok = False
            try:
                ff, _ = f.twalk(["features"])
                try:
                    ff.lopen(os.O_RDONLY)
                    ok = ff.read(0, 64).startswith(b"nine-groups ")
                finally:
                    ff.clunk_nowait()
            except NineError:
                ok = False
            if ln.conn._dead is None:
                ln.groups = ok
            if not ok:
                raise nine_error(errno.EOPNOTSUPP, "child %s offers no group service" %
                                 self.name)
        return ln, f

    def attach(self, ctx):
        """The child's root Node for ctx's user (an attach callable for the core)."""
        key = self.user_key(ctx)
        ln = self.link()
        f = self.root_fid(ln, key)
        return RemoteNode(self, None, None, self.map_qid(f.qid), "/", key, (), shared=True)

    # --- helpers --------------------------------------------------------------------
    def map_qid(self, qid):
        return self.qidmap.map(self.qkey, qid)

    def error(self, ln, e):
        """The error to raise for NineError e from a request on link ln."""
        if ln.conn._dead is not None:
            return self.lost(ln)
        if isinstance(e, NineTimeout):
            return NineTimeout(e.errno, "child %s (%s): %s" % (self.name, self.addr,
                                                               e.strerror))
        return e

    def lost(self, ln):
        """The error for a request on link ln, which is dead: StaleNode when the child is
        back on another connection, else ChildDown."""
        cur = self._link
        if cur is not None and cur is not ln and cur.conn._dead is None:
            return StaleNode(errno.EIO, "child %s (%s): stale file: the connection was "
                             "re-established since it was walked; walk again from the "
                             "root" % (self.name, self.addr))
        if self.last_error is None and ln.death:
            return self._down_error(ln.death[1])
        return self._down_error()


def _reason(e):
    """Short text for a failed connection attempt."""
    if isinstance(e, OSError):
        if e.errno == errno.ECONNREFUSED:
            return "connection refused"
        if e.errno == errno.ETIMEDOUT:
            return "connect timed out"
        return e.strerror or str(e)
    return str(e)


def _reason_text(eno, text):
    """Short text for the death of a connection."""
    if text:
        for p in ("recv: ", "send: "):
            if text.startswith(p):
                text = text[len(p):]
        return text[:1].lower() + text[1:]
    return os.strerror(eno).lower()


def _unread(sock):
    """Are there bytes waiting to be read on sock?"""
    try:
        p = select.poll()
        p.register(sock.fileno(), select.POLLIN)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return False


def _keepalive(conn):
    """Detect a child host that vanished without a reset within about half a minute."""
    s = conn._sock
    try:
        if s.family in (_socket.AF_INET, _socket.AF_INET6):
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
            s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_KEEPIDLE, 10)
            s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_KEEPINTVL, 5)
            s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_KEEPCNT, 3)
    except (OSError, AttributeError):
        pass
