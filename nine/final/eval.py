"""FiNAL evaluation: a checked program over ordered children -> one composed name space.

compose(program, children, qidmap) returns a Composition, an attach callable
(ctx -> root Node) for nine.server.core.Server, with .failures, .invalidate(), .contacts.

Design (docs/final.md has the long form):

* Handles.  Every virtual path is described by an immutable *handle*: a child's subtree
  (TreeH), a union of layers (UnionH), a view (SimpleH, MergeH, PerServerH), or a
  statement's effect along the path to its target (AlongH, RemoveH, MovedH).  Handles
  hold names and child paths, never child Nodes, so they are shared freely (the handle
  of the root after each statement is built once, at compose time) and cost a few
  objects per statement: composing N children does no I/O and allocates nothing per
  child.  A handle's methods get the Session (one per attach: the children's attached
  roots and the Context) and `vp`, the virtual path where the handle sits (for
  synthetic qids and the listing cache).

* Laziness.  No child is attached or contacted until a walk or listing needs it; a
  child's root is attached once per session, on first use.  Walks below a child's
  subtree go to that child only, in one batched child walk.

* Nodes.  A handle that is a plain child subtree becomes a TNode (a thin proxy of the
  child's Node: I/O, creates, renames go straight to the owning child, qids mapped);
  any other handle becomes a VDir (a directory the composition makes: synthetic qid
  keyed by its virtual path, listings merged and cached).

* Listings.  A merged listing asks every contributing child concurrently (a greenlet
  per child, at most `concurrency` of them, unless every child's root promises not to
  block) and is cached per
  (directory, uid) for `ttl` seconds; every create/mkdir/remove/rename/link through the
  composition drops the whole cache.  A child that fails (OSError other than
  ENOENT/ENOTDIR) drops out of that listing and is recorded in .failures.

* Qids.  Directories made here: qidmap.synthetic(("final", name, vp)).  Child qids:
  qidmap.map(("final", child), qid), unless map_qids=False or the child's root Node has
  `maps_qids = True` (a remote node that maps qids through the mux's QidMap itself).
"""

import copy
import errno
import stat as S
import time

import gevent
from gevent.event import AsyncResult

from ..protocol import QTDIR, QTSYMLINK, L_O_ACCMODE, L_O_RDONLY
from ..server.node import Node, Attr, Dirent, StatFS, error
from .lang import Program, parse, check

DT_DIR, DT_REG, DT_LNK = 4, 8, 10
_ABSENT = (errno.ENOENT, errno.ENOTDIR)
_RETRY = object()


def _dtype(qid):
    t = qid[0]
    if t & QTDIR:
        return DT_DIR
    if t & QTSYMLINK:
        return DT_LNK
    return DT_REG


# ==========================================================================================
# handles
# ==========================================================================================

class H:
    """A virtual path's description.  step() returns settled handles (or None)."""
    __slots__ = ()

    def settle(self, s, vp):
        """The handle with everything it stands for checked: None when nothing exists."""
        return self

    def kind(self, s, vp):
        """(qid, dtype) of a settled handle."""
        return s.comp.synth(vp), DT_DIR

    def entries(self, s, vp, failed):
        """[(name, qid, dtype)] of a directory; children that failed go into `failed`."""
        return []

    def step(self, s, vp, name):
        return None

    def target(self, s, vp):
        """(child, cpath) of the child directory that creates here go to, or None."""
        return None

    def attr(self, s, vp):
        return s.comp.dir_attr(vp)

    def is_dir(self, s, vp):
        return self.kind(s, vp)[1] == DT_DIR


class EmptyH(H):
    """The empty root a program starts from."""
    __slots__ = ()


class SimpleH(H):
    """Directory per server: name `child` is that child's `cpath` (a directory assumed to
    exist, so listing this directory contacts no child)."""
    __slots__ = ("srcs", "index")

    def __init__(self, srcs):
        self.srcs = srcs                        # ((child, cpath), ...)
        self.index = dict(srcs)

    def entries(self, s, vp, failed):
        synth = s.comp.synth
        return [(c, synth(vp + (c,)), DT_DIR) for c, _ in self.srcs]

    def step(self, s, vp, name):
        p = self.index.get(name)
        if p is None:
            return None
        return TreeH(name, p, lazy=True)


