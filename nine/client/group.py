"""Group file descriptors: gopen a directory, and every read, write and seek acts on all
of its members (the seed's group file operation idiom).

    from nine.client import Client
    c = Client("127.0.0.1:5640")
    g = c.gopen("/groups/dbg-mem", "rw")     # members: the directory's files, or the
                                              # targets of its symlinks
    g.lseek(addr)
    g.write(b"\\xcc")                          # every member, at addr
    g.lseek(var_addr)
    g.bindaggr("read", "equiv", format="i64")
    print(g.read(8).decode())                 # equivalence classes of the 8 bytes
    g.classes()                               # {b"...": {"node3-1234", ...}, ...}
    g.status                                  # {member: None (ok) | "reason"}

When the server offers the group service (nine.group.service: every nine server and mux
does), the group is made there: each read is one request to the server, which carries it
down its tree and merges on the way up, so the client receives one aggregated result.
Otherwise (another 9P server) the client opens every member and does the same work
itself, concurrently: that needs a gevent Connection (on a BlockingConnection gopen says
EOPNOTSUPP; the `nine` verbs then connect again with gevent).
"""

import errno
import os
import posixpath

from ..group import aggregate as A
from ..group.handle import GroupHandle, offers_groups, settings
from .errors import NineError, nine_error
from .fid import attach as _attach

GROUP_FILES = ("ctl", "data", "partial", "relay", "status", "errors")
READ, WRITE = "read", "write"

# the seed's C-style names: gfd = gopen(client, "dir", os.O_RDWR);
# gbindaggr(gfd, OP_READ, EQUIV_CLASS_AGG); gfd.lseek(addr); gfd.read(8)
OP_READ, OP_WRITE = READ, WRITE
EQUIV_CLASS_AGG, CONCAT_AGG, SUM_AGG, COUNT_AGG = "equiv", "concat", "sum", "count"


def gopen(client, directory, flags=os.O_RDONLY, **kw):
    """The seed's gopen(directory, flags) on a Client: a GroupFile (its read, write,
    lseek and close act on every member; its status says how each member fared)."""
    return client.gopen(directory, flags, **kw)


def gbindaggr(gfd, operation, aggregator, **params):
    """The seed's gbindaggr(gfd, operation, aggregator, params)."""
    gfd.bindaggr(operation, aggregator, **params)
    return gfd


def _flags(mode):
    m = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR, "r+": os.O_RDWR,
         "w+": os.O_RDWR}.get(mode)
    if m is None:
        if isinstance(mode, int):
            return mode
        raise ValueError("mode must be r, w or rw (or os.O_* flags)")
    return m


def members_of(client, path):
    """[(label, path)] of a group directory: its files, and the targets of its symlinks
    (a relative target is taken from the directory).  A group directory of the group
    service lists its own ctl/data/... too: those are not members."""
    base = "/" + "/".join(p for p in path.split("/") if p)
    ents = [e for e in client.readdir(path) if e.name not in (".", "..")]
    names = {e.name for e in ents}
    skip = set(GROUP_FILES) if set(GROUP_FILES) <= names else set()
    ents = [e for e in sorted(ents, key=lambda e: A.natural_key(e.name))
            if e.name not in skip and (e.is_symlink() or not e.is_dir())]
    paths = [posixpath.join(base, e.name) for e in ents]
    targets = iter(_call_all(client, client.readlink,
                             [p for e, p in zip(ents, paths) if e.is_symlink()]))
    out = []
    for e, p in zip(ents, paths):
        if e.is_symlink():
            t = next(targets)
            p = t if t.startswith("/") else posixpath.normpath(posixpath.join(base, t))
        out.append((e.name, p))
    return out


def _call_all(client, fn, args):
    """[fn(a) for a in args]: in greenlets on a gevent Connection (one round trip for
    all), one after another on a BlockingConnection; the first failure is raised."""
    from .blocking import BlockingConnection
    if isinstance(client.conn, BlockingConnection):
        return [fn(a) for a in args]
    import gevent
    jobs = [gevent.spawn(fn, a) for a in args]
    gevent.joinall(jobs, raise_error=True)
    return [j.value for j in jobs]


