"""Plausible 9P requests for the live campaign: what a confused or hostile client of
the fuzz target (fuzz.target) might send.

A Session is one connection's client side.  It remembers the fids it believes it has
made (a walk's newfid, an attach's fid) and which of them it opened: it believes each
request succeeds until its error comes back (the requests go out in a pipeline, so a
batch is made before its replies arrive).  It picks most fids from those: walks
mostly start at the root fid, opens take walked fids, reads and writes take opened
ones, creates take directories; a fifth of the requests are a file's whole life
(walk, open, I/O, clunk).  The rest of the time a fid is one it never made, NOFID or
any number.  Names come from the target's tree (and names no file may have), offsets
and counts from the edges (0, the msize, 2^63, 2^64-1), modes and flags from what
clients send and what they must not.
"""

import collections

from nine import protocol as P
from nine.protocol import ProtocolError

from . import frames as F

PATHS = [(), ("files",), ("files", "hello.txt"), ("files", "dir"), ("files", "dir", "inner"),
         ("files", "big"), ("files", "link"), ("files", "fifo"), ("files", "ro.txt"),
         ("files", "escape"), ("files", "abs"), ("files", "n0"), ("files", "dir", "n1"),
         ("date",), ("null",), ("slow",), ("log",), ("sub",), ("sub", "a"), ("sub", "dyn"),
         ("..",), ("files", ".."), ("files", "dir", "..", "big"), ("hello.txt",), ("dir",),
         ("dir", "inner"), ("big",), ("link",), ("escape",), ("fifo",), ("n0",),
         ("nonexistent",)]
#: paths of PATHS that are directories (from aname "", and from "files")
DIRS = {(), ("files",), ("files", "dir"), ("sub",), ("dir",), ("files", "..")}
NEW_NAMES = ["n0", "n1", "n2", "n3", "hello.txt", "dir", "big", "link", "log", "date", "sub",
             "x" * 255, "x" * 256, "", ".", "..", "a/b", "nul\0", "héllo", "日本"]
SYMLINK_TARGETS = ["hello.txt", "dir", "../outside/canary", "/etc/passwd", "", "x" * 4000,
                   "../../../../etc", "n0"]
XATTR_NAMES = ["", "user.a", "user.b", "security.selinux", "trusted.x",
               "system.posix_acl_access", "user." + "x" * 300, "bogus"]
OFFSETS = [0, 0, 0, 1, 5, 100, 4096, 65536, 1 << 31, 1 << 32, 1 << 62, (1 << 63) - 1, 1 << 63,
           (1 << 64) - 1]
COUNTS = [0, 1, 13, 100, 4096, 8192, 8192, 65536, 1 << 20, 0xFFFFFFFF]
MSIZES = [65560] * 8 + [(1 << 20) + 24] * 6 + [8192] * 3 + [0xFFFFFFFF, 4096, 300, 100]
IDS = [0, 0, 0, 1000, 65534, P.NONUNAME, 0x7FFFFFFF]
LFLAGS = [P.L_O_RDONLY, P.L_O_RDONLY, P.L_O_WRONLY, P.L_O_RDWR, P.L_O_RDWR | P.L_O_TRUNC,
          P.L_O_WRONLY | P.L_O_APPEND, P.L_O_RDONLY | P.L_O_DIRECTORY,
          P.L_O_CREAT | P.L_O_EXCL | P.L_O_RDWR, P.L_O_NOFOLLOW, P.L_O_RDWR | P.L_O_NONBLOCK,
          0xFFFFFFFF, P.L_O_ACCMODE]
MODES_9P = [P.OREAD, P.OREAD, P.OWRITE, P.ORDWR, P.OEXEC, P.OREAD | P.OTRUNC,
            P.ORDWR | P.ORCLOSE, P.OWRITE | P.OAPPEND, 0xFF]
PERMS = [0o644, 0o644, 0o755 | P.DMDIR, 0o777 | P.DMSYMLINK, P.DMLINK, P.DMDEVICE | 0o600,
         P.DMNAMEDPIPE | 0o600, P.DMSOCKET | 0o600, P.DMAPPEND | P.DMEXCL | 0o600,
         P.DMSETUID | 0o755, 0xFFFFFFFF]
EXTENSIONS = ["", "hello.txt", "c 1 3", "b 8 0", "p", "0", "1", "x" * 300, "c 1"]
FILE_MODES = [0o644, 0o644, 0o755, 0o100644, 0o010644, 0o020600, 0o060600, 0o140600, 0o4755,
              0o7777, 0xFFFFFFFF]
