"""A group member as an aggregator that reads it itself sees it (Aggregator.reads_files).

The group service opens every member as the reader (nine.group.plan), through the Node
contract; a MemberFile hands that open node to the aggregator's leaf_file():

- ``read(offset, n)`` and ``chunks(size)`` read the member by offsets, as many bytes as
  it has (no 1 MiB cap: the aggregator keeps what it needs, grep keeps a line);
- ``walk(want)``, for a directory member (grep -r): each regular file below it, walked,
  listed and opened through the member's own node with the reader's context, so the
  backend's confinement and permission checks hold as for the member itself (realfs
  resolves one name below a directory fd, never a path, and refuses symlinks).
  Symbolic links found on the way are not followed, and only directories and regular
  files are entered or read (FIFOs, devices and sockets are left out), as GNU grep -r
  does.  Entries come in the order the directory lists them (grep's fts order).

Every read yields to the hub, so that a long scan at a leaf does not hold its server.
"""

import os

import gevent

from ..protocol import QTDIR
from .handle import CHUNK

DT_UNKNOWN, DT_DIR, DT_REG, DT_LNK = 0, 4, 8, 10
#: what walk() yields for a directory already being walked above (a bind-mount loop)
LOOP = "recursive directory loop"


class MemberFile:
    """One open member node (or a file below a directory member) read as ctx."""

    def __init__(self, node, ctx, offset=0, piece=None, path=b""):
        self.node = node
        self.ctx = ctx
        self.offset = offset
        self.piece = piece or min(node.iounit or CHUNK, CHUNK)    # bytes per request
        self.path = path          # below the member (b"": the member itself)

    @staticmethod
    def healable(e):
        """Whether a failure is the member's child gone (resolve again), not the file's."""
        from .resolve import healable
        return healable(e)

    @property
    def is_dir(self):
        return bool(self.node.qid.type & QTDIR)

    def read(self, offset, n):
        """Up to n bytes at offset (fewer only at the end of the file)."""
        out = []
        got = 0
        node, ctx = self.node, self.ctx
        while got < n:
            data = node.read(ctx, offset + got, min(n - got, self.piece))
            if not data:
                break
            out.append(bytes(data))
            got += len(data)
        gevent.sleep(0)           # (a local backend's read does not wait)
        return out[0] if len(out) == 1 else b"".join(out)

    def chunks(self, size):
        """The member's bytes from its offset on, size bytes at a time."""
        off = self.offset
        while True:
            data = self.read(off, size)
            if not data:
                return
            yield data
            off += len(data)

    def walk(self, want=None):
        """grep -r below this directory: (path, item) in directory order, depth first;
        path: bytes relative to the member; item: an open MemberFile of a regular file
        (closed when the walk moves on), an OSError (a directory or file that cannot
        be read: the walk goes on), or LOOP.  want(name): whether a regular file of
        that name (bytes) is read at all (grep's --include/--exclude)."""
        yield from self._walk(self.node, b"", {self.node.qid.path}, want)

    def _list(self, dnode):
        ctx = self.ctx
        out = []
        off = 0
        while True:
            ents = dnode.readdir(ctx, off, 65536)
            if not ents:
                return out
            out.extend(e for e in ents if e.name not in (".", ".."))
            off = ents[-1].offset

    def _walk(self, dnode, rel, above, want):
        ctx = self.ctx
        try:
            ents = self._list(dnode)
        except OSError as e:
            yield rel, e
            return
        for d in ents:
            bname = d.name.encode("utf-8", "surrogateescape") \
                if isinstance(d.name, str) else bytes(d.name)
            path = rel + b"/" + bname if rel else bname
            kind = d.type
            if kind not in (DT_UNKNOWN, DT_DIR, DT_REG):
                continue              # symbolic links, FIFOs, devices, sockets
            if kind == DT_REG and want is not None and not want(bname):
                continue
            try:
                nodes = dnode.walk(ctx, [d.name])
            except OSError as e:
                yield path, e
                continue
            if not nodes:
                continue
            child = nodes[0]
            try:
                if kind == DT_UNKNOWN:
                    import stat
                    mode = child.getattr(ctx).mode
                    kind = DT_DIR if stat.S_ISDIR(mode) else \
                        DT_REG if stat.S_ISREG(mode) else None
                    if kind is None or kind == DT_REG and want is not None and \
                            not want(bname):
                        continue
                if kind == DT_DIR and child.qid.path in above:
                    yield path, LOOP
                    continue
                try:
                    child.open(ctx, os.O_RDONLY)
                except OSError as e:
                    yield path, e
                    continue
                if kind == DT_DIR:
                    yield from self._walk(child, path, above | {child.qid.path}, want)
                else:
                    yield path, MemberFile(child, ctx, 0, self.piece, path)
            finally:
                child.close(ctx)
