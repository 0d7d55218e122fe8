"""`nine group`: make, list and remove the groups of a tree's root (/groups).

    nine group make logs -w 'node[1-64]' /var/log/app.log   # a member per host
    nine group ls                    # the groups: members, aggregator, owner's settings
    nine group ls logs               # its members and their files
    nine group rm logs

A group made from a node set and a path on each host is a directory /groups/NAME with
one symlink per host, named after it, to the host's file in the root's name space
(nine.tools.common maps the path); `nine gread /groups/NAME`, `nine pgrep -g NAME` and
`cat` through a kernel mount read it.
"""

import posixpath
import sys

from ..tools.common import (ToolError, connect, errtext, headline, host_failure, ns_path,
                            read_exports, select_hosts)

GROUPS = "/groups"


def _die(msg, code=1):
    sys.stderr.write("nine group: %s\n" % msg)
    return code


def cmd_group(args):
    try:
        return {"make": _make, "ls": _ls, "rm": _rm}[args.action](args)
    except ToolError as ex:
        return _die(str(ex), 2)


def _make(args):
    """mkdir /groups/NAME, then NAME/HOST -> the host's file (relative links, so that
    they also resolve through a kernel mount of the root)."""
    if not args.hosts and not args.group:
        raise ToolError("make: name the hosts (-w NODESET or -g GROUP)")
    c = connect(args)
    try:
        hosts, unknown = select_hosts(c, args)
        tables, failed = read_exports(c, hosts, args.nodes_dir)
        gdir = posixpath.join(GROUPS, args.name)
        try:
            c.mkdir(gdir)
            if args.agg:
                c.write_file(posixpath.join(gdir, "ctl"), ("agg %s\n" % args.agg).encode())
        except OSError as ex:
            return _die("%s: %s" % (gdir, errtext(ex)))
        bad = {}
        made = 0
        for h in hosts:
            if h in failed:
                bad.setdefault(host_failure(failed[h])[1], set()).add(h)
                continue
            try:
                target = ns_path(h, args.path, tables.get(h), args.nodes_dir)
                c.symlink(posixpath.relpath(target, gdir), posixpath.join(gdir, h))
                made += 1
            except LookupError as ex:
                bad.setdefault("%s: %s" % (args.path, ex), set()).add(h)
            except OSError as ex:
                bad.setdefault(errtext(ex), set()).add(h)
        if unknown:
            bad.setdefault("no such host", set()).update(unknown)
        for reason, hs in sorted(bad.items(), key=lambda rh: -len(rh[1])):
            sys.stderr.write("nine group: %s: %s\n" % (reason, headline(hs)))
        print("%s: %d members" % (gdir, made))
        return 1 if bad else 0
    finally:
        c.close()


def _settings(c, gdir):
    """{key: value} of a group's ctl (its settings as ctl lines)."""
    out = {}
    for line in c.read_file(posixpath.join(gdir, "ctl")).decode().splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return out


def _ls(args):
    c = connect(args)
    rc = 0
    try:
        if args.name:
            from ..client.group import members_of
            for name in args.name:
                gdir = posixpath.join(GROUPS, name)
                try:
                    for label, path in members_of(c, gdir):
                        print("%s -> %s" % (label, path))
                except OSError as ex:
                    rc = _die("%s: %s" % (gdir, errtext(ex)))
            return rc
        from ..client.group import GROUP_FILES
        from ..group.aggregate import natural_key
        for e in sorted(c.readdir(GROUPS), key=lambda e: natural_key(e.name)):
            if not e.is_dir():
                continue            # clone, features
            gdir = posixpath.join(GROUPS, e.name)
            try:
                s = _settings(c, gdir)
                members = [m for m in c.listdir(gdir) if m not in GROUP_FILES]
            except OSError as ex:
                rc = _die("%s: %s" % (gdir, errtext(ex)))
                continue
            print("%-16s %4s members  agg %s  sync %s  %s" % (
                e.name, s.get("members", len(members)), s.get("agg", "?"),
                s.get("sync", "?"), headline(members) if members else "-"))
        return rc
    finally:
        c.close()


def _rm(args):
    c = connect(args)
    rc = 0
    try:
        for name in args.name:
            try:
                c.remove(posixpath.join(GROUPS, name))
            except OSError as ex:
                rc = _die("%s: %s" % (name, errtext(ex)))
        return rc
    finally:
        c.close()

