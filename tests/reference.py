"""The 9P wire format declared with `construct`: a readable reference for the codec.

This module is documentation first.  It states every 9P2000, 9P2000.u and 9P2000.L
message as a construct declaration written from the protocol documents, not from
spec.py, so that the tests can check the generated struct codec (nine/protocol/codec.py)
against an independent description of the same bytes.  It is far too slow for real
traffic, and nine itself does not use it (construct is a test requirement).

Sources:
  9P2000     Plan 9 manual section 5: intro(5), and the pages version(5), attach(5),
             walk(5), open(5), read(5), stat(5), ...
  9P2000.u   the 9P2000.u extension (draft-vanhensbergen-9p2000u), Linux
             include/net/9p/9p.h and net/9p/protocol.c
  9P2000.L   diod's protocol.md (github.com/chaos/diod) and Linux include/net/9p/9p.h

Conventions (intro(5)):
  * every integer is little-endian; field[n] below is an n-byte unsigned integer;
  * a string s is len[2] followed by len bytes of UTF-8, no terminating NUL;
  * a qid is type[1] version[4] path[8], 13 bytes;
  * every message is one frame: size[4] type[1] tag[2] body, where size counts the
    whole frame, the size field itself included.

The API mirrors the codec with plain values:

    ref_encode("Twalk", {"tag": 1, "fid": 0, "newfid": 1, "wnames": ["usr", "glenda"]},
               "9P2000")  ->  bytes
    ref_decode(frame, "9P2000")  ->  ("Twalk", {"tag": 1, "fid": 0, ...})

Values: integers are ints, strings are str, qids are (type, version, path) tuples,
Twalk's wnames is a list of str, Rwalk's wqids is a list of qid tuples, data is bytes,
a stat is a dict of its fields (ref_encode also takes any object with those
attributes), and Tfsync's datasync is None when absent.  ref_decode raises
construct.ConstructError (or a subclass) for anything that is not a valid frame.
"""

import io

from construct import (Const, ConstructError, FocusedSeq, GreedyBytes, GreedyRange, Int8ul,
                       Int16ul, Int32ul, Int64ul, Optional, PascalString, Prefixed,
                       PrefixedArray, Struct, Terminated)

# ---------------------------------------------------------------------------
# the basic types of intro(5)

u8 = Int8ul                     # field[1]
u16 = Int16ul                   # field[2]
u32 = Int32ul                   # field[4]
u64 = Int64ul                   # field[8]

string = PascalString(u16, "utf8")                  # s: len[2] utf8[len]

qid = Struct(                                       # qid[13]
    "type" / u8,
    "version" / u32,
    "path" / u64,
)

data = Prefixed(u32, GreedyBytes)                   # count[4] data[count]


def exactly(lengthfield, subcon):
    """length[n] followed by exactly that many bytes, which hold subcon and nothing else."""
    return Prefixed(lengthfield, FocusedSeq("value", "value" / subcon, Terminated))


def frame(type_num, *body):
    """size[4] type[1] tag[2] body, where size counts the whole frame."""
    return Prefixed(u32, Struct(
        Const(type_num, u8),                        # type[1]
        "tag" / u16,                                # tag[2]
        *body,
        Terminated,                                 # nothing may follow the body
    ), includelength=True)


# ---------------------------------------------------------------------------
# the stat structure (stat(5)); 9P2000.u appends four fields

Stat9P2000 = exactly(u16, Struct(                   # size[2]: bytes that follow
    "type" / u16,
    "dev" / u32,
    "qid" / qid,
    "mode" / u32,
    "atime" / u32,
    "mtime" / u32,
    "length" / u64,
    "name" / string,
    "uid" / string,
    "gid" / string,
    "muid" / string,
))

