"""The `nine` command: serve, and client verbs in the style of plan9port's 9p(1)."""

import argparse
import errno
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
    if args.ctl or not exports:
        server.exports["ctl"] = SynthFS(ctl_tree(server)).attach
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
    sys.stderr.flush()
    import gevent
    try:
        gevent.wait()
    except KeyboardInterrupt:
        pass
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


def _fmt_long(st, name):
    import time
    t = time.strftime("%b %d %H:%M", time.localtime(st.mtime))
    return "%s %3d %-8s %-8s %10d %s %s" % (_fmt_mode(st.mode), st.nlink, st.uid_name or st.uid,
                                            st.gid_name or st.gid, st.size, t, name)


def cmd_ls(args):
    c = _client(args)
    rc = 0
    for path in args.path or ["/"]:
        try:
            st = c.stat(path)
            import stat as S
            if S.S_ISDIR(st.mode) and not args.d:
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
        with c.open(args.path, "a" if args.append else "w") as f:
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


def cmd_stat(args):
    c = _client(args)
    try:
        st = c.stat(args.path)
    except OSError as ex:
        _die("%s: %s" % (args.path, _errtext(ex)))
    print("name %s" % st.name)
    print("mode %s %o" % (_fmt_mode(st.mode), st.mode))
    print("size %d" % st.size)
    print("uid %s" % (st.uid_name or st.uid))
    print("gid %s" % (st.gid_name or st.gid))
    print("nlink %s" % st.nlink)
    print("mtime %d" % st.mtime)
    print("qid %s %d %d" % ({0x80: "dir", 0x02: "symlink"}.get(st.qid.type, "file"),
                            st.qid.version, st.qid.path))
    c.close()
    return 0


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
    s.add_argument("--read-only", action="store_true", help="refuse every change")
    s.add_argument("--squash", metavar="USER", help="act as USER for everyone")
    s.add_argument("--msize", type=int, default=1024 * 1024 + 24, help="largest msize")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_serve)

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
    return p


def main(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="nine: %(message)s")
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
