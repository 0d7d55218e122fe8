"""nine psync: rsync to many hosts through the tree: only the changes, one delta per
version of a file present on the hosts.

    nine psync -w 'node[1-64]' -a ./app.tar /srv/app.tar
    nine psync -g web -a --delete ./site/ /srv/www/      # contents of site/ into www/
    nine psync -n --stats -w 'node[1-64]' app.tar /srv/   # what it would do

rsync's vocabulary: -r, -a (-r -p -t), -p, -t, -c, -n/--dry-run, --delete, -W, --stats,
--progress; SRC and DEST as rsync takes them (a directory SRC with a trailing ``/``
sends its contents, without one the directory itself; several SRCs or a DEST ending
with ``/`` name a directory on each host).

For each file (nine.tools.transfer):

1. every host looks at its copy (one filectl transaction): none there: the whole file;
   the same size and modification time as the source (rsync's quick check; -c:
   always compare the contents): up to date;
2. the others' block signatures are read as group reads with the ``signature``
   aggregator (nine.group.fileagg): every mux folds identical signatures, so the root
   receives one signature per version of the file present on the hosts;
3. one librsync delta per version (a host whose copy is the source's bytes is up to
   date), written to the hosts of that version as one group (a temporary file beside
   the destination), then applied on each host by its filectl (``patch``: the delta
   applied to a temporary copy, checked against the source's sha256, renamed into
   place); a delta no smaller than the file, or a patch that fails, sends the whole
   file (nine pcp's way);
4. the hosts that lack the file (or whose delta would be as large as it) get it
   whole, copied inside the tree from hosts that hold the source's bytes now (those
   patched or found up to date: the group's relay sources, nine.group.execute), so
   that the bytes cross each edge once and do not leave the root when every subtree
   has such a host; each copy is checked against the source's sha256 before it is
   renamed into place, and a host whose copy failed is sent the file from here (as
   nine pcp sends it; --no-relay: always so);
5. -p/-t fix the mode/time of up-to-date copies; --delete removes what the source does
   not have.

--dry-run and --stats print the classes of hosts per file::

    up to date: node[1-56] (56)
    delta 12 KiB: node[57-62] (6)
    whole file: node[63-64] (2)

The end is nine pcp's folded status; the exit status 0 when every host is in sync, 1
otherwise, 2 for a usage error.
"""

import argparse
import io
import math
import os
import stat as S
import sys
from types import SimpleNamespace

from ..synth.filectl import word_path
from .common import (DEFAULT_ADDR, ToolError, add_options, connect, errtext,
                     select_hosts)
from .pcp import SWEEP_AGE, Copy, Item, _umask, join, report
from .transfer import (BLOCK, INFLIGHT, WINDOW, Outcome, Progress, Source, Streamer,
                       command, fold_classes, local_windows, locate, new_token,
                       read_windows, step_error, tmp_name, transact)

STRONG = 16                  # bytes of each block's strong sum
WORTH = 0.9                  # a delta this large (of the file) sends the whole file


