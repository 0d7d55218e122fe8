"""nine pcp: copy files to many hosts through the tree (pdcp, clush --copy), or gather
one file from each (rpdcp, clush --rcopy).

    nine pcp -w 'node[1-64]' ./app.tar /srv/app.tar
    nine pcp -g web -r -p ./conf/ /etc/app/          # a tree, modes and times kept
    nine pcp --dest /srv -w 'node[1-8]' a.tar b.tar
    nine pcp --reverse -w 'node[1-8]' /var/log/app.log ./logs   # logs/app.log.node1 ...

DEST is the path on each host (nine.tools.common: an absolute path through the host's
exports file, a relative one from its export).  One SRC file and a DEST that does not
end with ``/`` name the file itself; several SRCs, ``--dest DIR`` or a DEST ending
with ``/`` name a directory that receives each SRC under its own name.  -r copies a
directory SRC: into DEST/NAME when DEST is a directory as above, else as DEST itself.

Each file is copied as (nine.tools.transfer): a check of the destination on every host
(a directory there fails; a symbolic link, another kind of file or one the user may not
write fails unless -f), a temporary file ``.NAME.nine-tmp.XXXX`` made beside it, the
bytes written to all hosts at once as group writes (one copy per edge of the tree,
``-k`` blocks of ``-b`` bytes in flight), then, host by host inside one transaction:
fsync, the size checked, mode (and with -p the modification time) set, and the rename
onto NAME.  So a destination is never partly written under its name: a host that dies,
fills its disk or refuses the write keeps its old file (a host that died also keeps a
temporary file: the next copy of that file removes it once it is a minute old).  A source that changes during
the copy fails every host (nothing renamed).  --verify compares every host's copy with
the source (the hash aggregator: the sha256 of each MiB, folded up the tree).

--compress zstd|lz4 packs each block once, here, into frames that cross every edge of
the tree packed and are unpacked by each leaf into the temporary file at their offset
(the leaf's unpack/, nine.synth.filectl); the commit and --verify are the same.  A host
that cannot unpack that codec (its Python package missing there, or an older nine) is
sent the bytes unpacked, and named on stderr: ``uncompressed node7 (1): no zstd
there``.  ``auto`` is zstd, else lz4, where installed here; none (the default) sends the
bytes as they are.  A codec not installed here is a usage error.

The end is a folded status: ``ok node[1-62] (62)`` and one ``failed HOSTS: reason``
line per reason.  --retry N sends again, N times, to the hosts that failed.  Exit
status 0 when every host got every file, 1 otherwise, 2 for a usage error.
"""

import argparse
import os
import posixpath
import stat as S
import sys

from ..synth.filectl import CODECS, installed_codecs
from .common import ToolError, add_options, connect, errtext, select_hosts
from .transfer import (BLOCK, INFLIGHT, Outcome, Progress, Source, SourceChanged,
                       Streamer, command, local_windows, locate, new_token, read_windows,
                       step_error, tmp_name, transact)

RETRY_WAIT = 1.0             # seconds between two tries of --retry
SWEEP_AGE = 60               # an earlier copy's temporary file unwritten this long (s)
                             # is removed by the next copy of that file
REVERSE_POOL = 16            # --reverse: hosts read at once


def make_parser(prog="nine pcp"):
    p = argparse.ArgumentParser(
        prog=prog, usage="%(prog)s [OPTIONS] SRC... DEST  |  %(prog)s [OPTIONS] --dest "
                         "DIR SRC...  |  %(prog)s --reverse [OPTIONS] PATH DIR",
        description="copy files to many hosts of a nine tree: one copy per edge of the "
                    "tree, written under a temporary name and renamed into place "
                    "(docs/tools.md)")
    add_options(p)
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    p.add_argument("-p", "--preserve", action="store_true",
                   help="keep the modes and modification times of the sources")
    p.add_argument("-f", "--force", action="store_true",
                   help="replace a destination that is a symbolic link, another kind of "
                        "file, or a file the user may not write")
    p.add_argument("--dest", metavar="DIR", help="the directory on each host that "
                   "receives the SRCs")
    p.add_argument("-b", "--block-size", type=_size, default=BLOCK, metavar="BYTES",
                   help="bytes per group write (default 1M)")
    p.add_argument("-k", "--inflight", type=int, default=INFLIGHT, metavar="N",
                   help="group writes in flight (default %d)" % INFLIGHT)
    p.add_argument("--compress", default="none", metavar="CODEC",
                   help="zstd, lz4, auto (zstd, else lz4, where installed) or none "
                        "(default): each block packed once here, unpacked by each leaf")
    p.add_argument("--verify", action="store_true",
                   help="compare every copy with the source (sha256 of each MiB)")
    p.add_argument("--reverse", action="store_true", help="gather PATH from every host "
                   "into DIR/NAME.HOST (rpdcp)")
    p.add_argument("--retry", type=int, default=0, metavar="N",
                   help="send again, N times, to the hosts that failed")
    p.add_argument("-t", "--timeout", type=float, metavar="S",
                   help="a host that does not answer an operation within S seconds fails")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no "
                   "`ok` line: only the failures")
    p.add_argument("paths", nargs="*", metavar="SRC... DEST")
    return p


