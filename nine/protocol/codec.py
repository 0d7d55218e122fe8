"""Sans-IO 9P codec: bytes in, message objects out, and back.

The encoders and decoders are generated from the table in spec.py, each on its first
use (all of them at import cost 25 ms, most of a one-shot client command's work):
consecutive fixed-size fields are merged into a single struct call, so the hot path
costs about what hand-written struct code costs.  Nothing here does I/O.

Every malformed input raises ProtocolError and nothing else.
"""

import struct
from collections import namedtuple

from . import spec
from .const import V9P2000, V9P2000U, V9P2000L, DIALECTS, HEADER


class ProtocolError(ValueError):
    """A frame or message that does not follow the protocol."""


Qid = namedtuple("Qid", "type version path")
Qid.__new__.__defaults__ = (0, 0, 0)

_FIXED = {"u8": ("B", 1), "u16": ("H", 2), "u32": ("I", 4), "u64": ("Q", 8), "qid": ("BIQ", 13)}
_DEFAULTS = {"u8": 0, "u16": 0, "u32": 0, "u64": 0, "?u32": 0, "s": "", "qid": Qid(0, 0, 0),
             "wnames": (), "qids": (), "data": b"", "stat": None}
_IS_DOTU = {V9P2000: False, V9P2000U: True, V9P2000L: True}


class Message:
    """Base of all message classes.  Every message has a tag."""
    __slots__ = ("tag",)
    mtype = None
    fields = ()

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__) and \
            self.tag == other.tag

    def __repr__(self):
        parts = ", ".join("%s=%r" % (f, _short(getattr(self, f))) for f in self.__slots__)
        return "%s(tag=%r, %s)" % (type(self).__name__, self.tag, parts)


def _short(v):
    if isinstance(v, (bytes, bytearray, memoryview)) and len(v) > 32:
        return bytes(v[:32]) + b"..."
    return v


class Stat:
    """The 9P2000 stat structure, with the 9P2000.u fields (ignored in plain 9P2000)."""
    __slots__ = tuple(n for n, _ in spec.STAT_FIELDS + spec.STAT_DOTU)

    def __init__(self, type=0, dev=0, qid=Qid(0, 0, 0), mode=0, atime=0, mtime=0, length=0,
                 name="", uid="", gid="", muid="", extension="", n_uid=0xFFFFFFFF,
                 n_gid=0xFFFFFFFF, n_muid=0xFFFFFFFF):
        self.type = type
        self.dev = dev
        self.qid = qid
        self.mode = mode
        self.atime = atime
        self.mtime = mtime
        self.length = length
        self.name = name
        self.uid = uid
        self.gid = gid
        self.muid = muid
        self.extension = extension
        self.n_uid = n_uid
        self.n_gid = n_gid
        self.n_muid = n_muid

    def __eq__(self, other):
        if not isinstance(other, Stat):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self):
        return "Stat(%s)" % ", ".join("%s=%r" % (f, getattr(self, f)) for f in self.__slots__)

    @classmethod
    def dont_touch(cls):
        """A wstat entry that changes nothing (all-ones integers, empty strings)."""
        return cls(type=0xFFFF, dev=0xFFFFFFFF, qid=Qid(0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF),
                   mode=0xFFFFFFFF, atime=0xFFFFFFFF, mtime=0xFFFFFFFF,
                   length=0xFFFFFFFFFFFFFFFF, n_uid=0xFFFFFFFF, n_gid=0xFFFFFFFF,
                   n_muid=0xFFFFFFFF)


# ---------------------------------------------------------------------------
# code generation

def _split_lead(fields):
    """(leading fixed-size fields, the rest)."""
    i = 0
    while i < len(fields) and fields[i][1] in _FIXED:
        i += 1
    return fields[:i], fields[i:]


# The count that starts each variable-size kind: it is read and written together with
# the header and the leading fixed-size fields when that kind comes first.
_COUNT = {"s": ("H", 2), "data": ("I", 4), "wnames": ("H", 2), "qids": ("H", 2),
          "stat": ("H", 2)}


