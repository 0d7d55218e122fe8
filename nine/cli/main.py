"""The `nine` command: serve, and client verbs in the style of plan9port's 9p(1).

The parser is built here without importing the verbs; each verb's module (and what it
needs of nine) is imported only when that verb runs, so that a client verb starts fast."""

import argparse
import sys

from .. import __version__
from .common import DEFAULT_ADDR, _add_client_opts, _add_tls_opts, _die, hold_gc, release_gc


def _verb(module, name):
    """A lazy reference to cmd function `name` of nine.cli.MODULE."""
    def run(args):
        import importlib
        return getattr(importlib.import_module(
            module if "." in module else "nine.cli." + module), name)(args)
    run.__name__ = name
    return run


cmd_serve = _verb("serve", "cmd_serve")
cmd_mux = _verb("serve", "cmd_mux")
cmd_tree = _verb("serve", "cmd_tree")
cmd_demo = _verb("serve", "cmd_demo")
cmd_ls = _verb("files", "cmd_ls")
cmd_read = _verb("files", "cmd_read")
cmd_write = _verb("files", "cmd_write")
cmd_stat = _verb("files", "cmd_stat")
cmd_gread = _verb("groups", "cmd_gread")
cmd_gwrite = _verb("groups", "cmd_gwrite")
cmd_key = _verb("serve", "cmd_key")
cmd_mount = _verb("mount", "cmd_mount")
cmd_mkdir, cmd_ln, cmd_rm, cmd_rmdir = (_verb("edit", "cmd_" + v)
                                        for v in ("mkdir", "ln", "rm", "rmdir"))
cmd_group = _verb("group", "cmd_group")
cmd_pgrep = _verb("nine.tools.pgrep", "verb")
cmd_monitor = _verb("nine.monitor.main", "verb")
# the client verbs log nothing: they do not load logging (a one-shot verb starts faster)
_SILENT = ("ls", "read", "write", "stat", "gread", "gwrite")
# verbs that start with the cyclic garbage collector off, until they serve (serve, mux:
# nine.cli.common._serve_forever) or are connected (the client verbs: _client): their
# start is mostly imports, which make few cycles and many objects, and the collections
# that walk those again and again were an eighth of a leaf's start
_GC_OFF = ("serve", "mux", "ls", "read", "write", "stat", "gread", "gwrite", "mkdir", "ln",
           "rm", "rmdir")


def _add_auth_opts(p, who="this server"):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--auth", metavar="METHOD", default="auto",
                   help="authentication %s requires: munge, key, key=FILE (default: munge "
                        "when munged runs here, else the key file; docs/security.md)" % who)
    g.add_argument("--no-auth", dest="auth", action="store_const", const="none",
                   help="no authentication: every client is whoever it claims to be "
                        "(proc and exec then serve only the server's own user; for tree "
                        "and demo: the root's clients, while the tree's own links still "
                        "authenticate)")


def _add_daemon_opts(p):
    g = p.add_argument_group("daemon", "run in the background (nine.launch.daemon): the "
                             "command returns once the server listens (status 0), or "
                             "when it failed to start (status 1)")
    g.add_argument("--daemon", action="store_true", help="detach from the terminal and "
                   "the session (stdin /dev/null, stdout and stderr to --log-file)")
    g.add_argument("--pid-file", metavar="FILE", help="written once listening, removed "
                   "at exit; refused when it names a live process")
    g.add_argument("--log-file", metavar="FILE", help="the daemon's stdout and stderr "
                   "(appended to; default /dev/null)")


def _add_limit_opts(p):
    """--max-connections and the other limits of nine.server.limits (dest limit_FIELD)."""
    from ..server.limits import Limits
    g = p.add_argument_group("limits", "what one client may hold (0: no limit)")
    for opt, field, metavar, hlp in (
            ("--max-connections", "connections", "N", "connections at once"),
            ("--max-per-peer", "per_peer", "N", "connections at once from one address"),
            ("--max-fids", "fids", "N", "fids of one connection (more: EMFILE)"),
            ("--max-requests", "requests", "N", "requests in flight on one connection "
             "(more are not read until one ends)"),
            ("--max-requests-total", "requests_total", "N", "requests in flight on all "
             "connections (more are not read from those that hold 8 or more)"),
            ("--attach-timeout", "attach_timeout", "SECONDS", "a connection that has not "
             "attached by then is closed (with authentication only)"),
            ("--frame-timeout", "frame_timeout", "SECONDS", "a connection whose frame has "
             "begun but not arrived whole by then is closed")):
        default = Limits._field_defaults[field]
        g.add_argument(opt, dest="limit_" + field, metavar=metavar, type=type(default),
                       default=default, help=hlp + " (default %(default)s)")


