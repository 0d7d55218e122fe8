"""The struct codec (nine.protocol.codec) checked against the construct reference.

Two independent descriptions of the 9P wire format: codec.py is generated from the
table in spec.py, reference.py is written by hand from the protocol documents.  Every
message of every dialect is encoded and decoded both ways with edge-case and seeded
random values, and malformed input must raise ProtocolError and nothing else.
"""

import random
import struct

import pytest
from construct import ConstructError

from nine.protocol import (BY_NAME, Framer, ProtocolError, Qid, Stat, decode, encode,
                           pack_dirent, pack_stat, peek_header, rread_header, rreaddir_header,
                           unpack_dirents, unpack_stats)
from nine.protocol import codec, spec
import reference as ref

DIALECTS = ("9P2000", "9P2000.u", "9P2000.L")
INT_MAX = {"u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFFFFFF, "u64": 0xFFFFFFFFFFFFFFFF,
           "?u32": 0xFFFFFFFF}
FIXED_SIZE = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "qid": 13}
# Values the codec gives the 9P2000.u fields of a message decoded in plain 9P2000.
DOTU_DEFAULTS = {"n_uname": 0xFFFFFFFF, "errno": 0, "extension": ""}
STAT_DOTU_DEFAULTS = {"extension": "", "n_uid": 0xFFFFFFFF, "n_gid": 0xFFFFFFFF,
                      "n_muid": 0xFFFFFFFF}

CASES = [(d, name) for d in DIALECTS
         for name in sorted(ref.DIALECTS[d], key=ref.TYPE_NUMBERS.get)]
CASE_IDS = ["%s-%s" % c for c in CASES]
RANDOM_ITERATIONS = 300


def raises_protocol_error(fn, *args):
    """fn(*args) must raise ProtocolError itself, not a subclass or another error."""
    with pytest.raises(ProtocolError) as ei:
        fn(*args)
    assert type(ei.value) is ProtocolError, repr(ei.value)
    return ei.value


def ref_rejects(frame, dialect):
    with pytest.raises(ConstructError):
        ref.ref_decode(frame, dialect)


# ---------------------------------------------------------------------------
# value generation

NAMES = ["", "a", "usr", "glenda", "lib", "..", ".", "héllo", "日本語のファイル名", "😀 emoji",
         "e\u0301", "Ω≈ç√∫", "tab\there", "new\nline", "space name", "\U0010fffd",
         "x" * 255, "ü" * 127]


def rand_int(rng, kind):
    m = INT_MAX[kind]
    r = rng.random()
    if r < 0.2:
        return m
    if r < 0.3:
        return 0
    if r < 0.4:
        return rng.choice((1, m - 1, m >> 1, (m >> 1) + 1))
    return rng.randint(0, m)


def rand_char(rng):
    r = rng.random()
    if r < 0.4:
        return chr(rng.randint(0x21, 0x7E))
    if r < 0.6:
        return chr(rng.randint(0xA0, 0x7FF))
    if r < 0.8:
        return chr(rng.choice((rng.randint(0x800, 0xD7FF), rng.randint(0xE000, 0xFFFD))))
    return chr(rng.randint(0x10000, 0x10FFFF))


def rand_str(rng):
    r = rng.random()
    if r < 0.45:
        return rng.choice(NAMES)
    if r < 0.8:
        return "".join(rand_char(rng) for _ in range(rng.randint(0, 40)))
    if r < 0.97:
        return "".join(rand_char(rng) for _ in range(rng.randint(100, 2000)))
    return "語" * 21845  # exactly 65535 bytes of UTF-8, the longest string there is


def rand_qid(rng):
    return Qid(rand_int(rng, "u8"), rand_int(rng, "u32"), rand_int(rng, "u64"))


def rand_data(rng):
    r = rng.random()
    if r < 0.25:
        return b""
    if r < 0.9:
        return rng.randbytes(rng.randint(1, 300))
    return rng.randbytes(rng.randint(4000, 70000))