def make_parser(prog="nine psync"):
    p = argparse.ArgumentParser(
        prog=prog, usage="%(prog)s [OPTIONS] SRC... DEST", conflict_handler="resolve",
        description="rsync to many hosts of a nine tree: one delta per version of each "
                    "file present on the hosts (docs/tools.md)")
    add_options(p)
    # -a is rsync's --archive here: the root's address is --addr
    p.add_argument("-a", "--archive", action="store_true", help="-r -p -t")
    p.add_argument("--addr", dest="addr", metavar="ADDR", help="the root's address "
                   "(default $NINE_ADDR, else the config file's addr, else %s)"
                   % DEFAULT_ADDR)
    p.add_argument("-r", "--recursive", action="store_true", help="recurse into "
                   "directories")
    p.add_argument("-p", "--perms", action="store_true", help="keep the modes")
    p.add_argument("-t", "--times", action="store_true",
                   help="keep the modification times")
    p.add_argument("-c", "--checksum", action="store_true", help="compare the contents, "
                   "not the size and modification time")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="say what would be done, change nothing")
    p.add_argument("--delete", action="store_true", help="remove what the source does "
                   "not have from the destination directories")
    p.add_argument("-W", "--whole-file", action="store_true",
                   help="send whole files, no deltas")
    p.add_argument("--no-relay", action="store_true", help="send whole files from "
                   "here, not copied inside the tree from hosts that have them")
    p.add_argument("--stats", action="store_true", help="the classes of hosts and what "
                   "was sent")
    p.add_argument("--progress", action="store_true", help="a progress bar")
    p.add_argument("-B", "--block-size", type=int, metavar="BYTES", help="bytes per "
                   "signature block (a power of two; default about the square root of "
                   "the file's size)")
    p.add_argument("-k", "--inflight", type=int, default=INFLIGHT, metavar="N",
                   help="group writes in flight (default %d)" % INFLIGHT)
    p.add_argument("--timeout", type=float, metavar="S",
                   help="a host that does not answer an operation within S seconds fails")
    p.add_argument("-f", "--force", action="store_true", help="replace a destination "
                   "that is a symbolic link, another kind of file, or a file the user "
                   "may not write")
    p.add_argument("-q", "--quiet", action="store_true", help="no `ok` line")
    p.add_argument("paths", nargs="*", metavar="SRC... DEST")
    return p


def sig_block(size, given=None):
    """The signature block: given, else a power of two near sqrt(size), 1 to 64 KiB."""
    if given:
        if given < 256 or given > WINDOW or given & (given - 1):
            raise ToolError("-B must be a power of two from 256 to %d" % WINDOW)
        return given
    b = 1 << max(10, min(16, round(math.log2(max(1, math.isqrt(size))))))
    return b


def kib(n):
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return "%.3g %s" % (n / div, unit)
    return "%d B" % n


def plan(srcs, dest, recursive):
    """(dest base, [Item], [the paths below the base of the directories given]) with
    rsync's rules (see the module's doc)."""
    into = len(srcs) > 1 or dest.endswith("/")
    items, tops = [], []
    for src in srcs:
        st = os.stat(src)
        if S.S_ISDIR(st.st_mode):
            if not recursive:
                raise ToolError("%s: is a directory (-r or -a recurse)" % src)
            top = "" if src.endswith("/") else os.path.basename(os.path.normpath(src))
            tops.append(top)
            if top:
                items.append(Item(src, top, True))
            for d, dirs, files in os.walk(src):
                dirs.sort()
                rel = os.path.relpath(d, src)
                for n in dirs:
                    items.append(Item(os.path.join(d, n), _rel(top, rel, n), True))
                for n in sorted(files):
                    path = os.path.join(d, n)
                    if os.path.isfile(path) and not os.path.islink(path):
                        items.append(Item(path, _rel(top, rel, n)))
        elif S.S_ISREG(st.st_mode):
            items.append(Item(src, os.path.basename(src) if into else ""))
        else:
            raise ToolError("%s: not a regular file" % src)
    return dest, items, tops


def _rel(top, d, name):
    return "/".join(p for p in (top, "" if d == "." else d, name) if p)


