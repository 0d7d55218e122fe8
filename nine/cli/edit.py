"""The verbs that change names: mkdir, ln, rm, rmdir (as the shell commands)."""

import errno
import posixpath
import sys

from .common import _client, _errtext


def _each(args, paths, fn):
    """fn(client, path) for each path; failures named on stderr; status 1 if any."""
    c = _client(args)
    rc = 0
    try:
        for path in paths:
            try:
                fn(c, path)
            except OSError as ex:
                sys.stderr.write("nine %s: %s: %s\n" % (args.cmd, path, _errtext(ex)))
                rc = 1
    finally:
        c.close()
    return rc


def cmd_mkdir(args):
    def mkdir(c, path):
        if not args.p:
            c.mkdir(path, args.mode)
            return
        # -p: the directories that exist are passed (a union of a tree's root refuses
        # mkdir with EPERM even for a name it has, so each is looked at first)
        names = [n for n in path.split("/") if n]
        for i in range(1, len(names) + 1):
            sub = "/" + "/".join(names[:i])
            try:
                if c.stat(sub).is_dir():
                    continue
            except FileNotFoundError:
                pass
            c.mkdir(sub, args.mode)
    return _each(args, args.path, mkdir)


def cmd_ln(args):
    """ln -s TARGET LINK (a symbolic link), ln TARGET LINK (a hard link); LINK an
    existing directory: the link is made in it under TARGET's last name."""
    def ln(c, link):
        try:
            if c.stat(link).is_dir():
                link = posixpath.join(link, posixpath.basename(args.target.rstrip("/")))
        except FileNotFoundError:
            pass
        if args.f:
            try:
                c.remove(link)
            except FileNotFoundError:
                pass
        if args.s:
            c.symlink(args.target, link)
        else:
            c.link(args.target, link)
    return _each(args, [args.link], ln)


def _remove_tree(c, path):
    """rm -r: a directory's entries first (symbolic links are removed, not followed)."""
    for e in c.readdir(path):
        sub = posixpath.join(path, e.name)
        if e.is_dir():
            _remove_tree(c, sub)
        else:
            c.remove(sub)
    c.remove(path)


def cmd_rm(args):
    def rm(c, path):
        try:
            st = c.stat(path)
        except FileNotFoundError:
            if args.f:
                return
            raise
        if st.is_dir():
            if not args.r:
                raise OSError(errno.EISDIR, "Is a directory (rm -r removes it)")
            _remove_tree(c, path)
        else:
            c.remove(path)
    return _each(args, args.path, rm)


def cmd_rmdir(args):
    def rmdir(c, path):
        if not c.stat(path).is_dir():
            raise OSError(errno.ENOTDIR, "Not a directory")
        c.remove(path)
    return _each(args, args.path, rmdir)