def _size(text):
    t = text.strip().upper().rstrip("B")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
    try:
        n = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError("not a size: %r" % text)
    if not 1 <= n <= 1 << 30:
        raise argparse.ArgumentTypeError("a block is 1 byte to 1 GiB")
    return n


# ---------------------------------------------------------------------------
# what to copy

class Item:
    """A file (or, dir=True, a directory) to copy: its local path and its path below the
    destination base (``""``: the base itself)."""
    __slots__ = ("src", "rel", "dir", "st")

    def __init__(self, src, rel, is_dir=False):
        self.src, self.rel, self.dir = src, rel, is_dir
        self.st = os.stat(src)

    def mode(self):
        return S.S_IMODE(self.st.st_mode)


def join(base, rel):
    """A path below base (either may be empty)."""
    if not base:
        return rel
    return posixpath.join(base, rel) if rel else base


def plan(srcs, dest, into, recursive):
    """(dest base, [Item]) of the command line: `into` when DEST is a directory that
    receives the SRCs."""
    items = []
    for src in srcs:
        st = os.stat(src)
        name = os.path.basename(os.path.normpath(src))
        top = name if into else ""
        if S.S_ISDIR(st.st_mode):
            if not recursive:
                raise ToolError("%s: is a directory (-r copies directories)" % src)
            items.append(Item(src, top, True))
            for d, dirs, files in os.walk(src):
                dirs.sort()
                rel_d = os.path.relpath(d, src)
                for n in dirs:
                    items.append(Item(os.path.join(d, n), _rel(top, rel_d, n), True))
                for n in sorted(files):
                    p = os.path.join(d, n)
                    if os.path.isfile(p) and not os.path.islink(p):
                        items.append(Item(p, _rel(top, rel_d, n)))
        elif S.S_ISREG(st.st_mode):
            items.append(Item(src, top))
        else:
            raise ToolError("%s: not a regular file" % src)
    return dest, items


def _rel(top, d, name):
    parts = [p for p in (top, "" if d == "." else d, name) if p]
    return "/".join(parts)


# ---------------------------------------------------------------------------
# a copy of files to hosts