def _gen_decoder(fields, fname, ns, EXTRA=()):
    """Source of `def fname(buf, end)`: the message in the whole frame buf of end bytes.

    The caller has checked the type byte.  One struct call reads size, type, tag, the
    leading fixed-size fields and the count of the first variable-size field."""
    structs = []

    def unpacker(fmt):
        name = "_U%d" % len(structs)
        structs.append(name)
        ns[name] = struct.Struct(fmt).unpack_from
        return name

    lead, rest = _split_lead(fields)
    hfmt = "<IBH" + "".join(_FIXED[k][0] for _, k in lead)
    hsize = 7 + sum(_FIXED[k][1] for _, k in lead)
    targets = ["size", "_t", "m.tag"]  # unpacked straight into the new message
    assign = []
    for name, kind in lead:
        if kind == "qid":
            targets += ["%s_0" % name, "%s_1" % name, "%s_2" % name]
            assign.append("m.%s = Qid(%s_0, %s_1, %s_2)" % (name, name, name, name))
        else:
            targets.append("m." + name)
    first = rest[0][1] if rest else None
    if first in _COUNT:
        hfmt += _COUNT[first][0]
        hsize += _COUNT[first][1]
        targets.append("n")
    lines = ["def %s(buf, end):" % fname,
             "    if end < %d: raise ProtocolError(_too_short(buf, end))" % hsize,
             "    m = _new(CLS)",
             "    %s = %s(buf, 0)" % (", ".join(targets), unpacker(hfmt)),
             "    if size != end: raise ProtocolError("
             "'frame size field %d does not match %d bytes' % (size, end))"]
    lines += ["    " + a for a in assign]
    lines.append("    o = %d" % hsize)
    run = []  # pending fixed fields
    at_end = False  # o == end is already known

    def flush():
        if not run:
            return
        fmt = "<" + "".join(_FIXED[k][0] for _, k in run)
        size = sum(_FIXED[k][1] for _, k in run)
        lines.append("    if o + %d > end: raise ProtocolError('message too short')" % size)
        lines.append("    t = %s(buf, o); o += %d" % (unpacker(fmt), size))
        i = 0
        for name, k in run:
            if k == "qid":
                lines.append("    m.%s = Qid(t[%d], t[%d], t[%d])" % (name, i, i + 1, i + 2))
                i += 3
            else:
                lines.append("    m.%s = t[%d]" % (name, i))
                i += 1
        run.clear()

    def count(idx, fmt, width):
        """Read the count n at o (already read with the header for the first variable field)."""
        if idx == 0:
            return
        lines.append("    if o + %d > end: raise ProtocolError('message too short')" % width)
        lines.append("    n, = %s(buf, o); o += %d" % (unpacker("<" + fmt), width))

    for idx, (name, kind) in enumerate(rest):
        if kind in _FIXED:
            run.append((name, kind))
            continue
        flush()
        if kind == "s":
            if idx == 0:
                lines.append("    e = o + n")
                lines.append("    if e > end: "
                             "raise ProtocolError('string length %d overruns the frame' % n)")
                lines.append("    m.%s = str(buf[o:e], 'utf-8'); o = e" % name)
            else:
                lines.append("    m.%s, o = _dec_str(buf, o, end)" % name)
        elif kind == "data":
            count(idx, "I", 4)
            if idx == len(rest) - 1:  # data ends the frame (Rread, Twrite, Rreaddir)
                lines.append("    if o + n != end: raise ProtocolError("
                             "'count %d overruns the frame' % n if o + n > end else "
                             "'%d trailing bytes' % (end - o - n))")
                lines.append("    m.%s = buf[o:end]" % name)
                at_end = True
            else:
                lines.append("    if o + n > end: "
                             "raise ProtocolError('count %d overruns the frame' % n)")
                lines.append("    m.%s = buf[o:o + n]; o += n" % name)
        elif kind == "wnames":
            count(idx, "H", 2)
            lines.append("    ws = []")
            lines.append("    for _ in range(n):")
            lines.append("        if o + 2 > end: raise ProtocolError('message too short')")
            lines.append("        k = buf[o] | (buf[o + 1] << 8); o += 2; e = o + k")
            lines.append("        if e > end: "
                         "raise ProtocolError('string length %d overruns the frame' % k)")
            lines.append("        ws.append(str(buf[o:e], 'utf-8')); o = e")
            lines.append("    m.%s = ws" % name)
        elif kind == "qids":
            count(idx, "H", 2)
            lines.append("    if o + 13 * n > end: "
                         "raise ProtocolError('qid count overruns the frame')")
            lines.append("    m.%s = [Qid._make(%s(buf, o + 13 * k)) for k in range(n)]"
                         % (name, unpacker("<BIQ")))
            lines.append("    o += 13 * n")
        elif kind == "stat":
            count(idx, "H", 2)
            lines.append("    e = o + n")
            lines.append("    if e > end: raise ProtocolError('stat overruns the frame')")
            lines.append("    st, o = _dec_stat(buf, o, e, DOTU)")
            lines.append("    if o != e: raise ProtocolError('stat[n] has bytes after the stat')")
            lines.append("    m.%s = st" % name)
        elif kind == "?u32":
            lines.append("    if o + 4 <= end:")
            lines.append("        m.%s = %s(buf, o)[0]; o += 4" % (name, unpacker("<I")))
            lines.append("    else: m.%s = 0" % name)
        else:  # pragma: no cover
            raise AssertionError(kind)
    flush()
    if not at_end:
        lines.append("    if o != end: raise ProtocolError('%d trailing bytes' % (end - o))")
    for extra in EXTRA:
        lines.append("    m.%s = %r" % extra)
    lines.append("    return m")
    return "\n".join(lines)


