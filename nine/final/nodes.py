"""FiNAL's nodes: the Nodes a composition serves, made from the handles of its paths.

A handle that is a plain child subtree becomes a TNode (a thin proxy of the child's Node:
I/O, creates, renames go straight to the owning child, qids mapped); any other handle
becomes a VDir (a directory the composition makes: synthetic qid keyed by its virtual
path, listings merged and cached).  '..' is resolved in the virtual name space, never in
a child's.  Both say where they come from (origin, locate) when the child behind them is
a nine.server.node.Remote (a mux's child).
"""

import copy
import errno
import time

from ..protocol import L_O_ACCMODE, L_O_RDONLY
from ..server.node import Node, Dirent, StatFS, error
from .handles import TreeH, SimpleH, UnionH

RESETTLE_EVERY = 1.0         # s between two settlements of a union that missed a child


def make_node(s, h, vp):
    """The node of session s for handle h (settled here) at the virtual path vp;
    ENOENT when nothing is there."""
    retry = None
    if h is not None:
        h, retry = settle(s, h, vp)
    if h is None:
        raise error(errno.ENOENT)
    if type(h) is TreeH:
        return TNode(s, h.child, h.cpath, vp, qid=h.qid, lazy=h.lazy)
    q, _ = h.kind(s, vp)
    return VDir(s, h, vp, q, retry)


def settle(s, h, vp):
    """(h settled, None), or (h settled, h) when a union layer failed on the way (a child
    down or not answering, as opposed to a path absent from it): then the directory is
    kept a union, even of one layer, so that its node can settle it again later."""
    seen = s.failed_layers
    got = h.settle(s, vp)
    if got is None or s.failed_layers == seen:
        return got, None
    if type(got) is not UnionH:
        if not got.is_dir(s, vp):
            return got, None
        got = UnionH((got,), True)
    return got, h


def _at_vp(s, vp):
    """A new node of session s for the virtual path vp (used for '..')."""
    node = make_node(s, s.comp.root_handle(), ())
    if not vp:
        return node
    try:
        got = node._walk_plain(s.ctx, list(vp))
    finally:
        node.close(s.ctx)
    for n in got[:-1]:
        n.close(s.ctx)
    if len(got) < len(vp):
        if got:
            got[-1].close(s.ctx)
        raise error(errno.ENOENT)
    return got[-1]


def _plain(names):
    """names as a tuple when they hold no '.', '..' or empty name, else None."""
    names = tuple(names)
    return None if any(n in (".", "..", "") for n in names) else names


def _walk(start, ctx, names):
    """Walk with '..' resolved in the virtual name space (never into a child's parent)."""
    out = []
    cur = start
    i = 0
    n = len(names)
    while i < n:
        if names[i] == "..":
            try:
                nxt = _at_vp(cur.s, cur.vp[:-1])
            except OSError:
                if not out:
                    raise
                break
            out.append(nxt)
            cur = nxt
            i += 1
            continue
        j = i
        while j < n and names[j] != "..":
            j += 1
        try:
            got = cur._walk_plain(ctx, names[i:j])
        except OSError:
            if not out:
                raise
            break
        out.extend(got)
        if len(got) < j - i:
            break
        cur = got[-1]
        i = j
    return out


def _dir_node_for(s, newdir, child):
    """(Node of child's directory that newdir is, close-it-after flag); EXDEV when newdir
    belongs to another child."""
    if isinstance(newdir, TNode):
        if newdir.s is not s or newdir.child != child:
            raise error(errno.EXDEV, "rename across children")
        return newdir._n(), False
    if isinstance(newdir, VDir):
        if newdir.s is not s:
            raise error(errno.EXDEV)
        t = newdir.h.target(s, newdir.vp)
        if t is None:
            raise error(errno.EPERM, "no child directory to rename into here")
        if t[0] != child:
            raise error(errno.EXDEV, "rename across children")
        return s.node_at(*t), True
    raise error(errno.EXDEV)


def _times_only(sa):
    return sa.mode is None and sa.uid is None and sa.gid is None and sa.size is None


