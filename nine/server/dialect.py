"""9P2000 and 9P2000.u translated into the 9P2000.L vocabulary of nodes.

Backends speak only .L (Linux open flags, st_mode, numeric uids; nine.server.node).  The
requests the older dialects have and .L has not are answered here, over the same fids:

  Tstat        getattr() made into a Stat (mode bits DM*, names of uid and gid, and in .u
               the extension: a symlink's target, a device's "c MAJOR MINOR", a file's or
               directory's "HARDLINKCOUNT n", the link count the kernel client shows, as
               QEMU's server sends it)
  Twstat       the fields that are not "don't touch" become one setattr() and a rename
               within the directory; a wstat touching nothing is an fsync
  Topen        the 9P2000 mode (OREAD ... OEXEC, OTRUNC, ORCLOSE) as Linux flags
  Tcreate      perm and mode as mkdir / create, and in .u the special files (symlink,
               hard link: the extension is the number of the target's fid, as the kernel
               client writes it, "%d\n"; device, named pipe, socket) as symlink / link /
               mknod
  Tread of a directory: readdir() entries, each walked and stat'ed, sent as whole Stat
               records (offset 0, or the previous offset plus the previous count)

Directory reads, as Plan 9's lib9p (dirread9p) and QEMU (v9fs_do_readdir_with_stat) do
them: a reply holds the records that fit in its count, in order; the first that does not
fit stays for the read at the next offset, so reads of any sizes never lose or repeat a
record.  A reply may so be empty before the end: the Linux client fills its buffer with
several Treads, the last one often smaller than the next record, and stops at the empty
reply; its next read, at the same offset, asks for a whole buffer.  (An error there
would lose the whole listing.)  A record larger than any reply can hold is skipped.
"""

import collections
import errno
import os
import re
import stat as S
import struct

from .. import protocol as P
from ..protocol import Stat, V9P2000U
from .node import SetAttr, error
from .users import USERS

_RREAD = struct.Struct("<IBHI")
_DEVICE = re.compile(r"([bc]) +([0-9]+) +([0-9]+)")    # .u device extension
_FIDNUM = re.compile(r"-?[0-9]+")                       # .u hard link extension


