"""What nine pcp and nine psync share: where each host's destination is, transactions of
the hosts' filectl files run as groups, bytes streamed to many hosts as group writes,
and the folded outcome.

Every step is one group operation through the tree, so that the root sends one copy
of each request per child, never one per host:

- a transaction (transact()): the filectl files (nine.synth.filectl) of the hosts that
  get the same commands are one group; the commands are written once, and an ``equiv``
  read of the replies folds the hosts that answered alike;
- the bytes (Streamer): the temporary files that ``create`` made are the members of
  several groups at once (``inflight`` of them, each a private group down the tree),
  each writing every inflight-th block, so that a mux forwards one block while the
  next arrives.  A host that fails leaves the groups at once, and the block is sent
  again to the others (a write cut short by a member's failure may not have reached
  them all).  With a codec (pcp --compress) each block is packed once, here, into
  frames (nine.synth.filectl) that cross every edge packed; the members are then the
  files' names under the hosts' unpack/, where each leaf unpacks them into the file;
- windows of a file (read_windows()): group reads with the ``hash`` or ``signature``
  aggregator (nine.group.fileagg), a window of at most 1 MiB each, several at once.

Outcome folds the hosts by result, as clush does: ``ok node[1-62] (62)`` then
``failed node[63-64] (2): No space left on device``.
"""

import errno
import os
import posixpath
import secrets
import time

from ..group.handle import MAX_WHOLE
from ..synth.filectl import NAME as FILECTL, UNPACK, FrameEncoder, path_word
from .common import errtext, host_failure, ns_path, read_exports

WINDOW = MAX_WHOLE           # bytes of a file read per member per group read
BLOCK = 1 << 20              # bytes per group write
INFLIGHT = 4                 # group writes (or window reads) at once
TEXT_MAX = 1 << 19           # bytes of commands per transaction


def tmp_name(rel, token, kind="tmp"):
    """The temporary file beside rel: ``dir/.NAME.nine-tmp.TOKEN``."""
    d, base = posixpath.split(rel)
    return posixpath.join(d, ".%s.nine-%s.%s" % (base, kind, token))


def new_token():
    return secrets.token_hex(4)


class Outcome:
    """The hosts of a run: ok, or failed with their first reason."""

    def __init__(self, hosts=()):
        self.hosts = list(hosts)
        self.failed = {}
        self.notes = {}           # host -> what happened (psync: its class; pcp: why
                                  # it was sent the bytes uncompressed)
        self.sent = None          # pcp: bytes written to the groups (None: not counted)

    def fail(self, hosts, reason):
        for h in hosts:
            self.failed.setdefault(h, reason)

    def alive(self, hosts=None):
        return [h for h in (self.hosts if hosts is None else hosts) if h not in self.failed]

    def ok(self):
        return [h for h in self.hosts if h not in self.failed]

    def by_reason(self):
        out = {}
        for h, r in self.failed.items():
            out.setdefault(r, set()).add(h)
        return sorted(out.items(), key=lambda rm: (-len(rm[1]), rm[0]))

    def lines(self):
        out = []
        ok = self.ok()
        if ok:
            out.append("ok %s" % _count(ok))
        for reason, ms in self.by_reason():
            out.append("failed %s: %s" % (_count(ms), reason))
        return out


def _count(hosts):
    from ..group.aggregate import fold
    return "%s (%d)" % (fold(set(hosts)), len(set(hosts)))


def fold_classes(classes):
    """Lines ``LABEL: hosts (n)`` of {label: hosts}, largest class first."""
    return ["%s: %s" % (label, _count(ms)) for label, ms in
            sorted(classes.items(), key=lambda lm: (-len(lm[1]), lm[0])) if ms]


def host_reason(reason):
    """A host's failure as the status shows it (the tree's path to it left out)."""
    return host_failure(reason)[1]


# ---------------------------------------------------------------------------
# where each host's destination is

class Place:
    """Where a host's files/ is in the root's name space: `files` (its directory), `ctl`
    (its filectl) and `unpack` (its unpack/: frames written there land in files/)."""
    __slots__ = ("host", "files", "ctl", "unpack")

    def __init__(self, host, files, ctl, unpack=None):
        self.host, self.files, self.ctl = host, files, ctl
        self.unpack = unpack if unpack is not None else \
            posixpath.join(posixpath.dirname(files), UNPACK)

    def ns(self, rel):
        return posixpath.join(self.files, rel) if rel else self.files

    def ns_unpack(self, rel):
        """The name under unpack/ of files/rel."""
        return posixpath.join(self.unpack, rel) if rel else self.unpack