class MergeH(H):
    """merge (deep=False): every name of any source is a directory of per-server entries.
    deepmerge (deep=True): a name that is a directory in every source holding it is again
    a deep merge of those sources; any other name is a directory of per-server entries."""
    __slots__ = ("srcs", "deep")

    def __init__(self, srcs, deep):
        self.srcs = srcs                        # ((child, cpath), ...)
        self.deep = deep

    def table(self, s, vp, failed):
        """{name: [(child, cpath, qid, dtype), ...]} in source order, cached."""
        srcs = self.srcs

        def compute():
            f = set()
            res = s.gather([(c, (lambda c=c, p=p: s.list_child(c, p))) for c, p in srcs])
            tbl = {}
            for (c, p), r in zip(srcs, res):
                if isinstance(r, OSError):
                    if r.errno not in _ABSENT:
                        f.add(c)
                        s.comp.fail(c, r)
                    continue
                s.comp.ok(c)
                for name, q, t in r:
                    h = tbl.get(name)
                    if h is None:
                        tbl[name] = [(c, p + (name,), q, t)]
                    else:
                        h.append((c, p + (name,), q, t))
            return tbl, frozenset(f)
        tbl, f = s.comp.cached(("m", vp, s.uid), compute)
        failed.update(f)
        return tbl

    def entries(self, s, vp, failed):
        synth = s.comp.synth
        return [(name, synth(vp + (name,)), DT_DIR) for name in self.table(s, vp, failed)]

    def step(self, s, vp, name):
        got = s.comp.peek(("m", vp, s.uid))
        if got is not None:
            holders = got[0][0].get(name)
            if not holders:
                return None
        else:
            # no fresh listing: ask every source for this one name, concurrently
            srcs = self.srcs
            res = s.gather([(c, (lambda c=c, p=p: s.probe(c, p + (name,)))) for c, p in srcs])
            holders = []
            for (c, p), r in zip(srcs, res):
                if isinstance(r, OSError):
                    if r.errno not in _ABSENT:
                        s.comp.fail(c, r)
                    continue
                holders.append((c, p + (name,), r, _dtype(r)))
            if not holders:
                return None
        if self.deep and all(h[3] == DT_DIR for h in holders):
            return MergeH(tuple((h[0], h[1]) for h in holders), True)
        return PerServerH(tuple(holders))


class PerServerH(H):
    """One name of a merge: an entry per server holding it, named after the server."""
    __slots__ = ("holders",)

    def __init__(self, holders):
        self.holders = holders                  # ((child, cpath, qid, dtype), ...)

    def entries(self, s, vp, failed):
        return [(c, q, t) for c, _, q, t in self.holders]

    def step(self, s, vp, name):
        for c, p, q, t in self.holders:
            if c == name:
                return TreeH(c, p, q)
        return None


class TreeH(H):
    """A child's file or directory: child name and path in the child.  qid (mapped) is
    known once settled; lazy=True marks a per-server directory of a simple view, assumed
    to be a directory, shown with a synthetic qid and attributes."""
    __slots__ = ("child", "cpath", "qid", "lazy")

    def __init__(self, child, cpath, qid=None, lazy=False):
        self.child = child
        self.cpath = cpath
        self.qid = qid
        self.lazy = lazy

    def settle(self, s, vp):
        if self.lazy or self.qid is not None:
            return self
        q = s.probe_opt(self.child, self.cpath)
        return None if q is None else TreeH(self.child, self.cpath, q)

    def kind(self, s, vp):
        if self.lazy:
            return s.comp.synth(vp), DT_DIR
        return self.qid, _dtype(self.qid)

    def entries(self, s, vp, failed):
        return s.list_child(self.child, self.cpath)

    def step(self, s, vp, name):
        p = self.cpath + (name,)
        q = s.probe_opt(self.child, p)
        return None if q is None else TreeH(self.child, p, q)

    def target(self, s, vp):
        return self.child, self.cpath

    def attr(self, s, vp):
        if self.lazy:
            return s.comp.dir_attr(vp)
        n = s.node_at(self.child, self.cpath)
        try:
            return n.getattr(s.ctx)
        finally:
            n.close(s.ctx)