Stat9P2000u = exactly(u16, Struct(
    "type" / u16,
    "dev" / u32,
    "qid" / qid,
    "mode" / u32,
    "atime" / u32,
    "mtime" / u32,
    "length" / u64,
    "name" / string,
    "uid" / string,
    "gid" / string,
    "muid" / string,
    "extension" / string,                           # .u: symlink target, device, ...
    "n_uid" / u32,                                  # .u: numeric ids
    "n_gid" / u32,
    "n_muid" / u32,
))

# A directory read in 9P2000/.u returns whole stat entries back to back.
StatEntries9P2000 = GreedyRange(Stat9P2000)
StatEntries9P2000u = GreedyRange(Stat9P2000u)

# Rstat and Twstat carry stat[n]: a count n[2], then the stat, which has its own
# size[2] -- "the size appears twice" (stat(5), BUGS).
nstat9P2000 = exactly(u16, Stat9P2000)
nstat9P2000u = exactly(u16, Stat9P2000u)

# A 9P2000.L directory entry (Rreaddir data): qid[13] offset[8] type[1] name[s]
Dirent = Struct(
    "qid" / qid,
    "offset" / u64,
    "type" / u8,
    "name" / string,
)
Dirents = GreedyRange(Dirent)

# ---------------------------------------------------------------------------
# 9P2000 (intro(5))

NINEP2000 = {
    "Tversion": frame(100, "msize" / u32, "version" / string),
    "Rversion": frame(101, "msize" / u32, "version" / string),
    "Tauth":    frame(102, "afid" / u32, "uname" / string, "aname" / string),
    "Rauth":    frame(103, "aqid" / qid),
    "Tattach":  frame(104, "fid" / u32, "afid" / u32, "uname" / string, "aname" / string),
    "Rattach":  frame(105, "qid" / qid),
    # 106 would be Terror, which is illegal
    "Rerror":   frame(107, "ename" / string),
    "Tflush":   frame(108, "oldtag" / u16),
    "Rflush":   frame(109),
    "Twalk":    frame(110, "fid" / u32, "newfid" / u32,
                      "wnames" / PrefixedArray(u16, string)),       # nwname[2] nwname*(wname[s])
    "Rwalk":    frame(111, "wqids" / PrefixedArray(u16, qid)),     # nwqid[2] nwqid*(wqid[13])
    "Topen":    frame(112, "fid" / u32, "mode" / u8),
    "Ropen":    frame(113, "qid" / qid, "iounit" / u32),
    "Tcreate":  frame(114, "fid" / u32, "name" / string, "perm" / u32, "mode" / u8),
    "Rcreate":  frame(115, "qid" / qid, "iounit" / u32),
    "Tread":    frame(116, "fid" / u32, "offset" / u64, "count" / u32),
    "Rread":    frame(117, "data" / data),
    "Twrite":   frame(118, "fid" / u32, "offset" / u64, "data" / data),
    "Rwrite":   frame(119, "count" / u32),
    "Tclunk":   frame(120, "fid" / u32),
    "Rclunk":   frame(121),
    "Tremove":  frame(122, "fid" / u32),
    "Rremove":  frame(123),
    "Tstat":    frame(124, "fid" / u32),
    "Rstat":    frame(125, "stat" / nstat9P2000),
    "Twstat":   frame(126, "fid" / u32, "stat" / nstat9P2000),
    "Rwstat":   frame(127),
}

# ---------------------------------------------------------------------------
# 9P2000.u: the same messages; five of them carry more

NINEP2000U = dict(
    NINEP2000,
    Tauth=frame(102, "afid" / u32, "uname" / string, "aname" / string,
                "n_uname" / u32),                                   # numeric user id
    Tattach=frame(104, "fid" / u32, "afid" / u32, "uname" / string, "aname" / string,
                  "n_uname" / u32),
    Rerror=frame(107, "ename" / string, "errno" / u32),             # Unix errno
    Tcreate=frame(114, "fid" / u32, "name" / string, "perm" / u32, "mode" / u8,
                  "extension" / string),                            # symlink target etc.
    Rstat=frame(125, "stat" / nstat9P2000u),
    Twstat=frame(126, "fid" / u32, "stat" / nstat9P2000u),
)

