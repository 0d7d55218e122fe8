"""The `nine` command: serve, and client verbs in the style of plan9port's 9p(1)."""

import argparse
import logging
import os
import sys

from . import __version__

DEFAULT_ADDR = "127.0.0.1:5640"


def _die(msg, code=1):
    sys.stderr.write("nine: %s\n" % msg)
    sys.exit(code)


# --- serve ------------------------------------------------------------------------

def build_server(args):
    from .server.core import Server
    from .synth.ctl import ctl_tree
    from .synth.files import SynthFS

    exports = {}
    squash = None
    if args.squash:
        from .server.users import USERS
        uid = USERS.uid_of(args.squash)
        if uid is None:
            _die("unknown squash user %r" % args.squash)
        import pwd
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
        squash = (uid, gid)
    for spec in args.export or []:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = None, spec
        if not os.path.isdir(path):
            _die("export %r: not a directory" % path)
        from .server.realfs import RealFS
        fs = RealFS(path, read_only=args.read_only)
        if name is None:
            exports[None] = fs.attach
            exports.setdefault(os.path.abspath(path), fs.attach)
        else:
            exports[name] = fs.attach
    server = Server(exports, msize=args.msize, squash=squash)
    synth = []
    if getattr(args, "proc", False):
        from .synth.proc import proc_tree
        synth.append(("proc", proc_tree("proc")))
    if getattr(args, "host", False):
        from .synth.host import host_tree
        synth.append(("host", host_tree()))
    if getattr(args, "exec_", False):
        from .synth.exec import exec_tree
        synth.append(("exec", exec_tree()))
    from .synth.files import Dir
    for aname, tree in synth:
        tree.name = aname  # its name inside aname "nine"
        # each tree is its own aname (root = the tree), and all of them together under
        # aname "nine" (nine/proc, nine/host, nine/exec)
        server.exports[aname] = SynthFS(tree).attach
    if synth:
        from .synth.files import Mount
        top = [t for _, t in synth]
        if exports.get(None) is not None:
            top.insert(0, Mount("files", exports[None]))  # the default export as files/
        server.exports["nine"] = SynthFS(Dir("", top)).attach
    if args.ctl or not (exports or synth):
        server.exports["ctl"] = SynthFS(ctl_tree(server)).attach
    if exports or synth:
        # group file operations over every export (aname groups, groups:NAME)
        from .group.service import install
        install(server)
    return server


def cmd_serve(args):
    server = build_server(args)
    addrs = args.listen or [DEFAULT_ADDR]
    for a in addrs:
        try:
            srv = server.listen(a)
        except (OSError, ValueError) as ex:
            _die("cannot listen on %s: %s" % (a, ex))
        if not args.quiet:
            sys.stderr.write("nine: serving %s on %s\n" % (
                ", ".join(sorted(str(k if k is not None else "*") for k in server.exports)),
                _fmt_listen(srv, a)))
        _write_address(args, srv, a)
    sys.stderr.flush()
    _serve_forever()
    return 0


def _fmt_listen(srv, a):
    if a.startswith("unix!"):
        return a
    host, port = srv.address[:2]
    return "%s:%d" % (host, port)


# --- client verbs -------------------------------------------------------------------

def _client(args):
    from .client import Client
    try:
        return Client(args.addr, aname=args.aname, version=args.version,
                      uname=args.uname, msize=args.msize)
    except (OSError, ValueError) as ex:
        _die("cannot connect to %s: %s" % (args.addr, _errtext(ex)))


def _errtext(ex):
    if isinstance(ex, OSError) and ex.strerror:
        return ex.strerror
    return str(ex)


def _fmt_mode(mode):
    import stat as S
    return S.filemode(mode)


def _owner(st):
    from .server.users import USERS
    u = st.uid if st.uid else (USERS.uname(st.st_uid) if st.st_uid is not None else "?")
    g = st.gid if st.gid else (USERS.gname(st.st_gid) if st.st_gid is not None else "?")
    return u, g


def _fmt_long(st, name):
    import time
    t = time.strftime("%b %d %H:%M", time.localtime(st.st_mtime or 0))
    u, g = _owner(st)
    nlink = st.st_nlink if st.st_nlink is not None else 1
    return "%s %3d %-8s %-8s %10d %s %s" % (_fmt_mode(st.st_mode), nlink, u, g, st.st_size or 0,
                                            t, name)