def _child_hint(h):
    return h.child if type(h) is TreeH else None


def _combine(s, vp, hs):
    """Settled, existing handles for one path, highest priority first: the first wins
    unless it is a directory, then every directory among them is unioned."""
    if not hs:
        return None
    if not hs[0].is_dir(s, vp):
        return hs[0]
    dirs = []
    for h in hs:
        if type(h) is EmptyH and len(hs) > 1:
            continue                    # contributes nothing
        if h.is_dir(s, vp):
            if type(h) is UnionH:       # settled: flatten (a union is associative)
                dirs.extend(h.layers)
            else:
                dirs.append(h)
    if len(dirs) == 1:
        return dirs[0]
    return UnionH(tuple(dirs), True)


class UnionH(H):
    """Layers searched in order (a recursive union: directories of one name union again;
    for any other name the first layer holding it wins)."""
    __slots__ = ("layers", "settled")

    def __init__(self, layers, settled=False):
        self.layers = layers
        self.settled = settled

    def _gather(self, s, vp, fn, idxs=None):
        layers = self.layers
        if idxs is None:
            idxs = range(len(layers))
        tasks = [(_child_hint(layers[i]), (lambda h=layers[i]: fn(h))) for i in idxs]
        res = s.gather(tasks)
        out = []
        for i, r in zip(idxs, res):
            if isinstance(r, OSError):
                c = _child_hint(layers[i])
                if r.errno not in _ABSENT and c is not None:
                    s.comp.fail(c, r)
                out.append((i, None, r))
            else:
                out.append((i, r, None))
        return out

    def settle(self, s, vp):
        if self.settled:
            return self
        got = [r for _, r, _ in self._gather(s, vp, lambda h: h.settle(s, vp)) if r is not None]
        return _combine(s, vp, got)

    def table(self, s, vp, failed):
        def compute():
            f = set()
            tbl = {}
            for i, r, ex in self._gather(s, vp, lambda h: h.entries(s, vp, f)):
                if ex is not None:
                    c = _child_hint(self.layers[i])
                    if ex.errno not in _ABSENT and c is not None:
                        f.add(c)
                    continue
                c = _child_hint(self.layers[i])
                if c is not None:
                    s.comp.ok(c)
                for name, q, t in r:
                    p = tbl.get(name)
                    if p is None:
                        tbl[name] = [(i, q, t)]
                    else:
                        p.append((i, q, t))
            return tbl, frozenset(f)
        tbl, f = s.comp.cached(("u", vp, s.uid), compute)
        failed.update(f)
        return tbl

    def entries(self, s, vp, failed):
        out = []
        synth = s.comp.synth
        for name, prov in self.table(s, vp, failed).items():
            i, q, t = prov[0]
            if t == DT_DIR and sum(1 for p in prov if p[2] == DT_DIR) > 1:
                q = synth(vp + (name,))
            out.append((name, q, t))
        return out

    def step(self, s, vp, name):
        got = s.comp.peek(("u", vp, s.uid))
        idxs = None
        if got is not None:
            prov = got[0][0].get(name)
            if not prov:
                return None
            idxs = [p[0] for p in prov]     # only the layers that hold the name
        res = self._gather(s, vp, lambda h: h.step(s, vp, name), idxs)
        hs = [r for _, r, _ in res if r is not None]
        if not hs:
            errs = [ex for _, _, ex in res if ex is not None and ex.errno not in _ABSENT]
            if errs and len(errs) == len(res):
                raise errs[0]
        return _combine(s, vp + (name,), hs)

    def target(self, s, vp):
        for h in self.layers:
            t = h.target(s, vp)
            if t is not None:
                return t
        return None