class Sync:
    """One psync run over hosts: classes {item rel: {label: hosts}}, bytes sent."""

    def __init__(self, client, places, items, tops, opts, outcome, progress):
        self.client = client
        self.tops = tops              # the directories synced (for --delete)
        self.places = places          # host -> (Place, base)
        self.items = items
        self.opts = opts
        self.outcome = outcome
        self.progress = progress
        self.classes = {}
        self.sent = 0                 # bytes written to the root (deltas, whole files)
        self.relayed = {}             # item rel -> hosts given it inside the tree
        self.token = new_token()
        self.old = {}                 # (item rel, host) -> (mode, mtime) of its copy
        self.have = {}                # item rel -> [hosts that hold the source's bytes:
                                      # checked (patched, same signature) first]
        self.fresh = {}               # item rel -> [hosts up to date by size and time]
        self.umask = _umask()
        self._sha = {}
        self.times = {}               # phase -> seconds (--stats)

    def timed(self, phase):
        """A context that adds its duration to self.times[phase]."""
        import contextlib
        import time

        @contextlib.contextmanager
        def t():
            t0 = time.monotonic()
            try:
                yield
            finally:
                self.times[phase] = self.times.get(phase, 0.0) + time.monotonic() - t0
        return t()

    def items_size(self, rel):
        return next((it.st.st_size for it in self.items if it.rel == rel), 0)

    def dest(self, h, it):
        return join(self.places[h][1], it.rel)

    def fail(self, h, it, why):
        self.outcome.fail([h], "/%s: %s" % (self.dest(h, it), why))

    def place(self, hosts):
        return {h: self.places[h][0] for h in hosts}

    def run(self, hosts):
        opts = self.opts
        files = [it for it in self.items if not it.dir]
        dirs = [it for it in self.items if it.dir]
        places = self.place(hosts)
        # 1. directories made (not on a dry run), every destination looked at
        steps = {h: ([] if opts.dry_run else
                     [[command("mkdir", ("p", self.dest(h, d)), "755")] for d in dirs]) +
                 [[command("stat", ("p", self.dest(h, f)))] for f in files] for h in hosts}
        with self.timed("look"):
            replies, failed = transact(self.client, places, steps, opts.timeout)
        for h, r in failed.items():
            self.outcome.fail([h], r)
        nd = 0 if opts.dry_run else len(dirs)
        for h, rs in replies.items():
            for d, step in zip(dirs, rs[:nd]):
                if step_error(step):
                    self.fail(h, d, step_error(step))
        whole = {}                    # item rel -> hosts that get the whole file
        for i, f in enumerate(files):
            cls = self.classes.setdefault(f.rel, {})
            need, sizes = [], {}
            for h, rs in replies.items():
                step = rs[nd + i]
                why = step_error(step)
                if why:
                    self.fail(h, f, why)
                    continue
                fields = step[0]
                if fields == ["absent"]:
                    whole.setdefault(f.rel, []).append(h)
                    continue
                size, mtime, mode, w = int(fields[0]), int(fields[1]), int(fields[2], 8), \
                    fields[3]
                if S.S_ISDIR(mode):
                    self.fail(h, f, os.strerror(21))
                    continue
                if not opts.force and (not S.S_ISREG(mode) or w != "w"):
                    self.fail(h, f, "File exists (not a regular file: -f replaces it)"
                              if not S.S_ISREG(mode) else
                              "Permission denied (-f replaces it)")
                    continue
                self.old[f.rel, h] = (S.S_IMODE(mode), mtime)
                if not opts.checksum and size == f.st.st_size and \
                        mtime == f.st.st_mtime_ns:
                    cls.setdefault("up to date", set()).add(h)
                    self.fresh.setdefault(f.rel, []).append(h)
                elif opts.whole_file and not opts.checksum:
                    whole.setdefault(f.rel, []).append(h)
                else:
                    need.append(h)
                    sizes[h] = size
            if need:
                self.versions(f, need, sizes, cls, whole)
            if not opts.dry_run:
                self.fix_attrs(f, cls.get("up to date", ()))
        for f in files:
            hs = whole.get(f.rel, [])
            if hs:
                self.classes[f.rel].setdefault("whole file", set()).update(hs)
                if opts.dry_run and (opts.no_relay or not self.sources_of(f)):
                    self.sent += f.st.st_size
        if not opts.dry_run:
            self.send_whole(files, whole)
            if opts.delete:
                self.delete(hosts)

    # -- versions and deltas ---------------------------------------------------------
    def versions(self, f, hosts, sizes, cls, whole):
        """Signatures of the hosts' copies, one delta per version, applied."""
        import pyrsync
        from ..group import aggregate as A
        from ..group.fileagg import signature_header
        opts = self.opts
        block = sig_block(f.st.st_size, opts.block_size)
        params = {"block": block, "strong": STRONG}
        with self.timed("signatures"):
            got, failed = read_windows(self.client,
                                       {h: self.places[h][0].ns(self.dest(h, f))
                                        for h in hosts},
                                       max(sizes.values()), "signature", params,
                                       opts.inflight, opts.timeout)
        for h, r in failed.items():
            self.fail(h, f, r)
        import gevent
        src = Source(f.src)
        patches = []
        early = []                    # the copy inside the tree started early

        def start_copy(_=None):
            """Fill the hosts that lack the file as soon as some host holds the bytes
            (the first version patched), while the other versions are patched."""
            if early or opts.dry_run or opts.no_relay:
                return
            hs = [h for h in whole.get(f.rel, []) if h not in self.outcome.failed]
            srcs = self.sources_of(f)
            if hs and srcs:
                for h in hs:
                    whole[f.rel].remove(h)
                early.append(gevent.spawn(self.relay_timed, f, hs, srcs))
        try:
            mine = b"".join(local_windows(src, A.get("signature", **params)))
            by_version = {}
            for h, ws in got.items():
                by_version.setdefault(b"".join(w or b"" for w in ws), []).append(h)
            header = signature_header(block, STRONG)
            for sig, hs in by_version.items():
                if sig == mine and all(sizes[h] == f.st.st_size for h in hs):
                    cls.setdefault("up to date", set()).update(hs)
                    self.have.setdefault(f.rel, []).extend(hs)
                    continue
                if opts.whole_file:
                    whole.setdefault(f.rel, []).extend(hs)
                    continue
                out = io.BytesIO()
                with self.timed("deltas"), open(f.src, "rb") as fh:
                    # in a thread: the patches of the versions before go on meanwhile
                    gevent.get_hub().threadpool.apply(
                        pyrsync.delta, (fh, io.BytesIO(header + sig), out))
                delta = out.getvalue()
                if len(delta) >= WORTH * f.st.st_size:
                    whole.setdefault(f.rel, []).extend(hs)
                    continue
                label = "delta %s" % kib(len(delta))
                if label in cls:                  # another version's delta of that size
                    label += " #%d" % sum(1 for k in cls if k.startswith(label))
                cls[label] = set(hs)
                self.sent += len(delta)
                if opts.dry_run:                  # they would hold the bytes after
                    self.have.setdefault(f.rel, []).extend(hs)
                else:       # each version's hosts patched while the next delta is made
                    start_copy()
                    j = gevent.spawn(self.patch, f, hs, delta)
                    j.link_value(start_copy)
                    patches.append(j)
            with self.timed("patches (after the last delta)"):
                gevent.joinall(patches, raise_error=True)
            for j in patches:
                for h in j.value:
                    whole.setdefault(f.rel, []).append(h)
            gevent.joinall(early, raise_error=True)
            for j in early:                   # those whose copy failed: from here
                whole.setdefault(f.rel, []).extend(j.value)
        finally:
            gevent.killall(patches + early, block=False)
            src.close()

    def patch(self, f, hosts, delta):
        """Write the delta to hosts and apply it there; the hosts whose patch failed
        (they get the whole file)."""
        opts = self.opts
        places = self.place(hosts)
        sha = self.sha(f)

        def tmp(h, kind):
            return tmp_name(self.dest(h, f), self.token, kind)
        steps = {h: [[command("sweep", ("p", self.dest(h, f)), SWEEP_AGE),
                      command("create", ("p", tmp(h, "delta")), "600"),
                      command("create", ("p", tmp(h, "tmp")), "600")]] for h in hosts}
        replies, failed = transact(self.client, places, steps, opts.timeout)
        per = Outcome(hosts)
        for h, r in failed.items():
            per.fail([h], r)
        for h, rs in replies.items():
            if step_error(rs[0]):
                per.fail([h], step_error(rs[0]))
        ok = per.alive()
        if ok:
            Streamer(self.client, {h: places[h].ns(tmp(h, "delta")) for h in ok}, per,
                     BLOCK, opts.inflight, opts.timeout,
                     self.progress.add if self.progress else None).run(
                Source(data=delta))
        retry = []
        steps = {}
        for h in per.alive():
            mode, mtime = self.attrs_of(f, h)
            attr = ["mode=%o" % mode] + (["mtime=%d" % f.st.st_mtime_ns] if opts.times
                                         else [])
            steps[h] = [[command("patch", ("p", self.dest(h, f)), ("p", tmp(h, "delta")),
                                 ("p", tmp(h, "tmp")), sha)],
                        [command("fsync", ("p", tmp(h, "tmp")), f.st.st_size),
                         command("attr", ("p", tmp(h, "tmp")), *attr),
                         command("rename", ("p", tmp(h, "tmp")), ("p", self.dest(h, f)))]]
        replies, failed = transact(self.client, places, steps, opts.timeout)
        for h, r in failed.items():
            per.fail([h], r)
        for h, rs in replies.items():
            if step_error(rs[0]):
                retry.append(h)               # a patch that failed: the whole file
            elif step_error(rs[1]):
                per.fail([h], step_error(rs[1]))
            else:                             # checked against the source's sha256
                self.have.setdefault(f.rel, []).append(h)
        for h, r in per.failed.items():
            self.fail(h, f, r)
        # the temporary files left, removed where the host answers
        clean = {h: [[command("remove", ("p", tmp(h, "delta"))),
                      command("remove", ("p", tmp(h, "tmp")))]]
                 for h in hosts if h not in failed}
        if clean:
            transact(self.client, places, clean, opts.timeout)
        return retry

    def attrs_of(self, f, h):
        """(mode, mtime) a host's patched copy gets."""
        return (f.mode() if self.opts.perms else self.old[f.rel, h][0]), f.st.st_mtime_ns

    def fix_attrs(self, f, hosts):
        """-p/-t: the mode and time of the up-to-date copies on hosts."""
        opts = self.opts
        steps = {}
        for h in hosts:
            mode, mtime = self.old[f.rel, h]
            attr = []
            if opts.perms and mode != f.mode():
                attr.append("mode=%o" % f.mode())
            if opts.times and mtime != f.st.st_mtime_ns:
                attr.append("mtime=%d" % f.st.st_mtime_ns)
            if attr:
                steps[h] = [[command("attr", ("p", self.dest(h, f)), *attr)]]
        if steps:
            replies, failed = transact(self.client, self.place(steps), steps, opts.timeout)
            for h, r in failed.items():
                self.outcome.fail([h], r)
            for h, rs in replies.items():
                if step_error(rs[0]):
                    self.fail(h, f, step_error(rs[0]))

    def sha(self, f):
        if f.rel not in self._sha:
            self._sha[f.rel] = _sha256(f.src)
        return self._sha[f.rel]

    # -- whole files and deletions ---------------------------------------------------
    def sources_of(self, f):
        """The hosts whose copy of f holds the source's bytes (the checked ones first)."""
        out = []
        for h in self.have.get(f.rel, []) + self.fresh.get(f.rel, []):
            if h not in out and h not in self.outcome.failed:
                out.append(h)
        return out

    def send_whole(self, files, whole):
        o = self.opts
        opts = SimpleNamespace(force=o.force, perms=o.perms, times=o.times,
                               block_size=BLOCK, inflight=o.inflight, timeout=o.timeout,
                               verify=False, preserve=o.perms)
        for f in files:
            hs = [h for h in whole.get(f.rel, []) if h not in self.outcome.failed]
            srcs = self.sources_of(f)
            if hs and srcs and not o.no_relay:
                hs = self.relay_timed(f, hs, srcs)
            if hs:
                copy = Copy(self.client, self.places, [f], opts, self.outcome,
                            self.progress)
                with self.timed("whole files sent"):
                    copy.run(hs)
                self.sent += copy.sent

    def relay_timed(self, f, hosts, sources):
        with self.timed("copies inside the tree"):
            return self.relay(f, hosts, sources)

    def relay(self, f, hosts, sources):
        """f to hosts, copied inside the tree from the hosts that hold its bytes
        (sources): each host's copy is written to a temporary file, checked against
        the source's sha256, then renamed into place.  Returns the hosts whose copy
        failed (the whole file is then sent from here)."""
        opts = self.opts
        places = self.place(hosts)
        sha = self.sha(f)

        def tmp(h):
            return tmp_name(self.dest(h, f), self.token)
        steps = {h: [[command("sweep", ("p", self.dest(h, f)), SWEEP_AGE),
                      command("create", ("p", tmp(h)), "600")]] for h in hosts}
        replies, failed = transact(self.client, places, steps, opts.timeout)
        per = Outcome(hosts)
        for h, r in failed.items():
            self.fail(h, f, r)                # the host does not answer: no retry
        made = []
        for h, rs in replies.items():
            if step_error(rs[0]):
                per.fail([h], step_error(rs[0]))
            else:
                made.append(h)
        Streamer(self.client, {h: places[h].ns(tmp(h)) for h in made}, per, BLOCK,
                 opts.inflight, opts.timeout,
                 self.progress.add if self.progress else None,
                 sources=[self.places[s][0].ns(self.dest(s, f)) for s in sources]).run(
            SimpleNamespace(size=f.st.st_size))
        steps = {}
        for h in per.alive(made):
            mode = self.attrs_of(f, h)[0] if (f.rel, h) in self.old else (
                f.mode() if opts.perms else f.mode() & ~self.umask)
            attr = ["mode=%o" % mode] + (["mtime=%d" % f.st.st_mtime_ns] if opts.times
                                         else [])
            steps[h] = [[command("fsync", ("p", tmp(h)), f.st.st_size, sha),
                         command("attr", ("p", tmp(h)), *attr),
                         command("rename", ("p", tmp(h)), ("p", self.dest(h, f)))]]
        replies, failed2 = transact(self.client, places, steps, opts.timeout)
        for h, r in failed2.items():
            per.fail([h], r)
        done = []
        for h, rs in replies.items():
            if step_error(rs[0]):
                per.fail([h], step_error(rs[0]))
            else:
                done.append(h)
        self.relayed.setdefault(f.rel, set()).update(done)
        # the temporary files of the copies that failed, removed where the host answers
        clean = {h: [[command("remove", ("p", tmp(h)))]] for h in made
                 if h not in done and h not in failed2}
        if clean:
            transact(self.client, places, clean, opts.timeout)
        return [h for h in hosts if h not in done and h not in failed]

    def delete(self, hosts):
        """--delete: what is below the destination directories and not in the source."""
        opts = self.opts
        want = {it.rel for it in self.items}
        for top in self.tops:
            hs = self.outcome.alive(hosts)
            steps = {h: [[command("list", ("p", join(self.places[h][1], top) or "."))]]
                     for h in hs}
            replies, failed = transact(self.client, self.place(hs), steps, opts.timeout)
            for h, r in failed.items():
                self.outcome.fail([h], r)
            rm = {}
            for h, rs in replies.items():
                if step_error(rs[0]):
                    self.outcome.fail([h], step_error(rs[0]))
                    continue
                extra = []
                for ent in rs[0][0]:
                    kind, _, word = ent.partition(":")
                    rel = join(top, "/".join(word_path(word)))
                    if rel not in want:
                        extra.append((rel, kind))
                # the deepest first: what is below a directory goes before it
                rm[h] = [[command("rmdir" if kind == "d" else "remove",
                                  ("p", join(self.places[h][1], rel)))]
                         for rel, kind in sorted(extra, key=lambda e: -e[0].count("/"))]
                if not rm[h]:
                    del rm[h]
            if rm:
                replies, failed = transact(self.client, self.place(rm), rm, opts.timeout)
                for h, r in failed.items():
                    self.outcome.fail([h], r)
                for h, rs in replies.items():
                    for s in rs:
                        if step_error(s):
                            self.outcome.fail([h], "delete: %s" % step_error(s))


