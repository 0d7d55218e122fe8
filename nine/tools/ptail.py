"""nine ptail: tail -f of one file on many hosts, through a tree's group service.

    nine ptail -f -w 'node[1-64]' /var/log/app.log
    nine ptail -f --fold 1 --grep ERROR app.log

PATH is the path on each host (nine.tools.common finds it in the root's name space: an
absolute path through the host's `exports` file, a relative one in its export).  The
hosts: -w NODESET, -x NODESET, -g GROUP, as clush's (default: every host under /nodes).

With -f the files are one group read as a tail stream (nine.group: `sync nowait` at
offset nine.group.gather.TAIL + N): the muxes right above the leaves (or the leaves)
follow the hosts' files, and the root gets one stream of new lines, not one poll per
host.  Each host's file starts N lines before its end (-n, default 10: the follower
finds that offset reading the file backwards from its size, gather.tail_start, and
reads on from it, so the first lines and the new ones come from one reader, with no
gap and nothing twice).  Rotation is followed there,
at the group level (nine.group.execute, as tail -F): a file that got shorter than what
was read (truncated, as logrotate's copytruncate does) is read again from its start; a
path that names another file now (renamed away and made anew) is opened again and read
from its start.  -f and -F are the same.

Without -f: the last N lines of each host, then exit (status 1 if a host failed or did
not answer in --timeout seconds: named on stderr, `nine ptail: HOST: REASON`).  That
is one group read with the `tail` aggregator (nine.group.textagg.Tail), which reads
each file backwards from its end at the leaf, so a log of any size costs the bytes of
its last N lines; a last line without its newline is shown; --grep selects among those
lines.

Output: `HOST: line` for each line, in the order the lines arrive.  --fold SECONDS: a
line that several hosts print within SECONDS of its first arrival is printed once, when
that window closes, or as soon as every host followed (not gone) has sent it:
`node[1-64] (64): line`.  --grep PATTERN: only the matching lines
(grep's basic syntax; -E extended, -i ignoring case, -v the others), selected by the
`grep` aggregator where the files are followed, so that only they travel up the tree.
(Pieces of one host that arrive together and match the same lines are then shown once:
the grep aggregator folds equal results.)

Hosts that go away: a host whose file cannot be read (its leaf down, the file missing)
is announced on stderr as `nine ptail: node7 gone: REASON`, and as `nine ptail: node7
back` once it is followed again, from where it stopped (a new file from its start).  A
host down from the start is taken to export what most hosts export, and is followed
(its last N lines first) once it is up.
"""

import argparse
import sys
import time
from collections import Counter

from .common import (ToolError, add_options, connect, errtext, headline, ns_path,
                     read_exports, select_hosts)

DEFAULT_LINES = 10


def make_parser(prog="nine ptail"):
    p = argparse.ArgumentParser(prog=prog, description="tail (-f) of one file on many "
                                "hosts of a nine tree, as one group stream "
                                "(docs/tools.md)")
    add_options(p)
    p.add_argument("-f", "-F", "--follow", dest="follow", action="store_true",
                   help="follow the files as they grow, through rotations (tail -F)")
    p.add_argument("-n", "--lines", type=int, default=DEFAULT_LINES, metavar="N",
                   help="the last N lines of each host first (default %d)" % DEFAULT_LINES)
    p.add_argument("--grep", metavar="PATTERN", help="only the lines that match "
                   "(selected where the files are followed)")
    p.add_argument("-E", dest="extended", action="store_true",
                   help="--grep PATTERN is an extended regular expression")
    p.add_argument("-i", dest="icase", action="store_true", help="--grep ignoring case")
    p.add_argument("-v", dest="invert", action="store_true",
                   help="--grep: the lines that do not match")
    p.add_argument("--fold", type=float, metavar="SECONDS",
                   help="print a line that several hosts print within SECONDS once, "
                        "under the hosts' folded names")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="without -f: wait this long at most for the hosts (default 10)")
    p.add_argument("path", metavar="PATH", help="the file, as a path on each host")
    return p


