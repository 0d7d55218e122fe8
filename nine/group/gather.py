"""Running a group operation's members concurrently (gevent): Gather (whole reads and
writes chained in hub callbacks, one greenlet waiting), follow (tail -f of one member)
and join; used by the group service (nine.group.execute) and the client's own groups.
"""

import errno
import time

import gevent
from gevent.event import Event

from .handle import MAX_WHOLE

STREAM_CHUNK = 8192          # nowait: member data per item
POLL = 0.25                  # nowait: how often a member at end of file is read again
#: a nowait stream whose offset is TAIL + N is a tail stream (tail -n N -F; the group
#: service's `seek` takes it as a number): each member starts N lines before its end
TAIL = 1 << 63
CHECK_EVERY = 1.0            # tail streams: how often a member at end of file is checked


def tail_start(read, size, lines, chunk=STREAM_CHUNK):
    """The offset where the last `lines` lines of a file of `size` bytes begin (a last
    line without its newline counts), read backwards in chunks by read(offset, n)."""
    if lines <= 0 or size <= 0:
        return max(size, 0)
    found = 0
    pos = size
    last = True
    while pos > 0:
        n = min(chunk, pos)
        pos -= n
        data = bytes(read(pos, n))[:n]
        if last and data.endswith(b"\n"):
            data = data[:-1]            # the last line's own newline
        last = False
        i = len(data)
        while True:
            i = data.rfind(b"\n", 0, i)
            if i < 0:
                break
            found += 1
            if found == lines:
                return pos + i + 1
    return 0


def follow(read, label, offset, agg, put, hold=1.0, reason=str, size=None, at_end=None):
    """tail -f of one member: read on from offset, poll at end of file, put() partial
    results of whole lines; a partial line waits up to `hold` seconds for its end.
    Runs until killed or a read fails: then the failure is put() and (offset reached,
    the exception) returned, so that the caller may reopen the member and go on.
    A tail stream's member (nine.group.execute) gives size() (the member's size) and
    at_end(offset) (the offset to read on from, checked at end of file every
    CHECK_EVERY s: 0 after a rotation): an offset from TAIL up then starts that many
    lines before the end, and the member is announced by an empty result each time
    its following starts (after a failure: it is back)."""
    held = b""
    held_since = None
    checked = time.monotonic()
    try:
        if size is not None:
            if offset >= TAIL:
                offset = tail_start(read, size(), offset - TAIL)
            put(agg.leaf(label, b""))
        while True:
            data = read(offset, STREAM_CHUNK)
            if data:
                offset += len(data)
                held += bytes(data)
                cut = held.rfind(b"\n") + 1
                if cut:
                    put(agg.leaf(label, held[:cut]))
                    held = held[cut:]
                held_since = time.monotonic() if held else None
                continue
            if held and time.monotonic() - held_since >= hold:
                put(agg.leaf(label, held))
                held, held_since = b"", None
            if at_end is not None and time.monotonic() - checked >= CHECK_EVERY:
                checked = time.monotonic()
                moved = at_end(offset)
                if moved != offset:
                    if held:
                        put(agg.leaf(label, held))
                        held, held_since = b"", None
                    offset = moved
                    continue
            gevent.sleep(POLL)
    except Exception as e:
        if held:
            put(agg.leaf(label, held))
        put(agg.fail(label, reason(e)))
        return offset, e


class _Whole:
    """One member of a Gather: its reads chained in hub callbacks, as read_whole."""
    __slots__ = ("g", "label", "post", "offset", "want", "chunk", "got", "parts", "n")

    def __init__(self, g, label, post, offset, want, chunk):
        self.g, self.label, self.post = g, label, post
        self.offset, self.want, self.chunk = offset, want, chunk
        self.got = 0
        self.parts = []

    def start(self):
        self.n = n = min(self.want - self.got, self.chunk)
        self.g.posted(self.label, self.post(self.offset + self.got, n, self.reply))

    def reply(self, data, exc):
        if exc is None and data:
            self.parts.append(data)
            self.got += len(data)
            if self.got < self.want and len(data) == self.n:
                try:
                    return self.start()
                except Exception as e:
                    exc = e
        p = self.parts
        self.g.done(self.label, exc if exc is not None else
                    p[0] if len(p) == 1 else b"".join(p))


