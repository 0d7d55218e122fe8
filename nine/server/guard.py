"""A server's enforcement of its limits (nine.server.limits) over all its connections.

Guard: admits or refuses each accepted connection (connections per server and per peer
address, and never so many that they take the descriptors the open files need: beyond
the process's descriptor limit less a reserve (FD_RESERVE), the oldest connection that
has not attached makes room, or the new one is refused), and closes, once a second or
so (a sweeper greenlet that runs while the server has connections), those that have
not attached in time (on a server that requires authentication) or hold a
half-received frame too long.  A connection it closes is only shut (nine.server.conn's
Transport.shutdown): its own greenlet then ends what it had in flight.

Requests in flight on all connections (Limits.requests_total): the connections count
them in `requests`; at the limit the guard is `full` and every connection that holds
REQUESTS_RESERVE or more is not read (backpressure, as for the per-connection limit)
until the total is back under REQUESTS_LOW of the limit, when they are all woken at
once (a low-water mark: one wake-up per connection for many requests ended, and no
connection starved by others taking each freed place).  Connections that hold fewer
are still read: a well-behaved client is served whatever the others hold.

overdue(): whether long loops should pause now (SLICE: fairness between the clients).

RateLog: the log lines of refusals, which come in floods: the first of each kind and
peer address at once, then at most one every LOG_EVERY seconds that says how many more
were suppressed (the sweeper also runs while such lines are held back, to write them).
The authentication gate (nine.auth.gate) logs its refusals through it too.

Acceptor: the accept loop of one listening socket (a gevent StreamServer) that survives
running out of file descriptors: it then closes the SHED oldest connections that have
not attached after SHED_GRACE seconds (in a flood, where none is that old: SHED_GRACE_FLOOD)
to make room (peers that proved nothing give way to a new one, whose requests need
descriptors too), and where there are none, pauses
accepting for ACCEPT_PAUSE seconds (no busy loop, no growing back-off: clients get in
as soon as descriptors are free again), logging once.
"""

import errno
import gc
import logging
import os
import resource
import sys
import time

import gevent
from gevent.server import StreamServer

from .limits import REQUESTS_LOW, REQUESTS_RESERVE

log = logging.getLogger("nine.server")

