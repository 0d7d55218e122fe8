"""Groups served by a server: group file operations carried down a tree of muxes.

Every nine server (a leaf ``nine serve`` and every mux) offers a group service over the
name space it serves.  It is reached as aname ``groups`` (members are paths in the default
name space) or ``groups:ANAME`` (paths in export ANAME), and in a mux's merged name space
as the directory ``/groups``::

    groups/
      features        "nine-groups 1": how a parent recognises the service
      clone           open it and read: the number N of a new private group, which
                      lives until that fid is clunked (Xcpu's clone)
      NAME/           a group: made by mkdir (kept until rmdir) or by clone
        ctl           commands, one per line (read: the settings in force)
                        add NAME PATH   a member: PATH in this server's name space
                        del NAME
                        agg AGGREGATOR [key=value ...]     (default: concat)
                        sync all | timeout SECONDS | nowait
                        seek OFFSET     the member offset group reads use (default 0)
                        count N | all   bytes read from each member (default all,
                                        up to 1 MiB)
                        root PREFIX     absolute symlink targets start with PREFIX
                                        (the client's mount point): it is stripped
        data          read: the aggregated result, rendered (a read at offset 0 runs a
                      group read; later offsets page through that result; with
                      `sync nowait` a read blocks until some member has data and
                      returns what has arrived, as tail -f does).  write: every member
                      is written at the same offset with the same bytes.
        partial       the same operations for a parent mux: a read gives the encoded
                      partial result (nine.group.aggregate); a write returns a short
                      count when some member failed (then read `errors`)
        status        per-member status of the last operation (text)
        errors        the failed members of the last operation (encoded, JSON)
        <member>      a symlink per member: `ln -s ../../proc/1/node3/mem g/n3` adds one;
                      relative targets are resolved from the group's directory
                      (/groups/NAME), absolute ones from the name space root (after the
                      `root` prefix, or with leading components dropped until a target
                      resolves: /mnt/nine/proc/... finds /proc/...)

How a group operation runs (the MRNet filter model): the opener's files are opened once
per open of `data`/`partial`.  Each member path is walked in this server's name space;
a member that lands on a remote child that offers groups is not opened here: the members
of one child are handed to a private group on that child (two or more members per child),
and each group read is then one read of that child's `partial` file, whose answer is the
child's already merged partial result.  Local members (and children without the service)
are read here concurrently and mapped with ``leaf``; everything is merged with the
aggregator's ``merge`` and rendered only at the top (`data`).  Writes go down the same
way.  With `sync timeout T` a member (or a whole child) that has not answered by T is
named in the status as timed out and its request is flushed; children get a shorter
timeout so that their partial result arrives in time.
"""

import errno
import json
import os
import posixpath
import stat as S
import time

import gevent
from gevent.lock import Semaphore
from gevent.queue import Queue, Empty

from ..protocol import Qid, QTDIR, QTFILE, QTSYMLINK, L_O_ACCMODE, L_O_RDONLY, L_O_TRUNC
from ..server.node import Node, Attr, Dirent, StatFS, error
from ..final.eval import locate as _final_locate
from . import aggregate as A
from .handle import (FEATURES, MAX_WHOLE, CHUNK, Gather, GroupHandle, format_agg,
                     settings, read_whole, follow, join)

MAX_MEMBERS = 1 << 20
PRIME_BATCH = 256            # members resolved per listing of their shared directories
REPAIR_EVERY = 1.0           # failed members are resolved again at most this often (s)
PRIME_MIN = 8                # a directory is listed first when this many members share it


def _qp():
    from ..synth import files
    return next(files._qpaths)


def _parse_value(v):
    low = v.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if ":" in v:
        parts = v.split(":")
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            pass
    return v


def parse_agg(args):
    """['equiv', 'format=i64'] -> (name, params)"""
    if not args:
        raise ValueError("agg needs an aggregator name (known: %s)" % ", ".join(A.names()))
    params = {}
    for a in args[1:]:
        k, sep, v = a.partition("=")
        if not sep or not k:
            raise ValueError("aggregator parameter %r is not key=value" % a)
        params[k] = _parse_value(v)
    A.get(args[0], **params)      # refuses an unknown name or parameter now
    return args[0], params


def _reason(e):
    if isinstance(e, gevent.Timeout):
        return "timed out"
    if isinstance(e, OSError):
        return e.strerror or os.strerror(e.errno or errno.EIO)
    return "%s: %s" % (type(e).__name__, e)


_HEALABLE = {errno.EHOSTDOWN, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
             errno.ESTALE, errno.ENOTCONN}


def _healable(e):
    """A failure that resolving the member again may cure: its child's connection went
    (the child is down, or back on a new connection that the old node cannot use)."""
    if isinstance(e, OSError) and e.errno in _HEALABLE:
        return True
    from ..mux.remote import ChildDown, StaleNode
    return isinstance(e, (ChildDown, StaleNode))


def _remote_child(node, name):
    """The remote child (a mux's Child) called name in the FiNAL composition node
    belongs to, or None."""
    comp = getattr(getattr(node, "s", None), "comp", None)
    attach = getattr(comp, "children", {}).get(name) if comp is not None else None
    owner = getattr(attach, "__self__", None)
    return owner if owner is not None and hasattr(owner, "group_root") else None


def _wait_all(jobs, gather, timeout, t0):
    """Wait for the greenlet jobs [(greenlet, child group)] and the Gather's members until
    `timeout` seconds after t0 (None: for ever); returns the members the Gather still
    waited for (their requests flushed).  A kill of the wait (a Tflush from above)
    flushes the Gather's requests and kills the jobs."""
    try:
        join([j for j, _ in jobs], timeout)
    except BaseException:
        gather.cancel()
        raise
    return gather.wait(None if timeout is None else
                       max(0.0, timeout - (time.monotonic() - t0)))