def locate(client, hosts, path, nodes_dir, timeout=None):
    """({host: (Place, path in files/)}, {host: reason}) of `path` on each host
    (nine.tools.common.ns_path's rules: absolute paths through the host's exports file,
    relative ones from its export)."""
    tables, failed = read_exports(client, hosts, nodes_dir, timeout)
    failed = {h: host_reason(r) for h, r in failed.items()}
    out = {}
    for h in hosts:
        if h in failed:
            continue
        table = tables.get(h)
        if table is None or not any(name == "files" for name, _ in table):
            failed[h] = "serves no files/ with %s (a leaf started with a directory and " \
                        "--proc, --host or --exec has them)" % FILECTL
            continue
        try:
            ns = ns_path(h, path, table, nodes_dir)
        except LookupError as ex:
            failed[h] = "%s: %s" % (path, ex)
            continue
        base = posixpath.join(nodes_dir, h, "files")
        if ns != base and not ns.startswith(base + "/"):
            failed[h] = "%s: not under the host's files/" % path
            continue
        out[h] = (Place(h, base, posixpath.join(nodes_dir, h, FILECTL),
                        posixpath.join(nodes_dir, h, UNPACK)),
                  ns[len(base):].lstrip("/"))
    return out, failed


# ---------------------------------------------------------------------------
# transactions

def command(*words):
    """One filectl command line (paths given as ("path", p) are path_word()ed)."""
    out = []
    for w in words:
        if isinstance(w, tuple):
            out.append(path_word(w[1]))
        else:
            out.append(str(w))
    return " ".join(out)


def parse_reply(text):
    """The steps of a filectl reply: [[fields of ok lines..., or ("error", ENAME,
    text)]] (one list per step)."""
    steps = [[]]
    for line in text.decode("utf-8", "surrogateescape").splitlines():
        if line == "--":
            steps.append([])
        elif line.startswith("ok"):
            steps[-1].append(line.split()[1:])
        elif line.startswith("error "):
            _, ename, rest = (line.split(None, 2) + ["", ""])[:3]
            steps[-1].append(("error", ename, rest))
    return steps


def step_error(step):
    """The text of a step's error, or None."""
    if step and isinstance(step[-1], tuple):
        return step[-1][2]
    return None


def transact(client, places, steps, timeout=None):
    """Run transactions: steps {host: [[command line, ...], ...]} (the commands of one
    step stop at its first failure; a failure ends only its step).  Hosts whose
    transactions are the same are one group.  Returns ({host: [step replies]}, {host:
    reason}) (parse_reply's form)."""
    texts = {}
    for h, ss in steps.items():
        texts.setdefault("\n--\n".join("\n".join(s) for s in ss) + "\n", []).append(h)
    replies, failed = {}, {}
    jobs = []
    import gevent
    for text, hosts in texts.items():
        jobs.append(gevent.spawn(_one_text, client, places, text, hosts, timeout,
                                 replies, failed))
    try:
        gevent.joinall(jobs, raise_error=True)
    except BaseException:
        gevent.killall(jobs, block=False)
        raise
    return replies, failed


def _one_text(client, places, text, hosts, timeout, replies, failed):
    """One transaction text on hosts, in pieces of at most TEXT_MAX bytes (cut between
    steps)."""
    pieces, cur = [], ""
    for step in text.split("\n--\n"):
        if cur and len(cur) + len(step) > TEXT_MAX:
            pieces.append(cur)
            cur = ""
        cur = cur + "\n--\n" + step if cur else step
    pieces.append(cur)
    left = list(hosts)
    got = {h: [] for h in hosts}
    for piece in pieces:
        if not left:
            break
        data = piece.encode("utf-8", "surrogateescape")
        if not data.endswith(b"\n"):
            data += b"\n"
        members = [(h, places[h].ctl) for h in left]
        try:
            g = client.gopen(None, "rw", aggregator="equiv", members=members,
                             timeout=timeout)
        except OSError as ex:
            for h in left:
                failed[h] = errtext(ex)
            return
        try:
            try:
                g.write(data)
            except OSError:
                pass                    # every member failed: the status names them
            bad = {m: r for m, r in g.status.items() if r}
            for h, r in bad.items():
                failed[h] = host_reason(r)
            left = [h for h in left if h not in bad]
            if not left:
                return
            g.lseek(0)
            try:
                p = g.read_partial()
            except OSError as ex:
                for h in left:
                    failed[h] = errtext(ex)
                return
        finally:
            g.close()
        for reason, ms in p.errors.items():
            for h in ms:
                failed[h] = host_reason(reason)
        for content, ms in (p.value or {}).items():
            steps = parse_reply(content)
            for h in ms:
                got[h].extend(steps)
        left = [h for h in left if h not in failed]
    for h in hosts:
        if h not in failed:
            replies[h] = got[h]


