"""A multiplexer node: the one server core, whose backends are remote children merged by
FiNAL rules.

    mux = Mux([("serverA", "127.0.0.1:5641"), ...], final_text=None, child_aname="nine")
    mux.server.listen("127.0.0.1:5640")

The mux serves the merged name space and its own status; what else a mux offers (the
group service, authentication) is added by whoever assembles it (nine.assembly).

Anames served:
  ""  (any aname not listed)   the merged name space.  An aname that is a path in it
                               ("serverA/files") attaches there, so a kernel mount can
                               take one subtree.
  "mux"                        status of this mux: `status` (one line per child: name,
                               address, state, since, reason), `children`, `final` (the
                               program in force), `ctl` (written by the mux's own user,
                               one command a line: `retarget NAME ADDR [NOTE]` reaches
                               child NAME at ADDR from now on, e.g. a replacement the
                               launcher started elsewhere, nine.launch.watch; `retry
                               NAME` dials a child that is down at once).
"""

import errno
import os

from ..addr import parse_addr
from ..final import compose, parse
from ..server.core import Server
from ..server.node import error
from ..synth.files import Dir, File, SynthFS
from ..server.qidmap import QidMap
from .child import HANG_TIMEOUT, Child

DEFAULT_FINAL = "simple *:/ at /\n"


class Mux:
    """Children [(name, address)] composed by FiNAL rules and served by one Server
    (self.server, not yet listening).  tls: the server's TLS context (Server(tls=));
    child_tls: the client TLS context of the links to the children (Child(tls=)).
    hang_timeout: when a silent child is probed and judged hung (Child(hang_timeout=))."""

    def __init__(self, children, final_text=None, child_aname="", msize=None, name="mux",
                 connect_timeout=5.0, op_timeout=None, child_auth="find", gate=None,
                 tls=None, child_tls=None, hang_timeout=HANG_TIMEOUT):
        self.qidmap = QidMap()
        self.children = {}
        for cname, addr in children:
            if cname in self.children:
                raise ValueError("child %r named twice" % cname)
            self.children[cname] = Child(cname, addr, aname=child_aname, qidmap=self.qidmap,
                                         connect_timeout=connect_timeout,
                                         op_timeout=op_timeout, auth=child_auth,
                                         tls=child_tls, hang_timeout=hang_timeout)
        self.final_text = final_text if final_text is not None else DEFAULT_FINAL
        parse(self.final_text)  # a bad program is refused before anything is served
        # remote children map their qids through self.qidmap already
        self.root_attach = compose(self.final_text,
                                   {n: c.attach for n, c in self.children.items()},
                                   self.qidmap, map_qids=False, name=name)
        kw = {} if msize is None else {"msize": msize}
        self.server = Server({None: self.attach, "mux": SynthFS(self.status_tree()).attach},
                             name=name, gate=gate, tls=tls, **kw)

    def attach(self, ctx):
        """The merged name space, or the subtree an aname path names in it."""
        root = self.root_attach(ctx)
        path = [p for p in (ctx.aname or "").split("/") if p]
        if not path:
            return root
        nodes = root.walk(ctx, path) if len(path) <= 16 else None
        if nodes is None or len(nodes) != len(path):
            for n in nodes or ():
                n.close(ctx)
            root.close(ctx)
            raise error(errno.ENOENT, "no %r in the merged name space" % ctx.aname)
        for n in nodes[:-1]:
            n.close(ctx)
        root.close(ctx)
        return nodes[-1]

    def status_tree(self):
        def status(ctx):
            text = "".join(c.status_line() + "\n" for c in self.children.values())
            failures = self.root_attach.status()
            return text + failures

        def children(ctx):
            return "".join("%s %s\n" % (n, c.addr) for n, c in self.children.items())

        return Dir("", [
            File("status", read=status),
            File("children", read=children),
            File("final", read=lambda ctx: self.final_text),
            File("ctl", write=lambda ctx, off, data: self.ctl(data), mode=0o200,
                 uid=os.geteuid(), gid=os.getegid()),
        ])

    def ctl(self, data):
        """Run the commands of a write to mux/ctl, one a line: `retarget NAME ADDR
        [NOTE]` (Child.retarget), `retry NAME` (Child.retry_now).  EINVAL for a command
        it does not know or a bad address, ENOENT for a child it does not have (the
        lines before the bad one have run)."""
        for line in bytes(data).decode("utf-8", "replace").splitlines():
            words = line.split(None, 3)
            if not words:
                continue
            if not (words[0] == "retarget" and len(words) >= 3 or
                    words[0] == "retry" and len(words) == 2):
                raise error(errno.EINVAL, "mux ctl: want `retarget NAME ADDR [NOTE]` or "
                            "`retry NAME`, not %r" % line)
            child = self.children.get(words[1])
            if child is None:
                raise error(errno.ENOENT, "mux ctl: no child %r" % words[1])
            if words[0] == "retry":
                child.retry_now()
                continue
            try:
                parse_addr(words[2])
            except ValueError as ex:
                raise error(errno.EINVAL, "mux ctl: %s" % ex) from None
            child.retarget(words[2], words[3] if len(words) > 3 else None)
        return len(data)

    def close(self):
        self.server.stop()
        for c in self.children.values():
            c.close()
