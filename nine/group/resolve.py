"""Member resolution: which file of the served name space a member names, and where it
lives.

A member's target is the text it was added with (a symlink's target or an `add` path).
candidates() turns it into the paths to try: a relative target is taken from the
group's own directory (`base`/NAME, base being where the service is served, /groups);
an absolute one from the name space root, after the group's `root` prefix (the client's
mount point) is stripped, or, without one, with leading components dropped while the
first of them is not a name of the name space (/mnt/nine/proc/... finds /proc/...; a
missing /nodes/node4/x is not looked for as /x).

resolve() walks a member to its (unopened) Node.  prime() walks and lists, once, the
directories that many members share; resolve() then walks each member only from the
longest such directory, and locate() may name the remote child that holds a member
(Node.locate, from the name space's cached listings) without walking it at all.
healable() says whether a member's failure may be cured by resolving it again.
"""

import errno
import os
import posixpath
from collections import Counter

from ..server.node import Unreachable, error

PRIME_MIN = 8                # a directory is listed first when this many members share it
PRIME_DIRS = 16              # at most this many directories are listed per batch

# errnos of a child's connection that went (the child is down, or back on a new
# connection that the old node cannot use)
_HEALABLE = {errno.EHOSTDOWN, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
             errno.ESTALE, errno.ENOTCONN}


def healable(e):
    """A failure that resolving the member again may cure: the backend holding its node
    is unreachable now, or its connection went."""
    return isinstance(e, Unreachable) or (isinstance(e, OSError) and e.errno in _HEALABLE)


def names_of(path):
    """The names of a path, without empty and '.' components."""
    return [p for p in path.split("/") if p and p != "."]


def candidates(base, g, target):
    """The name lists (from the name space root) that member target of group g may
    name, in the order to try them."""
    if not target.startswith("/"):
        return [names_of(posixpath.normpath(posixpath.join(base, g.name, target)))]
    if g.root and (target == g.root or target.startswith(g.root + "/")):
        return [names_of(posixpath.normpath(target[len(g.root):] or "/"))]
    names = names_of(posixpath.normpath(target))
    return [names[i:] for i in range(0, min(len(names), 9))]


def walk(ctx, root, names):
    """The Node that names (any number) walked from root lead to; ENOENT when the walk
    stops short.  root is not consumed (it is cloned)."""
    cur = root.clone(ctx)
    try:
        i = 0
        while i < len(names):
            chunk = names[i:i + 16]
            nodes = cur.walk(ctx, chunk)
            for n in nodes[:-1]:
                n.close(ctx)
            if len(nodes) != len(chunk):
                if nodes:
                    nodes[-1].close(ctx)
                e = error(errno.ENOENT, "No such file or directory: /%s" %
                          "/".join(names[:i + len(nodes) + 1]))
                e.walked = i + len(nodes)       # the names that were found
                raise e
            cur.close(ctx)
            cur = nodes[-1]
            i += len(chunk)
        return cur
    except BaseException:
        cur.close(ctx)
        raise


def resolve(ctx, root, base, g, target, bases=None):
    """(node, names) of a member's file; the node is not open.  bases: walked
    directories {names: Node} to start from (prime())."""
    last = None
    for names in candidates(base, g, target):
        if not names:
            continue
        start, rest = root, names
        if bases:
            for k in range(len(names) - 1, 0, -1):
                b = bases.get(tuple(names[:k]))
                if b is not None:
                    start, rest = b, names[k:]
                    break
        try:
            return walk(ctx, start, rest), names
        except OSError as e:
            if last is None or e.errno != errno.ENOENT:
                last = e
            if e.errno != errno.ENOENT or getattr(e, "walked", 0) or start is not root:
                break      # its first name is in the name space: no mount point to drop
    raise last or error(errno.ENOENT, "no such member file %r" % target)


def prime(ctx, root, base, g, targets):
    """Walk and list the directories that PRIME_MIN or more of these members share (at
    most PRIME_DIRS, parents first); returns {names: walked Node} to resolve from (the
    caller closes them).  Each member then walks only the rest of its path from the
    longest such directory, and the listing of a FiNAL union is cached for a while: a
    walk in it asks only the child that holds the name.  So resolving N members costs
    about N child walks, not N times the number of children."""
    counts = Counter()
    for t in targets:
        names = candidates(base, g, t)[0]
        for k in range(1, len(names)):
            counts[tuple(names[:k])] += 1
    dirs = sorted((p for p, c in counts.most_common(PRIME_DIRS) if c >= PRIME_MIN), key=len)
    bases = {}
    for d in dirs:
        try:
            bases[d] = walk(ctx, root, list(d))
        except OSError:
            continue
        lister = None
        try:
            lister = bases[d].clone(ctx)
            lister.open(ctx, os.O_RDONLY)
            off = 0
            while True:
                ents = lister.readdir(ctx, off, 1 << 16)
                if not ents:
                    break
                off = ents[-1].offset
        except OSError:
            pass
        finally:
            if lister is not None:
                lister.close(ctx)
    return bases


def locate(base, g, target, bases):
    """(Remote, path in it) of a member below a primed directory when that directory
    knows which child holds it without asking anyone (Node.locate: the name space's
    cached listings), or None: then the member is walked."""
    names = candidates(base, g, target)[0]
    for k in range(len(names) - 1, 0, -1):
        b = bases.get(tuple(names[:k]))
        if b is not None:
            return b.locate(tuple(names[k:]))
    return None