class RemoveH(H):
    """`remove PATTERN` along the pattern: names matching its last component are hidden."""
    __slots__ = ("m", "pos", "inner")

    def __init__(self, m, pos, inner):
        self.m = m                  # matchers, one per component
        self.pos = pos              # how many components already matched (a tuple of names)
        self.inner = inner

    def settle(self, s, vp):
        i = self.inner.settle(s, vp)
        if i is None or not i.is_dir(s, vp):
            return i
        return self if i is self.inner else RemoveH(self.m, self.pos, i)

    def kind(self, s, vp):
        return self.inner.kind(s, vp)

    def entries(self, s, vp, failed):
        e = self.inner.entries(s, vp, failed)
        if len(self.pos) + 1 == len(self.m):
            m = self.m[-1]
            e = [x for x in e if not m(x[0])]
        return e

    def step(self, s, vp, name):
        k = len(self.pos)
        if not self.m[k](name):
            return self.inner.step(s, vp, name)
        if k + 1 == len(self.m):
            return None
        r = self.inner.step(s, vp, name)
        if r is None or not r.is_dir(s, vp + (name,)):
            return r
        return RemoveH(self.m, self.pos + (name,), r)

    def target(self, s, vp):
        return self.inner.target(s, vp)

    def attr(self, s, vp):
        return self.inner.attr(s, vp)


class Rule:
    """A placing statement, compiled: what it puts at its target."""
    __slots__ = ("st", "k", "op", "target", "srcs", "frm", "children")

    def __init__(self, st, k):
        self.st = st
        self.k = k
        self.op = st.op
        self.target = st.target
        self.srcs = tuple((c, src.path) for src in st.sources for c in src.children)
        self.frm = st.frm
        self.children = tuple(dict.fromkeys(c for c, _ in self.srcs))

    def source(self):
        ts = tuple(TreeH(c, p) for c, p in self.srcs)
        return ts[0] if len(ts) == 1 else UnionH(ts)

    def at_target(self, inner_fn):
        """The (unsettled) handle at the target; inner_fn() gives what was there before
        (asked only by insert, the one operator that keeps it)."""
        op = self.op
        if op == "insert":
            inner = inner_fn()
            src = self.source()
            if inner is None:
                return src
            return UnionH((src, inner))
        if op == "simple":
            return SimpleH(self.srcs)
        if op == "merge":
            return MergeH(self.srcs, False)
        if op == "deepmerge":
            return MergeH(self.srcs, True)
        if op == "replace":
            return self.source()
        return MovedH(self.k, self.frm)     # move


class AlongH(H):
    """A statement whose target lies below this path: adds the next component of the
    target to this directory (a synthetic directory if nothing was here)."""
    __slots__ = ("rule", "pos", "inner")

    def __init__(self, rule, pos, inner):
        self.rule = rule
        self.pos = pos
        self.inner = inner          # what was here before (settled), or None

    def settle(self, s, vp):
        if self.inner is None:
            return self
        i = self.inner.settle(s, vp)
        return self if i is self.inner else AlongH(self.rule, self.pos, i)

    def _dir(self, s, vp):
        i = self.inner
        return i is not None and i.is_dir(s, vp)

    def kind(self, s, vp):
        if self._dir(s, vp):
            return self.inner.kind(s, vp)
        return s.comp.synth(vp), DT_DIR

    def entries(self, s, vp, failed):
        base = self.inner.entries(s, vp, failed) if self._dir(s, vp) else []
        c = self.rule.target[len(self.pos)]
        try:
            h = self.step(s, vp, c)
            ent = None if h is None else (c,) + tuple(h.kind(s, vp + (c,)))
        except OSError as ex:
            if ex.errno not in _ABSENT:
                failed.update(self.rule.children)
            ent = None
        out = []
        done = False
        for e in base:
            if e[0] == c:
                if ent is not None:
                    out.append(ent)
                done = True
            else:
                out.append(e)
        if not done and ent is not None:
            out.append(ent)
        return out

    def step(self, s, vp, name):
        rule = self.rule
        n = len(self.pos)
        inner = self.inner if self._dir(s, vp) else None
        if name != rule.target[n]:
            return inner.step(s, vp, name) if inner is not None else None
        pos = self.pos + (name,)
        nvp = vp + (name,)

        def inner_fn():
            if inner is None:
                return None
            try:
                return inner.step(s, vp, name)
            except OSError as ex:
                if ex.errno not in _ABSENT:
                    raise
                return None
        if pos == rule.target:
            h = rule.at_target(inner_fn)
            return h.settle(s, nvp)
        return AlongH(rule, pos, inner_fn())

    def target(self, s, vp):
        return self.inner.target(s, vp) if self._dir(s, vp) else None

    def attr(self, s, vp):
        return self.inner.attr(s, vp) if self._dir(s, vp) else s.comp.dir_attr(vp)