# ---------------------------------------------------------------------------
# 9P2000.L (diod protocol.md, Linux 9p.h): the .u forms of version, auth, attach,
# flush, walk, read, write, clunk and remove, plus the Linux messages.  Open, create,
# stat, wstat and Rerror are not part of 9P2000.L (Rlopen, Rlcreate, Rgetattr, ...,
# and Rlerror replace them).

_LEGACY = ("Rerror", "Topen", "Ropen", "Tcreate", "Rcreate", "Tstat", "Rstat", "Twstat",
           "Rwstat")

NINEP2000L = {name: sc for name, sc in NINEP2000U.items() if name not in _LEGACY}
NINEP2000L.update({
    "Tlerror":      frame(6),                                       # defined, never used
    "Rlerror":      frame(7, "ecode" / u32),
    "Tstatfs":      frame(8, "fid" / u32),
    "Rstatfs":      frame(9, "type" / u32, "bsize" / u32, "blocks" / u64, "bfree" / u64,
                          "bavail" / u64, "files" / u64, "ffree" / u64, "fsid" / u64,
                          "namelen" / u32),
    "Tlopen":       frame(12, "fid" / u32, "flags" / u32),
    "Rlopen":       frame(13, "qid" / qid, "iounit" / u32),
    "Tlcreate":     frame(14, "fid" / u32, "name" / string, "flags" / u32, "mode" / u32,
                          "gid" / u32),
    "Rlcreate":     frame(15, "qid" / qid, "iounit" / u32),
    "Tsymlink":     frame(16, "fid" / u32, "name" / string, "symtgt" / string, "gid" / u32),
    "Rsymlink":     frame(17, "qid" / qid),
    "Tmknod":       frame(18, "dfid" / u32, "name" / string, "mode" / u32, "major" / u32,
                          "minor" / u32, "gid" / u32),
    "Rmknod":       frame(19, "qid" / qid),
    "Trename":      frame(20, "fid" / u32, "dfid" / u32, "name" / string),
    "Rrename":      frame(21),
    "Treadlink":    frame(22, "fid" / u32),
    "Rreadlink":    frame(23, "target" / string),
    "Tgetattr":     frame(24, "fid" / u32, "request_mask" / u64),
    "Rgetattr":     frame(25, "valid" / u64, "qid" / qid, "mode" / u32, "uid" / u32,
                          "gid" / u32, "nlink" / u64, "rdev" / u64, "size" / u64,
                          "blksize" / u64, "blocks" / u64,
                          "atime_sec" / u64, "atime_nsec" / u64,
                          "mtime_sec" / u64, "mtime_nsec" / u64,
                          "ctime_sec" / u64, "ctime_nsec" / u64,
                          "btime_sec" / u64, "btime_nsec" / u64,
                          "gen" / u64, "data_version" / u64),
    "Tsetattr":     frame(26, "fid" / u32, "valid" / u32, "mode" / u32, "uid" / u32,
                          "gid" / u32, "size" / u64,
                          "atime_sec" / u64, "atime_nsec" / u64,
                          "mtime_sec" / u64, "mtime_nsec" / u64),
    "Rsetattr":     frame(27),
    "Txattrwalk":   frame(30, "fid" / u32, "newfid" / u32, "name" / string),
    "Rxattrwalk":   frame(31, "size" / u64),
    "Txattrcreate": frame(32, "fid" / u32, "name" / string, "attr_size" / u64,
                          "flags" / u32),
    "Rxattrcreate": frame(33),
    "Treaddir":     frame(40, "fid" / u32, "offset" / u64, "count" / u32),
    "Rreaddir":     frame(41, "data" / data),                       # packed Dirents
    # diod documents fid[4] only; Linux sends fid[4] datasync[4].
    "Tfsync":       frame(50, "fid" / u32, "datasync" / Optional(u32)),
    "Rfsync":       frame(51),
    "Tlock":        frame(52, "fid" / u32, "type" / u8, "flags" / u32, "start" / u64,
                          "length" / u64, "proc_id" / u32, "client_id" / string),
    "Rlock":        frame(53, "status" / u8),
    "Tgetlock":     frame(54, "fid" / u32, "type" / u8, "start" / u64, "length" / u64,
                          "proc_id" / u32, "client_id" / string),
    "Rgetlock":     frame(55, "type" / u8, "start" / u64, "length" / u64, "proc_id" / u32,
                          "client_id" / string),
    "Tlink":        frame(70, "dfid" / u32, "fid" / u32, "name" / string),
    "Rlink":        frame(71),
    "Tmkdir":       frame(72, "dfid" / u32, "name" / string, "mode" / u32, "gid" / u32),
    "Rmkdir":       frame(73, "qid" / qid),
    "Trenameat":    frame(74, "olddirfid" / u32, "oldname" / string, "newdirfid" / u32,
                          "newname" / string),
    "Rrenameat":    frame(75),
    "Tunlinkat":    frame(76, "dirfid" / u32, "name" / string, "flags" / u32),
    "Runlinkat":    frame(77),
})

