"""A group: its members and settings, and the ctl language that changes them.

A Group is what a directory of /groups holds (nine.group.files serves it): the members
(label -> the target as given, a symlink text or a ctl path), the settings of its
operations (aggregator, sync policy, member offset and count, root prefix), its owner,
and the outcome of its last operation (for `status` and `errors`).  Every open of the
group's files shares it.

The ctl language, one command per line (a write is all or nothing)::

    add NAME PATH       a member
    del NAME ...
    agg AGGREGATOR [key=value ...]      handle.parse_agg(): values are typed (int, float,
                                        bool, a:b:c tuple, else str)
    sync all | timeout SECONDS | nowait
    seek OFFSET [count N|all]
    count N | all
    root PREFIX
    source PATH ...     sources of relays (the `relay` file): files holding the bytes
                        the members should get; `source` alone forgets them

A read of ctl gives the settings in force (Group.settings()).
"""

import errno
import json
import time

from ..server.node import error
from ..synth import files as _synth
from . import aggregate as A
from .handle import MAX_WHOLE, format_agg, parse_agg

MAX_MEMBERS = 1 << 20
MAX_SOURCES = 4096


def new_qpath():
    """A qid path of its own, from the counter of the synthetic file trees."""
    return next(_synth._qpaths)


class Group:
    """One group: its members, its settings and its last operation."""

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
        self.sources = ()          # relay sources (paths, as member targets are)
        self.qpath = new_qpath()
        self.files = {n: new_qpath()
                      for n in ("ctl", "data", "partial", "relay", "status", "errors")}
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
        self.mqpaths[label] = new_qpath()
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

    _SETTINGS = ("agg", "sync", "timeout", "offset", "count", "root", "sources")

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
        elif cmd == "source":
            if not args:
                self.sources = ()
            elif len(self.sources) + len(args) > MAX_SOURCES:
                raise ValueError("more than %d sources" % MAX_SOURCES)
            else:
                self.sources = tuple(self.sources) + tuple(args)
            self.changed()
        else:
            raise ValueError("unknown command (add, del, agg, sync, seek, count, root, "
                             "source)")

    def settings(self):
        sync = self.sync if self.sync != "timeout" else "timeout %g" % self.timeout
        lines = ["agg %s" % format_agg(*self.agg), "sync %s" % sync,
                 "seek %d" % self.offset,
                 "count %s" % ("all" if self.count is None else self.count),
                 "members %d" % len(self.members)]
        if self.root:
            lines.append("root %s" % self.root)
        if self.sources:
            lines.append("sources %d" % len(self.sources))
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

