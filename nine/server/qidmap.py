"""One collision-free, stable qid.path space for a server that merges others (a mux, a
FiNAL composition: both floors above use it, so it lives here).

The Linux client takes inode = qid.path + 2: two files with one qid.path look like hard
links.  A mux merges many children whose qid paths overlap, so every qid it hands out
comes from here:

  - a child's qid: `map(child, qid)` gives the same mux path for the same (child,
    qid.path) for the life of the mux, and different paths for different pairs;
  - a directory the mux itself makes (a FiNAL union, a per-server directory):
    `synthetic(key)` gives a stable path per key (any hashable, e.g. ("union", "proc/1")).

Paths are small integers handed out in order (bit 63 clear for child qids, set for the
mux's own), so they stay unique whatever the children use, at the cost of one dict entry
per distinct file seen (about 100 bytes).
"""

import itertools

from ..protocol import Qid

_SYNTH_BIT = 1 << 63


class QidMap:
    __slots__ = ("_child", "_synth", "_next", "_next_synth")

    def __init__(self):
        self._child = {}
        self._synth = {}
        self._next = itertools.count(1).__next__
        self._next_synth = itertools.count(1).__next__

    def map(self, child, qid):
        """The mux's qid for `qid` of child `child` (any hashable naming the child)."""
        key = (child, qid[2])
        p = self._child.get(key)
        if p is None:
            p = self._child[key] = self._next()
        return Qid(qid[0], qid[1], p)

    def path(self, child, qpath):
        key = (child, qpath)
        p = self._child.get(key)
        if p is None:
            p = self._child[key] = self._next()
        return p

    def synthetic(self, key, qtype=0x80, version=0):
        """A stable qid for a file or directory the mux makes itself."""
        p = self._synth.get(key)
        if p is None:
            p = self._synth[key] = _SYNTH_BIT | self._next_synth()
        return Qid(qtype, version, p)

    def __len__(self):
        return len(self._child) + len(self._synth)