class MovedH(H):
    """`move A to B` at B: A as it was in the name space built by the statements before."""
    __slots__ = ("k", "frm")

    def __init__(self, k, frm):
        self.k = k
        self.frm = frm

    def settle(self, s, vp):
        base = ("", "move%d" % self.k)      # cache keys of the resolution; "" is no name
        h = s.comp.stages[self.k].settle(s, base)
        for i, name in enumerate(self.frm):
            if h is None:
                return None
            h = h.step(s, base + self.frm[:i], name)
        return h


def _literal_matchers(path):
    return tuple(p.__eq__ for p in path)


def _wrap_root(k, st, inner):
    """The root handle after statement k, given the root before it."""
    if st.op == "remove":
        return RemoveH(st.matchers, (), inner)
    rule = Rule(st, k)
    if st.op == "move":
        inner = RemoveH(_literal_matchers(st.frm), (), inner)
    if st.target == ():
        return rule.at_target(lambda: inner)
    return AlongH(rule, (), inner)


# ==========================================================================================
# sessions: one per attach
# ==========================================================================================

def _chunked_walk(ctx, start, names):
    """Walk names from start in steps of at most 16; partial results allowed; raises if
    the first name cannot be walked."""
    out = []
    cur = start
    for i in range(0, len(names), 16):
        chunk = list(names[i:i + 16])
        try:
            got = cur.walk(ctx, chunk)
        except OSError:
            if not out:
                raise
            break
        if not got:
            if not out:
                raise error(errno.ENOENT)
            break
        out.extend(got)
        if len(got) < len(chunk):
            break
        cur = got[-1]
    return out