WEIGHTS_L = {"Twalk": 20, "Tclunk": 6, "Tlopen": 8, "Tread": 8, "Twrite": 6, "Treaddir": 6,
             "Tgetattr": 5, "Tsetattr": 3, "Tlcreate": 4, "Tmkdir": 2, "Tsymlink": 2,
             "Tmknod": 1, "Tlink": 1, "Trename": 1, "Trenameat": 1, "Tunlinkat": 2,
             "Tremove": 2, "Treadlink": 1, "Txattrwalk": 2, "Txattrcreate": 2, "Tlock": 2,
             "Tgetlock": 1, "Tstatfs": 1, "Tfsync": 1, "Tflush": 3, "Tauth": 1, "Tattach": 1}
WEIGHTS_9P = {"Twalk": 20, "Tclunk": 6, "Topen": 8, "Tread": 8, "Twrite": 6, "Tcreate": 4,
              "Tstat": 5, "Twstat": 3, "Tremove": 2, "Tflush": 3, "Tauth": 1, "Tattach": 1}
T_NAMES = [n for n in P.BY_NAME if n.startswith("T")]
_FID_FIELDS = ("fid", "dfid", "dirfid", "olddirfid", "newdirfid")
_OPEN_USERS = {"Tread", "Twrite", "Treaddir", "Tlock", "Tgetlock", "Tfsync"}
_MAKERS = {"Tlcreate", "Tcreate", "Tsymlink"}   # their fid is a directory
_PENDING = {"Twalk", "Txattrwalk", "Tattach", "Tlopen", "Topen", "Tlcreate", "Tcreate"}
_MAKES_FID = {P.BY_NAME[n].mtype for n in ("Twalk", "Txattrwalk", "Tattach")}
_TATTACH = P.BY_NAME["Tattach"].mtype