class Copy:
    """Copy [Item] to hosts: places {host: (Place, base path in files/)}; opts: force,
    perms and times (what is kept of the sources), block_size, inflight, timeout,
    verify, codec (None: the bytes as they are).  run() fills
    `outcome` (a host fails with the first reason any of its files gave); `done` is
    {host: set of item rels copied}; `plain` {host: why} the hosts sent the bytes
    unpacked although a codec was asked; `sent` the bytes written to the groups."""

    def __init__(self, client, places, items, opts, outcome, progress=None):
        self.client = client
        self.places = places
        self.items = items
        self.opts = opts
        self.outcome = outcome
        self.progress = progress
        self.token = new_token()
        self.done = {}
        self.plain = {}
        self.sent = 0
        self.umask = _umask()

    def dest(self, host, item):
        return join(self.places[host][1], item.rel)

    def fail(self, host, item, reason):
        self.outcome.fail([host], "%s: %s" % (self.shown(host, item), reason))

    def shown(self, host, item):
        return "/" + self.dest(host, item) if item is not None else host

    def run(self, hosts):
        """Copy every item to hosts (those that fail are named in the outcome)."""
        opts = self.opts
        t = opts.timeout
        places = {h: self.places[h][0] for h in hosts}
        files = [it for it in self.items if not it.dir]
        dirs = [it for it in self.items if it.dir]
        # 1. the checks: directories made, each destination looked at
        codec = getattr(opts, "codec", None)
        steps = {h: [[command("mkdir", ("p", self.dest(h, d)), "%o" % self._dir_mode(d))]
                     for d in dirs] + [[command("stat", ("p", self.dest(h, f)))]
                                       for f in files] +
                 ([["codecs"]] if codec and files else []) for h in hosts}
        replies, failed = transact(self.client, places, steps, t)
        for h, r in failed.items():
            self.outcome.fail([h], r)
        ok = {}                     # host -> {item rel: (Item, mode)}
        packed = set()              # hosts that unpack the codec
        for h, rs in replies.items():
            if codec and files:
                there = rs[len(dirs) + len(files)] if len(rs) > len(dirs) + len(files) \
                    else None
                if there and not step_error(there) and codec in there[0]:
                    packed.add(h)
                else:
                    self.plain[h] = "no %s there" % codec
            for d, step in zip(dirs, rs):
                if step_error(step):
                    self.fail(h, d, step_error(step))
            mine = {}
            for f, step in zip(files, rs[len(dirs):]):
                why, mode = self._check(step, f)
                if why:
                    self.fail(h, f, why)
                else:
                    mine[f.rel] = (f, mode)
            ok[h] = mine
        # 2. the temporary files (those of earlier copies that a host lost swept away)
        steps = {h: [[command("sweep", ("p", self.dest(h, f)), SWEEP_AGE),
                      command("create", ("p", tmp_name(self.dest(h, f), self.token)), "600")]
                     for f, _ in mine.values()] for h, mine in ok.items() if mine}
        replies, failed = transact(self.client, places, steps, t)
        for h, r in failed.items():
            self.outcome.fail([h], r)
            ok.pop(h, None)
        made = {}                   # host -> [item rel] whose temporary file exists
        for h, rs in replies.items():
            made[h] = []
            for (rel, (f, _)), step in zip(list(ok[h].items()), rs):
                if step_error(step):
                    self.fail(h, f, step_error(step))
                    del ok[h][rel]
                else:
                    made[h].append(rel)
        # 3. the bytes, file by file
        for f in files:
            hosts_f = [h for h in ok if f.rel in ok[h]]
            if not hosts_f:
                continue
            per = Outcome(hosts_f)
            src = None
            try:
                src = Source(f.src)
                self._stream(src, f, hosts_f, packed, codec, places, per)
                if src.size != f.st.st_size:
                    raise SourceChanged("the source changed during the copy")
                src.check()
                f.st = os.fstat(src.fd)
            except SourceChanged as ex:
                per.fail(hosts_f, str(ex))
            except OSError as ex:
                per.fail(hosts_f, "%s: %s" % (f.src, errtext(ex)))
            finally:
                if src is not None:
                    src.close()
            for h, r in per.failed.items():
                self.fail(h, f, r)
                del ok[h][f.rel]
        # 4. the commits: fsync, size, mode and time, rename
        steps = {}
        for h, mine in ok.items():
            steps[h] = []
            for f, mode in mine.values():
                tmp = tmp_name(self.dest(h, f), self.token)
                attr = ["mode=%o" % mode]
                if opts.times:
                    attr.append("mtime=%d" % f.st.st_mtime_ns)
                steps[h].append([command("fsync", ("p", tmp), f.st.st_size),
                                 command("attr", ("p", tmp), *attr),
                                 command("rename", ("p", tmp), ("p", self.dest(h, f)))])
        replies, failed = transact(self.client, places, {h: s for h, s in steps.items() if s},
                                   t)
        for h, r in failed.items():
            self.outcome.fail([h], r)
        for h, rs in replies.items():
            for (rel, (f, _)), step in zip(list(ok[h].items()), rs):
                if step_error(step):
                    self.fail(h, f, step_error(step))
                else:
                    self.done.setdefault(h, set()).add(rel)
                    made[h].remove(rel)
        # 5. the temporary files of what failed, removed where the host answers
        steps = {h: [[command("remove", ("p", tmp_name(self.dest(h, f), self.token)))]
                     for f in files if f.rel in rels]
                 for h, rels in made.items() if rels and h not in failed}
        if steps:
            transact(self.client, places, steps, t)
        # 6. --verify: every copy against the source
        if opts.verify:
            self.verify(places, files)

    def _stream(self, src, f, hosts_f, packed, codec, places, per):
        """The bytes of f to hosts_f: packed to those in `packed`, as they are to the
        others (both streams at once; the progress bar follows one)."""
        import gevent
        opts = self.opts
        progress = self.progress.add if self.progress is not None else None
        streams = []
        zs = [h for h in hosts_f if h in packed] if codec else []
        rest = [h for h in hosts_f if h not in zs]
        for hosts, c in ((zs, codec), (rest, None)):
            if not hosts:
                continue
            tmp = {h: tmp_name(self.dest(h, f), self.token) for h in hosts}
            streams.append(Streamer(
                self.client, {h: (places[h].ns_unpack if c else places[h].ns)(tmp[h])
                              for h in hosts}, per, opts.block_size, opts.inflight,
                opts.timeout, progress, codec=c))
            progress = None
        jobs = [gevent.spawn(s.run, src) for s in streams]
        try:
            gevent.joinall(jobs, raise_error=True)
        except BaseException:
            gevent.killall(jobs, block=False)
            raise
        finally:
            self.sent += sum(s.sent for s in streams)

    def verify(self, places, files):
        from ..group import aggregate as A
        agg = A.get("hash")
        for f in files:
            hosts_f = [h for h, rels in self.done.items() if f.rel in rels]
            if not hosts_f:
                continue
            src = Source(f.src)
            try:
                want = local_windows(src, agg)
            finally:
                src.close()
            got, failed = read_windows(self.client, {h: places[h].ns(self.dest(h, f))
                                                     for h in hosts_f},
                                       f.st.st_size, "hash", {},
                                       timeout=self.opts.timeout)
            for h, r in failed.items():
                self.fail(h, f, "verify: %s" % r)
            for h, windows in got.items():
                if windows != want:
                    self.fail(h, f, "differs from the source (sha256)")

    def _dir_mode(self, d):
        return d.mode() if self.opts.perms else d.mode() & ~self.umask

    def _check(self, step, f):
        """(reason it cannot be copied, the mode to give it) of a stat reply."""
        why = step_error(step)
        if why:
            return why, None
        fields = step[0]
        if fields == ["absent"]:
            return None, f.mode() if self.opts.perms else f.mode() & ~self.umask
        size, mtime, mode, w = fields
        mode = int(mode, 8)
        if S.S_ISDIR(mode):
            return os.strerror(21), None                       # EISDIR
        if not self.opts.force:
            if not S.S_ISREG(mode):
                return "File exists (not a regular file: -f replaces it)", None
            if w != "w":
                return "Permission denied (-f replaces it)", None
        return None, f.mode() if self.opts.perms else (
            S.S_IMODE(mode) if S.S_ISREG(mode) else f.mode() & ~self.umask)


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


