"""The group verbs: gread and gwrite."""

import errno
import sys

from .common import _client, _die, _errtext


def _gopen(args, mode):
    from ..group.handle import parse_agg
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
    for blocking in (True, False):
        c = _client(args, blocking)
        try:
            g = c.gopen(args.path, mode, aggregator=agg, sync=sync, timeout=args.timeout,
                        members=members, **params)
            break
        except (OSError, ValueError) as ex:
            c.close()
            if blocking and getattr(ex, "errno", None) == errno.EOPNOTSUPP:
                continue    # no group service there: the client does the work, in gevent
            _die("%s: %s" % (args.path or "group", _errtext(ex)))
    if args.offset:
        g.lseek(args.offset)
    return c, g


def _gstatus(g, args):
    if g.failed and not args.quiet:
        from ..group.aggregate import fold
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