def cmd_ls(args):
    c = _client(args)
    rc = 0
    for path in args.path or ["/"]:
        try:
            st = c.stat(path)
            import stat as S
            if S.S_ISDIR(st.st_mode) and not args.d:
                ents = sorted(c.listdir(path))
                for name in ents:
                    if name in (".", ".."):
                        continue
                    if args.l:
                        try:
                            cst = c.stat(path.rstrip("/") + "/" + name)
                        except OSError as ex:
                            sys.stderr.write("nine: %s/%s: %s\n" % (path, name, _errtext(ex)))
                            rc = 1
                            continue
                        print(_fmt_long(cst, name))
                    else:
                        print(name)
            else:
                print(_fmt_long(st, path) if args.l else path)
        except OSError as ex:
            sys.stderr.write("nine: %s: %s\n" % (path, _errtext(ex)))
            rc = 1
    sys.stdout.flush()
    c.close()
    return rc


def cmd_read(args):
    c = _client(args)
    out = sys.stdout.buffer
    try:
        with c.open(args.path, "r") as f:
            while True:
                data = f.read(1 << 20)
                if not data:
                    break
                out.write(data)
                out.flush()
    except OSError as ex:
        _die("%s: %s" % (args.path, _errtext(ex)))
    finally:
        c.close()
    return 0


def cmd_write(args):
    c = _client(args)
    inp = sys.stdin.buffer
    try:
        with c.open(args.path, "a" if args.append else "w", perm=0o644) as f:
            while True:
                data = inp.read1(1 << 20) if hasattr(inp, "read1") else inp.read(1 << 20)
                if not data:
                    break
                f.write(data)
    except OSError as ex:
        _die("%s: %s" % (args.path, _errtext(ex)))
    finally:
        c.close()
    return 0


def _gopen(args, mode):
    from .group.service import parse_agg
    c = _client(args)
    members = None
    if args.member:
        members = []
        for m in args.member:
            name, sep, path = m.partition("=")
            if not sep:
                _die("--member wants NAME=PATH, not %r" % m, 2)
            members.append((name, path))
    elif not args.path:
        _die("give a group directory or --member NAME=PATH ...", 2)
    agg, params = "concat", {}
    if getattr(args, "agg", None):
        try:
            agg, params = parse_agg(args.agg.split())
        except (ValueError, LookupError, TypeError) as ex:
            _die("--agg: %s" % ex, 2)
    sync = "nowait" if getattr(args, "follow", False) else \
        ("timeout" if args.timeout else "all")
    try:
        g = c.gopen(args.path, mode, aggregator=agg, sync=sync, timeout=args.timeout,
                    members=members, **params)
    except (OSError, ValueError) as ex:
        _die("%s: %s" % (args.path or "group", _errtext(ex)))
    if args.offset:
        g.lseek(args.offset)
    return c, g


def _gstatus(g, args):
    if g.failed and not args.quiet:
        from .group.aggregate import fold
        by = {}
        for m, r in g.failed.items():
            by.setdefault(r, set()).add(m)
        for r, ms in sorted(by.items(), key=lambda rm: -len(rm[1])):
            sys.stderr.write("nine: %s: %s\n" % (fold(ms), r))
    return 1 if g.failed else 0


def cmd_gread(args):
    c, g = _gopen(args, "r")
    out = sys.stdout.buffer
    try:
        if args.follow:
            for chunk in g.stream():
                out.write(chunk)
                out.flush()
            return 0
        data = g.read(args.count)
        # the rendered result has the failures already (errors: ... lines)
        out.write(data)
        out.flush()
        return 1 if g.failed else 0
    except OSError as ex:
        _die(_errtext(ex))
    finally:
        g.close()
        c.close()


def cmd_gwrite(args):
    c, g = _gopen(args, "w")
    try:
        data = args.data.encode() if args.data is not None else sys.stdin.buffer.read()
        g.write(data)
        return _gstatus(g, args)
    except OSError as ex:
        _die(_errtext(ex))
    finally:
        g.close()
        c.close()