DIALECTS = {"9P2000": NINEP2000, "9P2000.u": NINEP2000U, "9P2000.L": NINEP2000L}
STAT = {"9P2000": Stat9P2000, "9P2000.u": Stat9P2000u, "9P2000.L": Stat9P2000u}
STAT_ENTRIES = {"9P2000": StatEntries9P2000, "9P2000.u": StatEntries9P2000u,
                "9P2000.L": StatEntries9P2000u}

# The type numbers, written out once more from the documents.
TYPE_NUMBERS = {
    "Tlerror": 6, "Rlerror": 7, "Tstatfs": 8, "Rstatfs": 9, "Tlopen": 12, "Rlopen": 13,
    "Tlcreate": 14, "Rlcreate": 15, "Tsymlink": 16, "Rsymlink": 17, "Tmknod": 18,
    "Rmknod": 19, "Trename": 20, "Rrename": 21, "Treadlink": 22, "Rreadlink": 23,
    "Tgetattr": 24, "Rgetattr": 25, "Tsetattr": 26, "Rsetattr": 27, "Txattrwalk": 30,
    "Rxattrwalk": 31, "Txattrcreate": 32, "Rxattrcreate": 33, "Treaddir": 40,
    "Rreaddir": 41, "Tfsync": 50, "Rfsync": 51, "Tlock": 52, "Rlock": 53, "Tgetlock": 54,
    "Rgetlock": 55, "Tlink": 70, "Rlink": 71, "Tmkdir": 72, "Rmkdir": 73, "Trenameat": 74,
    "Rrenameat": 75, "Tunlinkat": 76, "Runlinkat": 77,
    "Tversion": 100, "Rversion": 101, "Tauth": 102, "Rauth": 103, "Tattach": 104,
    "Rattach": 105, "Rerror": 107, "Tflush": 108, "Rflush": 109, "Twalk": 110,
    "Rwalk": 111, "Topen": 112, "Ropen": 113, "Tcreate": 114, "Rcreate": 115,
    "Tread": 116, "Rread": 117, "Twrite": 118, "Rwrite": 119, "Tclunk": 120,
    "Rclunk": 121, "Tremove": 122, "Rremove": 123, "Tstat": 124, "Rstat": 125,
    "Twstat": 126, "Rwstat": 127,
}
_BY_TYPE = {d: {TYPE_NUMBERS[name]: name for name in table} for d, table in DIALECTS.items()}


# ---------------------------------------------------------------------------
# plain values in and out

_QID_FIELDS = ("qid", "aqid")


