"""nine pgrep: grep on many hosts, the matching done where the files are.

    nine pgrep -w 'node[1-64]' -n ERROR /var/log/app.log
    nine pgrep -r --include '*.conf' -e listen -e bind /etc/nginx
    nine pgrep -g web -c timeout          # the files of group /groups/web

PATH is the path on each host (nine.tools.common says how it is found in the root's
name space).  The files of one PATH are one group read with the `grep` aggregator
(nine.group.textagg): every leaf greps its own file and only the matching lines travel
up; every mux folds identical results, so the root receives each distinct result once
with the set of hosts that gave it.

Output, as clush -b prints `grep` run on every host: each distinct output once under
its hosts (``node[1-64] (64)``), -L: ``host: line`` lines, --diff: the reference output
(clush's rule: the hosts whose grep selected something, the largest set of them), then
every other output as a unified diff against it.  Failures come last on stderr, one line
per reason with its hosts folded: ``timed out: node[7,9] (2)``.  Exit status: 0 when a
host selected a line, 1 when none did, 2 when a host or a file failed (as grep's).

Several PATHs: one group read per file (concurrently).  -r: each PATH is still one
group read, of a directory: every host's leaf walks it itself (the grep aggregator's
`recursive`, nine.group.member.MemberFile.walk: through the member's own node, as the
reader, symbolic links found on the way not followed, as grep -r) and sends up its
output, files named as grep -r names them.  Each file is searched whole, whatever its
size.  Ctrl-C: the reads are given up, asked again
with a one-second deadline, and what arrives is shown, the other hosts named as
interrupted (exit status 130).
"""

import argparse
import sys

from .common import (ToolError, add_options, connect, errtext, group_dir, group_members,
                     headline, host_failure, ns_path, read_exports, root_address,
                     select_hosts)

INTERRUPT_WAIT = 1.0         # Ctrl-C: seconds the reads are asked again for
READ_POOL = 16               # several PATHs: group reads at once


def make_parser(prog="nine pgrep"):
    p = argparse.ArgumentParser(
        prog=prog, add_help=False,
        usage="%(prog)s [OPTIONS] PATTERN [PATH...]  |  %(prog)s [OPTIONS] -e PATTERN "
              "[PATH...]",
        description="grep on many hosts of a nine tree: each host greps its own files "
                    "and the tree folds identical results (docs/tools.md).  "
                    "Hosts are named as with clush and pdsh: -w is the hosts, not "
                    "grep's -w (that is --word-regexp), and -x excludes hosts (grep's -x "
                    "is --line-regexp).")
    p.add_argument("--help", action="help", help="show this help and exit")
    add_options(p)
    p.add_argument("--timeout", type=float, metavar="S", help="hosts that have not "
                   "answered after S seconds are named as timed out")
    m = p.add_argument_group("matching (as grep)")
    m.add_argument("-e", "--regexp", dest="patterns", action="append", metavar="PATTERN",
                   help="a pattern (repeatable)")
    m.add_argument("-f", "--file", dest="pattern_files", action="append", metavar="FILE",
                   help="patterns from FILE (here), one per line")
    syn = m.add_mutually_exclusive_group()
    for flag, name, what in (("-G", "basic", "basic regular expressions (default)"),
                             ("-E", "extended", "extended regular expressions"),
                             ("-F", "fixed", "fixed strings"),
                             ("-P", "perl", "Python's regular expressions (close to Perl's)")):
        syn.add_argument(flag, dest="syntax", action="store_const", const=name, help=what)
    m.add_argument("-i", "-y", "--ignore-case", dest="icase", action="store_true")
    m.add_argument("-v", "--invert-match", dest="invert", action="store_true")
    m.add_argument("--word-regexp", dest="word", action="store_true",
                   help="whole words only (grep -w)")
    m.add_argument("--line-regexp", dest="line", action="store_true",
                   help="whole lines only (grep -x)")
    o = p.add_argument_group("output (as grep)")
    o.add_argument("-n", "--line-number", dest="number", action="store_true")
    o.add_argument("-c", "--count", dest="count", action="store_true")
    o.add_argument("-l", "--files-with-matches", dest="files", action="store_true")
    o.add_argument("-H", "--with-filename", dest="with_name", action="store_const",
                   const=True)
    o.add_argument("-h", "--no-filename", dest="with_name", action="store_const",
                   const=False)
    o.add_argument("-A", "--after-context", dest="after", type=int, default=0, metavar="N")
    o.add_argument("-B", "--before-context", dest="before", type=int, default=0,
                   metavar="N")
    o.add_argument("-C", "--context", dest="context", type=int, metavar="N")
    o.add_argument("-q", "--quiet", action="store_true", help="no output: the exit "
                   "status only")
    o.add_argument("-s", "--no-messages", dest="silent", action="store_true",
                   help="no messages about files that cannot be read")
    o.add_argument("-r", "--recursive", action="store_true",
                   help="the files under each directory PATH")
    o.add_argument("--include", action="append", metavar="GLOB", help="-r: only files "
                   "whose name matches GLOB")
    o.add_argument("--exclude", action="append", metavar="GLOB", help="-r: not the files "
                   "whose name matches GLOB")
    h = p.add_argument_group("gathering (as clush)")
    mode = h.add_mutually_exclusive_group()
    mode.add_argument("-b", dest="mode", action="store_const", const="gather",
                      help="identical outputs once, under their hosts (default)")
    mode.add_argument("-L", dest="mode", action="store_const", const="lines",
                      help="`host: line` lines, host by host")
    mode.add_argument("--diff", dest="mode", action="store_const", const="diff",
                      help="the reference output, then the others as unified diffs")
    p.add_argument("words", nargs="*", metavar="PATTERN PATH", help=argparse.SUPPRESS)
    return p