def make_stat(node, ctx, dotu):
    """The Stat of a node, from its getattr(); dotu: with the .u fields."""
    a = node.getattr(ctx)
    mode = a.mode
    dm = mode & 0o777
    ext = ""
    fmt = S.S_IFMT(mode)
    if fmt == S.S_IFDIR:
        dm |= P.DMDIR
    elif dotu:
        if fmt == S.S_IFLNK:
            dm |= P.DMSYMLINK
            try:
                ext = node.readlink(ctx)
            except OSError:
                ext = ""
        elif fmt in (S.S_IFCHR, S.S_IFBLK):
            dm |= P.DMDEVICE
            ext = "%s %d %d" % ("c" if fmt == S.S_IFCHR else "b", os.major(a.rdev),
                                os.minor(a.rdev))
        elif fmt == S.S_IFIFO:
            dm |= P.DMNAMEDPIPE
        elif fmt == S.S_IFSOCK:
            dm |= P.DMSOCKET
        if mode & S.S_ISUID:
            dm |= P.DMSETUID
        if mode & S.S_ISGID:
            dm |= P.DMSETGID
        if mode & S.S_ISVTX:
            dm |= P.DMSETVTX
    if dotu and fmt in (S.S_IFDIR, S.S_IFREG):
        ext = "HARDLINKCOUNT %d" % a.nlink
    if a.qid[0] & P.QTAPPEND:
        dm |= P.DMAPPEND
    if a.qid[0] & P.QTEXCL:
        dm |= P.DMEXCL
    if a.qid[0] & P.QTTMP:
        dm |= P.DMTMP
    st = Stat(type=0, dev=0, qid=a.qid, mode=dm, atime=(a.atime // 1000000000) & 0xFFFFFFFF,
              mtime=(a.mtime // 1000000000) & 0xFFFFFFFF,
              length=0 if fmt == S.S_IFDIR else a.size,
              name=node.name, uid=USERS.uname(a.uid), gid=USERS.gname(a.gid), muid="")
    if dotu:
        st.extension = ext
        st.n_uid = a.uid
        st.n_gid = a.gid
        st.n_muid = 0xFFFFFFFF
    return st


def omode_to_lflags(mode):
    """Linux open flags for a 9P2000 open mode."""
    acc = mode & 3
    flags = {P.OREAD: P.L_O_RDONLY, P.OWRITE: P.L_O_WRONLY, P.ORDWR: P.L_O_RDWR,
             P.OEXEC: P.L_O_RDONLY}[acc]
    if mode & P.OTRUNC:
        flags |= P.L_O_TRUNC
    if mode & P.OAPPEND:
        flags |= P.L_O_APPEND
    return flags


def parse_device(ext):
    """(S_IFBLK or S_IFCHR, major, minor) of a .u device extension "b|c MAJOR MINOR"
    (EINVAL; a number that no host holds is refused by the backend)."""
    m = _DEVICE.fullmatch(ext.strip())
    if m is None or int(m.group(2)) > 0xFFFFFFFF or int(m.group(3)) > 0xFFFFFFFF:
        raise error(errno.EINVAL, "bad device extension %r" % ext)
    return (S.S_IFBLK if m.group(1) == "b" else S.S_IFCHR), int(m.group(2)), int(m.group(3))


def parse_fidnum(ext):
    """The fid of a .u hard link extension: its number in decimal, as the kernel client
    prints it ("%d\n" of a u32, so a fid of 2^31 or more comes negative)."""
    m = _FIDNUM.fullmatch(ext.strip())
    if m is None or not -0x80000000 <= int(m.group()) <= 0xFFFFFFFF:
        raise error(errno.EINVAL, "bad link extension %r" % ext)
    return int(m.group()) & 0xFFFFFFFF


def dm_to_suid(perm):
    """The setuid, setgid and sticky bits of a .u perm, as st_mode bits."""
    m = 0
    if perm & P.DMSETUID:
        m |= S.S_ISUID
    if perm & P.DMSETGID:
        m |= S.S_ISGID
    if perm & P.DMSETVTX:
        m |= S.S_ISVTX
    return m


class Dialect9P2000:
    """The handlers of the 9P2000 and .u requests, mixed into the core's Connection.  It
    uses the connection's fid rules and checks: getfid, dir_fid, check_name, check_size,
    check_cstring, open_fid, retire and iounit."""

    def h_Tstat(self, m):
        f = self.getfid(m.fid)
        return P.Rstat(stat=make_stat(f.node, f.ctx, self.dialect == V9P2000U))

    def h_Twstat(self, m):
        f = self.getfid(m.fid)
        st = m.stat
        ctx = f.ctx
        dotu = self.dialect == V9P2000U
        if st.name and st.name != f.node.name:
            self.check_name(st.name)            # before anything changes
        sa = SetAttr()
        touched = False
        if st.mode != 0xFFFFFFFF:
            touched = True
            cur = f.node.getattr(ctx)
            if bool(st.mode & P.DMDIR) != S.S_ISDIR(cur.mode):
                raise error(errno.EINVAL, "wstat cannot change the directory bit")
            sa.mode = (st.mode & 0o777) | (dm_to_suid(st.mode) if dotu else 0)
        if st.length != 0xFFFFFFFFFFFFFFFF:
            touched = True
            self.check_size(st.length)
            sa.size = st.length
        if st.mtime != 0xFFFFFFFF:
            touched = True
            sa.mtime = st.mtime * 1000000000
        if st.atime != 0xFFFFFFFF:
            touched = True
            sa.atime = st.atime * 1000000000
        if dotu and st.n_uid != 0xFFFFFFFF:
            touched = True
            sa.uid = st.n_uid
        elif st.uid:
            touched = True
            uid = USERS.uid_of(st.uid)
            if uid is None:
                raise error(errno.EINVAL, "unknown user %r" % st.uid)
            sa.uid = uid
        if dotu and st.n_gid != 0xFFFFFFFF:
            touched = True
            sa.gid = st.n_gid
        elif st.gid:
            touched = True
            gid = USERS.gid_of(st.gid)
            if gid is None:
                raise error(errno.EINVAL, "unknown group %r" % st.gid)
            sa.gid = gid
        if st.name:
            touched = True
        if not touched:
            f.node.fsync(ctx, 0)
            return P.Rwstat()
        if any(getattr(sa, k) is not None for k in ("mode", "uid", "gid", "size", "atime",
                                                      "mtime")):
            f.node.setattr(ctx, sa)
        if st.name and st.name != f.node.name:
            f.node.rename(ctx, None, st.name)  # wstat renames within the directory
        return P.Rwstat()

    def h_Topen(self, m):
        f = self.getfid(m.fid)
        flags = omode_to_lflags(m.mode)
        if f.node.qid[0] & P.QTDIR and (flags & P.L_O_ACCMODE) != P.L_O_RDONLY:
            raise error(errno.EISDIR, "cannot open a directory for writing")
        iounit = self.open_fid(f, flags)
        f.rclose = bool(m.mode & P.ORCLOSE)
        return P.Ropen(qid=f.node.qid, iounit=iounit)

    def h_Tcreate(self, m):
        f = self.dir_fid(m.fid)
        self.check_name(m.name)
        ctx = f.ctx
        perm = m.perm
        dotu = self.dialect == V9P2000U
        gid = ctx.gid if ctx.gid is not None else 0xFFFFFFFF
        if not f.node.qid[0] & P.QTDIR:
            raise error(errno.ENOTDIR)
        if perm & P.DMDIR:
            f.node.mkdir(ctx, m.name, perm & 0o777, gid)
            node = f.node.walk(ctx, [m.name])[0]
            lflags = omode_to_lflags(m.mode & 3)
            try:
                node.open(ctx, lflags & ~P.L_O_TRUNC)
            except BaseException:
                node.close(ctx)
                raise
        elif dotu and perm & (P.DMSYMLINK | P.DMLINK | P.DMDEVICE | P.DMNAMEDPIPE | P.DMSOCKET):
            if perm & P.DMSYMLINK:
                self.check_cstring("symlink target", m.extension)
                f.node.symlink(ctx, m.name, m.extension, gid)
            elif perm & P.DMLINK:
                target = self.getfid(parse_fidnum(m.extension))
                f.node.link(ctx, target.node, m.name)
            elif perm & P.DMDEVICE:
                kind, major, minor = parse_device(m.extension)
                f.node.mknod(ctx, m.name, kind | (perm & 0o777), major, minor, gid)
            elif perm & P.DMNAMEDPIPE:
                f.node.mknod(ctx, m.name, S.S_IFIFO | (perm & 0o777), 0, 0, gid)
            else:
                f.node.mknod(ctx, m.name, S.S_IFSOCK | (perm & 0o777), 0, 0, gid)
            node = f.node.walk(ctx, [m.name])[0]
            # special files are not opened for I/O; the fid still moves to them
            old = f.node
            f.node = node
            f.open = True
            f.omode = P.L_O_RDONLY
            f.is_dir = False
            self.retire(m, old, ctx)
            return P.Rcreate(qid=node.qid, iounit=self.iounit)
        else:
            lflags = omode_to_lflags(m.mode) | P.L_O_CREAT
            mode = perm & 0o777
            if dotu:
                mode |= dm_to_suid(perm)
            node = f.node.create(ctx, m.name, lflags, mode, gid)
        old = f.node
        f.node = node
        f.open = True
        f.omode = omode_to_lflags(m.mode) & P.L_O_ACCMODE
        f.rclose = bool(m.mode & P.ORCLOSE)
        f.is_dir = bool(node.qid[0] & P.QTDIR)
        if old is not node:
            self.retire(m, old, ctx)
        return P.Rcreate(qid=node.qid, iounit=node.iounit or self.iounit)

    def read_dir_stats(self, f, offset, count, tag):
        """A 9P2000/.u read of the open directory of fid f: the Rread (header and the
        whole Stat records that fit in count; see the module's notes)."""
        if offset == 0:
            f.diroff = 0
            f.dircookie = 0
            f.dirbuf = collections.deque()
        elif offset != f.diroff:
            raise error(errno.EINVAL, "bad offset in directory read")
        buf = f.dirbuf
        out = []
        n = 0
        while buf or self._more_dir_stats(f, count):
            b = buf[0]
            if n + len(b) > count:
                if len(b) <= self.iounit:
                    break
                buf.popleft()             # fits no reply: skipped, not a stuck listing
                continue
            out.append(b)
            n += len(b)
            buf.popleft()
        f.diroff = offset + n
        return [_RREAD.pack(11 + n, 117, tag, n)] + out

    def _more_dir_stats(self, f, count):
        """Read the next batch of the backend's readdir() into f.dirbuf as packed Stat
        records (each entry walked and stat'ed; '.', '..' and entries gone meanwhile
        left out); False at the end of the directory."""
        ctx = f.ctx
        dotu = self.dialect == V9P2000U
        buf = f.dirbuf
        while not buf:
            ents = f.node.readdir(ctx, f.dircookie, count)
            if not ents:
                return False
            for e in ents:
                f.dircookie = e.offset
                if e.name in (".", ".."):
                    continue
                try:
                    child = f.node.walk(ctx, [e.name])
                    if not child:
                        continue
                    c = child[0]
                    try:
                        st = make_stat(c, ctx, dotu)
                    finally:
                        c.close(ctx)
                except OSError:
                    continue  # removed meanwhile
                buf.append(P.pack_stat(st, self.dialect))
        return True
