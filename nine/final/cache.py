"""FiNAL's listing cache: merged listings and walk tables of a composition, kept for a
few seconds.

Keys are chosen by the handles (nine.final.handles): a kind letter, the virtual path and
the uid asking, since children may show each user different entries.  A value being
computed is computed once: a second greenlet asking for the same key waits for it.
Every create/mkdir/remove/rename/link through the composition drops the whole cache
(clear()); a value whose computation overlapped a clear() is handed out but not kept.
"""

import time

import gevent
from gevent.event import AsyncResult

_RETRY = object()           # the computation failed: the waiter computes it itself


class ListingCache:
    """{key: value} for `ttl` seconds (0: nothing is kept), at most about `max_size`
    entries (the expired ones are dropped first, then everything)."""

    def __init__(self, ttl=1.0, max_size=4096):
        self.ttl = ttl
        self.max_size = max_size
        self.entries = {}           # key -> (expiry (monotonic), value)
        self.inflight = {}          # key -> (AsyncResult, greenlet computing it)
        self.gen = 0                # bumped by clear()

    def cached(self, key, fn):
        """The value of key: the cached one while fresh, else fn()'s (kept for ttl)."""
        e = self.entries.get(key)
        now = time.monotonic()
        if e is not None and e[0] > now:
            return e[1]
        cur = gevent.getcurrent()
        got = self.inflight.get(key)
        if got is not None and got[1] is not cur:   # being made elsewhere: wait for it
            v = got[0].get()
            if v is not _RETRY:
                return v
            return self.cached(key, fn)
        ev = AsyncResult()
        self.inflight[key] = (ev, cur)
        gen = self.gen
        try:
            v = fn()
        except BaseException:
            self.inflight.pop(key, None)
            ev.set(_RETRY)
            raise
        self.inflight.pop(key, None)
        if gen == self.gen and self.ttl > 0:
            if len(self.entries) >= self.max_size:
                self._purge(now)
            self.entries[key] = (now + self.ttl, v)
        ev.set(v)
        return v

    def peek(self, key):
        """(value,) when key is cached and fresh, else None.  Never computes."""
        e = self.entries.get(key)
        if e is not None and e[0] > time.monotonic():
            return (e[1],)
        return None

    def _purge(self, now):
        for k in [k for k, e in self.entries.items() if e[0] <= now]:
            del self.entries[k]
        if len(self.entries) >= self.max_size:
            self.entries.clear()

    def clear(self):
        """Drop every cached value; values being computed now will not be kept."""
        self.gen += 1
        self.entries.clear()
