"""Group operations on one open of a group's data or partial file.

A GroupOpen is a Placement (nine.group.plan) that runs the group's operations on its
members, with the group's settings:

- read(): every member is read at the group's offset (up to its count, or whole) at
  once: a member on a remote child whose node can_post is read with post_read from the
  event loop (a Gather: no greenlet per member), any other local member in a greenlet,
  and each child group is one read of that child's `partial` (its merged partial
  result).  Local results are mapped with the aggregator's `leaf`, everything is merged
  with its `merge`; the caller renders (data) or encodes (partial) the merged result.
- write(): every member is written at the same offset with the same bytes, the same
  way (post_write, a greenlet, or one write per child group).
- relay(): every member gets bytes of a relay source (the group's `source` lines) at
  the same offset: a child group with a source on its child is asked to relay (the
  bytes never come up to this level); for the other members, the bytes are read here
  from one source (the first that answers with all of them) and written as write()
  writes them.
- `sync timeout T`: a member (or a whole child) that has not answered by T is named as
  timed out and its request flushed; children get 0.8 T - 20 ms so that their partial
  result arrives in time.
- `sync nowait`: every member is followed (tail -f, nine.group.gather.follow) into one
  queue, and next_batch() merges what has arrived.  A followed member whose child went
  is reopened every REPAIR_EVERY s and followed on from where it stopped.  A tail
  stream (offset nine.group.gather.TAIL + N) follows names as tail -n N -F does: each
  member starts N lines before its end; one that could not be opened is tried again
  every REPAIR_EVERY s; at end of file, a member shorter than the offset reached
  (truncated) is read again from 0, and one whose path names another file now
  (renamed away and made anew) is replaced by that file, read from 0.

A member whose failure is healable (nine.group.resolve.healable) is resolved again at
the next operation (Placement.repair).
"""

import errno
import os
import time

import gevent
from gevent.lock import Semaphore
from gevent.queue import Queue, Empty

from ..server.node import error
from . import aggregate as A
from .gather import TAIL, Gather, follow, join
from .handle import CHUNK, read_whole
from .member import MemberFile
from .plan import REPAIR_EVERY, Placement, close_quietly, reason
from .resolve import healable


def _late(timeout):
    """The reason given to the members that did not answer in time."""
    if timeout is None:
        return "no answer"
    return "timed out after %gs" % timeout


def _wait_all(jobs, gather, timeout, t0):
    """Wait for the greenlet jobs [(greenlet, child group)] and the Gather's members until
    `timeout` seconds after t0 (None: for ever); returns the members the Gather still
    waited for (their requests flushed).  A kill of the wait (a Tflush from above)
    flushes the Gather's requests and kills the jobs."""
    try:
        join([j for j, _ in jobs], timeout)
    except BaseException:
        gather.cancel()
        raise
    return gather.wait(None if timeout is None else
                       max(0.0, timeout - (time.monotonic() - t0)))