class Session:
    """The children's roots attached for one attach of the composition (each on first
    use), and the Context they were attached with."""
    __slots__ = ("comp", "ctx", "uid", "roots", "pending", "refs")

    def __init__(self, comp, ctx):
        self.comp = comp
        self.ctx = ctx
        self.uid = getattr(ctx, "uid", None)
        self.roots = {}
        self.pending = {}
        self.refs = 0

    def root(self, child):
        r = self.roots.get(child)
        if r is not None:
            return r
        ev = self.pending.get(child)
        if ev is not None:
            r = ev.get()
            if r is not _RETRY:
                return r
            return self.root(child)
        ev = self.pending[child] = AsyncResult()
        try:
            self.comp._contact(child)
            r = self.comp.children[child](self.ctx)
        except BaseException:
            del self.pending[child]
            ev.set(_RETRY)
            raise
        self.roots[child] = r
        if getattr(r, "maps_qids", False):
            self.comp.premapped.add(child)
        del self.pending[child]
        ev.set(r)
        return r

    def nonblocking(self, child):
        r = self.roots.get(child)
        return r is not None and not r.may_block

    def release(self):
        self.refs -= 1
        if self.refs <= 0:
            roots, self.roots = self.roots, {}
            for r in roots.values():
                try:
                    r.close(self.ctx)
                except Exception:
                    pass

    # --- child access ------------------------------------------------------------------
    def node_at(self, child, cpath):
        """A new Node for child's cpath (OSError when it does not exist)."""
        ctx = self.ctx
        root = self.root(child)
        self.comp._contact(child)
        if not cpath:
            return root.clone(ctx)
        got = _chunked_walk(ctx, root, cpath)
        for n in got[:-1]:
            n.close(ctx)
        if len(got) < len(cpath):
            got[-1].close(ctx)
            raise error(errno.ENOENT)
        return got[-1]

    def walk_from(self, child, cpath, names):
        """Nodes for `names` walked from child's cpath (a partial walk gives fewer;
        OSError when cpath or the first name cannot be walked)."""
        ctx = self.ctx
        root = self.root(child)
        self.comp._contact(child)
        n = len(cpath)
        got = _chunked_walk(ctx, root, tuple(cpath) + tuple(names))
        if len(got) <= n:
            for x in got:
                x.close(ctx)
            raise error(errno.ENOENT)
        for x in got[:n]:
            x.close(ctx)
        return got[n:]

    def probe(self, child, cpath):
        """The (mapped) qid of child's cpath."""
        if not cpath:
            self.comp._contact(child)
            return self.comp.cq(child, self.root(child).qid)
        n = self.node_at(child, cpath)
        q = n.qid
        n.close(self.ctx)
        return self.comp.cq(child, q)

    def probe_opt(self, child, cpath):
        try:
            return self.probe(child, cpath)
        except OSError as ex:
            if ex.errno in _ABSENT:
                return None
            raise

    def list_child(self, child, cpath):
        """[(name, mapped qid, dtype)] of child's directory cpath."""
        ctx = self.ctx
        d = self.node_at(child, cpath)
        cq = self.comp.cq
        out = []
        try:
            d.open(ctx, L_O_RDONLY)
            off = 0
            while True:
                ents = d.readdir(ctx, off, 65536)
                if not ents:
                    break
                for e in ents:
                    if e.name != "." and e.name != "..":
                        out.append((e.name, cq(child, e.qid), e.type))
                off = ents[-1].offset
        finally:
            d.close(ctx)
        return out

    def gather(self, tasks):
        """Run [(child or None, fn)] and return their results in order (an OSError
        instance for a task that raised one).  Concurrent -- a greenlet each, or, beyond
        comp.concurrency tasks, that many worker greenlets taking tasks in turn -- unless
        there is one task or every task's child is known not to block (its attached root
        has may_block False): then inline, in order."""
        if len(tasks) <= 1 or all(c is not None and self.nonblocking(c) for c, _ in tasks):
            out = []
            for _, fn in tasks:
                try:
                    out.append(fn())
                except OSError as ex:
                    out.append(ex)
            return out
        width = self.comp.concurrency
        if len(tasks) <= width:
            gs = [gevent.spawn(_guard, fn) for _, fn in tasks]
            try:
                gevent.joinall(gs)
            except BaseException:
                gevent.killall(gs, block=False)
                raise
            out = []
            for g in gs:
                if g.exception is not None:
                    raise g.exception
                out.append(g.value)
            return out
        # more tasks than `concurrency`: that many workers take the tasks in turn
        out = [None] * len(tasks)
        it = iter(enumerate(tasks))

        def worker():
            for i, (_, fn) in it:
                out[i] = _guard(fn)
        gs = [gevent.spawn(worker) for _ in range(width)]
        try:
            gevent.joinall(gs)
        except BaseException:
            gevent.killall(gs, block=False)
            raise
        for g in gs:
            if g.exception is not None:
                raise g.exception
        return out

    def at_vp(self, vp):
        """A new node for the virtual path vp (used for '..')."""
        node = make_node(self, self.comp.root_handle(), ())
        if not vp:
            return node
        try:
            got = node._walk_plain(self.ctx, list(vp))
        finally:
            node.close(self.ctx)
        for n in got[:-1]:
            n.close(self.ctx)
        if len(got) < len(vp):
            if got:
                got[-1].close(self.ctx)
            raise error(errno.ENOENT)
        return got[-1]


def _guard(fn):
    try:
        return fn()
    except OSError as ex:
        return ex


# ==========================================================================================
# nodes
# ==========================================================================================

