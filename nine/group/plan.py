"""The plan of one open of a group's data or partial file: where each member is read.

Opening `data`/`partial` places the group's members once (the MRNet filter model):

- each member path is resolved in the name space this service serves
  (nine.group.resolve); the directories that many members share are walked and listed
  first, so that a member whose child the cached listing shows is located without being
  walked (Node.locate);
- the members that lie on one remote child (Node.origin / Node.locate name a Remote)
  are handed to a private group on that child's own group service (a ChildGroup: two
  or more members per child, or one when the group's aggregator reads its members
  itself (Aggregator.reads_files: grep) or maps them to much less (maps_where_read:
  hash, signature), and only when the child offers the service);
  each group operation is then one request to that child, which merges its members'
  results;
- every other member is opened here, and read or written here (nine.group.execute).

Relay sources (the group's `source` lines: files that hold the bytes a relay writes to
the members) are placed too: each ChildGroup gets the sources that lie on its child
(at most CHILD_SOURCES), so that a relay is done as low in the tree as a source is;
the others are opened here when a relay needs them (nine.group.execute).

A Placement keeps the plan healed: members that could not be opened, or whose child's
connection failed (a restarted leaf or mux), are resolved again at most every
REPAIR_EVERY seconds, at the next operation; a change of the member set plans anew.
"""

import errno
import os
import time

import gevent
from gevent.pool import Pool

from ..server.node import error
from .handle import GroupHandle, settings
from .resolve import locate, prime, resolve

PRIME_BATCH = 256            # members resolved per listing of their shared directories
REPAIR_EVERY = 1.0           # failed members are resolved again at most this often (s)
CHILD_SOURCES = 64           # relay sources handed to one child group at most


def reason(e):
    """A failure as the status of a member names it."""
    if isinstance(e, gevent.Timeout):
        return "timed out"
    if isinstance(e, OSError):
        return e.strerror or os.strerror(e.errno or errno.EIO)
    return "%s: %s" % (type(e).__name__, e)


def close_quietly(node, ctx):
    """Close a member's (or a source's) node; a failure to close is not the caller's."""
    try:
        node.close(ctx)
    except Exception:
        pass


def child_offers_groups(child, ctx):
    """Whether the Remote child offers a group service to ctx's user."""
    try:
        child.group_root(ctx)
    except Exception:
        return False
    return True


class ChildGroup(GroupHandle):
    """A private group on a Remote child (its group service, Remote.group_root): one
    per child per open here; `labels` are the members handed to it."""

    def __init__(self, child, ctx, members, flags, sources=()):
        self.child = child
        self.ln, root = child.group_root(ctx)
        super().__init__(root, members, flags, sources)

    def configure_for(self, group, timeout):
        """The settings of a read of `group` with a child's timeout."""
        self.configure(settings(group.agg, group.sync, timeout and max(0.01, timeout),
                                group.offset, group.count))


