"""FiNAL's sessions: the children's roots as one attach of a composition reaches them.

Laziness.  No child is attached or contacted until a walk or listing needs it; a child's
root is attached once per session, on first use, with the Context of the attach.  Walks
below a child's subtree go to that child only, in one batched child walk (16 names a
message).  gather() asks several children concurrently, a greenlet each (at most the
composition's `concurrency` of them), unless every child's root promises not to block.

A session lives as long as the nodes made from it (refs): when the last one is closed,
the children's roots are closed too.
"""

import errno

import gevent
from gevent.event import AsyncResult

from ..protocol import L_O_RDONLY
from ..server.node import error

#: errnos by which a child says a path is not there (as opposed to failing)
ABSENT = (errno.ENOENT, errno.ENOTDIR)
_RETRY = object()           # the attach failed: the waiter attaches itself


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
    __slots__ = ("comp", "ctx", "uid", "roots", "pending", "refs", "failed_layers")

    def __init__(self, comp, ctx):
        self.comp = comp
        self.ctx = ctx
        self.uid = ctx.uid
        self.roots = {}
        self.pending = {}
        self.refs = 0
        self.failed_layers = 0      # union layers that failed (not absent) so far

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
            self.comp.contact(child)
            r = self.comp.children[child](self.ctx)
        except BaseException:
            del self.pending[child]
            ev.set(_RETRY)
            raise
        self.roots[child] = r
        if r.maps_qids:
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
        self.comp.contact(child)
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
        self.comp.contact(child)
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
            self.comp.contact(child)
            return self.comp.cq(child, self.root(child).qid)
        n = self.node_at(child, cpath)
        q = n.qid
        n.close(self.ctx)
        return self.comp.cq(child, q)

    def probe_opt(self, child, cpath):
        try:
            return self.probe(child, cpath)
        except OSError as ex:
            if ex.errno in ABSENT:
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


def _guard(fn):
    try:
        return fn()
    except OSError as ex:
        return ex