def _sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def run(opts):
    if opts.archive:
        opts.recursive = opts.perms = opts.times = True
    if len(opts.paths) < 2:
        raise ToolError("give SRC... DEST")
    srcs, dest = opts.paths[:-1], opts.paths[-1]
    try:
        dest, items, tops = plan(srcs, dest, opts.recursive)
    except OSError as ex:
        raise ToolError("%s: %s" % (ex.filename, errtext(ex)))
    from .pcp import _quiet_interrupts
    _quiet_interrupts()
    client = connect(opts, blocking=False)
    try:
        hosts, unknown = select_hosts(client, opts)
        outcome = Outcome(hosts + unknown)
        outcome.fail(unknown, "no such host")
        places, failed = locate(client, hosts, dest, opts.nodes_dir, opts.timeout)
        for h, r in failed.items():
            outcome.fail([h], r)
        total = sum(it.st.st_size for it in items if not it.dir)
        progress = Progress(total, len(hosts), enabled=opts.progress)
        try:
            sync = Sync(client, places, items, tops, opts, outcome, progress)
            sync.run([h for h in hosts if h in places])
        finally:
            progress.close()
        return sync, outcome
    finally:
        client.close()


def show_classes(sync, out):
    """The classes of hosts of every file (a header per file when there are several)."""
    many = len(sync.classes) > 1
    for rel, cls in sorted(sync.classes.items()):
        if many:
            out.write("%s:\n" % (rel or "."))
        for line in fold_classes({k: v - set(sync.outcome.failed) for k, v in cls.items()}):
            out.write(("  " if many else "") + line + "\n")