class Placement:
    """The members of one open, placed: `local` {label: open Node} read here,
    `children` [ChildGroup] (each holding the labels of its members), `openfail`
    {label: reason} those that could not be opened.  Every member is in exactly one."""

    def __init__(self, svc, group, ctx, flags):
        self.svc = svc
        self.group = group
        self.ctx = ctx
        self.flags = flags
        self.local = {}            # label -> open Node
        self.children = []         # ChildGroup
        self.openfail = {}         # label -> reason
        self.sources = []          # relay sources: [(target, child Remote or None,
                                   # its path on that child or None)]
        self.source_nodes = {}     # index in sources -> open Node (read here)
        self.source_failed = {}    # index in sources -> when it last failed
        self.gen = None
        self.broken = set()        # labels whose child connection failed: resolve again
        self.broken_children = set()   # ChildGroups that failed: make them again
        self.repair_at = 0.0
        self.plan()

    # -- opening the members -----------------------------------------------------
    def plan(self):
        """Place every member of the group (after releasing the current plan)."""
        self.release()
        self.gen = self.group.gen
        self.repair_at = time.monotonic() + REPAIR_EVERY
        self._place_sources()
        self._place(list(self.group.members))

    def _place_sources(self):
        """Where each relay source is: on which child (and its path there), or here."""
        g, ctx = self.group, self.ctx
        self.sources = []
        if not g.sources:
            return
        try:
            root = self.svc.ns_attach(ctx)
        except OSError:
            self.sources = [(t, None, None) for t in g.sources]
            return
        found = [None] * len(g.sources)

        def one(i, target):
            try:
                node, _ = resolve(ctx, root, self.svc.base, g, target)
            except Exception:
                found[i] = (target, None, None)       # tried here, and named then
                return
            try:
                where = node.origin()
            finally:
                node.close(ctx)
            found[i] = (target, where[0], "/" + "/".join(where[1])) if where else \
                (target, None, None)
        pool = Pool(64)
        try:
            for i, t in enumerate(g.sources):
                pool.spawn(one, i, t)
            pool.join()
        finally:
            pool.kill()
            root.close(ctx)
        self.sources = [f for f in found if f is not None]

    def sources_on(self, child):
        """The paths on child of the sources that lie there (CHILD_SOURCES at most)."""
        return [p for _, c, p in self.sources if c is child][:CHILD_SOURCES]

    def _place(self, labels):
        """Resolve these members: open the local ones, hand the others on to their
        children's group services (openfail names those that fail)."""
        g = self.group
        ctx = self.ctx
        items = [(label, g.members[label]) for label in labels if label in g.members]
        try:
            root = self.svc.ns_attach(ctx)
        except OSError as e:
            for label, _ in items:
                self.openfail[label] = "name space: " + reason(e)
            return
        base = self.svc.base
        by_child = {}
        # an aggregator that reads members itself (grep of a large log), or whose map
        # makes the bytes much smaller (hash, signature), runs where the file is: even
        # a child's single member is handed to the child's service
        try:
            agg = g.aggregator()
            fewest = 1 if agg.reads_files or agg.maps_where_read else 2
        except Exception:
            fewest = 2
        results = {}

        def walk(label, target, bases):
            try:
                results[label] = resolve(ctx, root, base, g, target, bases)
            except Exception as e:
                results[label] = e

        pool = Pool(64)
        located = {}                  # label -> (child, path in it): not walked here
        try:
            for i in range(0, len(items), PRIME_BATCH):
                batch = items[i:i + PRIME_BATCH]
                # list the directories many members share first: a member whose child
                # the listing shows is handed on without a walk; a walk in a union asks
                # only the child that has the name, not every child
                bases = prime(ctx, root, base, g, [t for _, t in batch])
                try:
                    for label, target in batch:
                        loc = locate(base, g, target, bases) if bases else None
                        if loc is not None:
                            located[label] = loc
                        else:
                            pool.spawn(walk, label, target, bases)
                    pool.join()
                finally:
                    for b in bases.values():
                        b.close(ctx)
            # located members whose child takes fewer than two of them, or has no group
            # service, are walked and opened here after all
            per = {}
            for label, (child, path) in located.items():
                per.setdefault(child, []).append(label)
            for child, labels in per.items():
                if len(labels) >= self._fewest(child, fewest) and \
                        child_offers_groups(child, ctx):
                    by_child[child] = [(label, "/" + "/".join(located[label][1]))
                                       for label in labels]
                else:
                    for label in labels:
                        pool.spawn(walk, label, g.members[label], None)
            pool.join()
        finally:
            pool.kill()
            root.close(ctx)
        delegable = {}
        for label, r in results.items():
            if isinstance(r, BaseException):
                self.openfail[label] = reason(r)
                continue
            node, names = r
            where = node.origin()
            if where is not None:
                delegable.setdefault(where[0], []).append((label, node, where[1]))
            else:
                self._open_local(label, node)
        for child, items in delegable.items():
            if len(items) >= self._fewest(child, fewest) and \
                    child_offers_groups(child, ctx):
                by_child.setdefault(child, []).extend(
                    (label, "/" + "/".join(path)) for label, _, path in items)
                for _, node, _ in items:
                    node.close(ctx)
            else:
                for label, node, _ in items:
                    self._open_local(label, node)

        def mk(child, members):
            try:
                self.children.append(ChildGroup(child, ctx, members, self.flags,
                                                self.sources_on(child)))
            except Exception as e:
                why = "%s: %s" % (child.name, reason(e))
                for label, _ in members:
                    self.openfail[label] = why
        gevent.joinall([gevent.spawn(mk, c, ms) for c, ms in by_child.items()])

    def _fewest(self, child, fewest):
        """The members a child needs to get a child group: one where a relay source
        lies on it too (the relay is then done there, not here)."""
        return 1 if fewest > 1 and self.sources_on(child) else fewest

    def _open_local(self, label, node):
        """Open a member's node here (open failures go to openfail)."""
        try:
            node.open(self.ctx, self.flags & ~(os.O_CREAT | os.O_EXCL))
            self.local[label] = node
        except Exception as e:
            self.openfail[label] = reason(e)
            close_quietly(node, self.ctx)

    def release(self):
        """Close every member (the open here, the child groups) and forget the plan."""
        for node in list(self.local.values()) + list(self.source_nodes.values()):
            close_quietly(node, self.ctx)
        self.local = {}
        self.source_nodes = {}
        self.source_failed = {}
        for c in self.children:
            c.close()
        self.children = []
        self.openfail = {}
        self.broken = set()
        self.broken_children = set()

    def repair(self):
        """Members that could not be opened, or whose child's connection failed (a
        restarted leaf or mux), are resolved again, at most every REPAIR_EVERY s."""
        labels = set(self.openfail) | self.broken
        for c in self.broken_children:
            labels.update(c.labels)
        now = time.monotonic()
        if not labels or now < self.repair_at:
            return
        self.repair_at = now + REPAIR_EVERY
        for label in labels:
            self.openfail.pop(label, None)
            node = self.local.pop(label, None)
            if node is not None:
                close_quietly(node, self.ctx)
        for c in self.broken_children:
            c.close()
            if c in self.children:
                self.children.remove(c)
        self.broken.clear()
        self.broken_children.clear()
        self._place(labels)

    def refresh(self):
        """Plan anew when the group's member set changed since the plan was made."""
        if self.gen != self.group.gen:
            if set(self.group.members) != set(self.members()) or \
                    tuple(self.group.sources) != tuple(t for t, _, _ in self.sources):
                self.plan()
            self.gen = self.group.gen

    def members(self):
        """Every member label of the plan."""
        out = list(self.local) + list(self.openfail)
        for c in self.children:
            out.extend(c.labels)
        return out

    def reopen(self, label):
        """A new open node of a member (walked again from the name space's root)."""
        target = self.group.members.get(label)
        if target is None:
            raise error(errno.ENOENT, "%s is no longer a member" % label)
        return self.reopen_target(target, self.flags & ~(os.O_CREAT | os.O_EXCL))

    def reopen_target(self, target, flags):
        """A member's (or a relay source's) target walked from the name space's root,
        and opened with flags."""
        g, ctx = self.group, self.ctx
        root = self.svc.ns_attach(ctx)
        try:
            node, _ = resolve(ctx, root, self.svc.base, g, target)
        finally:
            root.close(ctx)
        try:
            node.open(ctx, flags)
        except BaseException:
            node.close(ctx)
            raise
        return node