def _too_short(buf, end):
    """Why a frame of end bytes is too short for its message."""
    size = _HDR.unpack_from(buf, 0)[0]
    if size != end:
        return "frame size field %d does not match %d bytes" % (size, end)
    return "message too short"


def _gen_encoder(fields, fname, type_num, ns):
    """Source of `def fname(m)` returning the whole frame.

    One struct call writes size, type, tag, the leading fixed-size fields and the count
    of the first variable-size field; the variable-size parts are appended to it."""
    structs = []

    def packer(fmt):
        name = "_P%d" % len(structs)
        structs.append(name)
        ns[name] = struct.Struct(fmt).pack
        return name

    def args_of(run):
        args = []
        for name, k in run:
            if k == "qid":
                args += ["m.%s[0]" % name, "m.%s[1]" % name, "m.%s[2]" % name]
            else:
                args.append("m.%s" % name)
        return args

    def string(expr, indent):
        """Lines that set b to the UTF-8 of the string expr."""
        sp = " " * indent
        return [sp + "s = %s" % expr,
                sp + "b = s.encode('utf-8', 'surrogateescape') if s.__class__ is str "
                     "else _str_bytes(s)",
                sp + "if len(b) > 65535: "
                     "raise ProtocolError('string too long (%d bytes)' % len(b))"]

    # the encoder always writes Tfsync's datasync
    fields = [(n, "u32" if k == "?u32" else k) for n, k in fields]
    lead, rest = _split_lead(fields)
    hfmt = "<IBH" + "".join(_FIXED[k][0] for _, k in lead)
    hsize = 7 + sum(_FIXED[k][1] for _, k in lead)
    hargs = args_of(lead)
    lines = ["def %s(m):" % fname]
    if not rest:
        lines.append("    return %s(%d, %d, m.tag%s)" % (
            packer(hfmt), hsize, type_num, "".join(", " + a for a in hargs)))
        return "\n".join(lines)

    name, kind = rest[0]
    hfmt += _COUNT[kind][0]
    hsize += _COUNT[kind][1]
    body = None  # the single bytes object after the header, if there is only one
    if kind == "s":
        lines += string("m.%s" % name, 4)
        lines.append("    n0 = len(b)")
        body = "b"
    elif kind == "data":
        lines.append("    b = m.%s; n0 = len(b)" % name)
        body = "b"
    elif kind == "stat":
        lines.append("    b = _enc_stat(m.%s, DOTU); n0 = len(b)" % name)
        body = "b"
    elif kind == "wnames":
        lines.append("    v = m.%s; n0 = len(v); parts = []; ap = parts.append" % name)
        lines.append("    for w in v:")
        lines += string("w", 8)
        lines.append("        ap(_PH(len(b))); ap(b)")
    elif kind == "qids":
        lines.append("    v = m.%s; n0 = len(v)" % name)
        lines.append("    parts = [_PQ(q[0], q[1], q[2]) for q in v]; ap = parts.append")
    else:  # pragma: no cover
        raise AssertionError(kind)
    hargs.append("n0")
    if rest[1:] and body is not None:
        lines.append("    parts = [b]; ap = parts.append")
        body = None
    run = []

    def flush():
        if run:
            lines.append("    ap(%s(%s))" % (packer("<" + "".join(_FIXED[k][0] for _, k in run)),
                                             ", ".join(args_of(run))))
            run.clear()

    for name, kind in rest[1:]:
        if kind in _FIXED:
            run.append((name, kind))
            continue
        flush()
        if kind == "s":
            lines += string("m.%s" % name, 4)
            lines.append("    ap(_PH(len(b))); ap(b)")
        elif kind == "data":
            lines.append("    d = m.%s; ap(_PI(len(d))); ap(d)" % name)
        elif kind == "wnames":
            lines.append("    v = m.%s; ap(_PH(len(v)))" % name)
            lines.append("    for w in v:")
            lines += string("w", 8)
            lines.append("        ap(_PH(len(b))); ap(b)")
        elif kind == "qids":
            lines.append("    v = m.%s; ap(_PH(len(v)))" % name)
            lines.append("    for q in v: ap(_PQ(q[0], q[1], q[2]))")
        elif kind == "stat":
            lines.append("    b = _enc_stat(m.%s, DOTU); ap(_PH(len(b))); ap(b)" % name)
        else:  # pragma: no cover
            raise AssertionError(kind)
    flush()
    if body is None:
        lines.append("    b = b''.join(parts)")
    lines.append("    return %s(%d + %s, %d, m.tag, %s) + b" % (
        packer(hfmt), hsize, "len(b)" if body is None else "n0", type_num, ", ".join(hargs)))
    return "\n".join(lines)


