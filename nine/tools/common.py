"""What the seed's tools share: the root they talk to, the hosts a command names, where
a path on each host lies in the root's name space, and how hosts are named in output.

The root's address: -a ADDR, else $NINE_ADDR, else ``addr = HOST:PORT`` in the config
file ($XDG_CONFIG_HOME/nine/config, default ~/.config/nine/config: ``key = value``
lines, ``#`` comments), else 127.0.0.1:5640.  TLS links: --tls-cert/--tls-key/--tls-ca
or $NINE_TLS_CERT/$NINE_TLS_KEY/$NINE_TLS_CA.

The hosts, as clush and pdsh users name them: -w NODESET (ClusterShell node sets,
``node[1-64]``, repeatable), -x NODESET (left out), -g GROUP (the member names of the
group directory /groups/GROUP, or of a directory path); without -w or -g, every host
under /nodes (--nodes DIR: where the tree shows one directory per host).

A path on each host: a leaf that serves a directory shows it as files/ beside a file
``exports`` (``files /srv/data``: which directory of the host files/ is), so that an
absolute path /srv/data/x of host H is /nodes/H/files/x in the root's name space; a
relative path is taken from the host's export (/nodes/H/files/PATH).  A host without
that file (a leaf serving only a directory, or another 9P server) is /nodes/H itself:
relative paths only.
"""

import errno
import os
import posixpath
import re

DEFAULT_ADDR = "127.0.0.1:5640"
NODES = "/nodes"


class ToolError(Exception):
    """What stops a tool before it runs: a bad option, no root (exit status 2)."""


# ---------------------------------------------------------------------------
# the root

def config_file():
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return os.path.join(base, "nine", "config")


def read_config(path=None):
    """{key: value} of the config file (empty when it does not exist)."""
    path = path or config_file()
    out = {}
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                key, sep, value = line.partition("=")
                if not sep or not key.strip():
                    raise ToolError("%s:%d: want key = value" % (path, n))
                out[key.strip()] = value.strip()
    except FileNotFoundError:
        pass
    except OSError as ex:
        raise ToolError("%s: %s" % (path, ex.strerror or ex))
    return out


def root_address(given=None):
    """The root's address: given (-a), $NINE_ADDR, the config file's addr, the default."""
    return given or os.environ.get("NINE_ADDR") or read_config().get("addr") or DEFAULT_ADDR


def add_root_options(p):
    """The root's address (-a) and TLS files."""
    p.add_argument("-a", dest="addr", metavar="ADDR", help="the root's address (default "
                   "$NINE_ADDR, else addr in %s, else %s)" % (
                       config_file().replace(os.path.expanduser("~"), "~"), DEFAULT_ADDR))
    for opt, var in (("--tls-cert", "NINE_TLS_CERT"), ("--tls-key", "NINE_TLS_KEY"),
                     ("--tls-ca", "NINE_TLS_CA")):
        p.add_argument(opt, metavar="FILE", default=os.environ.get(var) or None,
                       help="TLS link to the root: %s (default $%s)" % (opt[6:], var))


def add_host_options(p):
    """The hosts: -w, -x, -g, and where the root shows them (--nodes)."""
    p.add_argument("-w", dest="hosts", action="append", metavar="NODESET",
                   help="the hosts: a ClusterShell node set, node[1-64] (repeatable; "
                        "default: every host)")
    p.add_argument("-x", dest="exclude", action="append", metavar="NODESET",
                   help="hosts left out (repeatable)")
    p.add_argument("-g", dest="group", metavar="GROUP",
                   help="the hosts: the member names of group GROUP (/groups/GROUP)")
    p.add_argument("--nodes", dest="nodes_dir", default=NODES, metavar="DIR",
                   help="where the root shows one directory per host (default %s)" % NODES)


def add_options(p):
    """The options every tool has: the root and the hosts."""
    add_root_options(p)
    add_host_options(p)


def connect(args, blocking=True):
    """A Client of the root (blocking: a BlockingConnection, no gevent, unless TLS)."""
    from ..client import Client
    addr = root_address(args.addr)
    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca:
        from ..auth.tls import from_files
        try:
            tls = from_files(args.tls_cert, args.tls_key, args.tls_ca, server_side=False)
        except ValueError as ex:
            raise ToolError(str(ex))
    try:
        return Client(addr, tls=tls, blocking=blocking)
    except (OSError, ValueError) as ex:
        raise ToolError("cannot reach the root at %s: %s" % (addr, errtext(ex)))


def errtext(ex):
    if isinstance(ex, OSError) and ex.strerror:
        return ex.strerror
    return str(ex)


# ---------------------------------------------------------------------------
# the hosts

def nodeset(texts):
    """The names of ClusterShell node sets (a list of texts), or ToolError."""
    from ClusterShell.NodeSet import NodeSet, NodeSetException
    out = set()
    for t in texts or ():
        try:
            out.update(NodeSet(t))
        except (NodeSetException, ValueError) as ex:
            raise ToolError("bad node set %r: %s" % (t, ex))
    return out