def grep_params(opts, patterns):
    """The grep aggregator's parameters of the options (less file and with_name)."""
    from ..group.textagg import text_param
    before = opts.before if opts.context is None else opts.context
    after = opts.after if opts.context is None else opts.context
    params = {"pattern": text_param("\n".join(patterns)), "syntax": opts.syntax or "basic",
              "icase": opts.icase, "invert": opts.invert, "word": opts.word,
              "line": opts.line, "number": opts.number, "count": opts.count,
              "files": opts.files, "before": before, "after": after,
              "recursive": opts.recursive, "quiet": opts.quiet,
              "no_name": opts.recursive and opts.with_name is False}
    if opts.recursive:
        for key in ("include", "exclude"):
            globs = getattr(opts, key)
            if globs:
                params[key] = text_param("\n".join(globs))
    return {k: v for k, v in params.items() if v and v != "basic"}


def _patterns(opts):
    """(patterns, paths) of the command line."""
    words = list(opts.words)
    pats = list(opts.patterns or [])
    for f in opts.pattern_files or ():
        try:
            with open(f, "rb") as fh:
                pats += fh.read().decode("utf-8", "surrogateescape").splitlines()
        except OSError as ex:
            raise ToolError("%s: %s" % (f, errtext(ex)))
    if not opts.patterns and not opts.pattern_files:
        if not words:
            raise ToolError("no pattern (nine pgrep --help)")
        pats.append(words.pop(0))
    return pats, words


class Failures:
    """Why hosts failed, printed last: {(kind, reason): set of hosts}; kind is "host"
    (no such host, down), "file" (a file that cannot be read: -s hides them) or "late"
    (timed out, interrupted)."""

    ORDER = {"host": 0, "file": 1, "late": 2}

    def __init__(self):
        self.by = {}

    def add(self, kind, reason, hosts):
        if hosts:
            self.by.setdefault((kind, reason), set()).update(hosts)

    def __bool__(self):
        return bool(self.by)

    def lines(self, silent=False):
        from ..group.aggregate import natural_key
        order = sorted(self.by.items(), key=lambda km: (
            self.ORDER[km[0][0]], -len(km[1]), natural_key(min(km[1], key=natural_key)),
            km[0][1]))
        return ["%s: %s" % (reason, headline(ms)) for (kind, reason), ms in order
                if not (silent and kind == "file")]


