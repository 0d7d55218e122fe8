"""FiNAL's path algebra: the handles that describe each path of a composed name space.

Every virtual path is described by an immutable *handle*: a child's subtree (TreeH), a
union of layers (UnionH), a view (SimpleH, MergeH, PerServerH), or a statement's effect
along the path to its target (AlongH, RemoveH, MovedH).  Handles hold names and child
paths, never child Nodes, so they are shared freely (the handle of the root after each
statement is built once, at compose time, by wrap_root) and cost a few objects per
statement: composing N children does no I/O and allocates nothing per child.

A handle's methods get `s`, the Session of the attach (nine.final.session: the
children's attached roots, the Context, and `s.comp`, the Composition with its qids and
listing cache), and `vp`, the virtual path where the handle sits (for synthetic qids and
the listing cache keys).  step() walks one name and returns a settled handle or None.
"""

from ..protocol import QTDIR, QTSYMLINK
from .session import ABSENT

DT_DIR, DT_REG, DT_LNK = 4, 8, 10


def _dtype(qid):
    t = qid[0]
    if t & QTDIR:
        return DT_DIR
    if t & QTSYMLINK:
        return DT_LNK
    return DT_REG


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
                    if r.errno not in ABSENT:
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
        tbl, f = s.comp.listings.cached(("m", vp, s.uid), compute)
        failed.update(f)
        return tbl

    def entries(self, s, vp, failed):
        synth = s.comp.synth
        return [(name, synth(vp + (name,)), DT_DIR) for name in self.table(s, vp, failed)]

    def step(self, s, vp, name):
        got = s.comp.listings.peek(("m", vp, s.uid))
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
                    if r.errno not in ABSENT:
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
                if r.errno not in ABSENT:
                    s.failed_layers += 1        # nodes.make_node: settle again later
                    if c is not None:
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
                    if ex.errno not in ABSENT and c is not None:
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
        tbl, f = s.comp.listings.cached(("u", vp, s.uid), compute)
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
        got = s.comp.listings.peek(("u", vp, s.uid))
        idxs = None
        if got is not None:
            prov = got[0][0].get(name)
            if not prov:
                return None
            idxs = [p[0] for p in prov]     # only the layers that hold the name
        res = self._gather(s, vp, lambda h: h.step(s, vp, name), idxs)
        hs = [r for _, r, _ in res if r is not None]
        if not hs:
            errs = [ex for _, _, ex in res if ex is not None and ex.errno not in ABSENT]
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
            if ex.errno not in ABSENT:
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
                if ex.errno not in ABSENT:
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


def wrap_root(k, st, inner):
    """The root handle after statement k, given the root before it."""
    if st.op == "remove":
        return RemoveH(st.matchers, (), inner)
    rule = Rule(st, k)
    if st.op == "move":
        inner = RemoveH(_literal_matchers(st.frm), (), inner)
    if st.target == ():
        return rule.at_target(lambda: inner)
    return AlongH(rule, (), inner)