LOG_EVERY = 10.0        # seconds between two log lines of one kind (and peer address)
LOG_PEERS = 8           # addresses with log lines of their own, per kind (see RateLog)
ACCEPT_PAUSE = 0.05     # seconds accept pauses when out of descriptors
SHED_GRACE = 0.5        # seconds before an unattached connection may be closed to make room
#: the same when none is that old (a flood): the oldest still goes, if it had this long
#: for its handshake (at 0.1 s, a client that came in the first tenth of a second of
#: 1,200 connections was refused in about one run of three of bench/attack.py)
SHED_GRACE_FLOOD = 0.02
SWEEP_BATCH = 32        # connections the sweeper closes between two turns of the hub
SHED = 16               # connections closed at once to make room (the newcomer needs files too)
FD_RESERVE = 64         # descriptors never taken by connections: at least this, or 1/8th
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: seconds of work one turn of the hub may take before a long job (the sweeper closing
#: many connections) lets it poll
SLICE = 0.002
#: how long such a job pauses (a timer: the hub polls and runs what came in first)
NAP = 1e-6


def settle():
    """A server has started (its modules imported, its trees built): what it holds now
    lives as long as it does, so the cyclic garbage collector's full collections, which
    stop every client while they walk every object, need not walk it again and again
    (gc.freeze: a full collection of a fresh server's ~20,000 objects takes tens of ms
    on a loaded machine; it then walks only what came after).  Full collections come
    after 100 young-generation ones instead of 10 (Python's other condition stays: the
    objects that survived since the last are a quarter of those it walked): 65,000
    blocked requests made 9 full collections of 36-95 ms each, every client waiting."""
    gc.freeze()
    gc.set_threshold(700, 10, 100)


_gc_holders = 0                 # Guards holding full collections back (hold_gc)
_gc_thresholds = None           # the thresholds to restore when the last lets go


def overdue(slice=SLICE):
    """Has the hub's current turn run for `slice` seconds since it last polled?  Long
    loops ask every few items and, when so, gevent.sleep(NAP): the others' requests are
    served, and the jobs take turns (each pause puts its job behind the others').
    Unlike gevent.sleep(0) (a callback, run before the hub polls again, behind every
    other job's), this bounds the work of all of them together between two polls."""
    return time.time() - gevent.get_hub().loop.now() > slice


def background():
    """Wait until the hub has nothing else to do (gevent.idle): how work that may run
    for seconds (a listing of 100,000 entries) takes its turns.  gevent.sleep(0) only
    queues a callback, and the hub runs callbacks for up to its switch interval (5 ms)
    before it polls again: each of a client's steps waited behind such runs (a probe
    cycle took 146-290 ms under 20 whole listings, 27-34 ms with this)."""
    gevent.idle()


class RateLog:
    """Warnings that may come in floods: one line per kind and peer address every
    LOG_EVERY seconds.  The first at once; those within LOG_EVERY seconds of the last
    line are counted, and the last of them is logged later (by the next one after the
    interval, or flush()) with how many were suppressed.  A kind has its own line for at
    most LOG_PEERS addresses at once: those beyond share one line (an attack from many
    addresses still writes a few lines per interval, not one per address).  Records of
    quiet kinds and addresses are dropped by flush() (memory stays bounded)."""

    def __init__(self, every=LOG_EVERY, on_hold=None, peers=None):
        self.every = every
        self.on_hold = on_hold  # called when a line is held back (to have flush() called)
        self.peers = LOG_PEERS if peers is None else peers
        self._kinds = {}        # key -> [time of its last line, held back, last held back]
        self._npeers = {}       # kind -> addresses with a key of their own

    def _key(self, kind, peer):
        if peer is None:
            return kind
        key = (kind, peer)
        if key not in self._kinds:
            n = self._npeers.get(kind, 0)
            if n >= self.peers:
                return (kind, None)             # the other addresses, together
            self._npeers[kind] = n + 1
        return key

    def hit(self, kind, fmt, *args, peer=None, logger=None):
        """A refusal of this kind (from peer, an address: None for a server-wide kind),
        logged to logger (default: nine.server's)."""
        now = time.monotonic()
        key = self._key(kind, peer)
        k = self._kinds.get(key)
        if k is None or not k[1] and now - k[0] >= self.every:
            self._kinds[key] = [now, 0, None]
            (logger or log).warning(fmt, *args)
            return
        k[1] += 1
        k[2] = (fmt, args, logger or log)
        if now - k[0] >= self.every:
            self._flush(k, now)
        elif self.on_hold is not None:
            self.on_hold()

    def held(self):
        """Are lines held back?"""
        return any(k[1] for k in self._kinds.values())

    def flush(self):
        """Log the lines held back for LOG_EVERY seconds now; forget the kinds and
        addresses quiet for as long."""
        now = time.monotonic()
        for key, k in list(self._kinds.items()):
            if now - k[0] < self.every:
                continue
            if k[1]:
                self._flush(k, now)
            else:
                del self._kinds[key]
                if isinstance(key, tuple) and key[1] is not None:
                    kind = key[0]
                    n = self._npeers[kind] - 1
                    if n:
                        self._npeers[kind] = n
                    else:
                        del self._npeers[kind]

    @staticmethod
    def _flush(k, now):
        fmt, args, logger = k[2]
        logger.warning(fmt + " (%d more suppressed in the last %.0f s)", *args, k[1],
                       now - k[0])
        k[:] = [now, 0, None]


def _descriptor_room():
    """How many connections the descriptor limit (ulimit -n) leaves room for, keeping
    FD_RESERVE or an eighth of it (the larger) for files, listeners and the rest."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    return soft - max(FD_RESERVE, soft // 8)


def _peer(address):
    """The peer address connections are counted by: the host of a TCP peer, None for a
    unix socket's (local, guarded by the socket's file mode)."""
    if isinstance(address, tuple) and address:
        return address[0]
    return None


class Guard:
    """The connection limits of one server (server.limits, read at each use) and the
    sweeper of its timeouts and held-back log lines.  A connection
    (nine.server.conn.Transport) shows `born` and `since` (time.monotonic() of its
    accept and of the first byte of the frame it is receiving, None when between
    frames), `attached`, `closed` and shutdown()."""

    def __init__(self, server):
        self.server = server
        self.count = 0
        self.peers = {}         # peer address -> connections open
        #: requests in flight on all connections (nine.server.conn counts them)
        self.requests = 0
        #: at Limits.requests_total: connections holding REQUESTS_RESERVE are not read
        self.full = False
        self.low = 0            # where full ends (set with it)
        self.waiting = {}       # connection -> the Event its reader waits on while full
        self.log = RateLog(on_hold=self._wake)
        self._sweeper = None
        self._stopped = False
        #: whether this server holds the garbage collector's full collections back
        self.gc_held = False

    def hold_gc(self):
        """More than GC_HOLD requests are in flight (nine.server.conn counts them): the
        garbage collector's full collections wait until fewer than GC_RESUME are.  A
        full collection walks every live object, and each blocked request holds a
        greenlet, its frames and its message: with 65,000 in flight each took 50-110
        ms, every client waiting (a probe cycle took 110 ms).  The young generations
        are still collected, and what the wait holds back is collected once the
        requests end (the count of requests in flight is bounded by the limits)."""
        global _gc_holders, _gc_thresholds
        self.gc_held = True
        if _gc_holders == 0:
            _gc_thresholds = gc.get_threshold()
            gc.set_threshold(_gc_thresholds[0], _gc_thresholds[1], 1 << 30)
        _gc_holders += 1

    def resume_gc(self):
        """See hold_gc."""
        global _gc_holders
        if not self.gc_held:
            return
        self.gc_held = False
        _gc_holders -= 1
        if _gc_holders == 0 and _gc_thresholds is not None:
            gc.set_threshold(*_gc_thresholds)

    def admit(self, sock, address):
        """Count in a connection just accepted, or refuse it (closed, logged): False."""
        lim = self.server.limits
        peer = _peer(address)
        if lim.connections and self.count >= lim.connections:
            self.log.hit("connections", "refused a connection from %s: %d connections open, "
                         "the limit (--max-connections)", peer or "a local peer", self.count,
                         peer=peer)
        elif peer is not None and lim.per_peer and self.peers.get(peer, 0) >= lim.per_peer:
            self.log.hit("per_peer", "refused a connection from %s: %d connections open from "
                         "there, the limit (--max-per-peer)", peer, lim.per_peer, peer=peer)
        elif self.count >= _descriptor_room() and not self._make_room(peer):
            self.log.hit("descriptors", "refused a connection from %s: %d connections open, "
                         "all that the descriptors leave room for (ulimit -n %d)",
                         peer or "a local peer", self.count,
                         resource.getrlimit(resource.RLIMIT_NOFILE)[0], peer=peer)
        else:
            self.count += 1
            if peer is not None:
                self.peers[peer] = self.peers.get(peer, 0) + 1
            self._wake()
            return True
        try:
            sock.close()
        except OSError:
            pass
        return False

    def release(self, address):
        """An admitted connection is gone."""
        self.count -= 1
        peer = _peer(address)
        if peer is not None:
            n = self.peers[peer] - 1
            if n:
                self.peers[peer] = n
            else:
                del self.peers[peer]

    # --- requests in flight on all connections ---------------------------------------
    def fill(self, total):
        """A connection found `requests` at the server-wide limit (total): the guard is
        full until they are back under REQUESTS_LOW of it (logged).  True."""
        self.full = True
        self.low = int(total * REQUESTS_LOW)
        self.log.hit("requests_total", "%d requests in flight on all connections, the "
                     "limit (--max-requests-total): connections that hold %d or more are "
                     "not read until %d have ended", self.requests, REQUESTS_RESERVE,
                     self.requests - self.low)
        return True

    def drain(self):
        """The requests in flight are back under the low-water mark: wake every reader
        that waited for it."""
        self.full = False
        waiting = list(self.waiting.values())
        self.waiting.clear()
        for room in waiting:
            room.set()

    def stop(self):
        """The server stops: so does the sweeper (and its hold on the collector)."""
        self._stopped = True
        self.resume_gc()
        if self._sweeper is not None:
            self._sweeper.kill()

    def _wake(self):
        """Have the sweeper run (while there are connections or log lines held back)."""
        if self._sweeper is None and not self._stopped:
            self._sweeper = gevent.spawn(self._sweep)

    def _sweep(self):
        try:
            while self.count or self.log.held():
                lim = self.server.limits
                ts = [t for t in (lim.attach_timeout, lim.frame_timeout) if t]
                gevent.sleep(min([1.0] + [t / 4 for t in ts]))
                self.sweep()
        finally:
            self._sweeper = None

    def sweep(self):
        """Close the connections past their attach or frame timeout."""
        lim = self.server.limits
        at = lim.attach_timeout if self.server.gate is not None else 0
        ft = lim.frame_timeout
        now = time.monotonic()
        shut = 0
        for c in list(self.server.conns):
            if c.closed:
                continue
            if overdue() or shut == SWEEP_BATCH:
                # (each connection shut ends in its own greenlet, run before the
                # sweeper's turn comes again: a batch of them at a time)
                gevent.sleep(NAP)
                shut = 0
                if c.closed:
                    continue
            if at and not c.attached and now - c.born > at:
                self.log.hit("attach_timeout", "closed the connection of %s: not attached "
                             "after %g s (--attach-timeout)", c.address, at,
                             peer=_peer(c.address))
                c.shutdown()
                shut += 1
                continue
            since = c.since
            if ft and since is not None and now - since > ft:
                self.log.hit("frame_timeout", "closed the connection of %s: a frame begun "
                             "%.0f s ago has not arrived whole (--frame-timeout)",
                             c.address, now - since, peer=_peer(c.address))
                c.shutdown()
                shut += 1
        self.log.flush()

    def _make_room(self, peer):
        """No room for a newcomer from peer: shut the oldest connection that has not
        attached (for SHED_GRACE, or in a flood SHED_GRACE_FLOOD), logged; whether one
        was."""
        if self.shed_for_room(1):
            self.log.hit("shed", "closed the oldest connection that had not attached, to "
                         "make room for one from %s: %d connections open, all that the "
                         "descriptors leave room for", peer or "a local peer", self.count)
            return True
        return False

    def shed_for_room(self, n):
        """shed(n) of those SHED_GRACE old, or when there are none (a flood) of those
        SHED_GRACE_FLOOD old; how many."""
        return self.shed(n) or self.shed(n, SHED_GRACE_FLOOD)

    def shed(self, n=SHED, grace=SHED_GRACE):
        """Out of descriptors: shut the n connections that have gone longest without
        attaching, of those that have for `grace` seconds or more; how many."""
        old = time.monotonic() - grace
        victims = []
        for c in self.server.unattached:        # oldest first: no scan of them all
            if c.born > old:
                break
            if not c.closed and not c.attached:
                victims.append(c)
                if len(victims) == n:
                    break
        for c in victims:
            c.shutdown()
        return len(victims)


class Acceptor(StreamServer):
    """A listening socket's accept loop for server (its handle() serves each
    connection) that survives running out of descriptors (see the module)."""

    def __init__(self, listener, server, **kw):
        StreamServer.__init__(self, listener, server.handle, **kw)
        self.guard = server.guard

    def do_read(self):
        try:
            return StreamServer.do_read(self)
        except OSError as ex:
            if ex.errno not in _OUT_OF_FDS:
                raise
            why = os.strerror(ex.errno)
        shed = self.guard.shed_for_room(SHED)
        if shed:
            # the listener is still readable: the loop accepts again at its next turn
            self.guard.log.hit("shed", "accept: %s: closed %d connections that had not "
                               "attached (the oldest)", why, shed)
            return None
        self.guard.log.hit("accept", "accept: %s: not accepting for %g s", why, ACCEPT_PAUSE)
        self.stop_accepting()
        self._timer = self.loop.timer(ACCEPT_PAUSE)
        self._timer.start(self._start_accepting_if_started)
        return None