def main(argv=None, prog="nine psync"):
    p = make_parser(prog)
    opts = p.parse_intermixed_args(argv)
    try:
        if opts.inflight < 1:
            raise ToolError("-k must be 1 or more")
        sync, outcome = run(opts)
    except ToolError as ex:
        sys.stderr.write("%s: %s\n" % (prog, ex))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted (no destination was renamed that was not "
                         "complete)\n" % prog)
        return 130
    out = sys.stdout
    if opts.dry_run or opts.stats:
        show_classes(sync, out)
    if opts.stats:
        out.write("sent to the root: %s (it passes one copy to each child that needs "
                  "it)\n" % kib(sync.sent))
        if sync.times:
            out.write("time: %s\n" % ", ".join("%s %.2f s" % (k, v)
                                                for k, v in sync.times.items()))
        for rel, hs in sorted(sync.relayed.items()):
            if hs:
                out.write("copied inside the tree from hosts that have it: %s%s to %s\n"
                          % ("%s, " % rel if len(sync.classes) > 1 else "",
                             kib(sync.items_size(rel)), fold_classes({"": hs})[0][2:]))
    if opts.dry_run:
        out.flush()
        for line in outcome.lines():
            if not line.startswith("ok "):
                sys.stderr.write(line + "\n")
        return 1 if outcome.failed else 0
    return report(outcome, out, opts.quiet)


def verb(args):
    """The `nine psync` verb (its arguments parsed here, not by nine.cli)."""
    return main(args.argv)