# ---------------------------------------------------------------------------
# gathering (--reverse)

def reverse(client, places, path_of, local_dir, opts, outcome):
    """Read each host's file into local_dir/NAME.HOST (written aside, then renamed)."""
    import gevent
    from gevent.pool import Pool
    os.makedirs(local_dir, exist_ok=True)

    def one(h):
        place, rel = places[h]
        name = os.path.basename(rel) or "files"
        final = os.path.join(local_dir, "%s.%s" % (name, h))
        tmp = os.path.join(local_dir, ".%s.%s.nine-tmp" % (name, h))
        try:
            f = client.walk(place.ns(rel))
            try:
                f.lopen(os.O_RDONLY)
                with open(tmp, "wb") as out:
                    off = 0
                    while True:
                        data = f.pread(off, 8 << 20, timeout=opts.timeout)
                        if not data:
                            break
                        out.write(data)
                        off += len(data)
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                f.clunk_nowait()
            os.rename(tmp, final)
        except (OSError, gevent.Timeout) as ex:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            outcome.fail([h], "/%s: %s" % (rel, errtext(ex) if isinstance(ex, OSError)
                                            else "timed out"))
    pool = Pool(REVERSE_POOL)
    for h in places:
        pool.spawn(one, h)
    pool.join()


# ---------------------------------------------------------------------------
# the command