_FILE_ERRORS = ("No such file or directory", "Permission denied", "Is a directory",
                "Not a directory", "Too many levels of symbolic links")


def classify(name, reason, late):
    """(kind, reason line) of hosts failing with reason on file `name` (Failures)."""
    from ..group.textagg import CUT, LONG_LINE, TRUNCATED
    if reason.startswith("grep: "):         # -r: a file or directory below `name`
        return "file", reason[len("grep: "):]
    if reason in (TRUNCATED, LONG_LINE) or reason.startswith(CUT):
        return "file", "%s: %s" % (name or ".", reason)
    is_late, text = host_failure(reason)
    if is_late:
        return "late", late
    if not text.startswith(("down: ", "hung: ")):
        for known in _FILE_ERRORS:
            if known in text:
                return "file", "%s: %s" % (name, known)
    return "host", text


class Run:
    """One nine pgrep: run() greps the files on the hosts and gives the per-host results
    as classes {(status, output, notes): hosts}; `failures` names the hosts that
    failed.  timeout: seconds a host has to answer; late: how the others are named."""

    def __init__(self, opts, timeout, late, concurrent=False):
        self.opts = opts
        self.timeout = timeout
        self.late = late
        self.failures = Failures()
        self.patterns, self.paths = _patterns(opts)
        # a gevent connection: several reads at once (several files, -r), or a bound
        # on the whole run (after Ctrl-C); else a blocking one, which starts faster
        self.concurrent = concurrent or opts.recursive or len(self.paths) > 1
        self.params = grep_params(opts, self.patterns)
        self.client = None

    def fail(self, name, reason, hosts):
        kind, line = classify(name, reason, self.late)
        self.failures.add(kind, line, hosts)

    def run(self):
        from ..client import NineError
        opts = self.opts
        if not self.paths and not opts.group and not opts.recursive:
            raise ToolError("no PATH (the path on each host; or -g GROUP: its files)")
        if self.concurrent:
            _quiet_interrupts()
        self.client = connect(opts, blocking=not self.concurrent)
        done = False
        try:
            if not self.paths and opts.group:
                classes = self.grep_all([self.of_group()])
            else:
                hosts, unknown = select_hosts(self.client, opts)
                self.failures.add("host", "no such host", unknown)
                classes = self.grep_all(self.files(hosts, self.paths or [""]))
            done = True
            return classes
        except NineError as ex:
            raise ToolError("the root at %s: %s" % (root_address(opts.addr), errtext(ex)))
        finally:
            if done:
                self.client.close()
            else:                   # given up in the middle of a request: no clunks
                self.client.conn.close()

    # -- which file of which host ----------------------------------------------
    def of_group(self):
        """-g GROUP without PATH: (name, {member: file}) of the group's own members
        (-w keeps, -x leaves out members by name)."""
        from .common import nodeset
        keep = nodeset(self.opts.hosts) if self.opts.hosts else None
        drop = nodeset(self.opts.exclude)
        members = {label: target for label, target in
                   group_members(self.client, group_dir(self.opts))
                   if (keep is None or label in keep) and label not in drop}
        names = {self._shown(label, target) for label, target in members.items()}
        return (names.pop() if len(names) == 1 else self.opts.group), members

    def _shown(self, label, target):
        """A member's file as grep names it: its path under the host's directory (and
        its files/), when the target is there."""
        parts = [p for p in target.split("/") if p]
        nodes = [p for p in self.opts.nodes_dir.split("/") if p]
        if parts[:len(nodes) + 1] == nodes + [label]:
            parts = parts[len(nodes) + 1:]
            if parts[:1] == ["files"]:
                parts = parts[1:]
        return "/".join(parts) or target

    def files(self, hosts, paths):
        """[(name grep shows, {host: name-space path})], in command-line order (-r:
        each path a directory that every host's leaf walks itself)."""
        opts = self.opts
        tables, failed = read_exports(self.client, hosts, opts.nodes_dir, self.timeout)
        for host, reason in failed.items():
            self.fail("", reason, {host})
        items = []
        for path in paths:
            where = {}
            for host in hosts:
                if host in failed:
                    continue
                try:
                    where[host] = ns_path(host, path or ".", tables.get(host),
                                          opts.nodes_dir)
                except LookupError as ex:
                    self.failures.add("file", "%s: %s" % (path or ".", ex), {host})
            items.append((path, where))
        return items

    # -- the group reads ---------------------------------------------------------
    def grep_one(self, name, where, with_name):
        """The merged Partial of one file's group read (hosts: `where`)."""
        from ..group.textagg import text_param
        params = dict(self.params, file=text_param(name))
        if with_name:
            params["with_name"] = True
        g = self.client.gopen(None, "r", members=sorted(where.items()), aggregator="grep",
                              timeout=self.timeout, **params)
        try:
            return g.read_partial()
        except TimeoutError:
            # the root did not answer at all (opening the members waits for hosts that
            # do not answer, whatever the timeout): all of them are late
            from ..group.aggregate import Partial
            return Partial(None, {"timed out": set(where)})
        finally:
            g.close()

    def grep_all(self, items):
        opts = self.opts
        # -r names the files below a directory itself (unless -h), as grep -r; a
        # single PATH that is a file is not named, as grep's single operand
        with_name = opts.with_name if opts.with_name is not None else len(items) > 1
        items = [(n, w) for n, w in items if w]
        if len(items) == 1:                              # the classes as they come
            name, where = items[0]
            p = self.grep_one(name, where, with_name)
            self.errors(name, p)
            return {k: set(ms) for k, ms in (p.value or {}).items()}
        from gevent.pool import Pool
        pool = Pool(READ_POOL)
        jobs = [pool.spawn(self.grep_one, n, w, with_name) for n, w in items]
        try:
            pool.join(raise_error=True)
        except BaseException:         # (Ctrl-C) the others are given up too
            pool.kill(block=False)
            raise
        per_host = {}                 # host -> [(status, output, notes)] in file order
        failed = set()                # hosts that failed on a file: status 2, as grep's
        for (name, _), job in zip(items, jobs):
            p = job.value
            failed.update(self.errors(name, p))
            for key, ms in (p.value or {}).items():
                for h in ms:
                    per_host.setdefault(h, []).append(key)
        # grep puts -- between context groups, across files too
        sep = b"--\n" if (self.params.get("before") or self.params.get("after")) and \
            not (opts.count or opts.files) else b""
        out = {}
        for h, keys in per_host.items():
            key = (2 if h in failed else min(k[0] for k in keys),
                   sep.join(k[1] for k in keys if k[1]), b"".join(k[2] for k in keys))
            out.setdefault(key, set()).add(h)
        return out

    def errors(self, name, p):
        """Name the failures of file `name`'s read; returns the hosts that failed."""
        for reason, ms in p.errors.items():
            self.fail(name, reason, ms)
        return p.members_failed()


