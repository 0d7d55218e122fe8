"""FiNAL composition: a checked program over ordered children -> one composed name space.

compose(program, children, qidmap) returns a Composition, the attach callable
(ctx -> root Node) for nine.server.core.Server.  docs/final.md has the long form of the
design; the parts live in:

    handles.py   the path algebra: what each virtual path is, built once per statement
    session.py   one attach: the children's roots, attached lazily, asked concurrently
    nodes.py     the Nodes served: TNode (a child's file), VDir (a directory made here)
    cache.py     merged listings, kept per (directory, uid) for `ttl` seconds

Qids.  Directories made here: qidmap.synthetic(("final", name, vp)).  Child qids:
qidmap.map(("final", child), qid), unless map_qids=False or the child's root Node
declares maps_qids (a remote node that maps qids through the mux's QidMap itself).

Failures.  A child that fails a merged listing or a merge walk (an OSError other than
ENOENT/ENOTDIR) drops out of that listing and is recorded in .failures until its next
success; status() reports them.
"""

import errno
import stat as S
import time

from ..server.node import Attr, Remote
from ..server.qidmap import QidMap
from .cache import ListingCache
from .handles import EmptyH, SimpleH, wrap_root
from .lang import Program, parse, check
from .nodes import make_node
from .session import Session


class Composition:
    """A composed name space: call it with a Context to attach (it is the attach callable
    compose() returns).

    .failures   {child: (errno, message, time)} children whose last merged listing or
                merge walk failed (cleared by their next success)
    .contacts   {child: count} attaches, walks and listings sent to each child
    .remotes    {child: Remote} the children whose attach is a method of a
                nine.server.node.Remote (a mux's child): what the nodes' origin() and
                locate() name
    .status()   one line per failed child ('' when none)
    .invalidate()  drop every cached listing
    """

    def __init__(self, program, children, qidmap=None, *, name="final", ttl=1.0,
                 map_qids=True, on_failure=None, max_cache=4096, concurrency=256):
        self.children = dict(children)
        if not isinstance(program, Program):
            program = parse(program)
        check(program, list(self.children))
        self.program = program
        self.remotes = {}
        for c, attach in self.children.items():
            owner = getattr(attach, "__self__", None)     # a bound method's object
            if isinstance(owner, Remote):
                self.remotes[c] = owner
        self.qidmap = qidmap if qidmap is not None else QidMap()
        self.name = name
        self.map_qids = map_qids
        self.on_failure = on_failure
        self.concurrency = max(1, concurrency)
        self.listings = ListingCache(ttl, max_cache)
        self.t0 = time.time_ns()
        self.failures = {}
        self.contacts = {}
        self.premapped = set()      # children whose root node declares maps_qids
        stmts = program.statements
        h = EmptyH() if stmts else SimpleH(tuple((c, ()) for c in self.children))
        self.stages = [h]           # the root handle before and after each statement
        for k, st in enumerate(stmts):
            h = wrap_root(k, st, h)
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

    def invalidate(self):
        """Drop every cached listing (done on each create/remove/rename through here)."""
        self.listings.clear()

    # --- bookkeeping ---------------------------------------------------------------------
    def contact(self, child):
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
        """A text report: one line per failed child (for a mux status file); '' when
        none failed."""
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