def _check_owner(g, ctx, eno=errno.EACCES):
    """Only a group's owner (or root) may change it."""
    uid = _uid(ctx)
    if g is not None and uid != 0 and uid != g.uid:
        raise error(eno, "group %s belongs to uid %d" % (g.name, g.uid))


def _uid(ctx):
    u = getattr(ctx, "uid", None)
    return 0 if u is None else u


def _gid(ctx, gid):
    if gid is not None and gid != 0xFFFFFFFF:
        return gid
    g = getattr(ctx, "gid", None)
    return 0 if g is None else g


def _names(path):
    return [p for p in path.split("/") if p and p != "."]


# ---------------------------------------------------------------------------------------
# a group: its members and settings (shared by every open of its files)

class Group:
    def __init__(self, name, private=False, uid=0, gid=0):
        self.name = name
        self.private = private
        self.uid = uid             # the owner (who made it): only the owner, or root,
        self.gid = gid             # changes it (ctl, members, data writes, removal)
        self.members = {}          # label -> target as given (symlink text or ctl path)
        self.agg = ("concat", {})
        self.sync = "all"
        self.timeout = None
        self.offset = 0
        self.count = None          # None = whole member (up to MAX_WHOLE)
        self.root = None
        self.qpath = _qp()
        self.files = {n: _qp() for n in ("ctl", "data", "partial", "status", "errors")}
        self.mqpaths = {}
        self.version = 0
        self.mtime = time.time_ns()
        self.last = None           # (what, members, Partial, seconds)
        self.gen = 0               # bumped when members or settings change
        self._undo = None          # during ctl(): what to take back if a line fails

    def changed(self):
        self.gen += 1
        self.version = (self.version + 1) & 0xFFFFFFFF
        self.mtime = time.time_ns()

    def aggregator(self):
        return A.get(self.agg[0], **self.agg[1])

    def add(self, label, target):
        if not label or "/" in label or label in self.files or label in (".", ".."):
            raise error(errno.EINVAL, "bad member name %r" % label)
        if label in self.members:
            raise error(errno.EEXIST, "member %r exists" % label)
        if len(self.members) >= MAX_MEMBERS:
            raise error(errno.ENOSPC, "too many members")
        self.members[label] = target
        self.mqpaths[label] = _qp()
        if self._undo is not None:
            self._undo.append(("add", label, target, None))
        self.changed()

    def remove(self, label):
        if label not in self.members:
            raise error(errno.ENOENT, "no member %r" % label)
        target = self.members.pop(label)
        qp = self.mqpaths.pop(label, None)
        if self._undo is not None:
            self._undo.append(("del", label, target, qp))
        self.changed()

    _SETTINGS = ("agg", "sync", "timeout", "offset", "count", "root")

    def ctl(self, text):
        """Run the ctl lines of one write, all or nothing: if a line fails, the
        settings and members are as they were before the write."""
        saved = [getattr(self, k) for k in self._SETTINGS]
        gen = self.gen
        self._undo = undo = []
        try:
            for line in text.splitlines():
                words = line.split()
                if not words or words[0].startswith("#"):
                    continue
                cmd, args = words[0], words[1:]
                try:
                    self._command(cmd, args, line)
                except (ValueError, LookupError, TypeError) as e:
                    raise error(errno.EINVAL, "%s: %s" % (cmd, e))
        except BaseException:
            for k, v in zip(self._SETTINGS, saved):
                setattr(self, k, v)
            for op, label, target, qp in reversed(undo):
                if op == "add":
                    self.members.pop(label, None)
                    self.mqpaths.pop(label, None)
                else:
                    self.members[label] = target
                    self.mqpaths[label] = qp
            if self.gen != gen:
                self.changed()
            raise
        finally:
            self._undo = None

    def _command(self, cmd, args, line):
        if cmd == "add":
            if len(args) != 2:
                raise ValueError("usage: add NAME PATH")
            self.add(args[0], args[1])
        elif cmd == "del":
            for a in args:
                self.remove(a)
        elif cmd == "agg":
            self.agg = parse_agg(args)
            self.changed()
        elif cmd == "sync":
            if args == ["all"]:
                self.sync, self.timeout = "all", None
            elif args == ["nowait"]:
                self.sync, self.timeout = "nowait", None
            elif len(args) == 2 and args[0] == "timeout":
                t = float(args[1])
                if not (t > 0 and t < 1e6):
                    raise ValueError("timeout must be > 0 seconds")
                self.sync, self.timeout = "timeout", t
            else:
                raise ValueError("usage: sync all | timeout SECONDS | nowait")
            self.changed()
        elif cmd == "seek":
            if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "count"):
                raise ValueError("usage: seek OFFSET [count N|all]")
            off = int(args[0], 0)
            if not 0 <= off < 1 << 64:
                raise ValueError("offset out of range")
            self.offset = off
            if len(args) == 3:
                self._command("count", args[2:], line)
            self.changed()
        elif cmd == "count":
            if len(args) != 1:
                raise ValueError("usage: count N | all")
            if args[0] == "all":
                self.count = None
            else:
                n = int(args[0], 0)
                if not 0 <= n <= MAX_WHOLE:
                    raise ValueError("count must be 0 to %d" % MAX_WHOLE)
                self.count = n
            self.changed()
        elif cmd == "root":
            self.root = args[0].rstrip("/") if args else None
            self.changed()
        else:
            raise ValueError("unknown command (add, del, agg, sync, seek, count, root)")

    def settings(self):
        sync = self.sync if self.sync != "timeout" else "timeout %g" % self.timeout
        lines = ["agg %s" % format_agg(*self.agg), "sync %s" % sync,
                 "seek %d" % self.offset,
                 "count %s" % ("all" if self.count is None else self.count),
                 "members %d" % len(self.members)]
        if self.root:
            lines.append("root %s" % self.root)
        return ("\n".join(lines) + "\n").encode()

    def status_text(self):
        if self.last is None:
            return b"no operation yet\n"
        what, members, p, secs = self.last
        failed = p.members_failed()
        ok = set(members) - failed
        out = ["%s: %d members, %d ok, %d failed, %.3f s" % (what, len(members), len(ok),
                                                          len(failed), secs)]
        if ok:
            out.append("ok %s" % A.fold(ok))
        for reason, ms in sorted(p.errors.items(), key=lambda rm: (-len(rm[1]), rm[0])):
            out.append("failed %s: %s" % (A.fold(ms), " ".join(reason.split())))
        return ("\n".join(out) + "\n").encode("utf-8", "surrogateescape")

    def errors_wire(self):
        if self.last is None:
            return b"[]"
        p = self.last[2]
        return json.dumps([[r, A._fold_wire(ms)] for r, ms in sorted(p.errors.items())],
                          separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------
# a child's group service, used by a mux for the members under that child

class ChildGroup(GroupHandle):
    """A private group on a child (through its `groups` aname): one per open here."""

    def __init__(self, child, ctx, members, flags):
        self.child = child
        self.ln, root = child.group_root(ctx)
        super().__init__(root, members, flags)

    def configure_for(self, group, timeout):
        """The settings of a read of `group` with a child's timeout."""
        self.configure(settings(group.agg, group.sync, timeout and max(0.01, timeout),
                                group.offset, group.count))


# ---------------------------------------------------------------------------------------
# one open of a group's data/partial file: the members opened, the operations

class GroupOpen:
    def __init__(self, svc, group, ctx, flags):
        self.svc = svc
        self.group = group
        self.ctx = ctx
        self.flags = flags
        self.lock = Semaphore()
        self.local = {}            # label -> open Node
        self.children = []         # ChildGroup
        self.openfail = {}         # label -> reason
        self.gen = None
        self.snapshot = None
        self.stream = None
        self.pause_at = None
        self.buf = b""
        self.broken = set()        # labels whose child connection failed: resolve again
        self.broken_children = set()   # ChildGroups that failed: make them again
        self.repair_at = 0.0
        self.plan()

    # -- opening the members -----------------------------------------------------
    def plan(self):
        self.release()
        self.gen = self.group.gen
        self.repair_at = time.monotonic() + REPAIR_EVERY
        self._place(list(self.group.members))

    def _place(self, labels):
        """Resolve these members: open the local ones, hand the others on to their
        children's group services."""
        g = self.group
        ctx = self.ctx
        items = [(label, g.members[label]) for label in labels if label in g.members]
        try:
            root = self.svc.ns_attach(ctx)
        except OSError as e:
            for label, _ in items:
                self.openfail[label] = "name space: " + _reason(e)
            return
        by_child = {}
        results = {}

        def resolve(label, target, bases):
            try:
                results[label] = self.svc.resolve(ctx, root, g, target, bases)
            except Exception as e:
                results[label] = e

        from gevent.pool import Pool
        pool = Pool(64)
        located = {}                  # label -> (child, path in it): not walked here
        try:
            for i in range(0, len(items), PRIME_BATCH):
                batch = items[i:i + PRIME_BATCH]
                # list the directories many members share first: a member whose child
                # the listing shows is handed on without a walk; a walk in a union asks
                # only the child that has the name, not every child
                bases = self.svc.prime(ctx, root, g, [t for _, t in batch])
                try:
                    for label, target in batch:
                        loc = self.svc.locate(g, target, bases) if bases else None
                        if loc is not None:
                            located[label] = loc
                        else:
                            pool.spawn(resolve, label, target, bases)
                    pool.join()
                finally:
                    for b in bases.values():
                        b.close(ctx)
            # located members whose child takes fewer than two of them, or has no group
            # service, are walked and opened here after all
            per = {}
            for label, (child, path) in located.items():
                per.setdefault(child, []).append(label)
            for child, labels in per.items():
                if len(labels) >= 2 and self.svc.child_offers_groups(child, ctx):
                    by_child[child] = [(label, "/" + "/".join(located[label][1]))
                                       for label in labels]
                else:
                    for label in labels:
                        pool.spawn(resolve, label, g.members[label], None)
            pool.join()
        finally:
            pool.kill()
            root.close(ctx)
        delegable = {}
        for label, r in results.items():
            if isinstance(r, BaseException):
                self.openfail[label] = _reason(r)
                continue
            node, names = r
            where = self.svc.child_of(node)
            if where is not None:
                delegable.setdefault(where[0], []).append((label, node, where[1]))
            else:
                self._open_local(label, node)
        for child, items in delegable.items():
            if len(items) >= 2 and self.svc.child_offers_groups(child, ctx):
                by_child.setdefault(child, []).extend(
                    (label, "/" + "/".join(path)) for label, _, path in items)
                for _, node, _ in items:
                    node.close(ctx)
            else:
                for label, node, _ in items:
                    self._open_local(label, node)

        def mk(child, members):
            try:
                self.children.append(ChildGroup(child, ctx, members, self.flags))
            except Exception as e:
                why = "%s: %s" % (child.name, _reason(e))
                for label, _ in members:
                    self.openfail[label] = why
        gevent.joinall([gevent.spawn(mk, c, ms) for c, ms in by_child.items()])

    def _open_local(self, label, node):
        try:
            node.open(self.ctx, self.flags & ~(os.O_CREAT | os.O_EXCL))
            self.local[label] = node
        except Exception as e:
            self.openfail[label] = _reason(e)
            try:
                node.close(self.ctx)
            except Exception:
                pass

    def release(self):
        self.stop_stream()
        for node in self.local.values():
            try:
                node.close(self.ctx)
            except Exception:
                pass
        self.local = {}
        for c in self.children:
            c.close()
        self.children = []
        self.openfail = {}
        self.broken = set()
        self.broken_children = set()

    def _repair(self):
        """Members that could not be opened, or whose child's connection failed (a
        restarted leaf or mux), are resolved again, at most every REPAIR_EVERY s."""
        labels = set(self.openfail) | self.broken
        for c in self.broken_children:
            labels.update(c.labels)
        now = time.monotonic()
        if not labels or now < self.repair_at:
            return
        self.repair_at = now + REPAIR_EVERY
        for label in labels:
            self.openfail.pop(label, None)
            node = self.local.pop(label, None)
            if node is not None:
                try:
                    node.close(self.ctx)
                except Exception:
                    pass
        for c in self.broken_children:
            c.close()
            if c in self.children:
                self.children.remove(c)
        self.broken.clear()
        self.broken_children.clear()
        self._place(labels)

    def refresh(self):
        if self.gen != self.group.gen:
            if set(self.group.members) != set(self.members()):
                self.plan()
            self.gen = self.group.gen

    def members(self):
        out = list(self.local) + list(self.openfail)
        for c in self.children:
            out.extend(c.labels)
        return out

    # -- reads --------------------------------------------------------------------
    def _read_member(self, node, offset, count):
        ctx = self.ctx
        return read_whole(lambda off, n: node.read(ctx, off, n), offset, count,
                          min(node.iounit or CHUNK, CHUNK))

    def read(self):
        """A group read with the group's settings: the merged Partial."""
        with self.lock:
            self.refresh()
            self._repair()
            g = self.group
            agg = g.aggregator()
            t0 = time.monotonic()
            timeout = g.timeout if g.sync == "timeout" else None
            child_t = None if timeout is None else max(0.01, timeout * 0.8 - 0.02)
            parts = [agg.fail(m, "open: " + r) for m, r in self.openfail.items()]
            jobs = []
            gather = Gather()    # members on a remote child: no greenlet each
            for label, node in self.local.items():
                post = getattr(node, "post_read", None)
                if post is not None:
                    gather.add(label, post, g.offset, g.count,
                               min(node.iounit or CHUNK, CHUNK))
                else:
                    gather.spawn(label, self._read_member, node, g.offset, g.count)
            for c in self.children:
                def one(c=c):
                    c.configure_for(g, child_t)
                    return c.read(agg)
                jobs.append((gevent.spawn(one), c))
            late = _wait_all(jobs, gather, timeout, t0)
            for label in late:
                parts.append(agg.fail(label, "timed out after %gs" % timeout))
            for label, v in gather.results.items():
                if isinstance(v, BaseException):
                    parts.append(agg.fail(label, _reason(v)))
                    if _healable(v):
                        self.broken.add(label)
                else:
                    parts.append(agg.leaf(label, v))
            for j, who in jobs:                       # the child groups
                if not j.ready():
                    j.kill(block=False)
                    parts.append(A.Partial(None, {"timed out after %gs" % timeout:
                                                  set(who.labels)}))
                    who.sent = None         # its state is unknown now: resend settings
                elif j.successful():
                    parts.append(j.value)
                else:
                    self.broken_children.add(who)
                    who.sent = None
                    parts.append(A.Partial(None, {"%s: %s" % (who.child.name,
                                                              _reason(j.exception)):
                                                  set(who.labels)}))
            p = agg.merge(parts)
            g.last = ("read", self.members(), p, time.monotonic() - t0)
            return agg, p

    # -- nowait streams -------------------------------------------------------------
    def start_stream(self):
        g = self.group
        agg = g.aggregator()
        q = Queue()
        greenlets = []
        for label, r in self.openfail.items():
            q.put(agg.fail(label, "open: " + r))
        for label, node in self.local.items():
            greenlets.append(gevent.spawn(self._follow, label, node, g.offset, agg, q))
        for c in self.children:
            def follow_child(c=c):
                try:
                    c.configure_for(g, None)
                    while True:
                        p = c.next_batch(agg)
                        if p is None:
                            return
                        q.put(p)
                except Exception as e:
                    q.put(A.Partial(None, {"%s: %s" % (c.child.name, _reason(e)):
                                           set(c.labels)}))
            greenlets.append(gevent.spawn(follow_child))
        self.stream = (agg, q, greenlets)

    def _follow(self, label, node, offset, agg, q):
        """tail -f of one member (a partial line waits up to 1 s for its end).  When its
        child's connection fails (a restarted host), the failure is passed on and the
        member is resolved and opened again every REPAIR_EVERY s; the stream then goes
        on from where it stopped, or from 0 if it is another file now (a new qid, or
        shorter than that offset)."""
        ctx = self.ctx
        while True:
            offset, e = follow(lambda off, n: node.read(ctx, off, n), label, offset, agg,
                               q.put, hold=1.0, reason=_reason)
            if not _healable(e):
                return
            while True:
                gevent.sleep(REPAIR_EVERY)
                try:
                    fresh = self._reopen(label)
                    break
                except Exception:
                    continue
            if self.local.get(label) is node:
                self.local[label] = fresh
            try:
                old_path = node.qid.path
            except Exception:
                old_path = None
            try:
                node.close(ctx)
            except Exception:
                pass
            node = fresh
            try:         # a new file (another qid), or a shorter one: from its start
                size = node.getattr(ctx).size
                if node.qid.path != old_path or 0 < size < offset:
                    offset = 0
            except Exception:
                pass

    def _reopen(self, label):
        """A new open node of a member (walked again from the name space's root)."""
        g, ctx = self.group, self.ctx
        target = g.members.get(label)
        if target is None:
            raise error(errno.ENOENT, "%s is no longer a member" % label)
        root = self.svc.ns_attach(ctx)
        try:
            node, _ = self.svc.resolve(ctx, root, g, target)
        finally:
            root.close(ctx)
        try:
            node.open(ctx, self.flags & ~(os.O_CREAT | os.O_EXCL))
        except BaseException:
            node.close(ctx)
            raise
        return node

    def stop_stream(self):
        s = self.stream
        self.stream = None
        if s is not None:
            gevent.killall(s[2], block=False)

    def next_batch(self, block=True, limit=None):
        """nowait: merge what has arrived (waiting for something when block)."""
        if self.stream is None:
            self.start_stream()
        agg, q, _ = self.stream
        items = []
        try:
            items.append(q.get(block=block))
        except Empty:
            return agg, None
        size = 0
        while limit is None or size < limit:
            try:
                p = q.get_nowait()
            except Empty:
                break
            items.append(p)
            size += len(agg.encode(p)) if limit is not None else 0
        return agg, agg.merge(items)

    # -- writes -----------------------------------------------------------------
    def write(self, offset, data):
        with self.lock:
            self.refresh()
            self._repair()
            g = self.group
            t0 = time.monotonic()
            timeout = g.timeout if g.sync == "timeout" else None
            errors = {}
            for m, r in self.openfail.items():
                errors.setdefault("open: " + r, set()).add(m)
            jobs = []
            gather = Gather()    # members on a remote child: no greenlet each
            for label, node in self.local.items():
                post = getattr(node, "post_write", None)
                if post is not None:
                    gather.add_write(label, post, offset, data)
                else:
                    gather.spawn(label, self._write_member, node, offset, data)
            for c in self.children:
                jobs.append((gevent.spawn(c.write, offset, data), c))
            late = _wait_all(jobs, gather, timeout, t0)
            if late:
                errors.setdefault("timed out after %gs" % timeout, set()).update(late)
            for label, v in gather.results.items():
                if isinstance(v, BaseException):
                    errors.setdefault(_reason(v), set()).add(label)
                    if _healable(v):
                        self.broken.add(label)
            for j, who in jobs:                       # the child groups
                labels = set(who.labels)
                if not j.ready():
                    j.kill(block=False)
                    errors.setdefault("timed out after %gs" % timeout, set()).update(labels)
                elif not j.successful():
                    self.broken_children.add(who)
                    errors.setdefault("%s: %s" % (who.child.name, _reason(j.exception)),
                                      set()).update(labels)
                else:
                    for r, ms in j.value.items():
                        errors.setdefault(r, set()).update(ms)
            p = A.Partial(None, errors)
            g.last = ("write %d bytes at %d" % (len(data), offset), self.members(), p,
                      time.monotonic() - t0)
            return p

    def _write_member(self, node, offset, data):
        done = 0
        while done < len(data):
            n = node.write(self.ctx, offset + done, data[done:])
            if n <= 0:
                raise error(errno.EIO, "short write")
            done += n
        return done

    def close(self):
        self.release()


# ---------------------------------------------------------------------------------------
# the file tree

class _GNode(Node):
    may_block = True
    iounit = 0

    def __init__(self, svc, kind, group=None, member=None):
        self.svc = svc
        self.kind = kind            # root, features, clone, dir, ctl, data, partial, status,
        self.group = group          # errors, member
        self.member = member
        self.opened = False
        self.state = None           # GroupOpen (data/partial) / clone's Group
        self.snapshot = None

    @property
    def name(self):
        k = self.kind
        if k == "root":
            return "groups"
        if k == "dir":
            return self.group.name
        if k == "member":
            return self.member
        return k

    @property
    def qid(self):
        g = self.group
        k = self.kind
        if k == "root":
            return Qid(QTDIR, self.svc.version, self.svc.qpath)
        if k in ("features", "clone"):
            return Qid(QTFILE, 0, self.svc.qpaths[k])
        if k == "dir":
            return Qid(QTDIR, g.version, g.qpath)
        if k == "member":
            return Qid(QTSYMLINK, 0, g.mqpaths.get(self.member, 0))
        return Qid(QTFILE, g.version if k in ("ctl", "status", "errors") else 0, g.files[k])

    def clone(self, ctx):
        return _GNode(self.svc, self.kind, self.group, self.member)

    def _child(self, name):
        svc = self.svc
        if self.kind == "root":
            if name in ("features", "clone"):
                return _GNode(svc, name)
            g = svc.groups.get(name)
            if g is not None:
                return _GNode(svc, "dir", g)
            return None
        if self.kind == "dir":
            g = self.group
            if svc.groups.get(g.name) is not g:
                return None
            if name in g.files:
                return _GNode(svc, name, g)
            if name in g.members:
                return _GNode(svc, "member", g, name)
        return None

    def walk(self, ctx, names):
        out = []
        cur = self
        for name in names:
            if cur.kind not in ("root", "dir"):
                break
            if name == "..":
                nxt = _GNode(self.svc, "root")
            elif name == ".":
                nxt = cur.clone(ctx)
            else:
                nxt = cur._child(name)
            if nxt is None:
                if not out:
                    raise error(errno.ENOENT)
                break
            out.append(nxt)
            cur = nxt
        return out

    def getattr(self, ctx):
        k = self.kind
        g = self.group
        if self.svc.uid is not None:
            uid, gid = self.svc.uid, self.svc.gid or 0
        elif g is not None:
            uid, gid = g.uid, g.gid
        else:
            uid, gid = 0, 0                # the groups directory: root's, mode 1777
        mt = self.group.mtime if self.group is not None else self.svc.mtime
        size = 0
        if k == "root":
            mode = S.S_IFDIR | 0o777 | S.S_ISVTX
        elif k == "dir":
            mode = S.S_IFDIR | 0o755
        elif k == "member":
            mode = S.S_IFLNK | 0o777
            size = len(self.group.members.get(self.member, ""))
        elif k in ("features", "status", "errors"):
            mode = S.S_IFREG | 0o444
        elif k == "clone":
            mode = S.S_IFREG | 0o666
        elif k in ("ctl", "data"):
            mode = S.S_IFREG | 0o644      # the owner changes and drives the group
        else:
            mode = S.S_IFREG | 0o666      # partial: the protocol between muxes
        return Attr(qid=self.qid, mode=mode, uid=uid, gid=gid,
                    nlink=2 if S.S_ISDIR(mode) else 1, size=size, blksize=4096,
                    atime=mt, mtime=mt, ctime=mt)

    def setattr(self, ctx, sa):
        if sa.mode is not None or sa.uid is not None or sa.gid is not None:
            raise error(errno.EPERM)
        if sa.size not in (None, 0):
            raise error(errno.EPERM)

    def statfs(self, ctx):
        return StatFS(type=0x01021997, bsize=4096, namelen=255)

    # -- directories ------------------------------------------------------------
    def readdir(self, ctx, offset, count):
        svc = self.svc
        if self.kind == "root":
            ents = [("clone", QTFILE, 8, svc.qpaths["clone"]),
                    ("features", QTFILE, 8, svc.qpaths["features"])]
            ents += [(n, QTDIR, 4, g.qpath) for n, g in sorted(svc.groups.items())]
        else:
            g = self.group
            ents = [(n, QTFILE, 8, g.files[n]) for n in ("ctl", "data", "errors",
                                                         "partial", "status")]
            ents += [(m, QTSYMLINK, 10, g.mqpaths[m]) for m in sorted(g.members)]
        out = []
        for i in range(offset, len(ents)):
            name, qt, dt, qp = ents[i]
            out.append(Dirent(Qid(qt, 0, qp), i + 1, dt, name))
            if len(out) * 40 > count:
                break
        return out

    def mkdir(self, ctx, name, mode, gid):
        if self.kind != "root":
            raise error(errno.EPERM, "groups are made in the groups directory")
        g = self.svc.new_group(name, uid=_uid(ctx), gid=_gid(ctx, gid))
        return Qid(QTDIR, 0, g.qpath)

    def _owner(self, ctx, eno=errno.EACCES):
        _check_owner(self.group, ctx, eno)

    def symlink(self, ctx, name, target, gid):
        if self.kind != "dir":
            raise error(errno.EPERM, "members are symlinks in a group's directory")
        self._owner(ctx)
        self.group.add(name, target)
        return Qid(QTSYMLINK, 0, self.group.mqpaths[name])

    def readlink(self, ctx):
        if self.kind != "member":
            raise error(errno.EINVAL)
        t = self.group.members.get(self.member)
        if t is None:
            raise error(errno.ENOENT)
        return t

    def unlinkat(self, ctx, name, flags):
        if self.kind == "root":
            g = self.svc.groups.get(name)
            if g is None:
                raise error(errno.ENOENT)
            _check_owner(g, ctx, errno.EPERM)         # as in a sticky directory
            self.svc.drop_group(g)
            return
        if self.kind == "dir":
            if name in self.group.files:
                raise error(errno.EPERM, "a group's own files cannot be removed")
            self._owner(ctx)
            self.group.remove(name)
            return
        raise error(errno.ENOTDIR)

    def remove(self, ctx):
        k = self.kind
        if k == "dir":
            self._owner(ctx, errno.EPERM)
            self.svc.drop_group(self.group)
        elif k == "member":
            self._owner(ctx)
            self.group.remove(self.member)
        else:
            raise error(errno.EPERM)

    def renameat(self, ctx, oldname, newdir, newname):
        raise error(errno.EPERM)

    def rename(self, ctx, newdir, newname):
        raise error(errno.EPERM)

    # -- files ------------------------------------------------------------------
    def open(self, ctx, flags):
        k = self.kind
        acc = flags & L_O_ACCMODE
        if k in ("root", "dir"):
            if acc != L_O_RDONLY:
                raise error(errno.EISDIR)
        elif k == "member":
            raise error(errno.ELOOP)
        elif k in ("features", "status", "errors") and acc != L_O_RDONLY:
            raise error(errno.EACCES)
        elif k == "clone":
            self.state = self.svc.new_group(None, private=True, uid=_uid(ctx),
                                            gid=_gid(ctx, None))
        elif k in ("data", "partial", "ctl"):
            if self.svc.groups.get(self.group.name) is not self.group:
                raise error(errno.ENOENT, "the group is gone")
            if acc != L_O_RDONLY or flags & L_O_TRUNC:
                self._owner(ctx)
        if k in ("data", "partial"):
            self.state = GroupOpen(self.svc, self.group, ctx, flags)
        self.opened = True

    def read(self, ctx, offset, count):
        k = self.kind
        if k in ("data", "partial"):
            return self._read_op(offset, count, k == "data")
        if self.snapshot is None or offset == 0:
            if k == "features":
                data = FEATURES
            elif k == "clone":
                data = (self.state.name + "\n").encode()
            elif k == "ctl":
                data = self.group.settings()
            elif k == "status":
                data = self.group.status_text()
            elif k == "errors":
                data = self.group.errors_wire()
            else:
                raise error(errno.EINVAL)
            self.snapshot = data
        return self.snapshot[offset:offset + count]

    def _read_op(self, offset, count, render):
        st = self.state
        g = self.group
        if g.sync == "nowait":
            if st.buf:
                out, st.buf = st.buf[:count], st.buf[count:]
                st.pause_at = offset + len(out) if not st.buf else None
                return out
            block = st.pause_at != offset
            st.pause_at = None
            if st.gen != g.gen:
                with st.lock:
                    st.refresh()
            agg, p = st.next_batch(block=block, limit=None if render else count // 2)
            if p is None:
                return b""
            g.last = ("stream", st.members(), p, 0.0)
            data = agg.render(p) if render else agg.encode(p)
            if not render:
                return data          # a whole encoded partial per read
            out, st.buf = data[:count], data[count:]
            st.pause_at = offset + len(out) if not st.buf else None
            return out
        st.stop_stream()
        if offset == 0 or st.snapshot is None:
            agg, p = st.read()
            st.snapshot = agg.render(p) if render else agg.encode(p)
        return st.snapshot[offset:offset + count]

    def write(self, ctx, offset, data):
        k = self.kind
        data = bytes(data)
        if k == "ctl":
            self.group.ctl(data.decode("utf-8", "surrogateescape"))
            return len(data)
        if k in ("data", "partial"):
            p = self.state.write(offset, data)
            failed = p.members_failed()
            if not failed:
                return len(data)
            if k == "partial":
                return max(0, len(data) - 1)
            if failed >= set(self.state.members()):
                reasons = sorted(p.errors.items(), key=lambda rm: -len(rm[1]))
                raise error(errno.EIO, "every member failed: %s" % reasons[0][0])
            return len(data)
        raise error(errno.EACCES)

    def close(self, ctx):
        st = self.state
        self.state = None
        self.snapshot = None
        if self.opened and st is not None:
            if self.kind == "clone":
                self.svc.drop_group(st)
            elif isinstance(st, GroupOpen):
                st.close()
        self.opened = False

    def listxattr(self, ctx):
        return []

    def getxattr(self, ctx, name):
        raise error(errno.ENODATA)


class GroupService:
    """The group service over one name space (ns_attach(ctx) -> its root Node)."""

    def __init__(self, ns_attach, uid=None, gid=None, base="/groups"):
        self.ns_attach = ns_attach
        self.groups = {}
        self.seq = 0
        self.qpath = _qp()
        self.qpaths = {"clone": _qp(), "features": _qp()}
        self.version = 0
        self.mtime = time.time_ns()
        self.uid = uid
        self.gid = gid
        self.base = base            # where relative symlink targets are resolved from
        self._caps = {}             # (child, link gen) -> bool

    def attach(self, ctx):
        return _GNode(self, "root")

    def new_group(self, name, private=False, uid=0, gid=0):
        if name is None:
            while True:
                self.seq += 1
                name = str(self.seq)
                if name not in self.groups:
                    break
        elif not name or "/" in name or name in (".", "..", "clone", "features"):
            raise error(errno.EINVAL, "bad group name %r" % name)
        elif name in self.groups:
            raise error(errno.EEXIST)
        g = Group(name, private, uid, gid)
        self.groups[name] = g
        self.version = (self.version + 1) & 0xFFFFFFFF
        self.mtime = time.time_ns()
        return g

    def drop_group(self, g):
        if self.groups.get(g.name) is g:
            del self.groups[g.name]
            self.version = (self.version + 1) & 0xFFFFFFFF
            self.mtime = time.time_ns()

    # -- member resolution --------------------------------------------------------
    def candidates(self, g, target):
        if not target.startswith("/"):
            return [_names(posixpath.normpath(posixpath.join(self.base, g.name, target)))]
        if g.root and (target == g.root or target.startswith(g.root + "/")):
            return [_names(posixpath.normpath(target[len(g.root):] or "/"))]
        names = _names(posixpath.normpath(target))
        return [names[i:] for i in range(0, min(len(names), 9))]

    def resolve(self, ctx, root, g, target, bases=None):
        """(node, names) of a member's file; the node is not open.  bases: walked
        directories {names: Node} to start from (prime())."""
        last = None
        for names in self.candidates(g, target):
            if not names:
                continue
            start, rest = root, names
            if bases:
                for k in range(len(names) - 1, 0, -1):
                    b = bases.get(tuple(names[:k]))
                    if b is not None:
                        start, rest = b, names[k:]
                        break
            try:
                return self._walk(ctx, start, rest), names
            except OSError as e:
                if last is None or e.errno != errno.ENOENT:
                    last = e
        raise last or error(errno.ENOENT, "no such member file %r" % target)

    def prime(self, ctx, root, g, targets):
        """Walk and list the directories that PRIME_MIN or more of these members share
        (at most 16, parents first); returns {names: walked Node} to resolve from (the
        caller closes them).  Each member then walks only the rest of its path from the
        longest such directory, and the listing of a FiNAL union is cached for a while:
        a walk in it asks only the child that holds the name.  So resolving N members
        costs about N child walks, not N times the number of children."""
        from collections import Counter
        counts = Counter()
        for t in targets:
            names = self.candidates(g, t)[0]
            for k in range(1, len(names)):
                counts[tuple(names[:k])] += 1
        dirs = sorted((p for p, c in counts.most_common(16) if c >= PRIME_MIN), key=len)
        bases = {}
        for d in dirs:
            try:
                bases[d] = self._walk(ctx, root, list(d))
            except OSError:
                continue
            lister = None
            try:
                lister = bases[d].clone(ctx)
                lister.open(ctx, os.O_RDONLY)
                off = 0
                while True:
                    ents = lister.readdir(ctx, off, 1 << 16)
                    if not ents:
                        break
                    off = ents[-1].offset
            except OSError:
                pass
            finally:
                if lister is not None:
                    lister.close(ctx)
        return bases

    def locate(self, g, target, bases):
        """(child, path in it) of a member below a primed directory when the name
        space's cached listings show which child holds it (nine.final.eval.locate), or
        None: then the member is walked."""
        names = self.candidates(g, target)[0]
        for k in range(len(names) - 1, 0, -1):
            b = bases.get(tuple(names[:k]))
            if b is None:
                continue
            rest = tuple(names[k:])
            child = getattr(b, "child", None)
            if hasattr(child, "group_root"):                      # a RemoteNode
                return child, tuple(b.path) + rest
            loc = _final_locate(b, rest)
            if loc is None:
                return None
            owner = _remote_child(b, loc[0])
            return None if owner is None else (owner, loc[1])
        return None

    def _walk(self, ctx, root, names):
        cur = root.clone(ctx)
        try:
            i = 0
            while i < len(names):
                chunk = names[i:i + 16]
                nodes = cur.walk(ctx, chunk)
                for n in nodes[:-1]:
                    n.close(ctx)
                if len(nodes) != len(chunk):
                    if nodes:
                        nodes[-1].close(ctx)
                    raise error(errno.ENOENT, "No such file or directory: /%s" %
                                "/".join(names[:i + len(nodes) + 1]))
                cur.close(ctx)
                cur = nodes[-1]
                i += len(chunk)
            return cur
        except BaseException:
            cur.close(ctx)
            raise

    def child_of(self, node):
        """(remote child, path in it) of a node that lives on a mux's child (a FiNAL
        TNode or a RemoteNode), else None."""
        child = getattr(node, "child", None)
        if child is None:
            return None
        if hasattr(child, "group_root"):                      # a RemoteNode
            return child, tuple(node.path)
        if not hasattr(node, "cpath"):                       # a FiNAL TNode
            return None
        owner = _remote_child(node, child)
        return None if owner is None else (owner, tuple(node.cpath))

    def child_offers_groups(self, child, ctx):
        try:
            ln, root = child.group_root(ctx)
        except Exception:
            return False
        return True


def install(server, ns_attach_for=None):
    """Offer the group service on a Server: aname `groups` (the default name space) and
    `groups:A` for each export A.  Returns the services {aname: GroupService}."""
    out = {}
    exports = dict(server.exports)
    default = exports.get(None) or exports.get("nine")
    if default is not None:
        svc = GroupService(default)
        server.exports["groups"] = svc.attach
        out["groups"] = svc
    for aname, attach in exports.items():
        if aname is None or aname.startswith("groups"):
            continue
        svc = out.get("groups") if attach is default else GroupService(attach)
        server.exports["groups:" + aname] = svc.attach
        out["groups:" + aname] = svc
    return out


# ---------------------------------------------------------------------------------------
# /groups inside a served name space

_OVERLAY_COOKIE = (1 << 63) + 0x67726F7570        # the cookie after the `groups` entry


class GroupsOverlay(Node):
    """A name space root with the group service's directory added as /groups (it hides
    a `groups` entry of the name space itself)."""

    NAME = "groups"

    def __init__(self, inner, svc):
        self.inner = inner
        self.svc = svc

    qid = property(lambda self: self.inner.qid)
    iounit = property(lambda self: self.inner.iounit)
    name = property(lambda self: getattr(self.inner, "name", "/"))
    may_block = property(lambda self: getattr(self.inner, "may_block", True))

    def walk(self, ctx, names):
        if names and names[0] == self.NAME:
            root = self.svc.attach(ctx)
            rest = names[1:]
            if not rest:
                return [root]
            try:
                more = root.walk(ctx, rest)
            except OSError:
                more = []
            return [root] + more
        return self.inner.walk(ctx, names)

    def clone(self, ctx):
        return GroupsOverlay(self.inner.clone(ctx), self.svc)

    def readdir(self, ctx, offset, count):
        out = []
        if offset == 0:
            out.append(Dirent(Qid(QTDIR, 0, self.svc.qpath), _OVERLAY_COOKIE, 4, self.NAME))
            offset = 0
        elif offset == _OVERLAY_COOKIE:
            offset = 0
        out.extend(e for e in self.inner.readdir(ctx, offset, count) if e.name != self.NAME)
        return out

    def mkdir(self, ctx, name, mode, gid):
        if name == self.NAME:
            raise error(errno.EEXIST)
        return self.inner.mkdir(ctx, name, mode, gid)

    def unlinkat(self, ctx, name, flags):
        if name == self.NAME:
            raise error(errno.EPERM, "the groups directory cannot be removed")
        return self.inner.unlinkat(ctx, name, flags)


def _delegate(meth):
    def f(self, *a, **kw):
        return getattr(self.inner, meth)(*a, **kw)
    f.__name__ = meth
    return f


for _m in ("getattr", "setattr", "statfs", "open", "read", "write", "fsync", "close",
           "create", "symlink", "mknod", "link", "renameat", "rename", "remove", "readlink",
           "lock", "getlock", "listxattr", "getxattr", "setxattr", "removexattr"):
    setattr(GroupsOverlay, _m, _delegate(_m))