def _dec_str(buf, o, end):
    if o + 2 > end:
        raise ProtocolError("message too short")
    n = buf[o] | (buf[o + 1] << 8)
    o += 2
    e = o + n
    if e > end:
        raise ProtocolError("string length %d overruns the frame" % n)
    try:
        return str(buf[o:e], "utf-8"), e
    except UnicodeDecodeError as ex:
        raise ProtocolError("string is not valid UTF-8: %s" % ex) from None


def _str_bytes(s):
    return s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(memoryview(s))


def _enc_str(s):
    b = _str_bytes(s)
    if len(b) > 0xFFFF:
        raise ProtocolError("string too long (%d bytes)" % len(b))
    return _pack("<H", len(b)) + b


_STAT_FIXED = struct.Struct("<HHIBIQIIIQ")  # size type dev qid(3) mode atime mtime length


def _dec_stat(buf, o, end, dotu):
    """Decode one stat structure (with its own size[2]) at o; returns (Stat, next offset)."""
    if o + 2 > end:
        raise ProtocolError("stat too short")
    size = buf[o] | (buf[o + 1] << 8)
    send = o + 2 + size
    if send > end:
        raise ProtocolError("stat size %d overruns" % size)
    if o + _STAT_FIXED.size > send:
        raise ProtocolError("stat too short")
    (_, typ, dev, qt, qv, qp, mode, atime, mtime, length) = _STAT_FIXED.unpack_from(buf, o)
    p = o + _STAT_FIXED.size
    name, p = _dec_str(buf, p, send)
    uid, p = _dec_str(buf, p, send)
    gid, p = _dec_str(buf, p, send)
    muid, p = _dec_str(buf, p, send)
    st = Stat(typ, dev, Qid(qt, qv, qp), mode, atime, mtime, length, name, uid, gid, muid)
    if dotu:
        st.extension, p = _dec_str(buf, p, send)
        if p + 12 > send:
            raise ProtocolError("9P2000.u stat too short")
        st.n_uid, st.n_gid, st.n_muid = struct.unpack_from("<III", buf, p)
        p += 12
    if p != send:
        raise ProtocolError("stat has %d trailing bytes" % (send - p))
    return st, send


def _enc_stat(st, dotu):
    q = st.qid
    body = [b"", _STAT_FIXED.pack(0, st.type, st.dev, q[0], q[1], q[2], st.mode, st.atime,
                                  st.mtime, st.length)[2:],
            _enc_str(st.name), _enc_str(st.uid), _enc_str(st.gid), _enc_str(st.muid)]
    if dotu:
        body.append(_enc_str(st.extension))
        body.append(struct.pack("<III", st.n_uid, st.n_gid, st.n_muid))
    b = b"".join(body)
    if len(b) > 0xFFFF:
        raise ProtocolError("stat too large")
    return _pack("<H", len(b)) + b


