"""The 9P side of a group, shared by a mux (the members under one child) and by the
Python client (Client.gopen): a private group made on a group service through a client
Fid of the service's root, and the settings and reads both use (gevent-free, for the
blocking client: nine.group.gather has what runs members concurrently).
"""

import json
import os

from . import aggregate as A

FEATURES = b"nine-groups 1\n"
MAX_WHOLE = 1 << 20          # "count all" reads at most this much of each member
CHUNK = 1 << 16


def format_agg(name, params):
    def fv(v):
        if isinstance(v, tuple):
            return ":".join(repr(x) for x in v)
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)
    return " ".join([name] + ["%s=%s" % (k, fv(v)) for k, v in sorted(params.items())])


def _parse_value(v):
    """An aggregator parameter's value: bool, int, float, a:b:c tuple of floats, or str."""
    low = v.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if ":" in v:
        parts = v.split(":")
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            pass
    return v


def parse_agg(args):
    """The words of an `agg` line, ['equiv', 'format=i64'] -> (name, params); an
    unknown aggregator or parameter raises at once."""
    if not args:
        raise ValueError("agg needs an aggregator name (known: %s)" % ", ".join(A.names()))
    params = {}
    for a in args[1:]:
        k, sep, v = a.partition("=")
        if not sep or not k:
            raise ValueError("aggregator parameter %r is not key=value" % a)
        params[k] = _parse_value(v)
    A.get(args[0], **params)      # refuses an unknown name or parameter now
    return args[0], params


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


class GroupHandle:
    """A private group on a group service: `clone` kept open (the group lives as long),
    its ctl, partial and errors files open, the members added (and the relay sources,
    whose `relay` file is opened at the first relay).  root: a client Fid of the
    service's root (not owned)."""

    def __init__(self, root, members, flags, sources=()):
        self.conn = root.conn
        self.labels = [m for m, _ in members]
        self.sources = list(sources)
        self.sent = None                  # the settings last written to its ctl
        self.fids = []
        self.root = root
        self.relay_fid = None
        try:
            clone, _ = root.twalk(["clone"])
            self.fids.append(clone)
            clone.lopen(os.O_RDWR)
            self.gid = clone.read(0, 64).decode().strip()
            self.ctl = self._open(root, [self.gid, "ctl"], os.O_WRONLY)
            self.partial = self._open(root, [self.gid, "partial"], flags & os.O_ACCMODE)
            self.errors = self._open(root, [self.gid, "errors"], os.O_RDONLY)
            self.send(["add %s %s" % (m, p) for m, p in members] +
                      ["source %s" % p for p in self.sources])
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

    def _read_partial(self, timeout):
        """The partial file read at offset 0 (which runs the group read, or waits for a
        batch) and, while the answers are full-size, on at the following offsets."""
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
        return data

    def read(self, agg, timeout=None):
        """One merged partial result for all members."""
        return agg.decode(self._read_partial(timeout))

    def next_batch(self, agg, timeout=None):
        """sync nowait: the next batch (blocks until there is one); None at the end."""
        data = self._read_partial(timeout)
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

    def relay(self, offset, count, timeout=None):
        """Relay: every member gets bytes [offset, offset + count) of a source file
        (the service reads one near them; nothing passes through this connection);
        {reason: members} of those that failed."""
        if self.relay_fid is None:
            self.relay_fid = self._open(self.root, [self.gid, "relay"], os.O_WRONLY)
        req = b"%d %d\n" % (offset, count)
        n = self.relay_fid.write(0, req, timeout=timeout)
        if n == len(req):
            return {}
        return decode_errors(self.errors.read(0, self.iounit, timeout=timeout))

    def close(self):
        for f in reversed(self.fids):
            try:
                f.clunk_nowait()
            except Exception:
                pass
        self.fids = []
