"""A small synthetic-file API: functions that look like files.

    tree = Dir("", [
        File("date", read=lambda ctx: time.ctime().encode() + b"\\n"),
        File("null", pread=lambda ctx, off, n: b"", write=lambda ctx, off, data: len(data)),
        Dir("sub", [...]),
        Dir("dyn", list=lambda ctx: {...name: entry...}),
    ])
    export = SynthFS(tree).attach      # an attach callable for nine.server.core.Server

File callbacks:
  read(ctx) -> bytes        called once per open: the open sees one consistent snapshot
                            from offset 0 to EOF (per-open state)
  pread(ctx, off, count)    a stream instead of a snapshot (may block; Tflush cancels it)
  write(ctx, off, data)     returns the count written
  open(ctx, flags), clunk(ctx, state)  optional hooks; open may return a per-open state
                            object, passed to callbacks that accept a `state` keyword
  size                      int or callable(ctx) giving the length that stat shows
Dir:
  children                  a static list of entries
  list(ctx) -> {name: entry}  a dynamic directory, listed afresh on each walk/readdir
Every entry gets a qid path that is unique and stable for the life of the process.
"""

import errno
import itertools
import os
import stat as S
import time

from ..protocol import Qid, QTDIR, QTFILE, L_O_ACCMODE, L_O_RDONLY, L_O_WRONLY, L_O_TRUNC
from ..server.node import Node, Attr, Dirent, StatFS, error

# synthetic qid paths live above bit 62, apart from real files' (device index << 48 | ino),
# so a tree that holds both (aname "nine": files/ beside proc/) never shows two files with
# one qid.path (the kernel takes inode = qid.path + 2)
_qpaths = itertools.count((1 << 62) + 1)
_START_NS = time.time_ns()


class Entry:
    mode = 0o444
    is_dir = False

    def __init__(self, name, mode=None, uid=0, gid=0):
        self.name = name
        if mode is not None:
            self.mode = mode
        self.uid = uid
        self.gid = gid
        self.qpath = next(_qpaths)
        self.version = 0
        self.mtime = _START_NS

    def touch(self):
        """Mark the content as changed: qid.version and mtime move."""
        self.version = (self.version + 1) & 0xFFFFFFFF
        self.mtime = time.time_ns()

    @property
    def qid(self):
        return Qid(QTDIR if self.is_dir else QTFILE, self.version, self.qpath)


class File(Entry):
    def __init__(self, name, read=None, write=None, pread=None, mode=None, size=0,
                 open=None, clunk=None, uid=0, gid=0, iounit=0, blocking=None):
        if mode is None:
            mode = (0o444 if (read or pread) else 0) | (0o222 if write else 0)
        super().__init__(name, mode, uid, gid)
        self.read = read
        self.pread = pread
        self.write = write
        self.size = size
        self.on_open = open
        self.on_clunk = clunk
        self.iounit = iounit
        # a stream (pread) may wait for data; a snapshot or a write callback should not
        self.blocking = bool(pread) if blocking is None else blocking


class Dir(Entry):
    mode = 0o555
    is_dir = True

    def __init__(self, name, children=(), list=None, mode=None, uid=0, gid=0):
        super().__init__(name, mode, uid, gid)
        self.children = {c.name: c for c in children}
        self.lister = list

    def add(self, entry):
        self.children[entry.name] = entry
        self.touch()
        return entry

    def entries(self, ctx):
        if self.lister is not None:
            d = dict(self.children)
            d.update(self.lister(ctx))
            return d
        return self.children


def _allowed(entry, ctx, want):
    """Unix permission check of entry's mode bits for ctx (want: 4 read, 2 write, 1 exec)."""
    uid = ctx.uid
    if uid is None or uid == 0:
        return True
    m = entry.mode
    if uid == entry.uid:
        bits = (m >> 6) & 7
    elif entry.gid == ctx.gid or entry.gid in (ctx.groups or ()):
        bits = (m >> 3) & 7
    else:
        bits = m & 7
    return bits & want == want


class Mount(Entry):
    """Another backend's tree (an attach callable(ctx) -> Node) mounted as a directory
    of a synthetic tree, e.g. Mount("files", RealFS(dir).attach)."""
    mode = 0o755
    is_dir = True

    def __init__(self, name, attach):
        super().__init__(name)
        self.attach = attach