def headline(members):
    """A member set as clush names it: folded, with its size when above one."""
    from ..group.aggregate import fold
    ms = set(members)
    return fold(ms) + (" (%d)" % len(ms) if len(ms) > 1 else "")


def group_dir(args):
    g = args.group
    return g if g.startswith("/") else posixpath.join("/groups", g)


def select_hosts(client, args):
    """(hosts, unknown): the hosts the options name that the root has under --nodes, and
    those it has not, each in natural order."""
    from ..group.aggregate import natural_key
    try:
        known = set(client.listdir(args.nodes_dir))
    except OSError as ex:
        raise ToolError("%s: %s" % (args.nodes_dir, errtext(ex)))
    if args.hosts or args.group:
        want = nodeset(args.hosts)
        if args.group:
            want.update(label for label, _ in group_members(client, group_dir(args)))
    else:
        want = set(known)
    want -= nodeset(args.exclude)
    return (sorted(want & known, key=natural_key),
            sorted(want - known, key=natural_key))


def group_members(client, path):
    """[(label, target)] of a group directory (its members' names and files)."""
    from ..client.group import members_of
    try:
        return members_of(client, path)
    except OSError as ex:
        raise ToolError("%s: %s" % (path, errtext(ex)))


# ---------------------------------------------------------------------------
# where a host's path is

def read_exports(client, hosts, nodes_dir=NODES, timeout=None):
    """({host: [(name-space dir, host dir)] or None}, {host: failure}): what each host's
    exports file says, read as one group (equivalence classes: hosts that export the
    same directory cost one line); None for a host without the file."""
    p = _group_read(client, [(h, posixpath.join(nodes_dir, h, "exports")) for h in hosts],
                    "equiv", timeout)
    out, failed = {}, {}
    for content, ms in (p.value or {}).items():
        table = []
        for line in content.decode("utf-8", "surrogateescape").splitlines():
            name, _, directory = line.partition(" ")
            if name and directory:
                table.append((name, directory.rstrip("/") or "/"))
        for h in ms:
            out[h] = table
    missing = set()
    for reason, ms in p.errors.items():
        for h in ms:
            if "No such file or directory" in reason:
                missing.add(h)
            else:
                failed[h] = reason
    if missing:
        # no exports file, or a host that is down: the tree's unions answer a walk into
        # a host that is down with ENOENT; opening the host's directory says which.  (All
        # the hosts are asked: a mux that gets two members or more hands them to its
        # child's group service, whose answer carries the reason's text, where a single
        # member's failure crosses a 9P2000.L link as an errno alone.)
        p = _group_read(client, [(h, posixpath.join(nodes_dir, h)) for h in hosts],
                        "count", timeout)
        for reason, ms in p.errors.items():
            for h in ms & missing:
                if "Is a directory" in reason:
                    out[h] = None               # it answers: no exports file there
                else:
                    failed[h] = reason
        for h in missing - set(out) - set(failed):
            out[h] = None
    return out, failed


def _group_read(client, members, aggregator, timeout):
    """The merged Partial of one group read (all members timed out when the root does
    not answer in time)."""
    from ..group.aggregate import Partial
    if not members:
        return Partial()
    g = client.gopen(None, "r", aggregator=aggregator, timeout=timeout, members=members)
    try:
        return g.read_partial()
    except TimeoutError:
        return Partial(None, {"timed out": {m for m, _ in members}})
    finally:
        g.close()


def host_failure(reason):
    """(late, text) of a host's failure as a group read names it: late when it did not
    answer in time (timed out, hung); the text without the path of the tree to it
    (``child node2 (10.0.0.2:5640) is down: connection refused``: ``down: connection
    refused``), so that hosts failing alike fold."""
    text = " ".join(reason.split())
    if text.startswith("open: "):
        text = text[6:]
    m = re.match(r"child \S+ \([^)]*\) is (\w+): (.*)$", text)
    if m:
        text = "%s: %s" % m.group(1, 2)
    late = text.startswith(("timed out", "hung")) or "timed out" in text
    return late, text


def ns_path(host, path, table, nodes_dir=NODES):
    """The name-space path of `path` on host (its exports table, or None: the host is
    its export); raises LookupError(why) for a path the host does not serve."""
    base = posixpath.join(nodes_dir, host)
    if not path.startswith("/"):
        rel = posixpath.normpath(path)
        if rel == ".." or rel.startswith("../"):
            raise LookupError("outside the export")
        if table is None:
            return base if rel == "." else posixpath.join(base, rel)
        if not table:
            raise LookupError("%s exports no directory" % host)
        name = table[0][0]
        return posixpath.join(base, name) if rel == "." else posixpath.join(base, name, rel)
    if table is None:
        raise LookupError("%s does not say what it exports (give a path relative to its "
                          "export)" % host)
    path = posixpath.normpath(path)
    best = None
    for name, directory in table:
        if path == directory or path.startswith(directory.rstrip("/") + "/"):
            if best is None or len(directory) > len(best[1]):
                best = (name, directory)
    if best is None:
        raise LookupError(os.strerror(errno.ENOENT) + " (not exported)")
    rest = path[len(best[1]):].lstrip("/")
    return posixpath.join(base, best[0], rest) if rest else posixpath.join(base, best[0])