class TNode(Node):
    """A child's file or directory in the composed name space: a thin proxy of the child's
    Node (resolved on first use: walks through it are batched into one child walk)."""
    __slots__ = ("s", "child", "cpath", "vp", "node", "lazy", "_qid", "name", "iounit",
                 "may_block", "closed")

    def __init__(self, s, child, cpath, vp, node=None, qid=None, lazy=False):
        self.s = s
        self.child = child
        self.cpath = cpath
        self.vp = vp
        self.node = node
        self.lazy = lazy
        self._qid = qid
        self.name = vp[-1] if vp else "/"
        self.closed = False
        if node is not None:
            self.may_block = node.may_block
            self.iounit = node.iounit
        else:
            self.may_block = True
            self.iounit = 0
        s.refs += 1

    @property
    def qid(self):
        if self.lazy:
            return self.s.comp.synth(self.vp)
        n = self.node
        if n is None:
            if self._qid is not None:
                return self._qid
            n = self._n()
        return self.s.comp.cq(self.child, n.qid)

    def _n(self):
        n = self.node
        if n is None:
            n = self.node = self.s.node_at(self.child, self.cpath)
            self.may_block = n.may_block
            self.iounit = n.iounit
        return n

    def __repr__(self):
        return "TNode(%s:%s at /%s)" % (self.child, "/" + "/".join(self.cpath),
                                         "/".join(self.vp))

    # --- where it comes from ------------------------------------------------------------
    def origin(self):
        remote = self.s.comp.remotes.get(self.child)
        return None if remote is None else (remote, tuple(self.cpath))

    def locate(self, names):
        """The child's path below this node's: no rule of the composition applies
        below a child's subtree."""
        names = _plain(names)
        remote = self.s.comp.remotes.get(self.child)
        if names is None or remote is None or self.closed:
            return None
        return remote, tuple(self.cpath) + names

    # --- name space ---------------------------------------------------------------------
    def clone(self, ctx):
        if self.node is not None:
            return TNode(self.s, self.child, self.cpath, self.vp, self.node.clone(ctx),
                         lazy=self.lazy)
        return TNode(self.s, self.child, self.cpath, self.vp, qid=self._qid, lazy=self.lazy)

    def walk(self, ctx, names):
        return _walk(self, ctx, names)

    def _walk_plain(self, ctx, names):
        names = list(names)
        if self.node is not None:
            got = self.node.walk(ctx, names)
            if not got:
                raise error(errno.ENOENT)
        else:
            got = self.s.walk_from(self.child, self.cpath, names)
        out = []
        cp, vp = self.cpath, self.vp
        for name, n in zip(names, got):
            if name != ".":
                cp = cp + (name,)
                vp = vp + (name,)
            out.append(TNode(self.s, self.child, cp, vp, n))
        return out

    # --- attributes ---------------------------------------------------------------------
    def getattr(self, ctx):
        if self.lazy:
            return self.s.comp.dir_attr(self.vp)
        a = copy.copy(self._n().getattr(ctx))
        a.qid = self.s.comp.cq(self.child, a.qid)
        return a

    def setattr(self, ctx, sa):
        if self.lazy:
            if _times_only(sa):
                return
            raise error(errno.EPERM, "a per-server directory of a view")
        self._n().setattr(ctx, sa)

    def statfs(self, ctx):
        return self._n().statfs(ctx)

    # --- I/O ----------------------------------------------------------------------------
    def open(self, ctx, flags):
        self._n().open(ctx, flags)

    def read(self, ctx, offset, count):
        return self._n().read(ctx, offset, count)

    @property
    def can_post(self):
        """The child's node offers greenlet-free reads and writes (a remote child's)."""
        return self._n().can_post

    def post_read(self, offset, count, done):
        return self._n().post_read(offset, count, done)

    def post_write(self, offset, data, done):
        return self._n().post_write(offset, data, done)

    def write(self, ctx, offset, data):
        return self._n().write(ctx, offset, data)

    def readdir(self, ctx, offset, count):
        cq = self.s.comp.cq
        c = self.child
        return [Dirent(cq(c, e.qid), e.offset, e.type, e.name)
                for e in self._n().readdir(ctx, offset, count)]

    def fsync(self, ctx, datasync=0):
        return self._n().fsync(ctx, datasync)

    def close(self, ctx):
        if self.closed:
            return
        self.closed = True
        n, self.node = self.node, None
        try:
            if n is not None:
                n.close(ctx)
        finally:
            self.s.release()

    # --- creation and removal -----------------------------------------------------------
    def create(self, ctx, name, flags, mode, gid):
        n = self._n()
        new = n.create(ctx, name, flags, mode, gid)
        self.s.comp.invalidate()
        if new is n:            # the child moved its node in place: so do we
            self.cpath += (name,)
            self.vp += (name,)
            self.name = name
            self.lazy = False
            self._qid = None
            self.may_block = new.may_block
            self.iounit = new.iounit
            return self
        return TNode(self.s, self.child, self.cpath + (name,), self.vp + (name,), new)

    def mkdir(self, ctx, name, mode, gid):
        q = self._n().mkdir(ctx, name, mode, gid)
        self.s.comp.invalidate()
        return self.s.comp.cq(self.child, q)

    def symlink(self, ctx, name, target, gid):
        q = self._n().symlink(ctx, name, target, gid)
        self.s.comp.invalidate()
        return self.s.comp.cq(self.child, q)

    def mknod(self, ctx, name, mode, major, minor, gid):
        q = self._n().mknod(ctx, name, mode, major, minor, gid)
        self.s.comp.invalidate()
        return self.s.comp.cq(self.child, q)

    def link(self, ctx, target, name):
        if not isinstance(target, TNode) or target.s is not self.s or \
                target.child != self.child:
            raise error(errno.EXDEV, "link across children")
        self._n().link(ctx, target._n(), name)
        self.s.comp.invalidate()

    def renameat(self, ctx, oldname, newdir, newname):
        nd, tmp = _dir_node_for(self.s, newdir, self.child)
        try:
            self._n().renameat(ctx, oldname, nd, newname)
        finally:
            if tmp:
                nd.close(ctx)
        self.s.comp.invalidate()

    def rename(self, ctx, newdir, newname):
        if self.lazy:
            raise error(errno.EPERM, "a per-server directory of a view")
        if newdir is None:
            self._n().rename(ctx, None, newname)
        else:
            nd, tmp = _dir_node_for(self.s, newdir, self.child)
            try:
                self._n().rename(ctx, nd, newname)
            finally:
                if tmp:
                    nd.close(ctx)
        self.s.comp.invalidate()

    def unlinkat(self, ctx, name, flags):
        self._n().unlinkat(ctx, name, flags)
        self.s.comp.invalidate()

    def remove(self, ctx):
        if self.lazy:
            raise error(errno.EPERM, "a per-server directory of a view")
        self._n().remove(ctx)
        self.s.comp.invalidate()

    def readlink(self, ctx):
        return self._n().readlink(ctx)

    # --- locks and xattrs ---------------------------------------------------------------
    def lock(self, ctx, type, flags, start, length, proc_id, client_id):
        return self._n().lock(ctx, type, flags, start, length, proc_id, client_id)

    def getlock(self, ctx, type, start, length, proc_id, client_id):
        return self._n().getlock(ctx, type, start, length, proc_id, client_id)

    def listxattr(self, ctx):
        if self.lazy:
            return []
        return self._n().listxattr(ctx)

    def getxattr(self, ctx, name):
        if self.lazy:
            raise error(errno.ENODATA)
        return self._n().getxattr(ctx, name)

    def setxattr(self, ctx, name, value, flags):
        if self.lazy:
            raise error(errno.EPERM)
        return self._n().setxattr(ctx, name, value, flags)

    def removexattr(self, ctx, name):
        if self.lazy:
            raise error(errno.EPERM)
        return self._n().removexattr(ctx, name)