def cmd_stat(args):
    c = _client(args)
    try:
        st = c.stat(args.path)
    except OSError as ex:
        _die("%s: %s" % (args.path, _errtext(ex)))
    u, g = _owner(st)
    print("name %s" % (st.name or args.path.rstrip("/").rsplit("/", 1)[-1] or "/"))
    print("mode %s %o" % (_fmt_mode(st.st_mode), st.st_mode))
    print("size %d" % (st.st_size or 0))
    print("uid %s" % u)
    print("gid %s" % g)
    if st.st_nlink is not None:
        print("nlink %d" % st.st_nlink)
    print("mtime %d" % int(st.st_mtime or 0))
    print("qid %s %d %d" % ({0x80: "dir", 0x02: "symlink"}.get(st.qid.type, "file"),
                            st.qid.version, st.qid.path))
    c.close()
    return 0


def _parse_children(specs):
    out = []
    for spec in specs or []:
        name, sep, addr = spec.partition("=")
        if not sep or not name or not addr:
            _die("bad --child %r (want NAME=ADDR)" % spec)
        out.append((name, addr))
    return out


def _final_text(args):
    if getattr(args, "final_text", None):
        return args.final_text
    if getattr(args, "final", None):
        try:
            with open(args.final) as f:
                return f.read()
        except OSError as ex:
            _die("cannot read FiNAL file %s: %s" % (args.final, _errtext(ex)))
    return None


def _final_error(args, ex):
    where = args.final or "FiNAL rules"
    _die("%s: %s" % (where, ex), 2)


def cmd_mux(args):
    from .final import FinalError
    from .mux.mux import Mux
    children = _parse_children(args.child)
    if not children:
        _die("a mux needs at least one --child NAME=ADDR")
    try:
        mux = Mux(children, final_text=_final_text(args), child_aname=args.child_aname,
                  msize=args.msize)
    except FinalError as ex:
        _final_error(args, ex)
    except ValueError as ex:
        _die(str(ex), 2)
    return _serve_until_done(mux.server, args.listen or [DEFAULT_ADDR], args.quiet,
                             "mux of %d children" % len(children), args)


def _serve_forever():
    """Serve until Ctrl-C (SIGINT) or SIGTERM, then return (quietly: the callers clean
    up in their `finally`).  A second Ctrl-C or SIGTERM then (an impatient user; `timeout`
    signals the process and its group, so twice) does not cut that clean-up short: the
    callers stop their children and remove their temporary directories, then exit."""
    import signal
    import gevent
    import gevent.event
    done = gevent.event.Event()
    handlers = [gevent.signal_handler(sig, done.set) for sig in (signal.SIGINT, signal.SIGTERM)]
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for h in handlers:
            h.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _write_address(args, srv, a):
    """--address-file: write the address really listened on (port 0 picks a free one),
    atomically, for whoever started this server (nine tree)."""
    path = getattr(args, "address_file", None)
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(_fmt_listen(srv, a) + "\n")
    os.rename(tmp, path)


def _serve_until_done(server, addrs, quiet, what, args=None):
    for a in addrs:
        try:
            srv = server.listen(a)
        except (OSError, ValueError) as ex:
            _die("cannot listen on %s: %s" % (a, ex))
        if not quiet:
            sys.stderr.write("nine: serving %s on %s\n" % (what, _fmt_listen(srv, a)))
        _write_address(args, srv, a)
    sys.stderr.flush()
    _serve_forever()
    return 0


def cmd_tree(args):
    from .final import FinalError
    from .mux.tree import Topology, Tree
    try:
        if args.topology:
            topo = Topology.load(args.topology)
            if args.listen:
                topo.listen = args.listen
            if args.aggregators:
                topo.aggregators = args.aggregators
        else:
            topo = Topology.local(args.leaves, fanout=args.fanout,
                                  listen=args.listen or DEFAULT_ADDR,
                                  leaf_export=args.leaf_export,
                                  final_root=_final_text(args),
                                  aggregators=args.aggregators)
    except (OSError, ValueError) as ex:
        _die(str(ex), 2)
    tree = Tree(topo, quiet=not args.verbose)
    try:
        try:
            root = tree.start()
        except FinalError as ex:
            _final_error(args, ex)
        except (OSError, RuntimeError, ValueError) as ex:
            _die("cannot start the tree: %s" % ex)
        try:
            srv = root.server.listen(topo.listen)
        except (OSError, ValueError) as ex:
            _die("cannot listen on %s: %s" % (topo.listen, ex))
        addr = _fmt_listen(srv, topo.listen)
        print("nine tree: %d leaves, %d levels of muxes, root on %s" % (
            len(topo.leaves), len(tree.levels), addr))
        print(tree.describe())
        if args.once:
            return 0
        sys.stdout.flush()
        _serve_forever()        # then its servers stop and its scratch dir goes
        return 0
    finally:
        tree.stop()