def make_node(s, h, vp):
    if h is not None:
        h = h.settle(s, vp)
    if h is None:
        raise error(errno.ENOENT)
    if type(h) is TreeH:
        return TNode(s, h.child, h.cpath, vp, qid=h.qid, lazy=h.lazy)
    q, _ = h.kind(s, vp)
    return VDir(s, h, vp, q)


def locate(node, names):
    """(child, path in the child) that `names` walked from node leads to, when that is
    known without asking any child: from node on, the path lies in one child and no rule
    applies below that point (a TNode; a per-server directory of a view; a name that a
    cached union listing shows in one layer only, a child's own directory).  None when
    it cannot be known so: walk instead.  The path is not checked to exist.  The group
    service hands members on to a child's own group service by this, without walking
    each member through the tree."""
    names = tuple(names)
    if any(n in (".", "..", "") for n in names):
        return None
    if isinstance(node, TNode):
        return (node.child, tuple(node.cpath) + names) if not node.closed else None
    if not isinstance(node, VDir):
        return None
    s, h, vp = node.s, node.h, node.vp
    for i, name in enumerate(names):
        t = type(h)
        if t is TreeH:
            return h.child, tuple(h.cpath) + names[i:]
        if t is SimpleH:
            p = h.index.get(name)
            return None if p is None else (name, tuple(p) + names[i + 1:])
        if t is not UnionH:
            return None
        got = s.comp.peek(("u", vp, s.uid))
        if got is None:
            return None
        prov = got[0][0].get(name)
        if not prov or len(prov) != 1:
            return None                   # absent (let a walk say so), or a union below
        layer = h.layers[prov[0][0]]
        if type(layer) is not TreeH or layer.lazy:
            return None
        return layer.child, tuple(layer.cpath) + names[i:]
    return None


def _walk(start, ctx, names):
    """Walk with '..' resolved in the virtual name space (never into a child's parent)."""
    out = []
    cur = start
    i = 0
    n = len(names)
    while i < n:
        if names[i] == "..":
            try:
                nxt = cur.s.at_vp(cur.vp[:-1])
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
    def post_read(self):
        """The backend's greenlet-free read (a remote child's post_read), or None."""
        return getattr(self._n(), "post_read", None)

    @property
    def post_write(self):
        """The backend's greenlet-free write (a remote child's post_write), or None."""
        return getattr(self._n(), "post_write", None)

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
    __slots__ = ("s", "h", "vp", "qid", "name", "snap", "failed", "closed")
    may_block = True
    iounit = 0

    def __init__(self, s, h, vp, qid):
        self.s = s
        self.h = h
        self.vp = vp
        self.qid = qid
        self.name = vp[-1] if vp else "/"
        self.snap = None
        self.failed = frozenset()   # children that failed during this directory's listing
        self.closed = False
        s.refs += 1

    def __repr__(self):
        return "VDir(/%s, %s)" % ("/".join(self.vp), type(self.h).__name__)

    def clone(self, ctx):
        return VDir(self.s, self.h, self.vp, self.qid)

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
        ents, failed = s.comp.cached(("d", self.vp, s.uid), compute)
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


# ==========================================================================================
# the composition
# ==========================================================================================