class VDir(Node):
    """A directory the composition makes (a union, a view, a path to a statement's target,
    a filtered child directory).  Listings are merged, cached, and snapshot per open so
    that readdir cookies (index + 1 into the snapshot) stay valid across batches."""
    __slots__ = ("s", "_h", "vp", "qid", "name", "snap", "failed", "closed", "retry",
                 "retry_at")
    may_block = True
    iounit = 0

    def __init__(self, s, h, vp, qid, retry=None):
        self.s = s
        self._h = h
        self.vp = vp
        self.qid = qid
        self.name = vp[-1] if vp else "/"
        self.snap = None
        self.failed = frozenset()   # children that failed during this directory's listing
        self.closed = False
        # a union settled while a child was down (retry: its unsettled handle) is settled
        # again, at most every RESETTLE_EVERY s, until every layer answers: a child that
        # was down when a long-lived attach (a kernel mount) was made joins it when back
        self.retry = retry
        self.retry_at = time.monotonic() + RESETTLE_EVERY
        s.refs += 1

    @property
    def h(self):
        """The directory's settled handle (settled again while a layer is missing)."""
        r = self.retry
        if r is not None:
            now = time.monotonic()
            if now >= self.retry_at:
                self.retry_at = now + RESETTLE_EVERY
                try:
                    h, again = settle(self.s, r, self.vp)
                except OSError:
                    h, again = None, r
                if h is not None and h.is_dir(self.s, self.vp):
                    if type(h) is not UnionH:
                        h = UnionH((h,), True)
                    self._h = h
                    self.retry = again
        return self._h

    def __repr__(self):
        return "VDir(/%s, %s)" % ("/".join(self.vp), type(self._h).__name__)

    # --- where it comes from ------------------------------------------------------------
    def locate(self, names):
        """Known without asking any child when the first name is a per-server directory
        of a view, or a name that a cached union listing shows in one layer only, a
        child's own directory (the group service hands members on to a child's own group
        service by this, without walking each member through the tree)."""
        names = _plain(names)
        if not names:
            return None
        s, h, name = self.s, self.h, names[0]
        t = type(h)
        if t is SimpleH:
            p = h.index.get(name)
            if p is None:
                return None
            child, cpath = name, tuple(p) + names[1:]
        elif t is UnionH:
            got = s.comp.listings.peek(("u", self.vp, s.uid))
            if got is None:
                return None
            prov = got[0][0].get(name)
            if not prov or len(prov) != 1:
                return None                 # absent (let a walk say so), or a union below
            layer = h.layers[prov[0][0]]
            if type(layer) is not TreeH or layer.lazy:
                return None
            child, cpath = layer.child, tuple(layer.cpath) + names
        else:
            return None
        remote = s.comp.remotes.get(child)
        return None if remote is None else (remote, cpath)

    def clone(self, ctx):
        return VDir(self.s, self._h, self.vp, self.qid, self.retry)

    def walk(self, ctx, names):
        return _walk(self, ctx, names)

    def _walk_plain(self, ctx, names):
        s = self.s
        out = []
        cur = self
        for i, name in enumerate(names):
            if isinstance(cur, TNode):
                try:
                    out.extend(cur._walk_plain(ctx, names[i:]))
                except OSError:
                    if not out:
                        raise
                break
            try:
                if name == ".":
                    nxt = cur.clone(ctx)
                else:
                    h = cur.h.step(s, cur.vp, name)
                    if h is None:
                        raise error(errno.ENOENT)
                    nxt = make_node(s, h, cur.vp + (name,))
            except OSError:
                if not out:
                    raise
                break
            out.append(nxt)
            cur = nxt
        return out

    # --- attributes ---------------------------------------------------------------------
    def getattr(self, ctx):
        a = copy.copy(self.h.attr(self.s, self.vp))
        a.qid = self.qid
        return a

    def setattr(self, ctx, sa):
        if not _times_only(sa):
            raise error(errno.EPERM, "a directory of the composition")

    def statfs(self, ctx):
        return StatFS()

    # --- listing ------------------------------------------------------------------------
    def listing(self, ctx=None):
        """[(name, qid, dtype)] of this directory (cached per (directory, uid))."""
        s = self.s

        def compute():
            f = set()
            e = self.h.entries(s, self.vp, f)
            return list(e), frozenset(f)
        ents, failed = s.comp.listings.cached(("d", self.vp, s.uid), compute)
        self.failed = failed
        return ents

    def open(self, ctx, flags):
        if flags & L_O_ACCMODE != L_O_RDONLY:
            raise error(errno.EISDIR)
        self.snap = None

    def readdir(self, ctx, offset, count):
        if offset == 0 or self.snap is None:
            self.snap = self.listing(ctx)
        snap = self.snap
        out = []
        size = 0
        for i in range(offset, len(snap)):
            name, q, t = snap[i]
            size += 24 + len(name)
            if out and size > count:
                break
            out.append(Dirent(q, i + 1, t, name))
        return out

    def close(self, ctx):
        if self.closed:
            return
        self.closed = True
        self.snap = None
        self.s.release()

    # --- creation and removal: routed to the owning child ------------------------------
    def _target(self):
        t = self.h.target(self.s, self.vp)
        if t is None:
            raise error(errno.EPERM, "no child directory to create in here (a view)")
        return t

    def create(self, ctx, name, flags, mode, gid):
        s = self.s
        c, p = self._target()
        d = s.node_at(c, p)
        try:
            new = d.create(ctx, name, flags, mode, gid)
        except BaseException:
            d.close(ctx)
            raise
        s.comp.invalidate()
        if new is not d:
            d.close(ctx)
        return TNode(s, c, p + (name,), self.vp + (name,), new)

    def _make(self, fn):
        s = self.s
        c, p = self._target()
        d = s.node_at(c, p)
        try:
            q = fn(d)
        finally:
            d.close(s.ctx)
        s.comp.invalidate()
        return s.comp.cq(c, q)

    def mkdir(self, ctx, name, mode, gid):
        return self._make(lambda d: d.mkdir(ctx, name, mode, gid))

    def symlink(self, ctx, name, target, gid):
        return self._make(lambda d: d.symlink(ctx, name, target, gid))

    def mknod(self, ctx, name, mode, major, minor, gid):
        return self._make(lambda d: d.mknod(ctx, name, mode, major, minor, gid))

    def link(self, ctx, target, name):
        s = self.s
        c, p = self._target()
        if not isinstance(target, TNode) or target.s is not s or target.child != c:
            raise error(errno.EXDEV, "link across children")
        d = s.node_at(c, p)
        try:
            d.link(ctx, target._n(), name)
        finally:
            d.close(ctx)
        s.comp.invalidate()

    def _owned(self, name):
        h = self.h.step(self.s, self.vp, name)
        if h is None:
            raise error(errno.ENOENT)
        if type(h) is not TreeH or h.lazy or not h.cpath:
            raise error(errno.EPERM, "%r is made by the composition, not a child's file"
                        % name)
        return h

    def unlinkat(self, ctx, name, flags):
        h = self._owned(name)
        s = self.s
        d = s.node_at(h.child, h.cpath[:-1])
        try:
            d.unlinkat(ctx, h.cpath[-1], flags)
        finally:
            d.close(ctx)
        s.comp.invalidate()

    def renameat(self, ctx, oldname, newdir, newname):
        h = self._owned(oldname)
        s = self.s
        nd, tmp = _dir_node_for(s, newdir, h.child)
        try:
            od = s.node_at(h.child, h.cpath[:-1])
            try:
                od.renameat(ctx, h.cpath[-1], nd, newname)
            finally:
                od.close(ctx)
        finally:
            if tmp:
                nd.close(ctx)
        s.comp.invalidate()

    def rename(self, ctx, newdir, newname):
        raise error(errno.EPERM, "a directory of the composition cannot be renamed")

    def remove(self, ctx):
        raise error(errno.EPERM, "a directory of the composition cannot be removed")

    def listxattr(self, ctx):
        return []

    def getxattr(self, ctx, name):
        raise error(errno.ENODATA)