def verb(args):
    """The `nine ptail` verb (its arguments parsed here, not by nine.cli)."""
    return main(args.argv)


def main(argv=None, prog="nine ptail"):
    """nine ptail (argv: the arguments after the command's name)."""
    args = make_parser(prog).parse_args(argv)
    try:
        if args.lines < 0:
            raise ToolError("-n wants a number of lines >= 0")
        if args.fold is not None and args.fold <= 0:
            raise ToolError("--fold wants seconds > 0")
        return run(args, prog)
    except ToolError as ex:
        sys.stderr.write("%s: %s\n" % (prog, ex))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


# --- output -----------------------------------------------------------------------------

class Folder:
    """--fold: lines held for `window` seconds from their first arrival, each printed
    once for every host that sent it meanwhile (a host that sends it again opens a new
    window).  A line that every followed host has sent (expected(): the hosts not gone)
    needs no more waiting: it is printed at once, in order.  Entries print oldest first,
    and a host joins an entry only if it is newer than the host's own latest entry, so
    that no host's lines are ever reordered (a line still waiting holds back the later
    ones)."""

    def __init__(self, window, write, expected=None):
        self.window = window
        self.write = write
        self.expected = expected
        self.pending = []         # [first arrival, line, hosts, complete, seq], oldest first
        self.by_line = {}         # line -> its pending entries
        self.seq = 0
        self.last = {}            # host -> seq of its latest entry

    def add(self, host, line, now):
        after = self.last.get(host, 0)
        for e in self.by_line.get(line, ()):
            if host not in e[2] and e[4] > after:
                e[2].add(host)
                break
        else:
            self.seq += 1
            e = [now, line, {host}, False, self.seq]
            self.pending.append(e)
            self.by_line.setdefault(line, []).append(e)
        self.last[host] = e[4]
        if self.expected is not None and not e[3]:
            want = self.expected()
            e[3] = bool(want) and e[2] >= want

    def flush(self, now=None):
        """Print the entries whose window closed or that every host sent (now None: all
        of them)."""
        while self.pending and (now is None or self.pending[0][3]
                                or now - self.pending[0][0] >= self.window):
            e = self.pending.pop(0)
            same = self.by_line[e[1]]
            same.remove(e)
            if not same:
                del self.by_line[e[1]]
            self.write(headline(e[2]).encode() + b": " + e[1] + b"\n")


class Tail:
    """The stream's batches as lines and host events."""

    def __init__(self, hosts, grep, fold, out=None, err=None, prog="nine ptail"):
        self.hosts = hosts
        self.prog = prog
        self.grep = grep
        self.out = out or sys.stdout.buffer
        self.err = err or sys.stderr
        self.gone = {}            # host -> why
        self.seen = set()         # hosts that answered once
        self.folder = Folder(fold, self.out.write, self.followed) if fold else None

    def followed(self):
        """The hosts whose lines are awaited now (not gone)."""
        return set(self.hosts).difference(self.gone)

    def pieces(self, value):
        """(host, bytes) of a batch's value (concat's, or grep's classes)."""
        if not value:
            return []
        if not self.grep:
            return list(value.items())
        return [(h, text) for (_, text, _), hs in value.items() for h in sorted(hs)]

    def batch(self, p):
        now = time.monotonic()
        for why, hs in sorted(p.errors.items()):
            for h in sorted(hs):
                if self.gone.get(h) != why:
                    self.gone[h] = why
                    self.err.write("%s: %s gone: %s\n" % (self.prog, h,
                                                          " ".join(why.split())))
        for h, data in self.pieces(p.value):
            self.seen.add(h)
            if self.gone.pop(h, None) is not None:
                self.err.write("%s: %s back\n" % (self.prog, h))
            for line in data.splitlines():
                if self.folder is not None:
                    self.folder.add(h, line, now)
                else:
                    self.out.write(h.encode() + b": " + line + b"\n")
        if self.folder is not None:
            self.folder.flush(now)          # the lines every host has sent: at once
        self.err.flush()
        self.out.flush()

    def accounted(self):
        return self.seen | set(self.gone) >= set(self.hosts)