def run(opts):
    """One nine pcp: returns the Outcome."""
    paths = list(opts.paths)
    if opts.reverse:
        if len(paths) != 2 or opts.dest:
            raise ToolError("--reverse takes PATH (on each host) and DIR (here)")
        remote, local = paths
    else:
        if opts.dest:
            srcs, dest, into = paths, opts.dest, True
        else:
            if len(paths) < 2:
                raise ToolError("give SRC... DEST (or --dest DIR SRC...)")
            srcs, dest = paths[:-1], paths[-1]
            into = len(srcs) > 1 or dest.endswith("/")
        if not srcs:
            raise ToolError("no SRC")
        try:
            dest, items = plan(srcs, dest, into, opts.recursive)
        except OSError as ex:
            raise ToolError("%s: %s" % (ex.filename, errtext(ex)))
    _quiet_interrupts()
    client = connect(opts, blocking=False)
    try:
        hosts, unknown = select_hosts(client, opts)
        outcome = Outcome(hosts + unknown)
        outcome.fail(unknown, "no such host")
        if opts.reverse:
            places, failed = locate(client, hosts, remote, opts.nodes_dir, opts.timeout)
            for h, r in failed.items():
                outcome.fail([h], r)
            reverse(client, places, remote, local, opts, outcome)
            return outcome
        import gevent
        total = sum(it.st.st_size for it in items if not it.dir)
        progress = Progress(total, len(hosts), enabled=not opts.quiet)
        outcome.sent = 0
        try:
            todo, places = list(hosts), {}
            for attempt in range(opts.retry + 1):
                if attempt:
                    gevent.sleep(RETRY_WAIT)
                    for h in todo:
                        outcome.failed.pop(h, None)
                where, failed = locate(client, [h for h in todo if h not in places], dest,
                                       opts.nodes_dir, opts.timeout)
                places.update(where)
                for h, r in failed.items():
                    outcome.fail([h], r)
                cp = Copy(client, places, items, opts, outcome, progress)
                cp.run([h for h in todo if h in places])
                for h, why in cp.plain.items():
                    outcome.notes.setdefault(h, why)
                outcome.sent += cp.sent
                progress.hosts_done(len(outcome.ok()))
                todo = [h for h in todo if h in outcome.failed]
                if not todo:
                    break
        finally:
            progress.close()
        return outcome
    finally:
        client.close()


def _quiet_interrupts():
    from .pgrep import _quiet_interrupts as quiet
    quiet()


def report(outcome, out, quiet):
    """The folded status: ok on stdout (unless quiet), failures on stderr, then (pcp
    --compress) the hosts sent the bytes uncompressed; exit status."""
    lines = outcome.lines()
    if outcome.sent is not None and not quiet:
        plain = {}
        for h, why in outcome.notes.items():
            if h not in outcome.failed:
                plain.setdefault(why, set()).add(h)
        lines += ["uncompressed " + line for line in _folded(plain)]
    for line in lines:
        if line.startswith("ok "):
            if not quiet:
                out.write(line + "\n")
        else:
            sys.stderr.write(line + "\n")
    out.flush()
    return 1 if outcome.failed else 0


def _folded(classes):
    """``HOSTS (n): label`` lines of {label: hosts}, largest first."""
    from .transfer import _count
    return ["%s: %s" % (_count(ms), label) for label, ms in
            sorted(classes.items(), key=lambda lm: (-len(lm[1]), lm[0]))]


def codec_of(name):
    """The codec --compress names (None: none); a ToolError when it is not installed
    here."""
    name = (name or "none").lower()
    if name == "none":
        return None
    have = installed_codecs()
    if name == "auto":
        return have[0] if have else None
    if name not in CODECS:
        raise ToolError("--compress: %s is not a codec (zstd, lz4, auto or none)" % name)
    if name not in have:
        raise ToolError("--compress %s: the Python package %s is not installed here "
                        "(pip install 'nine[compress]')" % (name, CODECS[name][1]))
    return name


def main(argv=None, prog="nine pcp"):
    p = make_parser(prog)
    opts = p.parse_intermixed_args(argv)
    opts.perms = opts.times = opts.preserve
    try:
        opts.codec = codec_of(opts.compress)
        if opts.codec and opts.reverse:
            raise ToolError("--compress copies to the hosts (not --reverse)")
        if opts.inflight < 1:
            raise ToolError("-k must be 1 or more")
        if opts.retry < 0:
            raise ToolError("--retry must be 0 or more")
        outcome = run(opts)
    except ToolError as ex:
        sys.stderr.write("%s: %s\n" % (prog, ex))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted (no destination was renamed that was not "
                         "complete)\n" % prog)
        return 130
    return report(outcome, sys.stdout, opts.quiet)


def verb(args):
    """The `nine pcp` verb (its arguments parsed here, not by nine.cli)."""
    return main(args.argv)
