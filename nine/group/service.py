"""The group service: group file operations served by every nine server and mux.

Every nine server (a leaf `nine serve` and every mux) offers a group service over the
name space it serves.  It is reached as aname `groups` (members are paths in the
default name space) or `groups:ANAME` (paths in export ANAME), and in a mux's merged
name space as the directory /groups (GroupsOverlay).  A group operation is carried down
the tree of muxes: the members under one child are handed to a private group on that
child's own service, and the partial results are merged on the way up (the MRNet filter
model).  docs/groups.md describes it for users.

The service is made of, from the files down:

- nine.group.files: the /groups file tree (GroupNode) and GroupsOverlay;
- nine.group.ctl: a group (Group), its settings and the ctl language;
- nine.group.execute: the operations of one open of `data`/`partial` (GroupOpen);
- nine.group.plan: where each member of an open is read (Placement, ChildGroup);
- nine.group.resolve: which file a member names and where it lives;
- nine.group.handle: a private group on another service, over 9P (shared with the
  client), and the helpers of an operation (Gather, follow);
- nine.group.aggregate: the aggregators.

This module holds the service itself (GroupService: the groups of one name space) and
install(), which offers it on a Server.
"""

import errno
import time

from ..server.node import error
from ..synth import files as _synth


def new_qpath():
    return next(_synth._qpaths)


def __getattr__(name):
    if name == "GroupsOverlay":
        from .files import GroupsOverlay
        return GroupsOverlay
    raise AttributeError(name)

__all__ = ["GroupService", "GroupsOverlay", "install"]


class GroupService:
    """The group service over one name space: ns_attach(ctx) gives its root Node.
    base: where the service is seen in that name space (relative member targets are
    resolved from base/NAME)."""

    def __init__(self, ns_attach, uid=None, gid=None, base="/groups"):
        self.ns_attach = ns_attach
        self.groups = {}
        self.seq = 0
        self.qpath = new_qpath()
        self.qpaths = {"clone": new_qpath(), "features": new_qpath()}
        self.version = 0
        self.mtime = time.time_ns()
        self.uid = uid
        self.gid = gid
        self.base = base            # where relative symlink targets are resolved from

    def attach(self, ctx):
        """The root of the /groups tree (an attach function of a Server export)."""
        from .files import GroupNode
        return GroupNode(self, "root")

    def new_group(self, name, private=False, uid=0, gid=0):
        """Make a group (name None: the next free number, for clone)."""
        if name is None:
            while True:
                self.seq += 1
                name = str(self.seq)
                if name not in self.groups:
                    break
        elif not name or "/" in name or name in (".", "..", "clone", "features"):
            raise error(errno.EINVAL, "bad group name %r" % name)
        elif name in self.groups:
            raise error(errno.EEXIST)
        from .ctl import Group
        g = Group(name, private, uid, gid)
        self.groups[name] = g
        self.version = (self.version + 1) & 0xFFFFFFFF
        self.mtime = time.time_ns()
        return g

    def drop_group(self, g):
        """Forget a group (rmdir, or the clunk of its clone fid)."""
        if self.groups.get(g.name) is g:
            del self.groups[g.name]
            self.version = (self.version + 1) & 0xFFFFFFFF
            self.mtime = time.time_ns()


def install(server):
    """Offer the group service on a Server: aname `groups` (the default name space) and
    `groups:A` for each export A.  Returns the services {aname: GroupService}."""
    out = {}
    exports = dict(server.exports)
    default = exports.get(None) or exports.get("nine")
    if default is not None:
        svc = GroupService(default)
        server.exports["groups"] = svc.attach
        out["groups"] = svc
    for aname, attach in exports.items():
        if aname is None or aname.startswith("groups"):
            continue
        svc = out.get("groups") if attach is default else GroupService(attach)
        server.exports["groups:" + aname] = svc.attach
        out["groups:" + aname] = svc
    return out
