"""What a tree of muxes (a TBON) is made of: its leaves, its fan-out and the FiNAL rules
of each level, from a topology file or for local leaves on loopback.

Topology file (INI):

    [tree]
    listen = 127.0.0.1:5640        # the root mux
    fanout = 4                     # children per mux; levels are added until the root
                                   # has at most `fanout` children
    leaf-args = --proc --host --exec
    leaf-export = ./data           # optional: local leaf NAME exports ./data/NAME
    final-root = root.final        # FiNAL rules of the root (default: union of levels)
    final-mid = mid.final          # rules of inner muxes (default: directory per child)
    final-leaf-mux = ...           # rules of the muxes right above the leaves (default:
                                   # directory per server)
    auth = auto                    # authentication of every server: auto, munge, key,
                                   # key=FILE, none (docs/security.md)
    tls = pki                      # optional: every link of the tree over TLS, with the
                                   # certificates in this directory: ca.crt, and
                                   # 127.0.0.1.crt/.key for the processes started here
                                   # (made with nine.auth.tls.make_test_pki, and a
                                   # client.crt/.key, when it has no ca.crt yet)

    [leaves]
    node1 = local                  # start a leaf server here, on a free loopback port
    node3 = local:/srv/data        # ... exporting that directory (as files/)
    node2 = 10.1.0.2:5640          # a leaf server already running there

    [muxes]                        # trees on hosts over ssh only (nine.launch.ssh, `nine
                                   # tree --hosts`, which names the leaves: one per host,
                                   # no [leaves] section): NAME = HOST: CHILDREN places
                                   # mux NAME on HOST over CHILDREN, leaf hosts or other
                                   # muxes (ClusterShell node sets), MRNet-style
    edge1 = node2: node[1-4]
    edge2 = node7: node[5-8]
    root = node1: edge1 edge2      # optional: the root on a host (else as --root-host;
                                   # HOST local: in the `nine tree` process)

The defaults give the root, whatever the depth, `/nodes/node1/...` (one directory per
leaf server), `/proc/PID/node1/...` and `/host/load/node1` (the seed's merge view): the
muxes above the leaves build that view and every level above them passes it up with a
recursive union (`insert`).  Local leaves and muxes are child processes of `nine tree`; the root mux
runs in the `nine tree` process itself.  Everything stops with it.
"""

import configparser
import os

LEAF_ARGS = "--proc --host --exec"
# the muxes right above the leaves: one directory per leaf server under /nodes, and the
# seed's merge view of /proc and of the host information (proc/1/node3/..., host/load/node3)
FINAL_LEAF_MUX = """simple *:/ at /nodes
merge *:/proc at /proc
merge *:/host at /host
"""
FINAL_UP = "insert *:/ at /\n"           # inner muxes and the root: a recursive union


class Topology:
    def __init__(self, leaves, listen="127.0.0.1:5640", fanout=4, leaf_args=LEAF_ARGS,
                 leaf_export=None, final_root=None, final_mid=None, final_leaf_mux=None,
                 aggregators=None, auth="auto", tls=None, muxes=None):
        if fanout < 2:
            raise ValueError("fanout must be at least 2")
        if not leaves:
            raise ValueError("a tree needs at least one leaf")
        self.leaves = list(leaves)          # [(name, "local" | address)]
        self.listen = listen
        self.fanout = fanout
        self.leaf_args = leaf_args
        self.leaf_export = leaf_export
        self.final_root = final_root
        self.final_mid = final_mid
        self.final_leaf_mux = final_leaf_mux
        #: authentication every server of the tree requires (nine.assembly LeafConfig.auth)
        self.auth = auth
        #: what the root requires of its clients (the tree's own links keep `auth`):
        #: `nine tree --no-auth` serves the root to unauthenticated clients (a kernel
        #: mount with trans=tcp) while leaves and muxes still authenticate each other
        self.root_auth = auth
        #: the directory of the tree's TLS certificates (None: plain TCP links)
        self.tls = tls
        #: [(name, host, children)]: muxes placed on hosts ([muxes]; nine.launch.ssh)
        self.muxes = list(muxes or [])
        # custom group aggregators (nine.group.aggregate.load), given to every server
        self.aggregators = ",".join(
            os.path.abspath(a) if a.endswith(".py") or os.sep in a else a
            for a in (aggregators or "").split(",") if a.strip()) or None

    @classmethod
    def load(cls, path, leaves=None):
        """The topology file at path; leaves: when the caller names them (`nine tree
        --hosts`), the file must not."""
        cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
        cp.optionxform = str
        with open(path) as f:
            cp.read_file(f)
        t = cp["tree"] if cp.has_section("tree") else {}
        base = os.path.dirname(os.path.abspath(path))

        def text(key):
            v = t.get(key)
            if not v:
                return None
            p = v if os.path.isabs(v) else os.path.join(base, v)
            with open(p) as f:
                prog = f.read()
            from ..final import FinalError, parse
            try:
                parse(prog)     # a wrong program stops the tree before anything starts
            except FinalError as ex:
                raise ValueError("%s (%s): %s" % (p, key, ex)) from None
            return prog
        if leaves is not None:
            if cp.has_section("leaves"):
                raise ValueError("%s: a [leaves] section, and the hosts are the leaves" % path)
        elif not cp.has_section("leaves"):
            raise ValueError("%s: no [leaves] section" % path)
        else:
            leaves = [(k, v.strip()) for k, v in cp["leaves"].items()]
        muxes = []
        for name, v in (cp["muxes"].items() if cp.has_section("muxes") else ()):
            host, sep, children = v.partition(":")
            if not sep or not host.strip() or not children.strip():
                raise ValueError("%s: [muxes] %s = %s: want HOST: CHILDREN" % (path, name, v))
            muxes.append((name, host.strip(), children.strip()))
        exp = t.get("leaf-export")
        if exp and not os.path.isabs(exp):
            exp = os.path.join(base, exp)
        pki = t.get("tls") or None
        if pki and not os.path.isabs(pki):
            pki = os.path.join(base, pki)
        return cls(leaves, listen=t.get("listen", "127.0.0.1:5640"),
                   fanout=int(t.get("fanout", 4)), leaf_args=t.get("leaf-args", LEAF_ARGS),
                   leaf_export=exp, final_root=text("final-root"),
                   final_mid=text("final-mid"), final_leaf_mux=text("final-leaf-mux"),
                   auth=t.get("auth", "auto"), tls=pki, muxes=muxes,
                   aggregators=",".join(
                       a if not (a.endswith(".py") or "/" in a) or os.path.isabs(a)
                       else os.path.join(base, a)
                       for a in t.get("aggregators", "").split(",") if a.strip()) or None)

    @classmethod
    def local(cls, n, fanout=4, listen="127.0.0.1:5640", **kw):
        width = len(str(n))
        return cls([("node%0*d" % (width, i + 1), "local") for i in range(n)], listen=listen,
                   fanout=fanout, **kw)