class _WholeWrite:
    """One member of a Gather's write: data written in as many requests as it takes."""
    __slots__ = ("g", "label", "post", "offset", "data", "done")

    def __init__(self, g, label, post, offset, data):
        self.g, self.label, self.post = g, label, post
        self.offset, self.data = offset, data
        self.done = 0

    def start(self):
        d = self.done
        self.g.posted(self.label, self.post(self.offset + d, self.data[d:], self.reply))

    def reply(self, n, exc):
        if exc is None:
            if not n or n < 0:
                exc = OSError(errno.EIO, "short write")
            else:
                self.done += n
                if self.done < len(self.data):
                    try:
                        return self.start()
                    except Exception as e:
                        exc = e
        self.g.done(self.label, exc if exc is not None else self.done)


class Gather:
    """Whole reads (read_whole's rule) or writes of many members at once without a
    greenlet per member: add(label, post, ...) with a node's post_read (add_write: its
    post_write) sends the first request, the next ones are sent from the reply
    callbacks, and wait() blocks the one calling greenlet until every member is done or
    the timeout passes (spawn(): a member whose node cannot post, in a greenlet).
    results: {label: the bytes read, the count written, or the exception}; the members
    still pending after wait() are flushed (or killed) and listed in its return value."""

    def __init__(self):
        self.results = {}
        self.pending = {}            # label -> cancel()
        self.left = 0
        self.ev = Event()

    def add(self, label, post, offset, count, chunk):
        self.left += 1
        self.ev.clear()             # a member before this one may have ended at once
        w = _Whole(self, label, post, offset, MAX_WHOLE if count is None else count,
                   chunk)
        try:
            w.start()
        except Exception as e:
            self.done(label, e)

    def spawn(self, label, fn, *args):
        """A member whose node cannot post (Node.can_post): fn(*args) in a greenlet of
        its own; its value (or exception) is the member's result, like the others'."""
        self.left += 1
        self.ev.clear()             # a member before this one may have ended at once

        def run():
            try:
                v = fn(*args)
            except gevent.GreenletExit:
                raise
            except BaseException as e:
                v = e
            self.done(label, v)
        g = gevent.spawn(run)
        self.pending[label] = lambda: g.kill(block=False)

    def add_write(self, label, post, offset, data):
        """Write data at offset with a node's post_write; the result is the count."""
        self.left += 1
        self.ev.clear()             # a member before this one may have ended at once
        w = _WholeWrite(self, label, post, offset, data)
        try:
            w.start()
        except Exception as e:
            self.done(label, e)

    def posted(self, label, cancel):
        """A member's request was sent: cancel() flushes it.  A post may answer at once
        (its reply callback called before it returns: a dead connection), and then the
        member is already done, not pending."""
        if label not in self.results:
            self.pending[label] = cancel

    def done(self, label, value):
        self.pending.pop(label, None)
        self.results[label] = value
        self.left -= 1
        if self.left <= 0:
            self.ev.set()

    def wait(self, timeout=None):
        """[labels that did not finish in time] (flushed).  If the wait is killed (a
        Tflush from above), every pending request is flushed and the kill goes on."""
        try:
            if self.left > 0:
                self.ev.wait(timeout)
        except BaseException:
            self.cancel()
            raise
        return self.cancel()

    def cancel(self):
        late = list(self.pending)
        for cancel in self.pending.values():
            try:
                cancel()
            except Exception:
                pass
        self.pending.clear()
        return late


def join(greenlets, timeout):
    """Wait for greenlets up to timeout; if the wait itself is killed (a Tflush from
    above), kill them too."""
    try:
        gevent.joinall(greenlets, timeout=timeout)
    except BaseException:
        gevent.killall(greenlets, block=False)
        raise
