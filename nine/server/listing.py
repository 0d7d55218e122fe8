"""A directory listing built from getdents64 without holding the hub: what a real
directory's readdir (nine.server.realfs) returns for one Treaddir.

A reply of 128 KiB is about 3,000 entries, each stat'ed (a few microseconds apiece),
and 20 clients may ask for one at once.  So that the other clients are served
meanwhile:

- getdents reads DENTS_SLICE bytes at a time (one of 128 KiB and its parsing held the
  hub 10-40 ms);
- the others run every YIELD_EVERY entries, whatever the hub has pending first
  (guard.background);
- a reply past LARGE entries first waits for one of LISTINGS slots of its hub: many
  large listings at once take turns, while a small listing never waits (and a listing
  whose request ends frees its slot).

Entries of one offset (a hash collision) are never split across replies: continuing
after the last would repeat its mates.
"""

import os
import weakref

from . import identity
from .guard import background
from .syscalls import getdents as _getdents

DENTS_SLICE = 16384      # bytes of one getdents
YIELD_EVERY = 32         # entries between two yields
LARGE = 256              # entries of one reply that make it a large listing
LISTINGS = 2             # large listings built at once per hub: the others wait

_slots = weakref.WeakKeyDictionary()      # hub -> Semaphore


def _slot():
    """The semaphore of this thread's hub's large listings."""
    import gevent
    from gevent.lock import Semaphore
    hub = gevent.get_hub()
    sem = _slots.get(hub)
    if sem is None:
        sem = _slots[hub] = Semaphore(LISTINGS)
    return sem


def _seekdir(fd, offset):
    os.lseek(fd, offset, os.SEEK_SET)


def _yield():
    background()


def entries(fd, offset, count, dirent):
    """The Dirents of the directory fd from offset that fit count bytes (24 + the
    name's length each): dirent(fd, ino, off, dtype, bname) makes each (None: the
    entry is gone)."""
    size = min(max(count, 4096), DENTS_SLICE)
    held = None
    out = []
    used = 0
    seen = 0
    pos = offset
    try:
        while True:
            _seekdir(fd, pos)           # (another batch on this fd may have moved it)
            ents = _getdents(fd, size)
            if not ents:
                return out
            for ino, off, dtype, bname in ents:
                need = 24 + len(bname)
                if out and used + need > count:
                    while len(out) > 1 and out[-1].offset == out[-2].offset:
                        out.pop()
                    return out
                seen += 1
                if seen % YIELD_EVERY == 0:
                    if seen >= LARGE and held is None:
                        held = _slot()
                        identity.as_own(held.acquire)
                    else:
                        identity.as_own(_yield)
                d = dirent(fd, ino, off, dtype, bname)
                if d is not None:
                    out.append(d)
                    used += need
            pos = ents[-1][1]
    finally:
        if held is not None:
            held.release()