def _socket_mode(text):
    """--socket-mode: octal permission bits."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an octal mode" % text) from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError("%s: want permission bits, 0 to 0777" % text)
    return mode


class _Unbuilt:
    """Another verb's parser, under make_parser(verb): not built (every call on it
    returns it)."""

    def __getattr__(self, name):
        return lambda *args, **kw: self


class _OneVerb:
    """The subparsers of make_parser(verb): only that verb's parser is built (the
    twenty others' arguments and help were a tenth of a client verb's start)."""

    def __init__(self, sub, verb):
        self.sub = sub
        self.verb = verb
        self.built = False

    def add_parser(self, name, **kw):
        if name != self.verb:
            return _Unbuilt()
        self.built = True
        return self.sub.add_parser(name, **kw)


def make_parser(verb=None):
    """The parser of the `nine` command; verb: only that verb's parser under it (what
    parses a command line that starts with that verb as the whole parser would), or
    None when no verb has that name."""
    p = argparse.ArgumentParser(prog="nine", description="nine: a 9P file-server network")
    p.add_argument("--version", action="version", version="nine %s" % __version__)
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    if verb is not None:
        sub = _OneVerb(sub, verb)

    s = sub.add_parser("serve", help="serve directories and synthetic trees over 9P")
    s.add_argument("--listen", "-l", action="append",
                   help="address to listen on (HOST:PORT, tcp!HOST!PORT, unix!PATH); "
                        "may repeat; default %s" % DEFAULT_ADDR)
    s.add_argument("--export", "-e", action="append",
                   help="DIR (served to any aname) or NAME=DIR (served to aname NAME)")
    s.add_argument("--ctl", action="store_true", help="add the diod-compatible ctl tree "
                   "(aname ctl); on by default when nothing else is exported")
    s.add_argument("--aggregators", metavar="FILES", help="custom group aggregators: "
                   "comma-separated Python files or modules that register them")
    s.add_argument("--proc", action="store_true", help="Plan 9-style process control: "
                   "aname proc (proc/PID/{ctl,mem,regs,note,wait,status,task/} + Linux files)")
    s.add_argument("--host", action="store_true", help="host information: aname host")
    s.add_argument("--exec", dest="exec_", action="store_true",
                   help="Xcpu-style execution: aname exec (clone, N/{ctl,stdin,stdout,...})")
    s.add_argument("--read-only", action="store_true", help="refuse every change: "
                   "writes to the exports, and exec and proc control (EROFS)")
    s.add_argument("--allow-devices", action="store_true", help="let clients make and "
                   "open block and character devices in the exports (refused by default, "
                   "as with mount's nodev; FIFOs and sockets are always allowed)")
    s.add_argument("--socket-mode", type=_socket_mode, metavar="MODE",
                   help="file mode of unix!PATH sockets (octal; default 0666 when clients "
                        "must authenticate, 0600 with --no-auth)")
    s.add_argument("--squash", metavar="USER", help="act as USER for everyone")
    s.add_argument("--trust-client-groups", action="store_true",
                   help="take the group a create or a chown names as one of the user's "
                        "(the client's kernel checked it; for kernel mounts of users this "
                        "server's passwd does not know); with --no-auth only, not with "
                        "--squash (docs/security.md)")
    s.add_argument("--msize", type=int, default=1024 * 1024 + 24, help="largest msize")
    s.add_argument("--quiet", "-q", action="store_true")
    s.add_argument("--address-file", help=argparse.SUPPRESS)
    _add_auth_opts(s)
    _add_limit_opts(s)
    _add_tls_opts(s, "every TCP link")
    _add_daemon_opts(s)
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("mux", help="merge children's trees into one (FiNAL rules)")
    m.add_argument("--listen", "-l", action="append", help="default %s" % DEFAULT_ADDR)
    m.add_argument("--child", "-c", action="append", metavar="NAME[=ADDR]",
                   help="a child server (repeatable); NAME alone: its address comes later, "
                        "written to the mux's ctl (aname mux): `retarget NAME ADDR`")
    m.add_argument("--child-aname", default="", help="aname to attach at every child "
                   "(leaf servers: nine; muxes: empty)")
    m.add_argument("--aggregators", metavar="FILES", help="custom group aggregators: "
                   "comma-separated Python files or modules that register them")
    m.add_argument("--final", metavar="FILE", help="FiNAL rules (default: one directory "
                   "per child)")
    m.add_argument("--final-text", metavar="TEXT", help="FiNAL rules given inline")
    m.add_argument("--msize", type=int, default=1024 * 1024 + 24)
    m.add_argument("--quiet", "-q", action="store_true")
    m.add_argument("--address-file", help=argparse.SUPPRESS)
    _add_auth_opts(m, "this mux")
    _add_limit_opts(m)
    _add_tls_opts(m, "every TCP link, to the clients and to the children,")
    m.add_argument("--child-auth", metavar="METHOD", default="auto",
                   help="how to authenticate to the children: munge, key, key=FILE, none "
                        "(default: what is found here)")
    m.add_argument("--hang-timeout", metavar="SECONDS", type=float, default=10.0,
                   help="a child silent this long with requests outstanding is probed, and "
                        "marked hung (its requests fail, it is reconnected) when the probe "
                        "goes unanswered as long (default 10; 0: never)")
    _add_daemon_opts(m)
    m.set_defaults(func=cmd_mux)

    t = sub.add_parser("tree", help="start a tree of muxes over leaf servers (TBON)")
    t.add_argument("--topology", "-t", metavar="FILE", help="topology file (see "
                   "nine/launch/topology.py); without it, local leaves on loopback")
    t.add_argument("--leaves", "-n", type=int, default=8, help="local leaves (default 8)")
    t.add_argument("--fanout", "-f", type=int, default=4, help="children per mux (default 4)")
    t.add_argument("--listen", "-l", help="the root's address (default %s)" % DEFAULT_ADDR)
    t.add_argument("--leaf-export", metavar="DIR", help="leaf NAME exports DIR/NAME as files/ "
                   "(with --hosts: each leaf its host's own DIR)")
    t.add_argument("--aggregators", metavar="FILES", help="custom group aggregators for "
                   "every server and mux of the tree (Python files or modules)")
    t.add_argument("--final", metavar="FILE", help="FiNAL rules of the root")
    t.add_argument("--final-text", metavar="TEXT", help="FiNAL rules of the root, inline")
    t.add_argument("--once", action="store_true", help="start, print, stop (a check)")
    _add_auth_opts(t, "every server of the tree")
    h = t.add_argument_group("on hosts over ssh", "one leaf per host, muxes on hosts too "
                             "(nine/launch/ssh.py); `nine tree down` stops such a tree")
    h.add_argument("action", nargs="?", choices=["down", "watch"], help="down: stop the "
                   "tree that --state (or --name) records; watch: watch it (a --daemon "
                   "tree) until Ctrl-C or `nine tree down`, adopting its lost muxes")
    h.add_argument("--hosts", "-H", metavar="NODESET", help="start the tree on these hosts "
                   "(ClusterShell node set, e.g. node[1-64]); --topology then gives its "
                   "settings and [muxes] placement")
    h.add_argument("--ssh-options", metavar="OPTS", help='options of every ssh, e.g. '
                   '"-F FILE"')
    h.add_argument("--ssh-fanout", metavar="N", type=int, help="ssh sessions at once "
                   "(ClusterShell's fanout; its default 64)")
    h.add_argument("--remote-python", metavar="PY", default="python3", help="the Python "
                   "that runs nine on the hosts (default python3)")
    h.add_argument("--remote-path", metavar="DIR", help="PYTHONPATH on the hosts (default: "
                   "this checkout, for hosts that share it; \"\" for an installed nine)")
    h.add_argument("--remote-workdir", metavar="DIR", help="the servers' pid, log and "
                   "address files on each host, under DIR/HOST (default "
                   ".cache/nine/tree-NAME in the home directory)")
    h.add_argument("--port", type=int, default=5640, help="the leaves' port (default 5640; "
                   "0: any, read back)")
    h.add_argument("--root-host", metavar="HOST", help="run the root on HOST (--listen: its "
                   "port there) instead of in this process")
    h.add_argument("--daemon", action="store_true", help="return once the root answers; the "
                   "root runs as a daemon (here on --listen, or on --root-host)")
    h.add_argument("--name", default="default", help="the tree's name (state file, remote "
                   "workdir)")
    h.add_argument("--state", metavar="FILE", help="the state file (default "
                   "~/.cache/nine/tree-NAME.json)")
    h.add_argument("--copy-key", action="store_true", help="copy this host's key file to "
                   "the same path on the hosts (mode 0600) first")
    h.add_argument("--no-adopt", dest="adopt", action="store_false", help="in the "
                   "foreground, do not watch the tree (by default a mux whose host is "
                   "lost is started again on another host and its parent pointed at it: "
                   "nine/launch/watch.py)")
    h.add_argument("--adopt-grace", metavar="SECONDS", type=float, default=2.0,
                   help="how long a mux stays down before it is adopted (default 2)")
    sl = t.add_argument_group("in a Slurm allocation", "one leaf per node as job steps "
                              "beside the job (nine/launch/slurm.py)")
    sl.add_argument("--slurm", action="store_true", help="start the tree on the nodes of "
                    "the allocation this runs in (salloc, sbatch): leaves and muxes as "
                    "steps (srun --overlap), the root here or on --root-host; --topology, "
                    "--fanout, --port and --remote-path apply; the nodes run this Python")
    t.set_defaults(func=cmd_tree)

    d = sub.add_parser("demo", help="start a small local tree (8 leaves, 2 levels of muxes) "
                       "and show it")
    d.add_argument("--listen", "-l", default=DEFAULT_ADDR, help="the root's address "
                   "(default %s)" % DEFAULT_ADDR)
    d.add_argument("--leaves", "-n", type=int, default=8)
    d.add_argument("--fanout", "-f", type=int, default=4)
    d.add_argument("--dir", help="directory for the leaves' files (default: a new temp dir)")
    d.add_argument("--once", action="store_true", help="exit after showing the tree")
    _add_auth_opts(d, "every server of the demo")
    d.set_defaults(func=cmd_demo)

    k = sub.add_parser("key", help="make a shared key for authentication (mode 0600)")
    k.add_argument("path", nargs="?", help="where (default: $NINE_KEY, else "
                   "~/.config/nine/key; /etc/nine/key for a cluster's daemons)")
    k.set_defaults(func=cmd_key)

    n = sub.add_parser("mount", help="mount a server with the kernel's 9P client, "
                       "authenticated in user space first (as diod's mount.diod)")
    n.add_argument("-o", dest="options", default="", metavar="OPTIONS",
                   help="mount(8) options for 9p: aname=, access=user|client|any|UID, uname=, "
                        "msize=, cache=, version=, others for the kernel; port= when ADDR "
                        "has none (default 564)")
    n.add_argument("--auth", metavar="METHOD", help="munge, key, key=FILE or none "
                   "(default: what is found here: $NINE_AUTH, a key file, munged)")
    n.add_argument("-f", "--fake", action="store_true",
                   help="everything but the mount: print the mount(8) command")
    n.add_argument("addr", metavar="ADDR", help="HOST, HOST:PORT, tcp!HOST!PORT or unix!PATH")
    n.add_argument("dir", metavar="DIR", help="the mount point")
    n.set_defaults(func=cmd_mount)

    for name, fn, hlp in [("ls", cmd_ls, "list a directory"),
                          ("read", cmd_read, "copy a file to stdout"),
                          ("write", cmd_write, "copy stdin into a file"),
                          ("stat", cmd_stat, "show a file's attributes")]:
        c = sub.add_parser(name, help=hlp)
        _add_client_opts(c)
        if name == "ls":
            c.add_argument("-l", action="store_true", help="long listing")
            c.add_argument("-d", action="store_true", help="list directories themselves")
            c.add_argument("path", nargs="*")
        else:
            c.add_argument("path")
        if name == "write":
            c.add_argument("--append", action="store_true", help="append instead of truncate")
        c.set_defaults(func=fn)
    for name, fn, hlp in [("gread", cmd_gread, "read a group of files, aggregated "
                           "(a directory's files or symlink targets, or --member)"),
                          ("gwrite", cmd_gwrite, "write the same bytes to every member "
                           "of a group")]:
        c = sub.add_parser(name, help=hlp)
        _add_client_opts(c)
        c.add_argument("path", nargs="?", help="the group's directory")
        c.add_argument("--member", action="append", metavar="NAME=PATH",
                       help="a member (instead of a directory); repeatable")
        c.add_argument("--timeout", type=float, help="seconds to wait for members "
                       "(default: wait for all); the late ones are named")
        c.add_argument("--offset", type=lambda v: int(v, 0), default=0,
                       help="member offset (default 0)")
        c.add_argument("-q", "--quiet", action="store_true", help="no failure report")
        if name == "gread":
            c.add_argument("--agg", help='aggregator and parameters, e.g. "equiv" or '
                           '"histogram bins=5" (default concat)')
            c.add_argument("--count", type=int, help="bytes of each member (default all)")
            c.add_argument("-f", "--follow", action="store_true",
                           help="follow the members as they grow (tail -f)")
        else:
            c.add_argument("--data", help="the bytes to write (default: stdin)")
        c.set_defaults(func=fn)
    c = sub.add_parser("monitor", add_help=False, prefix_chars="\0", help="cluster "
                       "monitoring: gmond's XML, Prometheus, graphs (nine monitor --help)")
    c.add_argument("argv", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_monitor)
    _add_edit_verbs(sub)
    if verb is not None and not sub.built:
        return None
    return p


def _add_edit_verbs(sub):
    """mkdir, ln, rm, rmdir (nine.cli.edit), group (nine.cli.group), pgrep, ptail, ptop
    (their own parsers: nine.tools)."""
    for name, fn, hlp, flags in (
            ("mkdir", cmd_mkdir, "make directories", (("-p", "parents as needed"),)),
            ("rm", cmd_rm, "remove files", (("-r", "directories and their contents"),
                                            ("-f", "no error for missing files"))),
            ("rmdir", cmd_rmdir, "remove empty directories", ())):
        c = sub.add_parser(name, help=hlp)
        _add_client_opts(c)
        for flag, what in flags:
            c.add_argument(flag, action="store_true", help=what)
        if name == "mkdir":
            c.add_argument("--mode", type=lambda v: int(v, 8), default=0o755,
                           help="permissions (octal, default 755)")
        c.add_argument("path", nargs="+")
        c.set_defaults(func=fn)
    c = sub.add_parser("ln", help="make a link (-s: symbolic)")
    _add_client_opts(c)
    c.add_argument("-s", action="store_true", help="a symbolic link")
    c.add_argument("-f", action="store_true", help="replace LINK if it exists")
    c.add_argument("target", metavar="TARGET")
    c.add_argument("link", metavar="LINK")
    c.set_defaults(func=cmd_ln)
    g = sub.add_parser("group", help="make, list and remove groups (/groups)")
    if isinstance(g, _Unbuilt):                 # (another verb runs)
        add_host_options = add_root_options = g.add_argument
    else:
        from ..tools.common import add_host_options, add_root_options
    gs = g.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = gs.add_parser("make", help="a group of a path on each host: NAME/HOST -> its file")
    add_root_options(c)
    add_host_options(c)
    c.add_argument("--agg", metavar="AGG", help='its aggregator, e.g. "equiv"')
    c.add_argument("name", metavar="NAME")
    c.add_argument("path", metavar="PATH", help="the path on each host")
    c = gs.add_parser("ls", help="the groups (NAME: its members)")
    add_root_options(c)
    c.add_argument("name", metavar="NAME", nargs="*")
    c = gs.add_parser("rm", help="remove groups")
    add_root_options(c)
    c.add_argument("name", metavar="NAME", nargs="+")
    g.set_defaults(func=cmd_group)
    c = sub.add_parser("pgrep", add_help=False, prefix_chars="\0",
                       help="grep on many hosts, matched at the leaves (nine pgrep --help)")
    c.add_argument("argv", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_pgrep)
    for name, hlp in (("ptail", "tail -f of a file on many hosts (nine ptail --help)"),
                      ("ptop", "top over many hosts, live or batch (nine ptop --help)"),
                      ("pcp", "copy files to many hosts (nine pcp --help)"),
                      ("psync", "rsync to many hosts (nine psync --help)")):
        c = sub.add_parser(name, add_help=False, prefix_chars="\0", help=hlp)
        c.add_argument("argv", nargs=argparse.REMAINDER)
        c.set_defaults(func=_verb("nine.tools." + name, "verb"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    hold_gc()
    try:
        p = None
        if argv and not argv[0].startswith("-"):    # a verb first: only its parser is built
            p = make_parser(argv[0])
        if p is None:
            p = make_parser()
        args = p.parse_args(argv)
        if args.cmd not in _GC_OFF:
            release_gc()
        return _run(p, args)
    finally:
        release_gc()


def _run(p, args):
    if args.cmd not in _SILENT:
        import logging
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="nine: %(message)s")
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    if getattr(args, "aggregators", None):
        from ..group.aggregate import AggregatorError, load
        try:
            load(args.aggregators)
        except AggregatorError as ex:
            _die(str(ex), 2)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
