"""A server's enforcement of its limits (nine.server.limits) over all its connections.

Guard: admits or refuses each accepted connection (connections per server and per peer
address, and never so many that they take the descriptors the open files need: beyond
the process's descriptor limit less a reserve (FD_RESERVE), the oldest connection that
has not attached makes room, or the new one is refused), and closes, once a second or
so (a sweeper greenlet that runs while the server has connections), those that have
not attached in time (on a server that requires authentication) or hold a
half-received frame too long.  A connection it closes is only shut (nine.server.conn's
Transport.shutdown): its own greenlet then ends what it had in flight.

RateLog: the log lines of refusals, which come in floods: the first of each kind at
once, then at most one every LOG_EVERY seconds that says how many more there were (the
sweeper also runs while such lines are held back, to write them).

Acceptor: the accept loop of one listening socket (a gevent StreamServer) that survives
running out of file descriptors: it then closes the SHED oldest connections that have
not attached after SHED_GRACE seconds to make room (peers that proved nothing give way
to a new one, whose requests need descriptors too), and where there are none, pauses
accepting for ACCEPT_PAUSE seconds (no busy loop, no growing back-off: clients get in
as soon as descriptors are free again), logging once.
"""

import errno
import heapq
import logging
import os
import resource
import sys
import time

import gevent
from gevent.server import StreamServer

log = logging.getLogger("nine.server")

LOG_EVERY = 10.0        # seconds between two log lines of one kind
ACCEPT_PAUSE = 0.05     # seconds accept pauses when out of descriptors
SHED_GRACE = 0.5        # seconds before an unattached connection may be closed to make room
SHED = 16               # connections closed at once to make room (the newcomer needs files too)
FD_RESERVE = 64         # descriptors never taken by connections: at least this, or 1/8th
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class RateLog:
    """Warnings that may come in floods, one line per kind and LOG_EVERY seconds: the
    first at once; those within LOG_EVERY seconds of the last line are counted and the
    last of them logged later (by the next one after the interval, or flush()) with
    their number."""

    def __init__(self, every=LOG_EVERY, on_hold=None):
        self.every = every
        self.on_hold = on_hold  # called when a line is held back (to have flush() called)
        self._kinds = {}        # kind -> [time of its last line, held back, last held back]

    def hit(self, kind, fmt, *args):
        now = time.monotonic()
        k = self._kinds.get(kind)
        if k is None or not k[1] and now - k[0] >= self.every:
            self._kinds[kind] = [now, 0, None]
            log.warning(fmt, *args)
            return
        k[1] += 1
        k[2] = (fmt, args)
        if now - k[0] >= self.every:
            self._flush(k, now)
        elif self.on_hold is not None:
            self.on_hold()

    def held(self):
        """Are lines held back?"""
        return any(k[1] for k in self._kinds.values())

    def flush(self):
        """Log the kinds held back for LOG_EVERY seconds now."""
        now = time.monotonic()
        for k in self._kinds.values():
            if k[1] and now - k[0] >= self.every:
                self._flush(k, now)

    @staticmethod
    def _flush(k, now):
        fmt, args = k[2]
        log.warning(fmt + " (%d such in the last %.0f s)", *args, k[1], now - k[0])
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
        self.log = RateLog(on_hold=self._wake)
        self._sweeper = None
        self._stopped = False

    def admit(self, sock, address):
        """Count in a connection just accepted, or refuse it (closed, logged): False."""
        lim = self.server.limits
        peer = _peer(address)
        if lim.connections and self.count >= lim.connections:
            self.log.hit("connections", "refused a connection from %s: %d connections open, "
                         "the limit (--max-connections)", peer or "a local peer", self.count)
        elif peer is not None and lim.per_peer and self.peers.get(peer, 0) >= lim.per_peer:
            self.log.hit("per_peer", "refused a connection from %s: %d connections open from "
                         "there, the limit (--max-per-peer)", peer, lim.per_peer)
        elif self.count >= _descriptor_room() and not self.shed(1):
            self.log.hit("descriptors", "refused a connection from %s: %d connections open, "
                         "all that the descriptors leave room for (ulimit -n %d)",
                         peer or "a local peer", self.count,
                         resource.getrlimit(resource.RLIMIT_NOFILE)[0])
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

    def stop(self):
        """The server stops: so does the sweeper."""
        self._stopped = True
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
        for c in list(self.server.conns):
            if c.closed:
                continue
            if at and not c.attached and now - c.born > at:
                self.log.hit("attach_timeout", "closed the connection of %s: not attached "
                             "after %g s (--attach-timeout)", c.address, at)
                c.shutdown()
                continue
            since = c.since
            if ft and since is not None and now - since > ft:
                self.log.hit("frame_timeout", "closed the connection of %s: a frame begun "
                             "%.0f s ago has not arrived whole (--frame-timeout)",
                             c.address, now - since)
                c.shutdown()
        self.log.flush()

    def shed(self, n=SHED):
        """Out of descriptors: shut the n connections that have gone longest without
        attaching, of those that have for SHED_GRACE seconds or more; how many."""
        old = time.monotonic() - SHED_GRACE
        idle = [c for c in self.server.conns if not c.attached and not c.closed and
                c.born <= old]
        victims = heapq.nsmallest(n, idle, key=lambda c: c.born)
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
        shed = self.guard.shed()
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
