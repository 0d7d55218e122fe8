"""The /groups file tree: the files through which a group service is used.

Served as aname `groups` (or `groups:ANAME`), and in a mux's name space as the
directory /groups (GroupsOverlay)::

    groups/
      features        "nine-groups 1": how a parent recognises the service
      clone           open it and read: the number N of a new private group, which
                      lives until that fid is clunked (Xcpu's clone)
      NAME/           a group: made by mkdir (kept until rmdir) or by clone
        ctl           commands, one per line (nine.group.ctl; read: the settings in
                      force)
        data          read: the aggregated result, rendered (a read at offset 0 runs a
                      group read; later offsets page through that result; with
                      `sync nowait` a read blocks until some member has data and
                      returns what has arrived, as tail -f does).  write: every member
                      is written at the same offset with the same bytes.
        partial       the same operations for a parent mux: a read gives the encoded
                      partial result (nine.group.aggregate); a write returns a short
                      count when some member failed (then read `errors`)
        relay         write "OFFSET COUNT": every member gets those bytes of a relay
                      source (`source` lines of ctl), read as low in the tree as a
                      source lies, so that they do not pass through this server when
                      a source is near the members; a short count when some member
                      failed (then read `errors`), as `partial` gives
        status        per-member status of the last operation (text)
        errors        the failed members of the last operation (encoded, JSON)
        <member>      a symlink per member: `ln -s ../../proc/1/node3/mem g/n3` adds one;
                      relative targets are resolved from the group's directory
                      (/groups/NAME), absolute ones from the name space root (after the
                      `root` prefix, or with leading components dropped until a target
                      resolves: /mnt/nine/proc/... finds /proc/...; nine.group.resolve)

The groups directory is sticky (mode 1777): anyone makes a group, and only a group's
owner (or root) changes it, removes it or writes its data.  Each open of `data` or
`partial` (or `relay`) is a GroupOpen (nine.group.execute) of its own.
"""

import errno
import stat as S

from ..protocol import Qid, QTDIR, QTFILE, QTSYMLINK, L_O_ACCMODE, L_O_RDONLY, L_O_TRUNC
from ..server.node import Node, Attr, Dirent, StatFS, error
from .execute import GroupOpen
from .handle import FEATURES, MAX_WHOLE


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


