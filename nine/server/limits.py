"""What one peer may hold of a server: the limits and their defaults.

A server (nine.server.core.Server(limits=)) serves whoever connects, authenticated or
not yet; these bound what a peer can make it hold, so that a hostile or broken one
costs the others little.  Each limit is a number of things or of seconds; 0 means no
limit.  nine.server.guard enforces the per-server ones (connections, timeouts, running
out of descriptors), nine.server.conn and nine.server.core the per-connection ones.

What hitting each one does:
  connections, per_peer   the new connection is closed at once (before Tversion)
  fids                    the request that would make one more fails with EMFILE
  requests                the connection is not read until one ends (backpressure)
  requests_total          connections that hold REQUESTS_RESERVE requests or more are
                          not read until the total is back under REQUESTS_LOW of it
                          (backpressure; the others are still read)
  attach_timeout          a connection that has not attached by then is closed (on a
                          server that requires authentication)
  frame_timeout           a connection whose frame has begun but not arrived whole by
                          then is closed (slowloris)
and the server logs one line for it, then at most one every few seconds for the same
kind, saying how many more there were.

Besides these, whatever the settings: a frame before Tversion is at most PREVERSION_FRAME
bytes (a larger size closes the connection), a connection's receive buffer grows with
the bytes actually received, never to the size a frame header claims, and connections
never take the descriptors that open files need (nine.server.guard).
"""

from collections import namedtuple

#: the largest frame a connection may send before its Tversion (a Tversion is a few
#: dozen bytes): a peer that has proven nothing gets nothing msize-sized
PREVERSION_FRAME = 8192
#: at the server-wide limit of requests in flight (Limits.requests_total), connections
#: holding fewer than this many are still read: a client that waits for its answers is
#: served whatever the others hold (so the total is at most requests_total plus
#: REQUESTS_RESERVE per connection)
REQUESTS_RESERVE = 8
#: ... and the others are read again once the total is back under this part of the limit
REQUESTS_LOW = 0.875
#: requests in flight on all connections of a server beyond which the garbage
#: collector's full collections wait (nine.server.guard.Guard.hold_gc) ...
GC_HOLD = 4096
#: ... until fewer than this are
GC_RESUME = 1024


#: (field, default) of Limits, in order; the comments say what each one bounds
_FIELDS = (
    #: connections at once, from everyone
    ("connections", 4096),
    #: connections at once from one peer address (TCP; unix sockets are not counted)
    ("per_peer", 256),
    #: fids of one connection
    ("fids", 65536),
    #: requests in flight on one connection; at the limit the connection is not read
    #: until one ends
    ("requests", 1024),
    #: requests in flight on all connections together (a blocked request holds its
    #: greenlet, ~10 KB: the default bounds them to ~100 MB); at the limit the
    #: connections that hold REQUESTS_RESERVE or more are not read until many end
    ("requests_total", 8192),
    #: seconds a connection has to attach (its first successful Tattach), where the
    #: server requires authentication (without it an attach proves nothing, and a
    #: mux's links to its children attach only once a user comes)
    ("attach_timeout", 30.0),
    #: seconds a frame may take to arrive whole once its first byte has
    ("frame_timeout", 30.0),
)


class Limits(namedtuple("Limits", [n for n, _ in _FIELDS], defaults=[d for _, d in _FIELDS])):
    """The limits of one server: Limits(fids=1024), each field by keyword (or in the
    order of _FIELDS); a field left out has its default (Limits._field_defaults).  Read
    only, compared and shown field by field.  (A named tuple rather than a frozen
    dataclass: importing dataclasses, and the inspect module it needs, is a tenth of the
    start of a `nine` command.)"""
    __slots__ = ()

    def __new__(cls, *args, **kw):
        self = super().__new__(cls, *args, **kw)
        for name in self._fields:
            if getattr(self, name) < 0:
                raise ValueError("limit %s: %r is negative (0: no limit)"
                                 % (name, getattr(self, name)))
        return self