class GroupFile:
    """A group descriptor (see the module's doc).  Made by Client.gopen."""

    def __init__(self, client, path=None, mode="r", members=None, aggregator="concat",
                 sync="all", timeout=None, use_server=True, sources=None, **params):
        self.client = client
        self.flags = _flags(mode)
        self.sources = list(sources or ())
        self.members = list(members) if members is not None else members_of(client, path)
        self.labels = [m for m, _ in self.members]
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("two members have one name")
        self.offset = 0
        self.agg = (aggregator, dict(params))
        A.get(aggregator, **params)
        self.sync = "all"
        self.timeout = None
        self.set_sync(sync, timeout)
        self.last = None              # the Partial of the last operation
        self.status = {}
        self._remote = None
        self._local = None
        self._sent = None
        self._closed = False
        why = "use_server=False"
        if use_server:
            try:
                self._remote = _RemoteGroup(client, self)
            except (NineError, OSError) as e:
                # no group service there (another server, or an aname it refuses):
                # the client does the work; a dead connection fails again below
                if client.conn.closed:
                    raise
                why = getattr(e, "strerror", None) or str(e)
        if self._remote is None:
            from .blocking import BlockingConnection
            if isinstance(client.conn, BlockingConnection):
                raise nine_error(errno.EOPNOTSUPP, "no group service (%s); a group done by "
                                 "the client needs a gevent Connection" % why)
            from .localgroup import LocalGroup
            self._local = LocalGroup(client, self)

    # -- settings -----------------------------------------------------------------
    @property
    def served(self):
        """True when the server does the group's work (its group service)."""
        return self._remote is not None

    def bindaggr(self, op, aggregator, **params):
        """Bind an aggregation to an operation (only reads are aggregated)."""
        if op not in (READ, "OP_READ"):
            raise ValueError("only reads are aggregated (op %r)" % op)
        A.get(aggregator, **params)
        self.agg = (aggregator, dict(params))

    def set_sync(self, sync="all", timeout=None):
        """all (wait for every member), timeout (seconds: a partial result, the others
        named in status), nowait (stream(): results as they arrive)."""
        if isinstance(sync, (int, float)) and not isinstance(sync, bool):
            sync, timeout = "timeout", float(sync)
        if sync == "timeout" or (sync == "all" and timeout is not None):
            if timeout is None or timeout <= 0:
                raise ValueError("a timeout needs seconds > 0")
            self.sync, self.timeout = "timeout", float(timeout)
        elif sync in ("all", "nowait"):
            self.sync, self.timeout = sync, None
        else:
            raise ValueError("sync is all, timeout or nowait")

    def lseek(self, offset, whence=os.SEEK_SET):
        if whence == os.SEEK_SET:
            new = offset
        elif whence == os.SEEK_CUR:
            new = self.offset + offset
        else:
            raise ValueError("group lseek: SEEK_SET or SEEK_CUR")
        if new < 0:
            raise nine_error(errno.EINVAL)
        self.offset = new
        return new

    def aggregator(self):
        return A.get(self.agg[0], **self.agg[1])

    def _settings(self, count):
        return settings(self.agg, self.sync, self.timeout, self.offset, count)

    def _done(self, p, what):
        self.last = p
        failed = {}
        for reason, ms in p.errors.items():
            for m in ms:
                failed[m] = reason
        self.status = {m: failed.get(m) for m in self.labels}
        for m in failed:
            self.status.setdefault(m, failed[m])
        return p

    # -- operations -------------------------------------------------------------------
    def read_partial(self, count=None):
        """A group read of count bytes (None: each member's whole file) at the group
        offset: the merged Partial (its .value is the aggregator's; .errors the failed
        members).  The offset moves on by count."""
        self._check()
        if self.sync == "nowait":
            raise ValueError("sync nowait: use stream()")
        impl = self._remote or self._local
        p = impl.read(count)
        if count:
            self.offset += count
        return self._done(p, "read")

    def read(self, count=None):
        """The group read's rendered text (bytes)."""
        p = self.read_partial(count)
        return self.aggregator().render(p)

    def classes(self, count=None):
        """Equivalence classes {content: set(members)} of a read (needs equiv/diff)."""
        if self.agg[0] not in ("equiv", "diff"):
            raise ValueError("classes() needs the equiv or diff aggregator")
        p = self.read_partial(count)
        return dict(p.value or {})

    def write(self, data):
        """Write data to every member at the group offset; the offset moves on.
        Returns len(data); status names the members that failed (all failed: OSError)."""
        self._check()
        data = bytes(data)
        impl = self._remote or self._local
        errors = impl.write(self.offset, data)
        p = self._done(A.Partial(None, errors), "write")
        self.offset += len(data)
        if p.errors and set(p.members_failed()) >= set(self.labels):
            reason = max(p.errors.items(), key=lambda rm: len(rm[1]))[0]
            raise nine_error(errno.EIO, "every member failed: %s" % reason)
        return len(data)

    def relay(self, count):
        """Every member gets `count` bytes at the group offset of one of the group's
        sources (gopen's `sources`), copied by the server as low in the tree as a
        source lies (without a group service: read and written by this client).  The
        offset moves on; status names the members that failed (all failed: OSError)."""
        self._check()
        if not self.sources:
            raise ValueError("relay() needs the group's sources (gopen sources=)")
        impl = self._remote or self._local
        errors = impl.relay(self.offset, count)
        p = self._done(A.Partial(None, errors), "relay")
        self.offset += count
        if p.errors and set(p.members_failed()) >= set(self.labels):
            reason = max(p.errors.items(), key=lambda rm: len(rm[1]))[0]
            raise nine_error(errno.EIO, "every member failed: %s" % reason)
        return count

    def stream(self, timeout=None):
        """sync nowait: yield rendered batches as members produce data (tail -f over a
        group), until timeout seconds pass without data (None: forever)."""
        self._check()
        if self.sync != "nowait":
            raise ValueError("stream() needs sync nowait")
        agg = self.aggregator()
        impl = self._remote or self._local
        while True:
            p = impl.next_batch(timeout)
            if p is None:
                return
            self._done(p, "stream")
            yield agg.render(p)

    @property
    def failed(self):
        return {m: r for m, r in self.status.items() if r is not None}

    def _check(self):
        if self._closed:
            raise ValueError("group is closed")

    def close(self):
        if self._closed:
            return
        self._closed = True
        for impl in (self._remote, self._local):
            if impl is not None:
                impl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<GroupFile %d members %s%s>" % (len(self.labels), self.agg[0],
                                                " served" if self.served else "")