def _quiet_interrupts():
    """gevent's hub prints the KeyboardInterrupt of a Ctrl-C that it passes on to the
    main greenlet: not for a tool's user (other errors are printed as before)."""
    import gevent
    hub = gevent.get_hub()
    show = hub.print_exception

    def print_exception(context, kind, value, tb):
        if not (isinstance(kind, type) and issubclass(kind, KeyboardInterrupt)):
            show(context, kind, value, tb)
    hub.print_exception = print_exception


# ---------------------------------------------------------------------------
# output

def render(classes, mode):
    """The text of the classes in clush's way (gather, lines or diff)."""
    from ..group.aggregate import natural_key
    from ..group.textagg import clush_header, clush_order
    out = []
    if mode == "lines":
        rows = sorted(((k[0], natural_key(h), h, k[1]) for k, ms in classes.items()
                       for h in ms))
        for _, _, h, text in rows:
            hb = h.encode("utf-8", "surrogateescape")
            out.extend(hb + b": " + line + b"\n" for line in text.splitlines())
        return b"".join(out)
    order = clush_order(classes.items())
    if mode != "diff":
        return b"".join(clush_header(ms).encode("utf-8", "surrogateescape") + text
                        for (_, text, _), ms in order if text)
    import difflib
    order = sorted(order, key=lambda km: (km[0][0], not km[0][1]))    # stable: clush's
    if not order:
        return b""
    (_, ref, _), rms = order[0]
    out.append(clush_header(rms).encode("utf-8", "surrogateescape") + ref)
    a = [x.decode("utf-8", "ignore") for x in ref.splitlines()]
    for (_, text, _), ms in order[1:]:
        b = [x.decode("utf-8", "ignore") for x in text.splitlines()]
        for line in difflib.unified_diff(a, b, fromfile=headline(rms), tofile=headline(ms),
                                         lineterm=""):
            out.append(line.encode("utf-8", "surrogateescape") + b"\n")
    return b"".join(out)