def rand_stat(rng, dialect, mode="random"):
    if mode == "min":
        st = Stat()
    elif mode == "max":
        st = Stat(0xFFFF, 0xFFFFFFFF, Qid(0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF), 0xFFFFFFFF,
                  0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, "n" * 255, "u" * 255,
                  "g" * 255, "m" * 255, "e" * 4000, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    else:
        short = lambda: rng.choice(NAMES) if rng.random() < 0.6 else "".join(
            rand_char(rng) for _ in range(rng.randint(0, 60)))
        st = Stat(rand_int(rng, "u16"), rand_int(rng, "u32"), rand_qid(rng),
                  rand_int(rng, "u32"), rand_int(rng, "u32"), rand_int(rng, "u32"),
                  rand_int(rng, "u64"), short(), short(), short(), short(), short(),
                  rand_int(rng, "u32"), rand_int(rng, "u32"), rand_int(rng, "u32"))
    if dialect == "9P2000":
        for k, v in STAT_DOTU_DEFAULTS.items():
            setattr(st, k, v)
    return st


def wire_fields(name, dialect):
    """(field, kind) pairs that are on the wire for this message in this dialect."""
    fields = BY_NAME[name].fields
    if dialect == "9P2000":
        dotu = {n for n, _ in spec.DOTU.get(name, ())}
        fields = tuple(f for f in fields if f[0] not in dotu)
    return fields


def make_msg(name, dialect, rng, mode="random"):
    """A message object; mode is "random", "min" (zeros, empties) or "max"."""
    cls = BY_NAME[name]
    vals = {}
    for fname, kind in cls.fields:
        if kind in INT_MAX:
            v = {"min": 0, "max": INT_MAX[kind]}.get(mode) if mode != "random" else \
                rand_int(rng, kind)
        elif kind == "qid":
            v = {"min": Qid(0, 0, 0), "max": Qid(0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)}.get(
                mode) if mode != "random" else rand_qid(rng)
        elif kind == "s":
            v = {"min": "", "max": "語" * 21845}.get(mode) if mode != "random" else \
                rand_str(rng)
        elif kind == "wnames":
            if mode == "min":
                v = []
            elif mode == "max":
                v = ["%02d" % i + "ñ" * 126 for i in range(16)]
            else:
                n = rng.choice((0, 1, 3, 16, rng.randint(0, 16)))
                v = [rand_str(rng) if rng.random() < 0.2 else rng.choice(NAMES)
                     for _ in range(n)]
        elif kind == "qids":
            if mode == "min":
                v = []
            elif mode == "max":
                v = [Qid(0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)] * 16
            else:
                v = [rand_qid(rng) for _ in range(rng.choice((0, 1, 16, rng.randint(0, 16))))]
        elif kind == "data":
            v = {"min": b"", "max": bytes(range(256)) * 256}.get(mode) if mode != "random" \
                else rand_data(rng)
        elif kind == "stat":
            v = rand_stat(rng, dialect, mode)
        else:  # pragma: no cover
            raise AssertionError(kind)
        vals[fname] = v
    if dialect == "9P2000":
        for fname, _ in spec.DOTU.get(name, ()):
            vals[fname] = DOTU_DEFAULTS[fname]
    tag = {"min": 0, "max": 0xFFFF}.get(mode) if mode != "random" else rand_int(rng, "u16")
    return cls(tag=tag, **vals)


def sample_msg(name, dialect):
    """A deterministic, typical message (three wnames, two qids, short data, a stat)."""
    cls = BY_NAME[name]
    vals = {}
    for i, (fname, kind) in enumerate(cls.fields):
        vals[fname] = {
            "u8": 0x11 + i, "u16": 0x2211 + i, "u32": 0x44332211 + i,
            "u64": 0x8877665544332211 + i, "?u32": 1, "s": "ZZZZ" if i == 1 else "na" + "m" * i,
            "qid": Qid(0x80, 7 + i, 0x123456789 + i), "wnames": ["usr", "ZZZZ", "lib"],
            "qids": [Qid(0x80, 1, 2), Qid(0, 3, 4)], "data": b"0123456789",
            "stat": Stat(1, 2, Qid(0x80, 3, 4), 0o755 | 0x80000000, 5, 6, 7, "ZZZZ", "glenda",
                         "sys", "bootes", "ext", 1000, 1001, 1002),
        }[kind]
    if dialect == "9P2000":
        for fname, _ in spec.DOTU.get(name, ()):
            vals[fname] = DOTU_DEFAULTS[fname]
        if "stat" in vals:
            for k, v in STAT_DOTU_DEFAULTS.items():
                setattr(vals["stat"], k, v)
    return cls(tag=0x0102, **vals)


def messages(name, dialect, seed):
    """Edge-case messages then RANDOM_ITERATIONS random ones."""
    rng = random.Random(seed)
    yield make_msg(name, dialect, rng, "min")
    yield make_msg(name, dialect, rng, "max")
    yield sample_msg(name, dialect)
    for _ in range(RANDOM_ITERATIONS):
        yield make_msg(name, dialect, rng)


def seed_of(dialect, name):
    return "%s/%s" % (dialect, name)


def plain(msg):
    """A message object as the reference's plain dict."""
    d = {"tag": msg.tag}
    for f in type(msg).__slots__:
        v = getattr(msg, f)
        if isinstance(v, Stat):
            v = {k: getattr(v, k) for k in Stat.__slots__}
        elif isinstance(v, (bytearray, memoryview)):
            v = bytes(v)
        d[f] = v
    return d


def assert_same_fields(msg, name, fields, dialect):
    """The codec's message equals the reference's (name, fields)."""
    assert type(msg).__name__ == name
    p = plain(msg)
    assert set(fields) <= set(p), "reference fields %s not in the codec's %s" % (
        sorted(set(fields) - set(p)), name)
    for k, v in fields.items():
        if k == "stat":
            assert {sk: p["stat"][sk] for sk in v} == v
            for sk in set(p["stat"]) - set(v):
                assert p["stat"][sk] == STAT_DOTU_DEFAULTS[sk]
        elif k == "datasync" and v is None:
            assert p[k] == 0
        else:
            assert p[k] == v, k
    for k in set(p) - set(fields):  # 9P2000.u fields of a plain 9P2000 message
        assert dialect == "9P2000" and p[k] == DOTU_DEFAULTS[k], k


def fix_size(frame):
    return struct.pack("<I", len(frame)) + bytes(frame[4:])


# ---------------------------------------------------------------------------
# (a) round trips through the struct codec, (b) cross-checks with the reference, (c)


def test_reference_and_codec_know_the_same_type_numbers():
    for name, num in ref.TYPE_NUMBERS.items():
        assert BY_NAME[name].mtype == num
    assert set(ref.TYPE_NUMBERS) == set(BY_NAME)
    for d in DIALECTS:
        # the codec decodes everything the documents define for the dialect (it is more
        # lenient: see test_codec_extras_use_documented_form)
        assert {ref.TYPE_NUMBERS[n] for n in ref.DIALECTS[d]} <= set(codec._DECODERS[d])


@pytest.mark.parametrize("dialect,name", CASES, ids=CASE_IDS)
def test_struct_round_trip(dialect, name):
    for msg in messages(name, dialect, seed_of(dialect, name)):
        frame = encode(msg, dialect)
        assert type(frame) is bytes
        assert peek_header(frame) == (len(frame), msg.mtype, msg.tag)
        back = decode(frame, dialect)
        assert type(back) is type(msg)
        assert back == msg
        assert encode(back, dialect) == frame
        # any buffer decodes the same
        assert decode(bytearray(frame), dialect) == msg
        assert decode(memoryview(frame), dialect) == msg


@pytest.mark.parametrize("dialect,name", CASES, ids=CASE_IDS)
def test_cross_check_with_reference(dialect, name):
    for msg in messages(name, dialect, seed_of(dialect, name)):
        frame = encode(msg, dialect)
        # struct encode -> construct decode
        rname, fields = ref.ref_decode(frame, dialect)
        assert_same_fields(msg, name, fields, dialect)
        # construct encode -> struct decode, and the very same bytes
        rframe = ref.ref_encode(name, plain(msg), dialect)
        assert rframe == frame
        assert decode(rframe, dialect) == msg


def test_codec_extras_use_documented_form():
    """The codec also decodes 9P2000.L messages in 9P2000.u and the legacy messages in
    9P2000.L; where it does, the bytes are those of the dialect that defines them."""
    rng = random.Random(7)
    for d, other in (("9P2000.u", "9P2000.L"), ("9P2000.L", "9P2000.u")):
        for name in set(ref.DIALECTS[other]) - set(ref.DIALECTS[d]):
            if BY_NAME[name].mtype not in codec._DECODERS[d]:
                continue
            for _ in range(20):
                msg = make_msg(name, d, rng)
                frame = encode(msg, d)
                assert decode(frame, d) == msg
                assert frame == ref.ref_encode(name, plain(msg), other)


def test_dotu_fields_absent_in_9p2000():
    """Tauth, Tattach, Rerror and Tcreate carry their .u fields only in .u and .L."""
    for name in spec.DOTU:
        msg = sample_msg(name, "9P2000.u")
        short, long_ = encode(msg, "9P2000"), encode(msg, "9P2000.u")
        extra = sum(2 + len(getattr(msg, f).encode()) if k == "s" else 4
                    for f, k in spec.DOTU[name])
        assert len(long_) - len(short) == extra
        back = decode(short, "9P2000")
        for f, _ in spec.DOTU[name]:
            assert getattr(back, f) == DOTU_DEFAULTS[f]
        if name in ref.DIALECTS["9P2000.L"]:  # Tauth, Tattach: .L uses the .u form
            assert encode(msg, "9P2000.L") == long_


def test_known_frames():
    """A few frames spelled out byte by byte from intro(5) and walk(5)."""
    assert encode(BY_NAME["Tversion"](msize=8192, version="9P2000", tag=0xFFFF), "9P2000") == \
        b"\x13\x00\x00\x00\x64\xff\xff\x00\x20\x00\x00\x06\x009P2000"
    assert encode(BY_NAME["Twalk"](fid=1, newfid=2, wnames=["a", "bc"], tag=3), "9P2000") == \
        (b"\x18\x00\x00\x00\x6e\x03\x00\x01\x00\x00\x00\x02\x00\x00\x00\x02\x00"
         b"\x01\x00a\x02\x00bc")
    assert encode(BY_NAME["Rread"](data=b"hi", tag=1), "9P2000") == \
        b"\x0d\x00\x00\x00\x75\x01\x00\x02\x00\x00\x00hi"
    assert encode(BY_NAME["Rlerror"](ecode=2, tag=9), "9P2000.L") == \
        b"\x0b\x00\x00\x00\x07\x09\x00\x02\x00\x00\x00"
    assert encode(BY_NAME["Rclunk"](tag=5), "9P2000") == b"\x07\x00\x00\x00\x79\x05\x00"


def test_tfsync_datasync_is_optional():
    a = ref.ref_encode("Tfsync", {"tag": 4, "fid": 9}, "9P2000.L")
    assert len(a) == 11
    m = decode(a, "9P2000.L")
    assert (m.fid, m.datasync, m.tag) == (9, 0, 4)
    b = encode(BY_NAME["Tfsync"](fid=9, datasync=1, tag=4), "9P2000.L")
    assert len(b) == 15
    assert ref.ref_decode(b, "9P2000.L") == ("Tfsync", {"tag": 4, "fid": 9, "datasync": 1})
    for cut in (1, 2, 3):  # a partial datasync is not one
        bad = fix_size(b[:-cut])
        raises_protocol_error(decode, bad, "9P2000.L")
        ref_rejects(bad, "9P2000.L")


def test_largest_stat_in_rstat():
    """stat[n] has n[2] and then the stat's own size[2]: the stat body tops out at
    65533 bytes in Rstat/Twstat."""
    fixed = 39 + 8  # fixed part after size[2] + four empty strings' lengths
    st = Stat(name="x" * (65533 - fixed))
    frame = encode(BY_NAME["Rstat"](stat=st, tag=1), "9P2000")
    assert len(frame) == 7 + 2 + 65535
    assert decode(frame, "9P2000").stat == st
    assert frame == ref.ref_encode("Rstat", plain(decode(frame, "9P2000")), "9P2000")
    st.name += "x"
    raises_protocol_error(encode, BY_NAME["Rstat"](stat=st, tag=1), "9P2000")


def test_encode_errors():
    Tversion, Twalk, Tread = BY_NAME["Tversion"], BY_NAME["Twalk"], BY_NAME["Tread"]
    bad = [
        (Tversion(msize=8192, version="x" * 65536), "9P2000"),          # string too long
        (Tversion(msize=8192, version="語" * 21846), "9P2000"),
        (Tversion(msize=8192, version=None), "9P2000"),
        (Tversion(msize=8192, version=5), "9P2000"),                   # not a string
        (Tversion(msize=-1, version=""), "9P2000"),
        (Tversion(msize=2 ** 32, version=""), "9P2000"),
        (Tversion(msize=0, version="", tag=0x10000), "9P2000"),
        (Tread(fid=0, offset=2 ** 64, count=0), "9P2000"),
        (Tread(fid="0", offset=0, count=0), "9P2000"),
        (Twalk(fid=0, newfid=1, wnames=["a"] * 65536), "9P2000"),
        (Twalk(fid=0, newfid=1, wnames=[3]), "9P2000"),
        (Tversion(msize=0, version="\ud800"), "9P2000"),                # lone surrogate
        (BY_NAME["Rstat"](stat=None), "9P2000"),
        (BY_NAME["Tlopen"](fid=0, flags=0), "9P2000"),                  # not in 9P2000
        (BY_NAME["Rwalk"](wqids=[(1, 2)]), "9P2000"),                  # not a qid
        (BY_NAME["Rwalk"](wqids=[{"type": 0, "version": 0, "path": 0}]), "9P2000"),
        (BY_NAME["Rattach"](qid=None), "9P2000"),
        (BY_NAME["Rread"](data=None), "9P2000"),
    ]
    for msg, d in bad:
        raises_protocol_error(encode, msg, d)


# ---------------------------------------------------------------------------
# (d) malformed input


def sample_frames(dialect):
    return [(name, encode(sample_msg(name, dialect), dialect))
            for name in sorted(ref.DIALECTS[dialect], key=ref.TYPE_NUMBERS.get)]


def count_fields(msg, dialect):
    """(offset, width, what) of every length or count field in encode(msg, dialect)."""
    o, out = 7, []

    def string(v):
        nonlocal o
        out.append((o, 2, "s"))
        o += 2 + len(v.encode())

    for fname, kind in wire_fields(type(msg).__name__, dialect):
        v = getattr(msg, fname)
        if kind in FIXED_SIZE:
            o += FIXED_SIZE[kind]
        elif kind == "?u32":
            o += 4
        elif kind == "s":
            string(v)
        elif kind == "data":
            out.append((o, 4, "data"))
            o += 4 + len(v)
        elif kind == "wnames":
            out.append((o, 2, "nwname"))
            o += 2
            for w in v:
                string(w)
        elif kind == "qids":
            out.append((o, 2, "nwqid"))
            o += 2 + 13 * len(v)
        elif kind == "stat":
            out.append((o, 2, "nstat"))
            out.append((o + 2, 2, "statsize"))
            o += 4 + 39
            for s in ("name", "uid", "gid", "muid") + (("extension",) if dialect != "9P2000"
                                                        else ()):
                string(getattr(v, s))
            o += 12 if dialect != "9P2000" else 0
    assert o == len(encode(msg, dialect))
    return out


@pytest.mark.parametrize("dialect", DIALECTS)
def test_truncated_frames(dialect):
    for name, frame in sample_frames(dialect):
        for k in range(len(frame)):
            raises_protocol_error(decode, frame[:k], dialect)          # size mismatch
            if k >= 7:
                cut = fix_size(frame[:k])                               # consistent size
                if name == "Tfsync" and k == len(frame) - 4:
                    assert decode(cut, dialect).datasync == 0
                    continue
                raises_protocol_error(decode, cut, dialect)
                ref_rejects(cut, dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_size_field_mismatch(dialect):
    for name, frame in sample_frames(dialect):
        n = len(frame)
        for size in {0, 1, 6, 7, n - 1, n + 1, n + 1000, 0xFFFFFFFF} - {n}:
            bad = struct.pack("<I", size) + frame[4:]
            raises_protocol_error(decode, bad, dialect)
            ref_rejects(bad, dialect)
        raises_protocol_error(decode, frame + b"\x00", dialect)    # bytes beyond size


@pytest.mark.parametrize("dialect", DIALECTS)
def test_trailing_bytes(dialect):
    for name, frame in sample_frames(dialect):
        for extra in (b"\x00", b"\xff" * 3, b"\x00" * 4, b"abcdefgh"):
            bad = fix_size(frame + extra)
            raises_protocol_error(decode, bad, dialect)
            ref_rejects(bad, dialect)


@pytest.mark.parametrize("dialect", ["9P2000", "9P2000.u"])
def test_stat_slack_is_rejected(dialect):
    """In Rstat/Twstat, n must be exactly the stat's size + 2, and the stat must end
    where its size says."""
    for name in ("Rstat", "Twstat"):
        msg = sample_msg(name, dialect)
        frame = encode(msg, dialect)
        (o, _, what), (o2, _, what2) = count_fields(msg, dialect)[:2]
        assert (what, what2) == ("nstat", "statsize")
        n = struct.unpack_from("<H", frame, o)[0]
        size = struct.unpack_from("<H", frame, o2)[0]
        # one extra byte inside n[2] but after the stat
        bad = bytearray(frame + b"\x00")
        struct.pack_into("<H", bad, o, n + 1)
        bad = fix_size(bad)
        raises_protocol_error(decode, bad, dialect)
        ref_rejects(bad, dialect)
        # one extra byte inside the stat's own size
        bad = bytearray(frame + b"\x00")
        struct.pack_into("<HH", bad, o, n + 1, size + 1)
        bad = fix_size(bad)
        raises_protocol_error(decode, bad, dialect)
        ref_rejects(bad, dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_counts_that_overrun(dialect):
    """Every string length, data count, nwname, nwqid and stat size, set past the end."""
    checked = set()
    for name in ref.DIALECTS[dialect]:
        msg = sample_msg(name, dialect)
        frame = encode(msg, dialect)
        for o, width, what in count_fields(msg, dialect):
            fmt = "<H" if width == 2 else "<I"
            top = (1 << 8 * width) - 1
            old = struct.unpack_from(fmt, frame, o)[0]
            rest = len(frame) - (o + width)   # bytes after the count field
            if what == "nwqid":
                past = rest // 13 + 1
            elif what == "nwname":            # wnames end the frame: one more is too many
                past = old + 1
            else:
                past = rest + 1
            for v in (past, top):
                bad = bytearray(frame)
                struct.pack_into(fmt, bad, o, v)
                raises_protocol_error(decode, bytes(bad), dialect)
                ref_rejects(bytes(bad), dialect)
            checked.add(what)
            for v in {old - 1, old + 1} - {past, top, -1}:
                # an underrun leaves bytes over or misreads what follows: same verdict
                bad = bytearray(frame)
                struct.pack_into(fmt, bad, o, v)
                both_agree(bytes(bad), dialect)
    assert {"s", "data", "nwname"} <= checked
    if dialect != "9P2000.L":
        assert {"nwqid", "nstat", "statsize"} <= checked


@pytest.mark.parametrize("dialect", DIALECTS)
def test_bad_utf8(dialect):
    bad_sequences = [b"\xff\xfe\xfd\xfc", b"\xc0\xafab", b"\xed\xa0\x80a", b"ab\xe2\x82",
                     b"\xf8\x88\x80\x80", b"\xf4\x90\x80\x80", b"a\x80bc", b"\xc3(ab"]
    seen = 0
    for name, frame in sample_frames(dialect):
        if b"ZZZZ" not in frame:
            continue
        seen += 1
        assert frame.count(b"ZZZZ") == 1, name
        for seq in bad_sequences:
            bad = frame.replace(b"ZZZZ", seq)
            err = raises_protocol_error(decode, bad, dialect)
            assert "UTF-8" in str(err)
            ref_rejects(bad, dialect)
    assert seen >= 5


@pytest.mark.parametrize("dialect", DIALECTS)
def test_unknown_types(dialect):
    known = set(codec._DECODERS[dialect])
    for t in range(256):
        if t in known:
            continue
        for body in (b"", b"\x00" * 4, b"\xff" * 20):
            frame = struct.pack("<IBH", 7 + len(body), t, 1) + body
            err = raises_protocol_error(decode, frame, dialect)
            assert "unknown" in str(err)
            ref_rejects(frame, dialect)
    assert 106 not in known          # Terror is illegal
    if dialect == "9P2000":
        assert not known & set(range(100))


def test_garbage():
    rng = random.Random(1)
    for _ in range(3000):
        frame = rng.randbytes(rng.randint(0, 40))
        for d in DIALECTS:
            try:
                decode(frame, d)
            except ProtocolError as e:
                assert type(e) is ProtocolError
            else:
                # possible only when the size field happens to match
                assert struct.unpack_from("<I", frame)[0] == len(frame)


def both_agree(frame, dialect):
    """codec and reference either both reject the frame or decode the same message."""
    try:
        msg = decode(frame, dialect)
    except ProtocolError as e:
        assert type(e) is ProtocolError
        msg = None
    if frame[4:5] and frame[4] not in {ref.TYPE_NUMBERS[n] for n in ref.DIALECTS[dialect]}:
        return msg  # a codec-only extra: nothing to compare with
    try:
        rname, fields = ref.ref_decode(frame, dialect)
    except ConstructError:
        assert msg is None, "codec accepts what the reference rejects: %r" % (msg,)
        return None
    assert msg is not None, "codec rejects %s that the reference accepts: %r" % (
        rname, bytes(frame))
    assert_same_fields(msg, rname, fields, dialect)
    return msg


@pytest.mark.parametrize("dialect", DIALECTS)
def test_fuzz_random_bodies(dialect):
    """20,000 frames with a valid header and a random body: ProtocolError or a message,
    and the same verdict as the reference."""
    rng = random.Random("fuzz-" + dialect)
    types = sorted(codec._DECODERS[dialect])
    ok = 0
    for i in range(20000):
        t = rng.choice(types) if i % 50 else rng.randint(0, 255)
        r = rng.random()
        body = rng.randbytes(rng.randint(0, 12) if r < 0.5 else rng.randint(13, 120))
        if r > 0.9:  # small counts make variable-size fields plausible
            body = bytes(rng.choice((0, 1, 2, 3, b)) for b in body)
        frame = struct.pack("<IBH", 7 + len(body), t, rng.randint(0, 0xFFFF)) + body
        ok += both_agree(frame, dialect) is not None
    assert ok > 100  # some random bodies are valid messages


@pytest.mark.parametrize("dialect", DIALECTS)
def test_fuzz_mutations(dialect):
    """Valid frames with random byte flips, insertions and deletions."""
    rng = random.Random("mutate-" + dialect)
    frames = [f for _, f in sample_frames(dialect)]
    frames += [encode(make_msg(n, dialect, rng), dialect)
               for n in ref.DIALECTS[dialect] for _ in range(3)]
    frames = [f for f in frames if len(f) < 2000]
    for _ in range(20000):
        b = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 3)):
            op, i = rng.random(), rng.randrange(len(b))
            if op < 0.5:
                b[i] = rng.choice((0, 1, 0xFF, rng.randrange(256), b[i] ^ (1 << rng.randrange(8))))
            elif op < 0.75:
                b.insert(i, rng.randrange(256))
            elif len(b) > 7:
                del b[max(i, 7) if i < 4 else i]
        if rng.random() < 0.9:
            b = bytearray(fix_size(b))
        both_agree(bytes(b), dialect)


# ---------------------------------------------------------------------------
# (e) Framer


def stream_frames(dialect="9P2000.L"):
    rng = random.Random(5)
    frames = [f for _, f in sample_frames(dialect)]
    frames += [encode(make_msg(n, dialect, rng), dialect) for n in ("Rread", "Twalk", "Tversion")]
    return [f for f in frames if len(f) <= 8192]


def test_framer_many_frames_in_one_feed():
    frames = stream_frames()
    f = Framer(8192)
    out = f.feed(b"".join(frames))
    assert out == frames and all(type(x) is bytes for x in out)
    assert f.pending() == 0
    assert f.feed(b"") == []


def test_framer_split_at_every_byte():
    frames = stream_frames()[:12]
    data = b"".join(frames)
    for i in range(len(data) + 1):
        f = Framer(8192)
        out = f.feed(data[:i])
        assert f.pending() == i - sum(len(x) for x in out)
        out += f.feed(memoryview(data)[i:])
        assert out == frames
        assert f.pending() == 0


def test_framer_byte_by_byte():
    frames = stream_frames()
    data = b"".join(frames)
    f = Framer(8192)
    out = []
    for i in range(len(data)):
        got = f.feed(data[i:i + 1])
        assert len(got) <= 1
        out += got
    assert out == frames and f.pending() == 0


def test_framer_random_chunks():
    rng = random.Random(3)
    frames = stream_frames()
    data = b"".join(frames)
    for _ in range(200):
        f, out, o = Framer(8192), [], 0
        while o < len(data):
            n = rng.randint(0, 300)
            out += f.feed(bytearray(data[o:o + n]))
            o += n
        assert out == frames


def test_framer_size_smaller_than_header():
    for size in range(7):
        f = Framer()
        raises_protocol_error(f.feed, struct.pack("<I", size))
        f = Framer()
        good = encode(BY_NAME["Rclunk"](tag=1), "9P2000")
        raises_protocol_error(f.feed, good + struct.pack("<IBH", size, 121, 1))
    f = Framer()
    assert f.feed(b"\x07\x00\x00") == [] and f.pending() == 3  # size not yet known
    assert f.feed(b"\x00\x79\x01\x00") == [b"\x07\x00\x00\x00\x79\x01\x00"]


def test_framer_oversized():
    f = Framer(msize=100)
    raises_protocol_error(f.feed, struct.pack("<I", 101))     # refused on the size alone
    f = Framer(msize=100)
    frame = encode(BY_NAME["Rread"](data=b"x" * 89, tag=1), "9P2000")
    assert len(frame) == 100
    assert f.feed(frame) == [frame]
    big = encode(BY_NAME["Rread"](data=b"x" * 90, tag=1), "9P2000")
    raises_protocol_error(f.feed, big)
    f = Framer(msize=8192)
    raises_protocol_error(f.feed, b"\xff\xff\xff\xff")


# ---------------------------------------------------------------------------
# (f) helpers


@pytest.mark.parametrize("dialect", DIALECTS)
def test_pack_unpack_stats(dialect):
    rng = random.Random("stat-" + dialect)
    assert unpack_stats(b"", dialect) == []
    for i in range(150):
        mode = "min" if i == 0 else "max" if i == 1 else "random"
        stats = [rand_stat(rng, dialect, mode) for _ in range(rng.randint(1, 5))]
        packed = [pack_stat(s, dialect) for s in stats]
        for s, p in zip(stats, packed):
            assert p == ref.ref_pack_stat(s, dialect)
            assert struct.unpack_from("<H", p)[0] == len(p) - 2
        data = b"".join(packed)
        assert unpack_stats(data, dialect) == stats
        assert unpack_stats(memoryview(data), dialect) == stats
        ref_stats = ref.ref_unpack_stats(data, dialect)
        assert [{k: getattr(s, k) for k in r} for s, r in zip(stats, ref_stats)] == ref_stats
    # truncation: a valid shorter list at entry boundaries, ProtocolError elsewhere
    stats = [rand_stat(rng, dialect) for _ in range(3)]
    packed = [pack_stat(s, dialect) for s in stats]
    data = b"".join(packed)
    bounds = {sum(len(p) for p in packed[:i]): i for i in range(4)}
    for k in range(len(data)):
        if k in bounds:
            assert unpack_stats(data[:k], dialect) == stats[:bounds[k]]
        else:
            raises_protocol_error(unpack_stats, data[:k], dialect)
    raises_protocol_error(unpack_stats, data + b"\x00", dialect)
    # the wrong dialect's stat does not parse
    other = "9P2000" if dialect != "9P2000" else "9P2000.u"
    raises_protocol_error(unpack_stats, pack_stat(Stat(name="x"), other), dialect)
    # bad UTF-8 in a name
    p = pack_stat(Stat(name="ZZ"), dialect)
    raises_protocol_error(unpack_stats, p.replace(b"ZZ", b"\xff\xfe"), dialect)
    # a stat whose size says more than its fields
    p = bytearray(pack_stat(Stat(name="x"), dialect) + b"\x00")
    struct.pack_into("<H", p, 0, len(p) - 2)
    raises_protocol_error(unpack_stats, bytes(p), dialect)


def test_pack_unpack_dirents():
    rng = random.Random("dirent")
    assert unpack_dirents(b"") == []
    for i in range(300):
        ents = [(rand_qid(rng), rand_int(rng, "u64"), rand_int(rng, "u8"), rand_str(rng)[:300])
                for _ in range(rng.randint(1, 8))]
        data = b"".join(pack_dirent(*e) for e in ents)
        assert data == b"".join(ref.ref_pack_dirent(*e) for e in ents)
        assert unpack_dirents(data) == ents
        assert unpack_dirents(memoryview(data)) == ents
        assert ref.ref_unpack_dirents(data) == ents
        # inside an Rreaddir, as the server sends it
        frame = rreaddir_header(7, len(data)) + data
        m = decode(frame, "9P2000.L")
        assert unpack_dirents(m.data) == ents
    ents = [(Qid(0x80, 1, 2), 1, 4, "dir"), (Qid(0, 3, 4), 2, 8, "file.txt")]
    packed = [pack_dirent(*e) for e in ents]
    data = b"".join(packed)
    assert packed[0] == b"\x80\x01\x00\x00\x00\x02" + b"\x00" * 7 + \
        b"\x01" + b"\x00" * 7 + b"\x04\x03\x00dir"
    for k in range(len(data)):
        if k in (0, len(packed[0])):
            assert unpack_dirents(data[:k]) == ents[:1 if k else 0]
        else:
            raises_protocol_error(unpack_dirents, data[:k])
    raises_protocol_error(unpack_dirents, data.replace(b"dir", b"d\xffr"))


def test_rread_header():
    rng = random.Random(11)
    for d in DIALECTS:
        for data in (b"", b"x", rng.randbytes(139), rng.randbytes(8181)):
            for tag in (0, 1, 0xFFFF):
                hdr = rread_header(tag, len(data))
                assert len(hdr) == 11
                assert hdr + data == encode(BY_NAME["Rread"](data=data, tag=tag), d)
                assert hdr + data == ref.ref_encode("Rread", {"tag": tag, "data": data}, d)
    data = rng.randbytes(500)
    assert rreaddir_header(3, len(data)) + data == \
        encode(BY_NAME["Rreaddir"](data=data, tag=3), "9P2000.L")


def test_stat_dont_touch():
    st = Stat.dont_touch()
    assert (st.type, st.dev, st.mode, st.atime, st.mtime) == \
        (0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    assert st.qid == (0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
    assert st.length == 0xFFFFFFFFFFFFFFFF
    assert (st.name, st.uid, st.gid, st.muid, st.extension) == ("", "", "", "", "")
    assert (st.n_uid, st.n_gid, st.n_muid) == (0xFFFFFFFF,) * 3
    # on the wire: ~0 everywhere but the size, empty strings
    p = pack_stat(st, "9P2000")
    assert p == struct.pack("<H", 47) + b"\xff" * 39 + b"\x00" * 8
    p = pack_stat(st, "9P2000.u")
    assert p == struct.pack("<H", 61) + b"\xff" * 39 + b"\x00" * 10 + b"\xff" * 12
    for d in ("9P2000", "9P2000.u"):
        m = BY_NAME["Twstat"](fid=3, stat=st, tag=2)
        frame = encode(m, d)
        assert decode(frame, d) == m
        assert ref.ref_decode(frame, d)[1]["stat"]["length"] == 0xFFFFFFFFFFFFFFFF
    # each call gives a fresh entry
    a = Stat.dont_touch()
    a.name = "new"
    assert Stat.dont_touch().name == "" and Stat.dont_touch() == st


def test_repr_shortens_data():
    r = repr(BY_NAME["Rread"](data=b"x" * 100, tag=3))
    assert r.startswith("Rread(tag=3, data=b'xxx") and r.endswith("...')")
    assert "Twalk(tag=1, fid=2, newfid=3, wnames=['a'])" == \
        repr(BY_NAME["Twalk"](fid=2, newfid=3, wnames=["a"], tag=1))