class Session:
    """The requests of one fuzzed connection in a dialect."""

    def __init__(self, rng, dialect):
        self.rng = rng
        self.dialect = dialect
        self.msize = 65560
        self.fids = {}          # fid -> [path, opened], as this client believes
        self.pending = {}       # tag -> a request that makes or opens a fid
        self.refused = False    # the server answered the last Tversion "unknown"
        self.tags = collections.deque(maxlen=16)
        self.next_tag = 0
        weights = WEIGHTS_L if dialect == P.V9P2000L else WEIGHTS_9P
        self.names, self.weights = list(weights), list(weights.values())
        self.pool = collections.deque(maxlen=16)  # recent frames, to splice with

    # --- what it picks --------------------------------------------------------------
    def tag(self):
        if self.rng.random() < 0.01:
            return P.NOTAG
        self.next_tag = (self.next_tag + 1) % 64
        self.tags.append(self.next_tag)
        return self.next_tag

    def any_fid(self):
        """A fid this client may never have made."""
        r = self.rng.random()
        if r < 0.3:
            return P.NOFID
        if r < 0.5:
            return self.rng.randrange(1 << 32)
        return self.rng.randrange(16)

    def fid(self, msg, field):
        """A fid for msg's field: mostly one it made, of the right sort (the root fid is
        opened, clunked or removed only now and then: it is where walks start)."""
        rng = self.rng
        fids = self.fids
        if rng.random() < 0.1 or not fids:
            return self.any_fid()
        if msg in ("Twalk", "Txattrwalk") and 0 in fids and rng.random() < 0.6:
            return 0
        if msg == "Twalk":
            want = [f for f, (p, o) in fids.items() if not o]
        elif msg in ("Tlopen", "Topen"):
            want = [f for f, (p, o) in fids.items() if not o and f]
        elif msg in _OPEN_USERS:
            want = [f for f, (p, o) in fids.items() if o]
        elif msg in _MAKERS or field != "fid":
            want = [f for f, (p, o) in fids.items() if not o and p in DIRS]
        elif msg in ("Tclunk", "Tremove"):
            want = [f for f in fids if f]
        else:
            want = list(fids)
        if not want:
            return rng.choice(list(fids)) if rng.random() < 0.1 else self.any_fid()
        return rng.choice(want)

    def newfid(self):
        r = self.rng.random()
        if r < 0.9:
            free = [f for f in range(1, 16) if f not in self.fids]
            if free:
                return self.rng.choice(free)
        return self.rng.choice(list(self.fids)) if self.fids and r < 0.95 else self.any_fid()

    def path(self):
        rng = self.rng
        r = rng.random()
        if r < 0.8:
            return list(rng.choice(PATHS))
        if r < 0.95:
            return [rng.choice(NEW_NAMES + ["files", "sub", "..", "."])
                    for _ in range(rng.randint(1, 4))]
        return ["..", "files"] * rng.choice((8, 9, 50))     # 16, 18, 100 names

    # --- the requests -------------------------------------------------------------
    def start(self):
        """Tversion and Tattach of a new session."""
        rng = self.rng
        version = self.dialect if rng.random() < 0.97 else rng.choice(
            ("9P2000.X", "9P1", "", "9P2000.L.ext", "9P2000.u.x"))
        self.msize = rng.choice(MSIZES)
        self.fids.clear()
        self.pending.clear()
        return [P.Tversion(msize=self.msize, version=version, tag=P.NOTAG),
                self.attach(fid=0)]

    def attach(self, fid=None):
        rng = self.rng
        fid = self.newfid() if fid is None else fid
        self.fids[fid] = [(), False]
        msg = P.Tattach(fid=fid, afid=P.NOFID if rng.random() < 0.9 else self.any_fid(),
                        uname=rng.choice(("root",) * 6 + ("nobody", "", "glenda")),
                        aname=rng.choice(("",) * 12 + ("files", "files", "bogus", "/")),
                        n_uname=rng.choice(IDS), tag=self.tag())
        self.pending[msg.tag] = msg
        return msg

    def request(self):
        """Requests to send: one of this dialect, or a file's life (walk, open, I/O,
        clunk); now and then one of another dialect, or a Tversion mid-session and an
        attach."""
        rng = self.rng
        r = rng.random()
        if r < 0.003 or (self.refused and r < 0.3):
            self.refused = False
            msgs = self.start()
            msgs[0].tag = self.tag()
            return msgs
        if not self.fids and r < 0.5:
            return [self.attach()]
        if r > 0.8 and 0 in self.fids:
            return self.file_life()
        name = rng.choice(T_NAMES) if r < 0.03 else rng.choices(self.names, self.weights)[0]
        if name == "Tattach":
            return [self.attach()]
        if name == "Tversion":
            return self.start()
        return [self.make(name)]

    def make(self, name, **fixed):
        """A request of type name: the fields not fixed picked by value()."""
        cls = P.BY_NAME[name]
        vals = {f: fixed[f] if f in fixed else self.value(name, f, kind)
                for f, kind in cls.fields}
        msg = cls(tag=self.tag(), **vals)
        self.believe(msg)
        return msg

    def file_life(self):
        """Walk from the root fid to a new fid, open it, one to three reads, writes or
        directory reads, and (mostly) clunk it."""
        rng = self.rng
        path = list(rng.choice(PATHS))
        fid = rng.choice([f for f in range(1, 32) if f not in self.fids])
        dotl = self.dialect == P.V9P2000L
        msgs = [self.make("Twalk", fid=0, newfid=fid, wnames=path),
                self.make("Tlopen" if dotl else "Topen", fid=fid)]
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(("Tread", "Twrite", "Treaddir" if dotl and tuple(path) in DIRS
                             else "Tread"))
            msgs.append(self.make(op, fid=fid))
        if rng.random() < 0.8:
            msgs.append(self.make("Tclunk", fid=fid))
        return msgs

    def believe(self, msg):
        """What msg does to the fids, if it succeeds."""
        name = type(msg).__name__
        fids = self.fids
        if name in _PENDING:
            self.pending[msg.tag] = msg
        if name in ("Twalk", "Txattrwalk"):
            old = fids.get(msg.fid)
            if old is not None and (name == "Txattrwalk" or not old[1]):
                path = old[0] + tuple(msg.wnames) if name == "Twalk" else old[0]
                fids[msg.newfid] = [path, name == "Txattrwalk"]
        elif name in ("Tlopen", "Topen", "Tlcreate", "Tcreate") and msg.fid in fids:
            fids[msg.fid][1] = True
        elif name in ("Tclunk", "Tremove"):
            fids.pop(msg.fid, None)

    def answered(self, tag, reply):
        """A reply came (a message, None when it did not decode): an error to a request
        that made or opened a fid undoes what believe() did."""
        if reply is not None and reply.mtype == 101:
            self.refused = reply.version == "unknown"
        msg = self.pending.pop(tag, None)
        if msg is None or reply is None:
            return
        if reply.mtype not in (7, 107, msg.mtype + 1):
            return              # the tag was taken by another request meanwhile
        if reply.mtype == 111 and len(reply.wqids) == len(msg.wnames) or \
                reply.mtype == msg.mtype + 1 != 111:
            return
        if msg.mtype in _MAKES_FID:
            made = msg.newfid if hasattr(msg, "newfid") else msg.fid
            if made != getattr(msg, "fid", None) or msg.mtype == _TATTACH:
                self.fids.pop(made, None)
        elif msg.fid in self.fids:
            self.fids[msg.fid][1] = False

    def value(self, msg, field, kind):
        rng = self.rng
        if field in _FID_FIELDS:
            return self.fid(msg, field)
        if field == "newfid":
            return self.newfid()
        if field == "afid":
            return P.NOFID if rng.random() < 0.5 else self.any_fid()
        if field == "wnames":
            return self.path()
        if field in ("name", "oldname", "newname"):
            return rng.choice(XATTR_NAMES if msg.startswith("Txattr") else NEW_NAMES)
        if field == "symtgt":
            return rng.choice(SYMLINK_TARGETS)
        if field == "offset":
            return rng.choice(OFFSETS)
        if field == "count":
            return rng.choice(COUNTS + [self.msize - P.IOHDRSZ, self.msize])
        if field == "data":     # now and then a frame of up to the msize (the server
            n = rng.choice((0, 1, 10, 10, 100, 100, 1000, 8000))     # reads it apart)
            if rng.random() < 0.02:
                n = min(rng.choice((20000, 65536, 300000, 1 << 20)), self.msize - 23)
            return rng.randbytes(max(n, 0))
        if field in ("uid", "gid", "n_uname"):
            return rng.choice(IDS)
        if field == "mode":
            return rng.choice(MODES_9P if kind == "u8" else FILE_MODES)
        if field == "flags":
            return rng.choice({"Tunlinkat": (0, 0x200, 0xFFFFFFFF),
                               "Tlock": (0, 1, 2, 0xFFFFFFFF),
                               "Txattrcreate": (0, 1, 2, 3)}.get(msg, LFLAGS))
        if field == "perm":
            return rng.choice(PERMS)
        if field == "extension":
            return rng.choice(EXTENSIONS)
        if field == "valid":
            return rng.randrange(0x200) if rng.random() < 0.9 else rng.randrange(1 << 32)
        if field == "size":
            return rng.choice((0, 1, 10, 4096, 1 << 40, (1 << 63) - 1, (1 << 64) - 1))
        if field == "attr_size":
            return rng.choice((0, 1, 10, 4096, 65536, 65537, 1 << 32, (1 << 64) - 1))
        if field == "request_mask":
            return rng.choice((P.GETATTR_ALL, P.GETATTR_BASIC, 0, (1 << 64) - 1))
        if field in ("start", "length"):
            return rng.choice((0, 1, 100, (1 << 63) - 1, 1 << 63, (1 << 64) - 1))
        if field == "type":     # Tlock, Tgetlock
            return rng.choice((0, 1, 2, 3, 255))
        if field == "client_id":
            return rng.choice(("fuzz", "", "x" * 1000))
        if field == "oldtag":
            return rng.choice(self.tags) if self.tags and rng.random() < 0.9 else \
                rng.randrange(0x10000)
        if field == "uname":
            return rng.choice(("root", "nobody", ""))
        if field == "aname":
            return rng.choice(("", "files", "bogus"))
        if field == "stat":
            return self.wstat()
        if field in ("major", "minor"):
            return rng.choice((0, 1, 3, 0xFFFFFFFF))
        return F.random_value(rng, kind, msg, self.dialect)

    def wstat(self):
        """A Twstat entry: "don't touch" but for one to three fields."""
        rng = self.rng
        st = P.Stat.dont_touch()
        for _ in range(rng.randint(1, 3)):
            f = rng.choice(("name", "mode", "length", "mtime", "atime", "uid", "gid",
                            "n_uid", "n_gid", "extension"))
            setattr(st, f, {"name": lambda: rng.choice(NEW_NAMES),
                            "mode": lambda: rng.choice(FILE_MODES + PERMS) & 0xFFFFFFFF,
                            "length": lambda: rng.choice((0, 5, 1 << 40)),
                            "uid": lambda: rng.choice(("root", "nobody", "1000", "")),
                            "gid": lambda: rng.choice(("root", "nogroup", "")),
                            "extension": lambda: rng.choice(EXTENSIONS)}.get(
                f, lambda: rng.randrange(1 << 32))())
        return st

    def encode(self, msg):
        """(frame, dialect) of msg: in this dialect, else in 9P2000.L (a message of
        another dialect); (None, None) when neither can carry it."""
        for d in (self.dialect, P.V9P2000L):
            try:
                return P.encode(msg, d), d
            except ProtocolError:
                pass
        return None, None