def notes(classes):
    """grep's stderr lines (binary file matches), each under its hosts."""
    from ..group.textagg import clush_order
    lines = []
    for (_, _, text), ms in clush_order(classes.items()):
        for line in text.decode("utf-8", "surrogateescape").splitlines():
            lines.append("%s: %s" % (headline(ms), line))
    return lines


def status(classes, failures, quiet):
    matched = any(k[0] == 0 for k in classes)
    if quiet and matched:
        return 0
    if failures:
        return 2
    return 0 if matched else 1


def show(run, classes, out, err):
    opts = run.opts
    if not opts.quiet:
        out.write(render(classes, opts.mode or "gather"))
        out.flush()
    for line in notes(classes) + run.failures.lines(opts.silent):
        if not opts.quiet:
            err.write(line + "\n")
    err.flush()
    return status(classes, run.failures, opts.quiet)


def main(argv=None, prog="nine pgrep"):
    """nine pgrep (argv: the arguments after the command's name)."""
    p = make_parser(prog)
    opts = p.parse_intermixed_args(argv)
    out, err = sys.stdout.buffer, sys.stderr
    try:
        for n in (opts.after, opts.before, opts.context):
            if n is not None and n < 0:
                raise ToolError("context lines must be >= 0")
        if opts.timeout is not None and opts.timeout <= 0:
            raise ToolError("--timeout must be > 0 seconds")
        late = "timed out"
        try:
            run = Run(opts, opts.timeout, late)
            classes = run.run()
        except KeyboardInterrupt:
            # what arrives within INTERRUPT_WAIT of asking again (the root, too, may have
            # to answer by then); a second Ctrl-C ends it at once
            import gevent
            wait = min(opts.timeout or INTERRUPT_WAIT, INTERRUPT_WAIT)
            run = Run(opts, wait, "interrupted", concurrent=True)
            try:
                with gevent.Timeout(3 * wait + 2):
                    classes = run.run()
            except gevent.Timeout:
                err.write("interrupted: the root did not answer in time\n")
                return 130
            except KeyboardInterrupt:
                return 130
            show(run, classes, out, err)
            return 130
        return show(run, classes, out, err)
    except ToolError as ex:
        err.write("%s: %s\n" % (prog, ex))
        return 2
    except BrokenPipeError:
        return 2


def verb(args):
    """The `nine pgrep` verb (its arguments parsed here, not by nine.cli)."""
    return main(args.argv)
