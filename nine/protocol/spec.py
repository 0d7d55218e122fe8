"""The 9P message table: one line per message, for 9P2000, 9P2000.u and 9P2000.L.

Field kinds:
  u8 u16 u32 u64   little-endian unsigned integers
  s                string: u16 length + UTF-8 bytes
  qid              13 bytes: type u8, version u32, path u64
  wnames           u16 count + that many strings (Twalk)
  qids             u16 count + that many qids (Rwalk)
  data             u32 count + bytes (Rread, Twrite, Rreaddir)
  stat             u16 size + one stat structure (Rstat, Twstat)
  ?u32             a trailing u32 that may be absent (Tfsync's datasync)

DOTU lists the fields that 9P2000.u (and 9P2000.L, which inherits the .u forms of
Tauth/Tattach) append to a 9P2000 message.  In plain 9P2000 they are not on the wire
and take their default value when decoded.
"""

# (type number, name, fields)
MESSAGES = [
    # 9P2000.L
    (6, "Tlerror", []),
    (7, "Rlerror", [("ecode", "u32")]),
    (8, "Tstatfs", [("fid", "u32")]),
    (9, "Rstatfs", [("type", "u32"), ("bsize", "u32"), ("blocks", "u64"), ("bfree", "u64"),
                    ("bavail", "u64"), ("files", "u64"), ("ffree", "u64"), ("fsid", "u64"),
                    ("namelen", "u32")]),
    (12, "Tlopen", [("fid", "u32"), ("flags", "u32")]),
    (13, "Rlopen", [("qid", "qid"), ("iounit", "u32")]),
    (14, "Tlcreate", [("fid", "u32"), ("name", "s"), ("flags", "u32"), ("mode", "u32"),
                      ("gid", "u32")]),
    (15, "Rlcreate", [("qid", "qid"), ("iounit", "u32")]),
    (16, "Tsymlink", [("fid", "u32"), ("name", "s"), ("symtgt", "s"), ("gid", "u32")]),
    (17, "Rsymlink", [("qid", "qid")]),
    (18, "Tmknod", [("dfid", "u32"), ("name", "s"), ("mode", "u32"), ("major", "u32"),
                    ("minor", "u32"), ("gid", "u32")]),
    (19, "Rmknod", [("qid", "qid")]),
    (20, "Trename", [("fid", "u32"), ("dfid", "u32"), ("name", "s")]),
    (21, "Rrename", []),
    (22, "Treadlink", [("fid", "u32")]),
    (23, "Rreadlink", [("target", "s")]),
    (24, "Tgetattr", [("fid", "u32"), ("request_mask", "u64")]),
    (25, "Rgetattr", [("valid", "u64"), ("qid", "qid"), ("mode", "u32"), ("uid", "u32"),
                      ("gid", "u32"), ("nlink", "u64"), ("rdev", "u64"), ("size", "u64"),
                      ("blksize", "u64"), ("blocks", "u64"),
                      ("atime_sec", "u64"), ("atime_nsec", "u64"),
                      ("mtime_sec", "u64"), ("mtime_nsec", "u64"),
                      ("ctime_sec", "u64"), ("ctime_nsec", "u64"),
                      ("btime_sec", "u64"), ("btime_nsec", "u64"),
                      ("gen", "u64"), ("data_version", "u64")]),
    (26, "Tsetattr", [("fid", "u32"), ("valid", "u32"), ("mode", "u32"), ("uid", "u32"),
                      ("gid", "u32"), ("size", "u64"),
                      ("atime_sec", "u64"), ("atime_nsec", "u64"),
                      ("mtime_sec", "u64"), ("mtime_nsec", "u64")]),
    (27, "Rsetattr", []),
    (30, "Txattrwalk", [("fid", "u32"), ("newfid", "u32"), ("name", "s")]),
    (31, "Rxattrwalk", [("size", "u64")]),
    (32, "Txattrcreate", [("fid", "u32"), ("name", "s"), ("attr_size", "u64"), ("flags", "u32")]),
    (33, "Rxattrcreate", []),
    (40, "Treaddir", [("fid", "u32"), ("offset", "u64"), ("count", "u32")]),
    (41, "Rreaddir", [("data", "data")]),
    (50, "Tfsync", [("fid", "u32"), ("datasync", "?u32")]),
    (51, "Rfsync", []),
    (52, "Tlock", [("fid", "u32"), ("type", "u8"), ("flags", "u32"), ("start", "u64"),
                   ("length", "u64"), ("proc_id", "u32"), ("client_id", "s")]),
    (53, "Rlock", [("status", "u8")]),
    (54, "Tgetlock", [("fid", "u32"), ("type", "u8"), ("start", "u64"), ("length", "u64"),
                      ("proc_id", "u32"), ("client_id", "s")]),
    (55, "Rgetlock", [("type", "u8"), ("start", "u64"), ("length", "u64"), ("proc_id", "u32"),
                      ("client_id", "s")]),
    (70, "Tlink", [("dfid", "u32"), ("fid", "u32"), ("name", "s")]),
    (71, "Rlink", []),
    (72, "Tmkdir", [("dfid", "u32"), ("name", "s"), ("mode", "u32"), ("gid", "u32")]),
    (73, "Rmkdir", [("qid", "qid")]),
    (74, "Trenameat", [("olddirfid", "u32"), ("oldname", "s"), ("newdirfid", "u32"),
                       ("newname", "s")]),
    (75, "Rrenameat", []),
    (76, "Tunlinkat", [("dirfid", "u32"), ("name", "s"), ("flags", "u32")]),
    (77, "Runlinkat", []),
    # 9P2000 (+ .u extensions, see DOTU)
    (100, "Tversion", [("msize", "u32"), ("version", "s")]),
    (101, "Rversion", [("msize", "u32"), ("version", "s")]),
    (102, "Tauth", [("afid", "u32"), ("uname", "s"), ("aname", "s")]),
    (103, "Rauth", [("aqid", "qid")]),
    (104, "Tattach", [("fid", "u32"), ("afid", "u32"), ("uname", "s"), ("aname", "s")]),
    (105, "Rattach", [("qid", "qid")]),
    (107, "Rerror", [("ename", "s")]),
    (108, "Tflush", [("oldtag", "u16")]),
    (109, "Rflush", []),
    (110, "Twalk", [("fid", "u32"), ("newfid", "u32"), ("wnames", "wnames")]),
    (111, "Rwalk", [("wqids", "qids")]),
    (112, "Topen", [("fid", "u32"), ("mode", "u8")]),
    (113, "Ropen", [("qid", "qid"), ("iounit", "u32")]),
    (114, "Tcreate", [("fid", "u32"), ("name", "s"), ("perm", "u32"), ("mode", "u8")]),
    (115, "Rcreate", [("qid", "qid"), ("iounit", "u32")]),
    (116, "Tread", [("fid", "u32"), ("offset", "u64"), ("count", "u32")]),
    (117, "Rread", [("data", "data")]),
    (118, "Twrite", [("fid", "u32"), ("offset", "u64"), ("data", "data")]),
    (119, "Rwrite", [("count", "u32")]),
    (120, "Tclunk", [("fid", "u32")]),
    (121, "Rclunk", []),
    (122, "Tremove", [("fid", "u32")]),
    (123, "Rremove", []),
    (124, "Tstat", [("fid", "u32")]),
    (125, "Rstat", [("stat", "stat")]),
    (126, "Twstat", [("fid", "u32"), ("stat", "stat")]),
    (127, "Rwstat", []),
]

# Fields appended in 9P2000.u; 9P2000.L uses the .u forms of these messages too.
DOTU = {
    "Tauth": [("n_uname", "u32")],
    "Tattach": [("n_uname", "u32")],
    "Rerror": [("errno", "u32")],
    "Tcreate": [("extension", "s")],
}

# Messages a 9P2000.L peer never uses (they are still decoded, in their .u form).
NOT_IN_L = {"Rerror", "Topen", "Ropen", "Tcreate", "Rcreate", "Tstat", "Rstat", "Twstat", "Rwstat"}
# Messages that exist only in 9P2000.L.
ONLY_L = {name for num, name, _ in MESSAGES if num < 100}

STAT_FIELDS = [("type", "u16"), ("dev", "u32"), ("qid", "qid"), ("mode", "u32"),
               ("atime", "u32"), ("mtime", "u32"), ("length", "u64"), ("name", "s"),
               ("uid", "s"), ("gid", "s"), ("muid", "s")]
STAT_DOTU = [("extension", "s"), ("n_uid", "u32"), ("n_gid", "u32"), ("n_muid", "u32")]