class SynthNode(Node):
    __slots__ = ("entry", "path", "snapshot", "state", "opened", "name", "qid", "iounit",
                 "may_block")

    def __init__(self, entry, path):
        self.entry = entry
        self.path = path            # tuple of ancestor entries, root first
        self.name = entry.name or "/"
        self.qid = entry.qid
        self.snapshot = None
        self.state = None
        self.opened = False
        self.iounit = getattr(entry, "iounit", 0)
        self.may_block = getattr(entry, "blocking", False)

    def clone(self, ctx):
        return SynthNode(self.entry, self.path)

    def walk(self, ctx, names):
        out = []
        entry, path = self.entry, self.path
        for name in names:
            if not entry.is_dir:
                break
            if not _allowed(entry, ctx, 1):
                if not out:
                    raise error(errno.EACCES)
                break
            if name == "..":
                if path:
                    entry, path = path[-1], path[:-1]
            elif name == ".":
                pass
            else:
                child = entry.entries(ctx).get(name)
                if child is None:
                    if not out:
                        raise error(errno.ENOENT)
                    break
                if isinstance(child, Mount):
                    # another backend's tree mounted here: it walks the rest of the names
                    node = child.attach(ctx)
                    i = len(out)
                    rest = names[i + 1:]
                    out.append(node)
                    if rest:
                        try:
                            more = node.walk(ctx, rest)
                        except OSError:
                            more = []
                        out.extend(more)  # the core closes the nodes walked through
                    return out
                path = path + (entry,)
                entry = child
            out.append(SynthNode(entry, path))
        return out

    def getattr(self, ctx):
        e = self.entry
        if e.is_dir:
            mode = S.S_IFDIR | e.mode
            size = 0
            nlink = 2
        else:
            mode = S.S_IFREG | e.mode
            size = e.size(ctx) if callable(e.size) else e.size
            nlink = 1
        return Attr(qid=e.qid, mode=mode, uid=e.uid, gid=e.gid, nlink=nlink, size=size,
                    blksize=4096, blocks=(size + 511) // 512, atime=e.mtime, mtime=e.mtime,
                    ctime=e.mtime)

    def setattr(self, ctx, sa):
        e = self.entry
        if sa.mode is not None or sa.uid is not None or sa.gid is not None:
            raise error(errno.EPERM)
        if sa.size is not None and not (sa.size == 0 and not e.is_dir and e.write):
            raise error(errno.EPERM)
        # truncation of a writable synthetic file and time updates are accepted: shells do
        # `echo cmd > ctl`, which truncates first

    def statfs(self, ctx):
        return StatFS(type=0x01021997, bsize=4096, namelen=255)

    def open(self, ctx, flags):
        e = self.entry
        acc = flags & L_O_ACCMODE
        if e.is_dir:
            if acc != L_O_RDONLY:
                raise error(errno.EISDIR)
            if not _allowed(e, ctx, 4):
                raise error(errno.EACCES)
            self.opened = True
            return
        if acc != L_O_WRONLY:
            if not (e.read or e.pread):
                raise error(errno.EACCES)
            if not _allowed(e, ctx, 4):
                raise error(errno.EACCES)
        if acc != L_O_RDONLY or flags & L_O_TRUNC:
            if not e.write:
                raise error(errno.EACCES)
            if not _allowed(e, ctx, 2):
                raise error(errno.EACCES)
        if e.on_open is not None:
            self.state = e.on_open(ctx, flags)
        self.opened = True

    def read(self, ctx, offset, count):
        e = self.entry
        if e.pread is not None:
            if self.state is not None:
                return e.pread(ctx, offset, count, state=self.state)
            return e.pread(ctx, offset, count)
        if self.snapshot is None or offset == 0:
            data = e.read(ctx, state=self.state) if self.state is not None else e.read(ctx)
            if isinstance(data, str):
                data = data.encode()
            self.snapshot = data
        return self.snapshot[offset:offset + count]

    def write(self, ctx, offset, data):
        e = self.entry
        if self.state is not None:
            n = e.write(ctx, offset, data, state=self.state)
        else:
            n = e.write(ctx, offset, data)
        return len(data) if n is None else n

    def readdir(self, ctx, offset, count):
        ents = sorted(self.entry.entries(ctx).items())
        out = []
        for i in range(offset, len(ents)):
            name, e = ents[i]
            out.append(Dirent(e.qid, i + 1, 4 if e.is_dir else 8, name))
            if len(out) * 40 > count:
                break
        return out

    def close(self, ctx):
        e = self.entry
        if self.opened and not e.is_dir and e.on_clunk is not None:
            e.on_clunk(ctx, self.state)
        self.opened = False
        self.snapshot = None
        self.state = None

    def remove(self, ctx):
        raise error(errno.EPERM, "synthetic files cannot be removed")

    def listxattr(self, ctx):
        return []


class SynthFS:
    """An export whose root is a synthetic Dir."""

    def __init__(self, root):
        self.root = root

    def attach(self, ctx):
        return SynthNode(self.root, ())
