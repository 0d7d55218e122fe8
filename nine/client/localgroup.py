"""A group done by the client itself (nine.client.group.GroupFile on a server without
the group service): every member opened here, reads and writes in greenlets."""

import os

import gevent
from gevent.queue import Queue, Empty

from ..group import aggregate as A
from ..group.gather import follow, join
from ..group.handle import read_whole, CHUNK
from .errors import NineError


class LocalGroup:
    """The client does the group's work: every member opened here, reads concurrent."""

    def __init__(self, client, g):
        self.g = g
        self.client = client
        self.files = {}
        self.fail = {}

        def op(label, path):
            try:
                f = client.walk(path)
            except (NineError, OSError) as e:
                self.fail[label] = "open: " + (e.strerror or str(e))
                return
            try:
                f.lopen(g.flags) if client.dialect.endswith(".L") else f.open(
                    {os.O_RDONLY: 0, os.O_WRONLY: 1, os.O_RDWR: 2}[g.flags & 3])
                self.files[label] = f
            except (NineError, OSError) as e:
                f.clunk_nowait()
                self.fail[label] = "open: " + (e.strerror or str(e))
        gevent.joinall([gevent.spawn(op, m, p) for m, p in g.members])
        self.stream_q = None

    def _run(self, fn, agg=None):
        g = self.g
        jobs = [(m, gevent.spawn(fn, f)) for m, f in self.files.items()]
        join([j for _, j in jobs], g.timeout)
        ok, errors = {}, {}
        for m, r in self.fail.items():
            errors.setdefault(r, set()).add(m)
        for m, j in jobs:
            if not j.ready():
                j.kill(block=False)
                errors.setdefault("timed out after %gs" % g.timeout, set()).add(m)
            elif j.successful():
                ok[m] = j.value
            else:
                e = j.exception
                errors.setdefault(getattr(e, "strerror", None) or str(e), set()).add(m)
        return ok, errors

    def read(self, count):
        g = self.g
        agg = g.aggregator()
        off = g.offset

        def rd(f):
            return read_whole(f.read, off, count, min(f._iou(), CHUNK))
        ok, errors = self._run(rd)
        parts = [agg.leaf(m, d) for m, d in ok.items()]
        parts.append(A.Partial(None, errors))
        return agg.merge(parts)

    def write(self, offset, data):
        def wr(f):
            return f.pwrite(offset, data) if len(data) > f._iou() else f.write(offset, data)
        ok, errors = self._run(wr)
        for m, n in ok.items():
            if n != len(data):
                errors.setdefault("short write (%d of %d bytes)" % (n, len(data)),
                                  set()).add(m)
        return errors

    def relay(self, offset, count):
        """Read count bytes at offset from the first source that has them all, and
        write them to every member."""
        last = None
        for path in self.g.sources:
            try:
                with self.client.walk(path) as f:
                    if self.client.dialect.endswith(".L"):
                        f.lopen(os.O_RDONLY)
                    else:
                        f.open(0)
                    data = read_whole(f.read, offset, count, min(max(1, count),
                                                                  f._iou() or CHUNK))
            except (NineError, OSError) as e:
                last = "relay source: " + (getattr(e, "strerror", None) or str(e))
                continue
            if len(data) == count:
                return self.write(offset, data)
            last = "relay source: %s holds %d bytes at %d, not %d" % (
                path, len(data), offset, count)
        return {last or "relay source: none": set(self.g.labels)}

    def next_batch(self, timeout):
        g = self.g
        agg = g.aggregator()
        if self.stream_q is None:
            q = self.stream_q = Queue()
            for m, r in self.fail.items():
                q.put(agg.fail(m, r))

            def reason(e):
                return getattr(e, "strerror", None) or str(e)
            self.followers = [gevent.spawn(follow, f.read, m, g.offset, agg, q.put, 0, reason)
                              for m, f in self.files.items()]
        q = self.stream_q
        try:
            items = [q.get(timeout=timeout)]
        except Empty:
            return None
        while True:
            try:
                items.append(q.get_nowait())
            except Empty:
                break
        return agg.merge(items)

    def close(self):
        if self.stream_q is not None:
            gevent.killall(self.followers, block=False)
        for f in self.files.values():
            try:
                f.clunk_nowait()
            except Exception:
                pass
        self.files = {}