class GroupOpen(Placement):
    """One open of a group's data/partial file: its members placed, the operations on
    them, and the state of the file's reads (a snapshot, a nowait stream)."""

    def __init__(self, svc, group, ctx, flags):
        self.lock = Semaphore()    # one operation at a time
        self.snapshot = None       # the result the last read at offset 0 gave
        self.stream = None         # nowait: (aggregator, Queue, greenlets)
        self.pause_at = None
        self.buf = b""
        super().__init__(svc, group, ctx, flags)

    def release(self):
        """Stop the nowait stream, then close every member."""
        self.stop_stream()
        super().release()

    # -- reads --------------------------------------------------------------------
    def _read_member(self, node, offset, count):
        """A whole read of one member's node, in a greenlet of its own."""
        ctx = self.ctx
        return read_whole(lambda off, n: node.read(ctx, off, n), offset, count,
                          min(node.iounit or CHUNK, CHUNK))

    def _leaf_file(self, agg, label, node, offset):
        """The partial of an aggregator that reads a member itself (reads_files), in a
        greenlet of its own."""
        return agg.leaf_file(label, MemberFile(node, self.ctx, offset))

    def read(self):
        """A group read with the group's settings: the merged Partial."""
        with self.lock:
            self.refresh()
            self.repair()
            g = self.group
            agg = g.aggregator()
            t0 = time.monotonic()
            timeout = g.timeout if g.sync == "timeout" else None
            child_t = None if timeout is None else max(0.01, timeout * 0.8 - 0.02)
            parts = [agg.fail(m, "open: " + r) for m, r in self.openfail.items()]
            jobs = []
            gather = Gather()    # members on a remote child: no greenlet each
            whole = agg.reads_files and g.count is None
            for label, node in self.local.items():
                if whole:        # the aggregator reads the member itself (any size)
                    gather.spawn(label, self._leaf_file, agg, label, node, g.offset)
                elif node.can_post:
                    gather.add(label, node.post_read, g.offset, g.count,
                               min(node.iounit or CHUNK, CHUNK))
                else:
                    gather.spawn(label, self._read_member, node, g.offset, g.count)
            for c in self.children:
                def one(c=c):
                    c.configure_for(g, child_t)
                    return c.read(agg)
                jobs.append((gevent.spawn(one), c))
            late = _wait_all(jobs, gather, timeout, t0)
            for label in late:
                parts.append(agg.fail(label, _late(timeout)))
            for label, v in gather.results.items():
                if isinstance(v, BaseException):
                    parts.append(agg.fail(label, reason(v)))
                    if healable(v):
                        self.broken.add(label)
                elif isinstance(v, A.Partial):
                    parts.append(v)
                else:
                    parts.append(agg.leaf(label, v))
            for j, who in jobs:                       # the child groups
                if not j.ready():
                    j.kill(block=False)
                    parts.append(A.Partial(None, {_late(timeout):
                                                  set(who.labels)}))
                    who.sent = None         # its state is unknown now: resend settings
                elif j.successful():
                    parts.append(j.value)
                else:
                    self.broken_children.add(who)
                    who.sent = None
                    parts.append(A.Partial(None, {"%s: %s" % (who.child.name,
                                                              reason(j.exception)):
                                                  set(who.labels)}))
            p = agg.merge(parts)
            g.last = ("read", self.members(), p, time.monotonic() - t0)
            return agg, p

    # -- nowait streams -------------------------------------------------------------
    def start_stream(self):
        """nowait: follow every member (and child group) into one queue."""
        g = self.group
        agg = g.aggregator()
        q = Queue()
        greenlets = []
        for label, r in self.openfail.items():
            q.put(agg.fail(label, "open: " + r))
            if g.offset >= TAIL:
                greenlets.append(gevent.spawn(self._follow_later, label, g.offset, agg, q))
        for label, node in self.local.items():
            greenlets.append(gevent.spawn(self._follow, label, node, g.offset, agg, q))
        for c in self.children:
            def follow_child(c=c):
                try:
                    c.configure_for(g, None)
                    while True:
                        p = c.next_batch(agg)
                        if p is None:
                            return
                        q.put(p)
                except Exception as e:
                    q.put(A.Partial(None, {"%s: %s" % (c.child.name, reason(e)):
                                           set(c.labels)}))
            greenlets.append(gevent.spawn(follow_child))
        self.stream = (agg, q, greenlets)

    def _follow(self, label, node, offset, agg, q):
        """tail -f of one member (a partial line waits up to 1 s for its end).  When its
        child's connection fails (a restarted host), the failure is passed on and the
        member is resolved and opened again every REPAIR_EVERY s; the stream then goes
        on from where it stopped, or from 0 if it is another file now (a new qid, or
        shorter than that offset)."""
        ctx = self.ctx
        held = [node]             # what the member's name opens now (a tail stream's)
        tail = offset >= TAIL
        while True:
            offset, e = follow(
                lambda off, n: held[0].read(ctx, off, n), label, offset, agg, q.put,
                hold=1.0, reason=reason,
                size=(lambda: held[0].getattr(ctx).size) if tail else None,
                at_end=(lambda off: self._rotated(label, held, off)) if tail else None)
            if not healable(e):
                return
            node = held[0]
            fresh = self._reopen_when_up(label, node)
            if self.local.get(label) is node:
                self.local[label] = fresh
            try:
                old_path = node.qid.path
            except Exception:
                old_path = None
            close_quietly(node, ctx)
            node = held[0] = fresh
            if offset >= TAIL:
                continue              # where it starts is not known yet
            try:         # a new file (another qid), or a shorter one: from its start
                now = node.getattr(ctx).size
                if node.qid.path != old_path or 0 < now < offset:
                    offset = 0
            except Exception:
                pass

    def _reopen_when_up(self, label, node):
        """The member opened again (Placement.reopen), once its child's link is up: at
        once when the child reconnects (Remote.wait_up), else tried every REPAIR_EVERY s.
        node: the member's node that failed (None: never opened), which names its
        child."""
        o = node.origin() if node is not None else None
        remote = o[0] if o is not None else None
        tried = False
        while True:
            if remote is not None and not remote.wait_up(0):
                remote.wait_up(REPAIR_EVERY)
            elif tried or remote is None:
                gevent.sleep(REPAIR_EVERY)
            tried = True
            try:
                return self.reopen(label)
            except Exception:
                continue

    def _follow_later(self, label, offset, agg, q):
        """A tail stream's member that could not be opened: opened every REPAIR_EVERY s
        until it opens, then followed."""
        node = self._reopen_when_up(label, None)
        self.openfail.pop(label, None)
        self.local[label] = node
        self._follow(label, node, offset, agg, q)

    def _rotated(self, label, held, offset):
        """A tail stream's check of a member at end of file: the offset to read on from,
        0 when the file is shorter than offset (truncated) or when the member's path
        names another file now (rotated by a rename: that file replaces held[0])."""
        ctx = self.ctx
        node = held[0]
        try:
            if node.getattr(ctx).size < offset:
                return 0
            fresh = self.reopen(label)
        except Exception:
            return offset            # (a failure shows at the next read)
        if fresh.qid.path == node.qid.path:
            fresh.close(ctx)
            return offset
        held[0] = fresh
        if self.local.get(label) is node:
            self.local[label] = fresh
        close_quietly(node, ctx)
        return 0

    def stop_stream(self):
        """nowait: stop following the members."""
        s = self.stream
        self.stream = None
        if s is not None:
            gevent.killall(s[2], block=False)

    def next_batch(self, block=True, limit=None):
        """nowait: merge what has arrived (waiting for something when block)."""
        if self.stream is None:
            self.start_stream()
        agg, q, _ = self.stream
        items = []
        try:
            items.append(q.get(block=block))
        except Empty:
            return agg, None
        size = 0
        while limit is None or size < limit:
            try:
                p = q.get_nowait()
            except Empty:
                break
            items.append(p)
            size += len(agg.encode(p)) if limit is not None else 0
        return agg, agg.merge(items)

    # -- writes -----------------------------------------------------------------
    def write(self, offset, data):
        """A group write of data at offset: a Partial of the failed members."""
        with self.lock:
            g, t0, timeout, errors = self._begin()
            jobs = []
            gather = Gather()    # members on a remote child: no greenlet each
            self._post_writes(gather, jobs, self.local, self.children, offset, data)
            self._collect(jobs, gather, timeout, t0, errors)
            p = A.Partial(None, errors)
            g.last = ("write %d bytes at %d" % (len(data), offset), self.members(), p,
                      time.monotonic() - t0)
            return p

    def _begin(self):
        """The start of a write or relay (under the lock): the plan healed; (group,
        start time, timeout, errors {reason: members} holding the members that could
        not be opened)."""
        self.refresh()
        self.repair()
        g = self.group
        errors = {}
        for m, r in self.openfail.items():
            errors.setdefault("open: " + r, set()).add(m)
        return g, time.monotonic(), g.timeout if g.sync == "timeout" else None, errors

    def _post_writes(self, gather, jobs, local, children, offset, data):
        """Start the writes of data at offset to local members and child groups."""
        for label, node in local.items():
            if node.can_post:
                gather.add_write(label, node.post_write, offset, data)
            else:
                gather.spawn(label, self._write_member, node, offset, data)
        for c in children:
            jobs.append((gevent.spawn(c.write, offset, data), c))

    def _collect(self, jobs, gather, timeout, t0, errors):
        """Wait for the writes (or relays) of the Gather and the child groups' jobs;
        their failures go into errors {reason: members}."""
        late = _wait_all(jobs, gather, timeout, t0)
        if late:
            errors.setdefault(_late(timeout), set()).update(late)
        for label, v in gather.results.items():
            if isinstance(v, BaseException):
                errors.setdefault(reason(v), set()).add(label)
                if healable(v):
                    self.broken.add(label)
        for j, who in jobs:                       # the child groups
            labels = set(who.labels)
            if not j.ready():
                j.kill(block=False)
                errors.setdefault(_late(timeout), set()).update(labels)
            elif not j.successful():
                self.broken_children.add(who)
                errors.setdefault("%s: %s" % (who.child.name, reason(j.exception)),
                                  set()).update(labels)
            else:
                for r, ms in j.value.items():
                    errors.setdefault(r, set()).update(ms)

    # -- relays -------------------------------------------------------------------------
    def relay(self, offset, count):
        """Bytes [offset, offset + count) of a relay source written to every member: a
        Partial of the failed members."""
        with self.lock:
            g, t0, timeout, errors = self._begin()
            jobs = []
            gather = Gather()
            there = [c for c in self.children if c.sources]      # relayed below
            here = [c for c in self.children if not c.sources]
            for c in there:
                jobs.append((gevent.spawn(c.relay, offset, count), c))
            if self.local or here:
                try:
                    data = self._read_source(offset, count)
                except Exception as e:
                    why = "relay source: " + reason(e)
                    errors.setdefault(why, set()).update(self.local)
                    for c in here:
                        errors.setdefault(why, set()).update(c.labels)
                else:
                    self._post_writes(gather, jobs, self.local, here, offset, data)
            self._collect(jobs, gather, timeout, t0, errors)
            p = A.Partial(None, errors)
            g.last = ("relay %d bytes at %d" % (count, offset), self.members(), p,
                      time.monotonic() - t0)
            return p

    def _read_source(self, offset, count):
        """count bytes at offset of the first relay source that has them all."""
        if not self.sources:
            raise error(errno.EINVAL, "the group has no relay source")
        now = time.monotonic()
        failed = self.source_failed
        # those that lie here first, those that failed lately last
        order = sorted(range(len(self.sources)), key=lambda i: (
            now - failed.get(i, -REPAIR_EVERY) < REPAIR_EVERY,
            self.sources[i][1] is not None))
        last = None
        for i in order:
            node = self.source_nodes.get(i)
            try:
                if node is None:
                    node = self.reopen_target(self.sources[i][0], os.O_RDONLY)
                    self.source_nodes[i] = node
                chunk = min(max(1, count), node.iounit or CHUNK)
                data = read_whole(lambda off, n: node.read(self.ctx, off, n), offset,
                                  count, chunk)
                if len(data) != count:
                    raise error(errno.EIO, "%s holds %d bytes at %d, not %d" %
                                (self.sources[i][0], len(data), offset, count))
                failed.pop(i, None)
                return data
            except Exception as e:
                last = e
                failed[i] = time.monotonic()
                n = self.source_nodes.pop(i, None)
                if n is not None:
                    close_quietly(n, self.ctx)
        raise last

    def _write_member(self, node, offset, data):
        """All of data written to one member's node, in a greenlet of its own."""
        done = 0
        while done < len(data):
            n = node.write(self.ctx, offset + done, data[done:])
            if n <= 0:
                raise error(errno.EIO, "short write")
            done += n
        return done

    def close(self):
        """The file is clunked: stop everything and close every member."""
        self.release()
