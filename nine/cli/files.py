"""The file verbs in the style of plan9port's 9p(1): ls, read, write, stat."""

import sys

from .common import _client, _die, _errtext


def _fmt_mode(mode):
    import stat as S
    return S.filemode(mode)


def _owner(st):
    from ..server.users import USERS
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