class _RemoteGroup:
    """The group made on the server (its group service)."""

    def __init__(self, client, g):
        self.g = g
        aname = client.aname or ""
        self.root = _attach(client.conn, client.uname or "", "groups:" + aname if aname
                            else "groups", client.n_uname)
        try:
            if not offers_groups(self.root):
                raise nine_error(errno.EOPNOTSUPP, "no group service")
            self.h = GroupHandle(self.root, g.members, g.flags, g.sources)
        except BaseException:
            self.root.clunk_nowait()
            raise

    def _rpc_timeout(self):
        g = self.g
        return None if g.timeout is None else g.timeout + 10.0

    def _configure(self, count):
        self.h.configure(self.g._settings(count))

    def read(self, count):
        self._configure(count)
        return self.h.read(self.g.aggregator(), self._rpc_timeout())

    def write(self, offset, data):
        self._configure(None)
        return self.h.write(offset, data, self._rpc_timeout())

    def relay(self, offset, count):
        self._configure(None)
        return self.h.relay(offset, count, self._rpc_timeout())

    def next_batch(self, timeout):
        self._configure(None)
        try:
            return self.h.next_batch(self.g.aggregator(), timeout)
        except NineError as e:
            if isinstance(e, TimeoutError):
                return None
            raise

    def close(self):
        self.h.close()
        self.root.clunk_nowait()