def _qid_in(v):
    if isinstance(v, dict):
        return v
    t, ver, path = v
    return {"type": t, "version": ver, "path": path}


def _qid_out(c):
    return (c["type"], c["version"], c["path"])


_STAT_NAMES = ("type", "dev", "qid", "mode", "atime", "mtime", "length", "name", "uid",
               "gid", "muid", "extension", "n_uid", "n_gid", "n_muid")


def _stat_in(st):
    if isinstance(st, dict):
        d = dict(st)
    else:
        d = {n: getattr(st, n) for n in _STAT_NAMES if hasattr(st, n)}
    d["qid"] = _qid_in(d["qid"])
    return d


def _stat_out(c):
    d = {k: v for k, v in c.items() if not k.startswith("_")}
    d["qid"] = _qid_out(d["qid"])
    return d


def _fields_in(fields):
    d = dict(fields)
    d.setdefault("tag", 0)
    for k in _QID_FIELDS:
        if k in d:
            d[k] = _qid_in(d[k])
    if "wqids" in d:
        d["wqids"] = [_qid_in(q) for q in d["wqids"]]
    if "wnames" in d:
        d["wnames"] = list(d["wnames"])
    if "stat" in d:
        d["stat"] = _stat_in(d["stat"])
    if "data" in d:
        d["data"] = bytes(d["data"])
    return d


def _fields_out(c):
    d = {k: v for k, v in c.items() if not k.startswith("_")}
    for k in _QID_FIELDS:
        if k in d:
            d[k] = _qid_out(d[k])
    if "wqids" in d:
        d["wqids"] = [_qid_out(q) for q in d["wqids"]]
    if "wnames" in d:
        d["wnames"] = list(d["wnames"])
    if "stat" in d:
        d["stat"] = _stat_out(d["stat"])
    return d


def ref_encode(msg_name, fields, dialect):
    """The frame of message msg_name (e.g. "Twalk") with these fields (tag included)."""
    return DIALECTS[dialect][msg_name].build(_fields_in(fields))


def ref_decode(frame_bytes, dialect):
    """(message name, fields) of one whole frame; raises ConstructError if invalid."""
    b = bytes(frame_bytes)
    if len(b) < 7:
        raise ConstructError("frame of %d bytes is shorter than size[4] type[1] tag[2]" % len(b))
    name = _BY_TYPE[dialect].get(b[4])
    if name is None:
        raise ConstructError("type %d is not a %s message" % (b[4], dialect))
    stream = io.BytesIO(b)
    c = DIALECTS[dialect][name].parse_stream(stream)
    if stream.tell() != len(b):
        raise ConstructError("size[4] says %d bytes, the frame has %d" % (stream.tell(), len(b)))
    return name, _fields_out(c)


def ref_pack_stat(st, dialect):
    """One stat entry as a directory read returns it."""
    return STAT[dialect].build(_stat_in(st))


def ref_unpack_stats(b, dialect):
    """All stat entries of a directory read (9P2000/.u), as dicts."""
    stream = io.BytesIO(bytes(b))
    out = [_stat_out(c) for c in STAT_ENTRIES[dialect].parse_stream(stream)]
    if stream.tell() != len(b):
        raise ConstructError("malformed stat entry at byte %d" % stream.tell())
    return out


def ref_pack_dirent(qid_, offset, dtype, name):
    return Dirent.build({"qid": _qid_in(qid_), "offset": offset, "type": dtype, "name": name})


def ref_unpack_dirents(b):
    """Entries of an Rreaddir payload as (qid, offset, type, name) tuples."""
    stream = io.BytesIO(bytes(b))
    out = [(_qid_out(c["qid"]), c["offset"], c["type"], c["name"])
           for c in Dirents.parse_stream(stream)]
    if stream.tell() != len(b):
        raise ConstructError("malformed directory entry at byte %d" % stream.tell())
    return out