class GroupNode(Node):
    """One file of the tree: `kind` says which (root, features, clone, dir, ctl, data,
    partial, status, errors, member); `group` and `member` say whose."""

    may_block = True
    iounit = 0

    def __init__(self, svc, kind, group=None, member=None):
        self.svc = svc
        self.kind = kind
        self.group = group
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
        return GroupNode(self.svc, self.kind, self.group, self.member)

    def _child(self, name):
        svc = self.svc
        if self.kind == "root":
            if name in ("features", "clone"):
                return GroupNode(svc, name)
            g = svc.groups.get(name)
            if g is not None:
                return GroupNode(svc, "dir", g)
            return None
        if self.kind == "dir":
            g = self.group
            if svc.groups.get(g.name) is not g:
                return None
            if name in g.files:
                return GroupNode(svc, name, g)
            if name in g.members:
                return GroupNode(svc, "member", g, name)
        return None

    def walk(self, ctx, names):
        out = []
        cur = self
        for name in names:
            if cur.kind not in ("root", "dir"):
                break
            if name == "..":
                nxt = GroupNode(self.svc, "root")
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
        elif k == "relay":
            mode = S.S_IFREG | 0o200
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
                                                         "partial", "relay", "status")]
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
        elif k in ("data", "partial", "ctl", "relay"):
            if self.svc.groups.get(self.group.name) is not self.group:
                raise error(errno.ENOENT, "the group is gone")
            if k == "relay" and acc == L_O_RDONLY:
                raise error(errno.EACCES, "relay is written, not read")
            if acc != L_O_RDONLY or flags & L_O_TRUNC:
                self._owner(ctx)
        if k in ("data", "partial", "relay"):
            self.state = GroupOpen(self.svc, self.group, ctx, flags)
        self.opened = True

    def read(self, ctx, offset, count):
        k = self.kind
        if k in ("data", "partial"):
            return self._read_op(offset, count, k == "data")
        if k == "relay":
            raise error(errno.EACCES)
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
            if not (block or render):
                return b""              # the end of an encoded batch read on
            if st.gen != g.gen:
                with st.lock:
                    st.refresh()
            agg, p = st.next_batch(block=block, limit=None if render else count // 2)
            if p is None:
                return b""
            g.last = ("stream", st.members(), p, 0.0)
            data = agg.render(p) if render else agg.encode(p)
            # a batch larger than count is read on at the following offsets (an
            # encoded partial: GroupHandle.next_batch reads on while reads are full)
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
        if k == "relay":
            p = self.state.relay(*_relay_request(data))
            return len(data) if not p.members_failed() else max(0, len(data) - 1)
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


def _relay_request(data):
    """(offset, count) of a write to `relay`: ``OFFSET COUNT``."""
    words = data.decode("ascii", "replace").split()
    try:
        offset, count = (int(w, 0) for w in words)
    except ValueError:
        raise error(errno.EINVAL, "relay: write OFFSET COUNT") from None
    if not (0 <= offset < 1 << 63 and 0 <= count <= MAX_WHOLE):
        raise error(errno.EINVAL, "relay: offset or count out of range (count %d at "
                    "most)" % MAX_WHOLE)
    return offset, count


# ---------------------------------------------------------------------------------------
# /groups inside a served name space

_OVERLAY_COOKIE = (1 << 63) + 0x67726F7570        # the cookie after the `groups` entry


class GroupsOverlay(Node):
    """A name space root (`inner`, a Node) with the group service's directory added as
    /groups: it hides a `groups` entry of the name space itself.  Every other request
    is the inner root's.  Its qids are not all the inner root's (the groups directory
    has its own), so it never says maps_qids."""

    NAME = "groups"

    def __init__(self, inner, svc):
        self.inner = inner
        self.svc = svc

    qid = property(lambda self: self.inner.qid)
    iounit = property(lambda self: self.inner.iounit)
    name = property(lambda self: self.inner.name)
    may_block = property(lambda self: self.inner.may_block)

    # --- what the overlay adds -----------------------------------------------------
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

    def locate(self, names):
        if names and names[0] == self.NAME:
            return None
        return self.inner.locate(names)

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

    # --- the rest of the Node interface: the inner root's ------------------------------
    def origin(self):
        return self.inner.origin()

    def getattr(self, ctx):
        return self.inner.getattr(ctx)

    def setattr(self, ctx, sa):
        return self.inner.setattr(ctx, sa)

    def statfs(self, ctx):
        return self.inner.statfs(ctx)

    def open(self, ctx, flags):
        return self.inner.open(ctx, flags)

    def read(self, ctx, offset, count):
        return self.inner.read(ctx, offset, count)

    def write(self, ctx, offset, data):
        return self.inner.write(ctx, offset, data)

    def fsync(self, ctx, datasync=0):
        return self.inner.fsync(ctx, datasync)

    def close(self, ctx):
        return self.inner.close(ctx)

    def create(self, ctx, name, flags, mode, gid):
        return self.inner.create(ctx, name, flags, mode, gid)

    def symlink(self, ctx, name, target, gid):
        return self.inner.symlink(ctx, name, target, gid)

    def mknod(self, ctx, name, mode, major, minor, gid):
        return self.inner.mknod(ctx, name, mode, major, minor, gid)

    def link(self, ctx, target, name):
        return self.inner.link(ctx, target, name)

    def renameat(self, ctx, oldname, newdir, newname):
        return self.inner.renameat(ctx, oldname, newdir, newname)

    def rename(self, ctx, newdir, newname):
        return self.inner.rename(ctx, newdir, newname)

    def remove(self, ctx):
        return self.inner.remove(ctx)

    def readlink(self, ctx):
        return self.inner.readlink(ctx)

    def lock(self, ctx, type, flags, start, length, proc_id, client_id):
        return self.inner.lock(ctx, type, flags, start, length, proc_id, client_id)

    def getlock(self, ctx, type, start, length, proc_id, client_id):
        return self.inner.getlock(ctx, type, start, length, proc_id, client_id)

    def listxattr(self, ctx):
        return self.inner.listxattr(ctx)

    def getxattr(self, ctx, name):
        return self.inner.getxattr(ctx, name)

    def setxattr(self, ctx, name, value, flags):
        return self.inner.setxattr(ctx, name, value, flags)

    def removexattr(self, ctx, name):
        return self.inner.removexattr(ctx, name)
