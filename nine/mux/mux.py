"""A multiplexer node: the one server core, whose backends are remote children merged by
FiNAL rules.

    mux = Mux([("serverA", "127.0.0.1:5641"), ...], final_text=None, child_aname="nine")
    mux.server.listen("127.0.0.1:5640")

Anames served:
  ""  (any aname not listed)   the merged name space.  An aname that is a path in it
                               ("serverA/files") attaches there, so a kernel mount can
                               take one subtree.
  "mux"                        status of this mux: `status` (one line per child: name,
                               address, state, since, reason), `children`, `final` (the
                               program in force).
"""

import errno

from ..server.core import Server
from ..server.node import error
from ..synth.files import Dir, File, SynthFS
from .qidmap import QidMap
from .remote import Child

DEFAULT_FINAL = "simple *:/ at /\n"


class Mux:
    def __init__(self, children, final_text=None, child_aname="", msize=None, name="mux",
                 connect_timeout=5.0, op_timeout=None):
        from ..final import compose, parse
        self.qidmap = QidMap()
        self.children = {}
        for cname, addr in children:
            if cname in self.children:
                raise ValueError("child %r named twice" % cname)
            self.children[cname] = Child(cname, addr, aname=child_aname, qidmap=self.qidmap,
                                         connect_timeout=connect_timeout,
                                         op_timeout=op_timeout)
        self.final_text = final_text if final_text is not None else DEFAULT_FINAL
        parse(self.final_text)  # a bad program is refused before anything is served
        # remote children map their qids through self.qidmap already
        self.root_attach = compose(self.final_text,
                                   {n: c.attach for n, c in self.children.items()},
                                   self.qidmap, map_qids=False, name=name)
        kw = {} if msize is None else {"msize": msize}
        from ..group.service import GroupService
        #: the group service over the merged name space: /groups and aname "groups"
        self.groups = GroupService(self.root_attach)
        self._group_svcs = {}
        self.server = Server({None: self.attach, "mux": SynthFS(self.status_tree()).attach,
                              "groups": self.groups.attach}, name=name, **kw)

    def attach(self, ctx):
        aname = ctx.aname or ""
        if aname.startswith("groups:"):
            # the group service over a subtree (a parent that attached with a path aname)
            return self._group_service(aname[7:]).attach(ctx)
        root = self.root_attach(ctx)
        path = [p for p in aname.split("/") if p]
        if not path:
            from ..group.service import GroupsOverlay
            return GroupsOverlay(root, self.groups)
        try:
            nodes = root.walk(ctx, path[:16]) if len(path) <= 16 else None
        finally:
            pass
        if nodes is None or len(nodes) != len(path):
            for n in nodes or ():
                n.close(ctx)
            root.close(ctx)
            raise error(errno.ENOENT, "no %r in the merged name space" % ctx.aname)
        for n in nodes[:-1]:
            n.close(ctx)
        root.close(ctx)
        return nodes[-1]

    def _group_service(self, base):
        svc = self._group_svcs.get(base)
        if svc is None:
            from ..group.service import GroupService
            from ..server.node import Context

            def ns(ctx, base=base):
                c = Context(ctx.uname, ctx.uid, ctx.gid, ctx.groups, base, ctx.dialect,
                            ctx.conn, ctx.server)
                return self.attach(c) if base else self.root_attach(ctx)
            svc = self._group_svcs[base] = GroupService(ns)
        return svc

    def status_tree(self):
        def status(ctx):
            text = "".join(c.status_line() + "\n" for c in self.children.values())
            failures = self.root_attach.status() if hasattr(self.root_attach, "status") else ""
            return text + failures

        def children(ctx):
            return "".join("%s %s\n" % (n, c.addr) for n, c in self.children.items())

        return Dir("", [
            File("status", read=status),
            File("children", read=children),
            File("final", read=lambda ctx: self.final_text),
        ])

    def close(self):
        self.server.stop()
        for c in self.children.values():
            c.close()