def _flusher(tail):
    import gevent
    step = min(0.1, tail.folder.window / 4) or 0.05
    while True:
        gevent.sleep(step)
        tail.folder.flush(time.monotonic())
        tail.out.flush()


def members(client, args, hosts):
    """([(host, name-space path)], {host: why not}) of PATH on the hosts.  A host that
    does not answer now (down) is taken to export what most hosts export: it is
    followed once it is back."""
    tables, down = read_exports(client, hosts, args.nodes_dir)
    if down and tables:
        common = Counter(repr(t) for t in tables.values()).most_common(1)[0][0]
        usual = next(t for t in tables.values() if repr(t) == common)
        tables.update((h, usual) for h in down)
    failed = {h: why for h, why in down.items() if h not in tables}
    out = []
    for h in hosts:
        if h in failed:
            continue
        try:
            out.append((h, ns_path(h, args.path, tables.get(h), args.nodes_dir)))
        except LookupError as ex:
            failed[h] = str(ex)
    return out, failed


def run(args, prog="nine ptail"):
    from ..client import NineError
    from ..group.gather import TAIL
    c = connect(args, blocking=False)
    try:
        hosts, unknown = select_hosts(c, args)
        files, failed = members(c, args, hosts)
        failed.update((h, "no such host") for h in unknown)
        for h, why in sorted(failed.items()):
            sys.stderr.write("%s: %s: %s\n" % (prog, h, why))
        if not files:
            raise ToolError("no host to follow %s on" % args.path)
        agg, params = "concat", {}
        if args.grep is not None:
            from ..group.textagg import text_param
            agg = "grep"
            params = {"pattern": text_param(args.grep), "icase": args.icase,
                      "invert": args.invert,
                      "syntax": "extended" if args.extended else "basic"}
        if not args.follow:
            return 1 if _last(c, files, args, agg, params, prog) or failed else 0
        g = c.gopen(None, "r", members=files, aggregator=agg, sync="nowait", **params)
        g.lseek(TAIL + args.lines)
        tail = Tail([h for h, _ in files], args.grep is not None, args.fold, prog=prog)
        try:
            return _follow(g, tail)
        finally:
            g.close()
    except NineError as ex:
        raise ToolError("the root at %s: %s" % (c.conn, errtext(ex)))
    finally:
        c.close()


def _follow(g, tail):
    import gevent
    flusher = gevent.spawn(_flusher, tail) if tail.folder is not None else None
    try:
        for _ in g.stream():
            tail.batch(g.last)
    finally:
        if flusher is not None:
            flusher.kill()
            tail.folder.flush()
            tail.out.flush()
    return 0


def _last(c, files, args, agg, params, prog):
    """Without -f: one group read with the `tail` aggregator, which reads each host's
    file from its end at the leaf (nine.group.textagg.Tail: any size, the file as it
    was when the read came, a last line without its newline included); --grep selects
    among those lines here, as the grep aggregator does.  The hosts that fail, or do
    not answer in --timeout seconds, are named on stderr.  True when a host failed."""
    g = c.gopen(None, "r", members=files, aggregator="tail", sync="timeout",
                timeout=args.timeout, n=args.lines)
    try:
        p = g.read_partial()
    finally:
        g.close()
    from ..group.aggregate import get
    sel = get(agg, **params) if args.grep is not None else None
    by_host = {h: text for text, hs in (p.value or {}).items() for h in hs}
    out = sys.stdout.buffer
    fold = Folder(args.fold, out.write) if args.fold else None
    for h, _ in files:
        text = by_host.get(h)
        if not text:
            continue
        if sel is not None:
            text = sel.grep(text)[1]
        for line in text.splitlines():
            if fold is not None:
                fold.add(h, line, 0.0)
            else:
                out.write(h.encode() + b": " + line + b"\n")
    if fold is not None:
        fold.flush()
    out.flush()
    for why, hs in sorted(p.errors.items()):
        for h in sorted(hs):
            sys.stderr.write("%s: %s: %s\n" % (prog, h, " ".join(why.split())))
    sys.stderr.flush()
    return bool(p.errors)
