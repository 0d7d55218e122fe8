"""The real-file backend's hold on files (nine.server.realfs): an O_PATH fd per file,
reached by one name in the directory it was walked from, never a path from the export
root.

  Handle     one file as a walk reached it: its directory (a Handle; None for the
             root), its name there, its identity (st_dev, st_ino, S_IFMT), and an
             O_PATH fd of it (None while evicted); pins: the nodes holding it
  Handles    the table of an export: fd(h), lookup(dir, name, bname), intern(...),
             stat(h), named(h), forget(dir, name), moved(...), pin/unpin, close()

Names.  Handles are interned per (directory Handle, name) in a weak dictionary, so the
fids of one file reached by one name share one Handle and one fd.  lookup() opens the
name again every time and reuses the interned Handle only while it is still the same
inode, so a name a local process replaced gets a new Handle (its old fids keep the old
file).  A rename through the server moves the Handle (moved(): every fid of it, and of
everything below a renamed directory, then knows its new name); a removal forgets the
name (forget()).  named(h) gives h's directory fd and name only while that name still
names h's inode (ENOENT otherwise: a local process renamed it), for the operations that
must act by name (remove and rename of a fid's own file).

The fd budget.  A Handle that some node pins keeps its fd: one per distinct file held
(bounded by the fids of the connections).  One that no node pins any longer (a
directory above the fids, a file just clunked) keeps its fd in an LRU of at most `idle`
fds (1024 by default); the least recently used are closed (between operations only:
never while one uses the fd), and opened again by name in their directory when next
needed, refused with ENOENT if that name now names another inode.  Open nodes hold one
more fd each (their open file), outside this table.
"""

import collections
import errno
import os
import weakref

from .node import error
from .syscalls import OPATH

S_IFMT = 0o170000


class Handle:
    """One file of the export as a walk reached it (see the module's docstring)."""
    __slots__ = ("parent", "name", "bname", "dev", "ino", "fmt", "fd", "pins",
                 "__weakref__")

    def __init__(self, parent, name, bname, st):
        self.parent = parent
        self.name = name
        self.bname = bname
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.fmt = st.st_mode & S_IFMT
        self.fd = None
        self.pins = 0

    def same(self, st):
        return st.st_ino == self.ino and st.st_dev == self.dev


class Handles:
    """The Handles of one export.  step(dirfd, bname, flags, mode=0) opens one name
    below dirfd without following a symlink (openat2 confined beneath dirfd, or openat
    with O_NOFOLLOW)."""

    def __init__(self, root_fd, root_st, step, idle=1024):
        self.step = step
        self.idle = max(16, int(idle))
        self._names = weakref.WeakValueDictionary()     # (dir Handle, name) -> Handle
        self._held = {}                                 # every Handle that has an fd
        self._lru = collections.OrderedDict()           # those no node pins, LRU first
        self.root = Handle(None, "/", b".", root_st)
        self.root.fd = root_fd
        self.root.pins = 1                              # never idle

    def close(self):
        for h in list(self._held):
            self._drop(h)
        fd, self.root.fd = self.root.fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        # an export dropped without close() (a server stopped, an in-process test)
        # gives its descriptors back when it is collected
        try:
            self.close()
        except Exception:
            pass

    # --- fds ----------------------------------------------------------------------
    def fd(self, h):
        """The O_PATH fd of h, opened again by name if it was evicted."""
        fd = h.fd
        if fd is None:
            return self._reopen(h)
        if not h.pins:
            self._lru.move_to_end(h)
        return fd

    def _reopen(self, h):
        chain = []
        while h.fd is None:
            chain.append(h)
            h = h.parent
        for g in reversed(chain):
            fd = self.step(g.parent.fd, g.bname, OPATH)
            try:
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            if not g.same(st):
                os.close(fd)
                raise error(errno.ENOENT, "%r now names another file" % g.name)
            self._hold(g, fd)
        return chain[0].fd

    def _hold(self, h, fd):
        h.fd = fd
        self._held[h] = None
        if not h.pins:
            self._lru[h] = None

    def _drop(self, h):
        fd, h.fd = h.fd, None
        self._held.pop(h, None)
        self._lru.pop(h, None)
        if fd is not None:
            os.close(fd)

    def pin(self, h):
        h.pins += 1
        if h.pins == 1:
            self._lru.pop(h, None)

    def unpin(self, h):
        h.pins -= 1
        if not h.pins and h.fd is not None:
            self._lru[h] = None
            self.trim()

    def trim(self):
        """Close the fds of the least recently used Handles no node pins, down to
        `idle`.  Called only between operations (never while one uses an fd)."""
        lru = self._lru
        while len(lru) > self.idle:
            self._drop(next(iter(lru)))

    # --- names ----------------------------------------------------------------------
    def lookup(self, d, name, bname):
        """(the Handle of what name in directory d names now, its stat)."""
        fd = self.step(self.fd(d), bname, OPATH)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.intern(d, name, bname, fd, st), st

    def intern(self, d, name, bname, fd, st):
        """The Handle of (d, name) for fd, an O_PATH fd of it just opened (taken over)."""
        key = (d, name)
        h = self._names.get(key)
        if h is not None and h.same(st):
            if h.fd is None:
                self._hold(h, fd)
            else:
                os.close(fd)
            return h
        h = self._names[key] = Handle(d, name, bname, st)
        self._hold(h, fd)
        return h

    def stat(self, h):
        """lstat of h's file; ENOENT once it has no name left (st_nlink 0)."""
        st = os.fstat(self.fd(h))
        if st.st_nlink == 0 and h.parent is not None:
            raise error(errno.ENOENT, "%r was removed" % h.name)
        return st

    def named(self, h):
        """(fd of h's directory, h's name there), checked to still name h's inode."""
        if h.parent is None:
            raise error(errno.EBUSY)
        pfd = self.fd(h.parent)
        if not h.same(os.stat(h.bname, dir_fd=pfd, follow_symlinks=False)):
            raise error(errno.ENOENT, "%r was renamed or removed" % h.name)
        return pfd, h.bname

    def forget(self, d, name):
        """name in d was removed or replaced: the next lookup finds what is there."""
        self._names.pop((d, name), None)

    def moved(self, odir, oname, ndir, nname, st):
        """oname in odir was renamed to nname in ndir (st: its lstat before, or None):
        its Handle, if still that inode, takes the new name; what nname was is forgotten."""
        h = self._names.pop((odir, oname), None)
        self._names.pop((ndir, nname), None)
        if h is not None and (st is None or h.same(st)):
            h.parent = ndir
            h.name = nname
            h.bname = nname.encode("utf-8", "surrogateescape")
            self._names[(ndir, nname)] = h
