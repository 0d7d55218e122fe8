"""The 9P side of a group, shared by a mux (the members under one child) and by the
Python client (Client.gopen): a private group made on a group service through a client
Fid of the service's root, and the helpers both use to run a group operation.
"""

import errno
import json
import os
import time

import gevent
from gevent.event import Event

from . import aggregate as A

FEATURES = b"nine-groups 1\n"
MAX_WHOLE = 1 << 20          # "count all" reads at most this much of each member
CHUNK = 1 << 16
STREAM_CHUNK = 8192          # nowait: member data per item
POLL = 0.25                  # nowait: how often a member at end of file is read again


def format_agg(name, params):
    def fv(v):
        if isinstance(v, tuple):
            return ":".join(repr(x) for x in v)
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)
    return " ".join([name] + ["%s=%s" % (k, fv(v)) for k, v in sorted(params.items())])


def settings(agg, sync, timeout, offset, count):
    """The three ctl lines that fix a group read: aggregator, sync, seek/count."""
    if sync == "nowait":
        s = "sync nowait"
    elif timeout is not None:
        s = "sync timeout %g" % timeout
    else:
        s = "sync all"
    return ("agg %s" % format_agg(*agg), s,
            "seek %d count %s" % (offset, "all" if count is None else count))


def decode_errors(data):
    out = {}
    for r, ms in json.loads(bytes(data).decode()):
        out.setdefault(r, set()).update(A._unfold_wire(ms))
    return out


def offers_groups(root, timeout=None):
    """Whether the tree under client Fid `root` is a group service (its features file)."""
    f, _ = root.twalk(["features"])
    try:
        f.lopen(os.O_RDONLY)
        return f.read(0, 64, timeout=timeout).startswith(FEATURES.split()[0] + b" ")
    finally:
        f.clunk_nowait()


def read_whole(read, offset, count, chunk=CHUNK):
    """count bytes (None: the whole file, up to MAX_WHOLE) by read(offset, n) calls,
    stopping at the first short read (end of file, or one event of a stream)."""
    want = MAX_WHOLE if count is None else count
    out = []
    got = 0
    while got < want:
        n = min(want - got, chunk)
        data = read(offset + got, n)
        if not data:
            break
        out.append(bytes(data))
        got += len(data)
        if len(data) < n:
            break
    return b"".join(out)


def follow(read, label, offset, agg, put, hold=1.0, reason=str):
    """tail -f of one member: read on from offset, poll at end of file, put() partial
    results of whole lines; a partial line waits up to `hold` seconds for its end.
    Runs until killed or a read fails: then the failure is put() and (offset reached,
    the exception) returned, so that the caller may reopen the member and go on."""
    held = b""
    held_since = None
    try:
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
        self.g.pending[self.label] = self.post(self.offset + self.got, n, self.reply)

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
        self.g.pending[self.label] = self.post(self.offset + d, self.data[d:], self.reply)

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
        w = _WholeWrite(self, label, post, offset, data)
        try:
            w.start()
        except Exception as e:
            self.done(label, e)

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


class GroupHandle:
    """A private group on a group service: `clone` kept open (the group lives as long),
    its ctl, partial and errors files open, the members added.  root: a client Fid of
    the service's root (not owned)."""

    def __init__(self, root, members, flags):
        self.conn = root.conn
        self.labels = [m for m, _ in members]
        self.sent = None                  # the settings last written to its ctl
        self.fids = []
        try:
            clone, _ = root.twalk(["clone"])
            self.fids.append(clone)
            clone.lopen(os.O_RDWR)
            self.gid = clone.read(0, 64).decode().strip()
            self.ctl = self._open(root, [self.gid, "ctl"], os.O_WRONLY)
            self.partial = self._open(root, [self.gid, "partial"], flags & os.O_ACCMODE)
            self.errors = self._open(root, [self.gid, "errors"], os.O_RDONLY)
            self.send(["add %s %s" % (m, p) for m, p in members])
        except BaseException:
            self.close()
            raise

    def _open(self, root, names, flags):
        f, _ = root.twalk(names)
        self.fids.append(f)
        f.lopen(flags)
        return f

    @property
    def iounit(self):
        return self.conn.msize - 24

    def send(self, lines):
        """ctl lines, as few writes as the message size allows."""
        iou = self.iounit
        buf, size = [], 0
        for line in lines:
            b = (line + "\n").encode("utf-8", "surrogateescape")
            if buf and size + len(b) > iou:
                self.ctl.write(0, b"".join(buf))
                buf, size = [], 0
            buf.append(b)
            size += len(b)
        if buf:
            self.ctl.write(0, b"".join(buf))

    def configure(self, want):
        """Send the settings (a `settings()` tuple) that changed since the last time."""
        old = self.sent or (None,) * len(want)
        lines = [w for w, o in zip(want, old) if w != o]
        if lines:
            self.sent = None            # unknown until the write is done
            self.send(lines)
        self.sent = want

    def read(self, agg, timeout=None):
        """One merged partial result for all members: a read at offset 0 runs the group
        read; a full-size answer is continued at later offsets."""
        iou = self.iounit
        data = self.partial.read(0, iou, timeout=timeout)
        if len(data) == iou:
            parts = [data]
            off = len(data)
            while True:
                more = self.partial.read(off, iou, timeout=timeout)
                parts.append(more)
                off += len(more)
                if len(more) < iou:
                    break
            data = b"".join(parts)
        return agg.decode(data)

    def next_batch(self, agg, timeout=None):
        """sync nowait: the next batch (blocks until there is one); None at the end."""
        data = self.partial.read(0, self.iounit, timeout=timeout)
        return agg.decode(data) if data else None

    def write(self, offset, data, timeout=None):
        """Write every member; {reason: members} of those that failed (a short count
        says that some did)."""
        if len(data) > self.iounit:
            n = self.partial.pwrite(offset, data, timeout=timeout)
        else:
            n = self.partial.write(offset, data, timeout=timeout)
        if n == len(data):
            return {}
        return decode_errors(self.errors.read(0, self.iounit, timeout=timeout))

    def close(self):
        for f in reversed(self.fids):
            try:
                f.clunk_nowait()
            except Exception:
                pass
        self.fids = []