DEMO_FILES = {
    "README": "This is nine's demo tree, served over 9P.\n",
    "hello.txt": "hello from {node}\n",
    "etc/motd": "All the world's a file.\n",
    "data/numbers": "".join("%d\n" % i for i in range(1, 11)),
}


def cmd_demo(args):
    """Start a small local tree (8 leaf servers, two levels of muxes) with a few files on
    every leaf, show it through the root, and keep serving until interrupted (--once:
    exit after the tour)."""
    import gevent
    import tempfile
    from .mux.tree import Topology, Tree
    made_dir = not args.dir
    root_dir = args.dir or tempfile.mkdtemp(prefix="nine-demo-")
    topo = Topology.local(args.leaves, fanout=args.fanout, listen=args.listen,
                          leaf_export=root_dir)
    for name, _ in topo.leaves:
        for rel, text in DEMO_FILES.items():
            path = os.path.join(root_dir, name, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(text.replace("{node}", name))
    tree = Tree(topo)
    try:
        try:
            mux = tree.start()
            srv = mux.server.listen(args.listen)
        except (OSError, RuntimeError, ValueError) as ex:
            _die("cannot start the demo tree: %s (try --listen 127.0.0.1:0)" % ex)
        addr = _fmt_listen(srv, args.listen)
        print("nine %s: %d leaf servers, %d levels of muxes, root on %s" % (
            __version__, len(topo.leaves), len(tree.levels), addr))
        print(tree.describe())
        print("leaf files under %s%s\n" % (
            root_dir, " (removed at exit; --dir DIR keeps them)" if made_dir else ""))
        first = topo.leaves[0][0]

        def tour():
            from .client import Client
            c = Client(addr)
            steps = [
                ("nine ls -a %s /" % addr, lambda: c.listdir("/")),
                ("nine ls -a %s /nodes" % addr, lambda: c.listdir("/nodes")),
                ("nine ls -a %s /host/load" % addr, lambda: c.listdir("/host/load")),
                ("nine read -a %s /host/load/%s" % (addr, first),
                 lambda: c.read_file("/host/load/%s" % first)),
                ("nine ls -a %s /proc/1" % addr, lambda: c.listdir("/proc/1")),
                ("nine read -a %s /nodes/%s/files/hello.txt" % (addr, first),
                 lambda: c.read_file("/nodes/%s/files/hello.txt" % first)),
                ("mkdir /groups/motd; ln -s ../../nodes/NODE/files/etc/motd "
                 "/groups/motd/NODE   # for each of %d leaves" % len(topo.leaves),
                 lambda: make_group("motd", "etc/motd")),
                ("nine gread -a %s /groups/motd --agg equiv" % addr,
                 lambda: c.gopen("/groups/motd", aggregator="equiv").read()),
                ("nine gread -a %s /groups/hello   # made the same way" % addr,
                 lambda: (make_group("hello", "hello.txt"),
                          c.gopen("/groups/hello").read())[1]),
                ("nine read -a %s -A mux /status" % addr, None),
            ]

            def make_group(name, rel):
                if name not in c.listdir("/groups"):
                    c.mkdir("/groups/" + name)
                    for leaf, _ in topo.leaves:
                        c.symlink("../../nodes/%s/files/%s" % (leaf, rel),
                                  "/groups/%s/%s" % (name, leaf))
                return b""
            for cmd, fn in steps:
                print("$ " + cmd)
                if fn is None:
                    m = Client(addr, aname="mux")
                    out = m.read_file("/status")
                    m.close()
                else:
                    out = fn()
                if isinstance(out, bytes):
                    sys.stdout.write(out.decode(errors="replace"))
                else:
                    print(" ".join(sorted(out)))
                print()
            c.close()
            host, _, port = addr.rpartition(":")
            print("Mount the root from Linux (needs 9p in the kernel):")
            print("  mount -t 9p -o trans=tcp,port=%s,version=9p2000.L %s /mnt" % (port, host))
            print("  mount -t 9p -o trans=tcp,port=%s,aname=nodes/%s/files %s /mnt/%s\n"
                  % (port, first, host, first))
            sys.stdout.flush()

        def safe_tour():
            try:
                tour()
            except BrokenPipeError:     # `nine demo | head`: the reader left
                return "pipe"
        try:
            if gevent.spawn(safe_tour).get() == "pipe":
                return 0
        except Exception as ex:
            _die("demo failed: %s" % ex)
        if args.once:
            return 0
        print("Serving until Ctrl-C.")
        sys.stdout.flush()
        _serve_forever()
        return 0
    finally:
        tree.stop()
        if made_dir:                  # a temporary directory of our own: not left behind
            import shutil
            shutil.rmtree(root_dir, ignore_errors=True)


def _add_client_opts(p):
    p.add_argument("-a", dest="addr", default=os.environ.get("NINE_ADDR", DEFAULT_ADDR),
                   help="server address: HOST:PORT, tcp!HOST!PORT or unix!PATH "
                        "(default $NINE_ADDR or %s)" % DEFAULT_ADDR)
    p.add_argument("-A", dest="aname", default="", help="attach name (aname)")
    p.add_argument("-V", dest="version", default="9P2000.L",
                   choices=["9P2000", "9P2000.u", "9P2000.L"], help="protocol dialect")
    p.add_argument("-u", dest="uname", default=None, help="user name to attach as")
    p.add_argument("-m", dest="msize", type=int, default=1 << 20 | 24, help="msize")


def make_parser():
    p = argparse.ArgumentParser(prog="nine", description="nine: a 9P file-server network")
    p.add_argument("--version", action="version", version="nine %s" % __version__)
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

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
    s.add_argument("--read-only", action="store_true", help="refuse every change")
    s.add_argument("--squash", metavar="USER", help="act as USER for everyone")
    s.add_argument("--msize", type=int, default=1024 * 1024 + 24, help="largest msize")
    s.add_argument("--quiet", "-q", action="store_true")
    s.add_argument("--address-file", help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("mux", help="merge children's trees into one (FiNAL rules)")
    m.add_argument("--listen", "-l", action="append", help="default %s" % DEFAULT_ADDR)
    m.add_argument("--child", "-c", action="append", metavar="NAME=ADDR",
                   help="a child server (repeatable)")
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
    m.set_defaults(func=cmd_mux)

    t = sub.add_parser("tree", help="start a tree of muxes over leaf servers (TBON)")
    t.add_argument("--topology", "-t", metavar="FILE", help="topology file (see "
                   "nine/mux/tree.py); without it, local leaves on loopback")
    t.add_argument("--leaves", "-n", type=int, default=8, help="local leaves (default 8)")
    t.add_argument("--fanout", "-f", type=int, default=4, help="children per mux (default 4)")
    t.add_argument("--listen", "-l", help="the root's address (default %s)" % DEFAULT_ADDR)
    t.add_argument("--leaf-export", metavar="DIR", help="leaf NAME exports DIR/NAME as files/")
    t.add_argument("--aggregators", metavar="FILES", help="custom group aggregators for "
                   "every server and mux of the tree (Python files or modules)")
    t.add_argument("--final", metavar="FILE", help="FiNAL rules of the root")
    t.add_argument("--final-text", metavar="TEXT", help="FiNAL rules of the root, inline")
    t.add_argument("--once", action="store_true", help="start, print, stop (a check)")
    t.set_defaults(func=cmd_tree)

    d = sub.add_parser("demo", help="start a small local tree (8 leaves, 2 levels of muxes) "
                       "and show it")
    d.add_argument("--listen", "-l", default=DEFAULT_ADDR, help="the root's address "
                   "(default %s)" % DEFAULT_ADDR)
    d.add_argument("--leaves", "-n", type=int, default=8)
    d.add_argument("--fanout", "-f", type=int, default=4)
    d.add_argument("--dir", help="directory for the leaves' files (default: a new temp dir)")
    d.add_argument("--once", action="store_true", help="exit after showing the tree")
    d.set_defaults(func=cmd_demo)

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
    return p


def main(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="nine: %(message)s")
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    if getattr(args, "aggregators", None):
        from .group.aggregate import AggregatorError, load
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


if __name__ == "__main__":
    sys.exit(main())