def pack_stat(st, dialect):
    """One stat entry as it appears in a directory read (9P2000, .u)."""
    return _enc_stat(st, _IS_DOTU[dialect])


def unpack_stats(data, dialect):
    """All stat entries of a 9P2000/.u directory read."""
    out = []
    o, end = 0, len(data)
    dotu = _IS_DOTU[dialect]
    try:
        while o < end:
            st, o = _dec_stat(data, o, end, dotu)
            out.append(st)
    except struct.error as ex:
        raise ProtocolError(str(ex)) from None
    return out


_DIRENT_HEAD = struct.Struct("<BIQQBH")  # qid(3) offset type namelen


def pack_dirent(qid, offset, dtype, name):
    """One 9P2000.L directory entry (Rreaddir)."""
    b = name.encode("utf-8", "surrogateescape")
    return _DIRENT_HEAD.pack(qid[0], qid[1], qid[2], offset, dtype, len(b)) + b


def unpack_dirents(data):
    """Entries of an Rreaddir payload as (qid, offset, type, name) tuples."""
    out = []
    o, end = 0, len(data)
    hs = _DIRENT_HEAD.size
    while o < end:
        if o + hs > end:
            raise ProtocolError("dirent too short")
        qt, qv, qp, off, dt, n = _DIRENT_HEAD.unpack_from(data, o)
        o += hs
        if o + n > end:
            raise ProtocolError("dirent name overruns")
        try:
            name = str(data[o:o + n], "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("dirent name is not valid UTF-8") from None
        o += n
        out.append((Qid(qt, qv, qp), off, dt, name))
    return out


_pack = struct.pack
_unpack_from = struct.unpack_from

# type number -> class; name -> class
TYPES = {}
BY_NAME = {}


class _Lazy(dict):
    """{type: function} of one dialect, the encoders or the decoders: a known type's is
    generated on its first lookup (a KeyError for a type not in the dialect).  (A client
    only encodes T-messages and decodes R-messages, a server the other way round.)"""

    def __init__(self, dialect, encoders):
        super().__init__()
        self.dialect = dialect
        self.encoders = encoders

    def __missing__(self, num):
        _generate(self.dialect, num, self.encoders)
        return dict.__getitem__(self, num)


# dialect -> {type: (class, the fields it carries in that dialect)}: the known types
_DECODERS = {d: {} for d in DIALECTS}
_DEC = {d: _Lazy(d, False) for d in DIALECTS}  # dialect -> {type: decoder function}
_ENCODERS = {d: _Lazy(d, True) for d in DIALECTS}


def _make_class(num, name, fields):
    slots = tuple(n for n, _ in fields)
    cls = type(name, (Message,), {"__slots__": slots, "mtype": num, "fields": tuple(fields),
                                  "__init__": _first_init, "__module__": __name__})
    return cls


def _gen_init(cls):
    """The __init__ of message class cls: its fields by keyword or in order, then tag."""
    slots = cls.__slots__
    defaults = {n: _DEFAULTS[k] for n, k in cls.fields}
    if cls.__name__ in ("Tauth", "Tattach"):
        defaults["n_uname"] = 0xFFFFFFFF
    args = ", ".join("%s=%r" % (n, defaults[n]) if not isinstance(defaults[n], Qid)
                     else "%s=_Q0" % n for n in slots)
    body = "".join("\n    self.%s = %s" % (n, n) for n in slots)
    src = "def __init__(self, %s%stag=0):%s\n    self.tag = tag" % (
        args, ", " if args else "", body)
    ns = {"_Q0": Qid(0, 0, 0)}
    exec(src, ns)
    return ns["__init__"]


def _first_init(self, *args, **kw):
    """A message class's __init__ until its first call, which generates the real one
    (as the encoders and decoders are: the 67 classes' at import were a twentieth of a
    one-shot command's start) and puts it in the class."""
    cls = next(c for c in type(self).__mro__ if c.__dict__.get("__init__") is _first_init)
    init = _gen_init(cls)
    cls.__init__ = init
    init(self, *args, **kw)


def _build():
    """The message classes, and the types each dialect knows."""
    for num, name, fields in spec.MESSAGES:
        full = fields + spec.DOTU.get(name, [])
        cls = _make_class(num, name, full)
        TYPES[num] = cls
        BY_NAME[name] = cls
        for dialect in DIALECTS:
            if dialect == V9P2000 and name in spec.ONLY_L:
                continue
            # (9P2000.L decodes the spec.NOT_IN_L messages in their .u form all the same)
            _DECODERS[dialect][num] = (cls, full if _IS_DOTU[dialect] else fields)


def _generate(dialect, num, encoder):
    """Generate the encoder (or the decoder) of type num in dialect (KeyError: unknown)."""
    cls, f = _DECODERS[dialect][num]
    full = cls.fields
    ns = {"ProtocolError": ProtocolError, "Qid": Qid, "_unpack_from": _unpack_from,
          "_pack": _pack, "_dec_str": _dec_str, "_enc_str": _enc_str,
          "_dec_stat": _dec_stat, "_enc_stat": _enc_stat, "_too_short": _too_short,
          "_str_bytes": _str_bytes, "_PH": struct.Struct("<H").pack,
          "_PI": struct.Struct("<I").pack, "_PQ": struct.Struct("<BIQ").pack,
          "DOTU": _IS_DOTU[dialect], "CLS": cls, "_new": object.__new__}
    tag = "%s_%s" % (cls.__name__, dialect.replace(".", "_"))
    extra = [(fn, 0xFFFFFFFF if fn == "n_uname" else _DEFAULTS[k])
             for fn, k in full[len(f):]]
    if encoder:
        exec(_gen_encoder(f, "enc_" + tag, num, ns), ns)
        dict.__setitem__(_ENCODERS[dialect], num, ns["enc_" + tag])
    else:
        exec(_gen_decoder(f, "dec_" + tag, ns, extra), ns)
        dict.__setitem__(_DEC[dialect], num, ns["dec_" + tag])


_build()
globals().update(BY_NAME)
_HDR = struct.Struct("<IBH")


def decode(frame, dialect=V9P2000L):
    """Decode one whole frame (size[4] type[1] tag[2] body) into a message object."""
    n = len(frame)
    if n < HEADER:
        raise ProtocolError("frame of %d bytes is shorter than the header" % n)
    try:
        dec = _DEC[dialect][frame[4]]
    except KeyError:
        raise ProtocolError("unknown message type %d for %s" % (frame[4], dialect)) from None
    try:
        return dec(frame, n)  # checks the size field too
    except struct.error as ex:
        raise ProtocolError(str(ex)) from None
    except UnicodeDecodeError as ex:
        raise ProtocolError("string is not valid UTF-8: %s" % ex) from None


def encode(msg, dialect=V9P2000L):
    """Encode a message object into one frame."""
    try:
        enc = _ENCODERS[dialect][msg.mtype]
    except KeyError:
        raise ProtocolError("%s does not exist in %s" % (type(msg).__name__, dialect)) from None
    try:
        return enc(msg)
    except (struct.error, TypeError, AttributeError, LookupError, UnicodeEncodeError) as ex:
        raise ProtocolError("cannot encode %s: %s" % (type(msg).__name__, ex)) from None


def peek_header(frame):
    """(size, type, tag) of a frame, without decoding the body."""
    if len(frame) < HEADER:
        raise ProtocolError("frame shorter than the header")
    return _HDR.unpack_from(frame, 0)


# Hot-path helpers used by the server and client (same wire format as encode()).
_RREAD_HDR = struct.Struct("<IBHI")


def rread_header(tag, count):
    """Header of an Rread carrying count bytes: send it followed by the data."""
    return _RREAD_HDR.pack(11 + count, 117, tag, count)


def rreaddir_header(tag, count):
    return _RREAD_HDR.pack(11 + count, 41, tag, count)


class Framer:
    """Splits a byte stream into 9P frames.  feed() returns the complete frames so far."""

    __slots__ = ("msize", "_buf")

    def __init__(self, msize=8192):
        self.msize = msize
        self._buf = bytearray()

    def feed(self, data):
        buf = self._buf
        buf += data
        out = []
        o = 0
        n = len(buf)
        while n - o >= 4:
            size = buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] << 24)
            if size < HEADER:
                raise ProtocolError("frame size %d is smaller than the header" % size)
            if size > self.msize:
                raise ProtocolError("frame size %d exceeds msize %d" % (size, self.msize))
            if n - o < size:
                break
            out.append(bytes(buf[o:o + size]))
            o += size
        if o:
            del buf[:o]
        return out

    def pending(self):
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)