# ---------------------------------------------------------------------------
# bytes to many hosts

class SourceChanged(Exception):
    """The source file changed while it was read."""


class Source:
    """A local file read by blocks (pread): its size and identity, checked again at the
    end (a source that changes during the copy is refused)."""

    def __init__(self, path=None, data=None):
        self.path = path
        if data is not None:
            self.fd = None
            self.data = bytes(data)
            self.size = len(self.data)
            self.st = None
            return
        self.fd = os.open(path, os.O_RDONLY)
        self.st = os.fstat(self.fd)
        self.size = self.st.st_size
        self.data = None

    def read(self, offset, n):
        if self.data is not None:
            return self.data[offset:offset + n]
        out = os.pread(self.fd, n, offset)
        if len(out) < n and offset + len(out) < self.size:
            raise SourceChanged("the source shrank during the copy")
        return out

    def check(self):
        """Raise SourceChanged when the file is not what it was at the start."""
        if self.fd is None:
            return
        now = os.fstat(self.fd)
        if (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != \
                (self.st.st_size, self.st.st_mtime_ns, self.st.st_ctime_ns):
            raise SourceChanged("the source changed during the copy")

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_UNPACK_ERRORS = {os.strerror(errno.EBADMSG): "a corrupt %s frame",
                  os.strerror(errno.EPROTONOSUPPORT): "%s frames unknown there",
                  os.strerror(errno.ENOPKG): "%s not installed there",
                  os.strerror(errno.EMSGSIZE): "a %s frame too large"}


class Streamer:
    """Write a Source to one member file per host with `inflight` groups at once (each
    block k goes through group k % inflight).  progress(nbytes) is called per block
    written; outcome.fail() gets the hosts that failed (they leave the groups).

    codec (``zstd``, ``lz4``): the members are unpack/ names (Place.ns_unpack), and each
    block travels as frames (FrameEncoder, packed in a thread of gevent's pool); each
    group writes its own frame stream, from offset 0.  `sent` counts the bytes written
    to the groups (once per block, whatever the number of hosts).

    sources (name-space paths of files that hold the bytes already: other hosts'
    copies): each block is a relay (GroupFile.relay), copied inside the tree from a
    source near the members, and nothing is read or sent from here; run() then needs
    only the size (Source(data=...) or any object with `size`)."""

    def __init__(self, client, members, outcome, block=BLOCK, inflight=INFLIGHT,
                 timeout=None, progress=None, codec=None, sources=None):
        self.client = client
        self.members = dict(members)      # host -> name-space path
        self.outcome = outcome
        self.block = block
        self.inflight = max(1, inflight)
        self.timeout = timeout
        self.progress = progress
        self.codec = codec
        self.sources = sources
        self.sent = 0

    def run(self, source):
        import gevent
        hosts = self.outcome.alive(list(self.members))
        if not hosts:
            return
        nblocks = (source.size + self.block - 1) // self.block
        if nblocks == 0:
            return
        streams = min(self.inflight, nblocks)
        jobs = [gevent.spawn(self._stream, source, i, streams, nblocks)
                for i in range(streams)]
        try:
            gevent.joinall(jobs, raise_error=True)
        except BaseException:
            gevent.killall(jobs, block=False)
            raise

    def _reason(self, r):
        """A member's failure, with what the errnos of unpack/ mean (9P2000.L carries
        the errno only)."""
        r = host_reason(r)
        if self.codec:
            why = _UNPACK_ERRORS.get(r)
            if why:
                return "%s (%s)" % (r, why % self.codec)
        return r

    def _open(self, hosts):
        return self.client.gopen(None, "w", members=[(h, self.members[h]) for h in hosts],
                                 timeout=self.timeout, sources=self.sources)

    def _stream(self, source, first, step, nblocks):
        g, hosts = None, None
        enc = FrameEncoder(self.codec) if self.codec else None
        pool = None
        if enc is not None:
            import gevent
            pool = gevent.get_hub().threadpool
        at = 0                            # where the group's frame stream is
        try:
            for k in range(first, nblocks, step):
                off = k * self.block
                if self.sources is not None:          # copied inside the tree
                    data = payload = None
                    n = min(self.block, source.size - off)
                else:
                    data = source.read(off, self.block)
                    n = len(data)
                    payload = data if enc is None else pool.apply(enc.frame, (off, data))
                while True:
                    alive = self.outcome.alive(list(self.members))
                    if not alive:
                        return
                    if g is None or alive != hosts:
                        if g is not None:
                            g.close()
                        g, hosts, at = None, alive, 0
                        try:
                            g = self._open(hosts)
                        except OSError as ex:
                            self.outcome.fail(hosts, errtext(ex))
                            return
                    g.lseek(off if enc is None else at)
                    try:
                        if payload is None:
                            g.relay(n)
                        else:
                            g.write(payload)
                    except OSError:
                        pass              # every member failed: the status names them
                    if payload is not None:
                        self.sent += len(payload)
                        at += len(payload)
                    bad = [h for h, r in g.status.items() if r]
                    for h in bad:
                        self.outcome.fail([h], self._reason(g.status[h]))
                    if not bad:
                        break
                    # a member failed: a write longer than a message stops at the first
                    # short count, so the others may lack its end: again, without it
                if self.progress is not None:
                    self.progress(n)
        finally:
            if g is not None:
                g.close()


# ---------------------------------------------------------------------------
# windows of a file on many hosts

def read_windows(client, members, size, aggregator, params, inflight=INFLIGHT,
                 timeout=None, window=WINDOW):
    """Group reads of windows [k*window, (k+1)*window) up to size of the member files
    {host: path} with an aggregator (hash, signature): ({host: [content of each
    window]}, {host: reason})."""
    import gevent
    nwin = max(1, (size + window - 1) // window)
    per = {h: [None] * nwin for h in members}
    failed = {}
    if not members:
        return per, failed

    def stream(first):
        g = client.gopen(None, "r", aggregator=aggregator, members=sorted(members.items()),
                         timeout=timeout, **params)
        try:
            for k in range(first, nwin, inflight):
                g.lseek(k * window)
                p = g.read_partial(window)
                for reason, ms in p.errors.items():
                    for h in ms:
                        failed.setdefault(h, host_reason(reason))
                for content, ms in (p.value or {}).items():
                    for h in ms:
                        per[h][k] = content
        finally:
            g.close()
    jobs = [gevent.spawn(stream, i) for i in range(min(inflight, nwin))]
    try:
        gevent.joinall(jobs, raise_error=True)
    except BaseException:
        gevent.killall(jobs, block=False)
        raise
    return {h: v for h, v in per.items() if h not in failed}, failed


def local_windows(source, aggregator, window=WINDOW):
    """The contents the aggregator's map gives for each window of a local Source (what
    read_windows gives for a host holding the same bytes)."""
    nwin = max(1, (source.size + window - 1) // window)
    out = []
    for k in range(nwin):
        v = aggregator.map("", source.read(k * window, window))
        out.append(next(iter(v)))
    return out


# ---------------------------------------------------------------------------
# progress

class Progress:
    """A progress bar on stderr (rich, when stderr is a terminal): bytes, rate, ETA and
    hosts done; nothing otherwise."""

    def __init__(self, total, hosts, enabled=True):
        self.bar = None
        self.total = total
        self.hosts = hosts
        self.done = 0
        self.t0 = time.monotonic()
        if not enabled:
            return
        import sys
        if not sys.stderr.isatty():
            return
        try:
            from rich.progress import (BarColumn, DownloadColumn, Progress as RP,
                                       TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)
        except ImportError:
            return
        from rich.console import Console
        self.bar = RP(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(),
                      TextColumn("hosts {task.fields[hosts]}"),
                      console=Console(stderr=True), transient=True)
        self.bar.start()
        self.task = self.bar.add_task("copy", total=total, hosts="0/%d" % hosts)

    def add(self, n):
        if self.bar is not None:
            self.bar.update(self.task, advance=n)

    def hosts_done(self, n):
        self.done = n
        if self.bar is not None:
            self.bar.update(self.task, hosts="%d/%d" % (n, self.hosts))

    def close(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