class Composition:
    """A composed name space: call it with a Context to attach (it is the attach callable
    compose() returns).

    .failures   {child: (errno, message, time)} children whose last merged listing or
                merge walk failed (cleared by their next success)
    .contacts   {child: count} attaches, walks and listings sent to each child
    .invalidate()  drop every cached listing
    """

    def __init__(self, program, children, qidmap=None, *, name="final", ttl=1.0,
                 map_qids=True, on_failure=None, max_cache=4096, concurrency=256):
        from ..mux.qidmap import QidMap
        self.children = dict(children)
        if not isinstance(program, Program):
            program = parse(program)
        check(program, list(self.children))
        self.program = program
        self.qidmap = qidmap if qidmap is not None else QidMap()
        self.name = name
        self.ttl = ttl
        self.map_qids = map_qids
        self.on_failure = on_failure
        self.max_cache = max_cache
        self.concurrency = max(1, concurrency)
        self.t0 = time.time_ns()
        self.cache = {}
        self.inflight = {}
        self.gen = 0
        self.failures = {}
        self.contacts = {}
        self.premapped = set()      # children whose root node says maps_qids = True
        stmts = program.statements
        h = EmptyH() if stmts else SimpleH(tuple((c, ()) for c in self.children))
        self.stages = [h]
        for k, st in enumerate(stmts):
            h = _wrap_root(k, st, h)
            self.stages.append(h)

    def __call__(self, ctx):
        return self.attach(ctx)

    def attach(self, ctx):
        s = Session(self, ctx)
        return make_node(s, self.root_handle(), ())

    def root_handle(self):
        return self.stages[-1]

    # --- qids and attributes -------------------------------------------------------------
    def synth(self, vp):
        return self.qidmap.synthetic(("final", self.name, vp))

    def cq(self, child, qid):
        if self.map_qids and child not in self.premapped:
            return self.qidmap.map(("final", child), qid)
        return qid

    def dir_attr(self, vp):
        t = self.t0
        return Attr(qid=self.synth(vp), mode=S.S_IFDIR | 0o555, nlink=2, atime=t, mtime=t,
                    ctime=t)

    # --- listing cache -------------------------------------------------------------------
    def cached(self, key, fn):
        e = self.cache.get(key)
        now = time.monotonic()
        if e is not None and e[0] > now:
            return e[1]
        cur = gevent.getcurrent()
        got = self.inflight.get(key)
        if got is not None and got[1] is not cur:   # being made elsewhere: wait for it
            v = got[0].get()
            if v is not _RETRY:
                return v
            return self.cached(key, fn)
        ev = AsyncResult()
        self.inflight[key] = (ev, cur)
        gen = self.gen
        try:
            v = fn()
        except BaseException:
            self.inflight.pop(key, None)
            ev.set(_RETRY)
            raise
        self.inflight.pop(key, None)
        if gen == self.gen and self.ttl > 0:
            if len(self.cache) >= self.max_cache:
                self._purge(now)
            self.cache[key] = (now + self.ttl, v)
        ev.set(v)
        return v

    def peek(self, key):
        e = self.cache.get(key)
        if e is not None and e[0] > time.monotonic():
            return (e[1],)
        return None

    def _purge(self, now):
        for k in [k for k, e in self.cache.items() if e[0] <= now]:
            del self.cache[k]
        if len(self.cache) >= self.max_cache:
            self.cache.clear()

    def invalidate(self):
        """Drop every cached listing (done on each create/remove/rename through here)."""
        self.gen += 1
        self.cache.clear()

    # --- bookkeeping ---------------------------------------------------------------------
    def _contact(self, child):
        self.contacts[child] = self.contacts.get(child, 0) + 1

    def fail(self, child, ex):
        self.failures[child] = (ex.errno, ex.strerror or str(ex), time.time())
        if self.on_failure is not None:
            try:
                self.on_failure(child, ex)
            except Exception:
                pass

    def ok(self, child):
        if self.failures:
            self.failures.pop(child, None)

    def status(self):
        """A text report: one line per failed child (for a mux status file)."""
        lines = []
        for c, (e, msg, t) in sorted(self.failures.items()):
            lines.append("%s\tfailed\t%s\t%s\n" % (c, errno.errorcode.get(e, e), msg))
        return "".join(lines)


def compose(program, children, qidmap=None, **kw):
    """Compose `children` ({name: attach callable(ctx) -> root Node}, ordered) with a FiNAL
    program (text or a parsed Program) into one name space.  Returns the attach callable
    (a Composition).  Raises FinalError before anything is served when the program is
    wrong.  Keywords: name (qid key prefix), ttl (listing cache seconds, default 1.0),
    map_qids (map child qids through qidmap; pass False when the child nodes map their
    qids themselves, as nine.mux's remote nodes do), on_failure(child, exc)."""
    return Composition(program, children, qidmap, **kw)
