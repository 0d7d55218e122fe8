"""Frames to fuzz with: valid 9P frames of every message with random field values,
where their length prefixes and strings lie, and mutations of them.

The messages come from the codec's own table (nine.protocol.spec, nine.protocol.BY_NAME):
random_message(rng, name, dialect) fills every field of a message with a value of its
kind (edge values often: 0, 1, the maximum; strings in many scripts; long strings,
data, walks and stat entries now and then), so its frame is valid and must round-trip.
layout() finds the length prefixes and string bytes of such a frame, and mutate() damages
it: bit flips, bytes set to edge values, length prefixes that lie (huge counts and
string lengths among them), truncation, extension, insertions, deletions, invalid UTF-8
inside strings, another type byte, splices of two frames, random bytes.  Everything
draws from the caller's random.Random, so a seed replays a campaign.
"""

import struct

from nine import protocol as P
from nine.protocol import spec

DIALECTS = P.DIALECTS
INT_MAX = {"u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFFFFFF, "u64": 0xFFFFFFFFFFFFFFFF,
           "?u32": 0xFFFFFFFF}
FIXED_SIZE = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "qid": 13, "?u32": 4}
#: the values the codec gives the 9P2000.u fields of a message decoded in plain 9P2000
DOTU_DEFAULTS = {"n_uname": P.NONUNAME, "errno": 0, "extension": ""}
STAT_DOTU_DEFAULTS = {"extension": "", "n_uid": 0xFFFFFFFF, "n_gid": 0xFFFFFFFF,
                      "n_muid": 0xFFFFFFFF}
_DOTU_FIELDS = {name: {f for f, _ in fields} for name, fields in spec.DOTU.items()}
_STAT_FIXED = 39        # a stat's type[2] dev[4] qid[13] mode[4] atime[4] mtime[4] length[8]
_EDGES = {1: (0, 1, 0x7F, 0x80, 0xFF), 2: (0, 1, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF),
          4: (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0x10000, 0x1000000)}
_PACK = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I")}
ALL_TYPES = sorted(P.TYPES)

# strings: names that break naive code, then alphabets for random ones
NAMES = ["", "a", ".", "..", "usr", "glenda", "héllo", "日本語のファイル名", "😀 emoji",
         "e\u0301", "\U0010fffd", "tab\there", "new\nline", "nul\0byte", "a/b", "/", "x" * 255,
         "ü" * 127, "\ufeffbom", "\u202eevil"]
_ALPHABETS = ["abcdefghijklmnopqrstuvwxyz0123456789._-", "àéîõüßçñ", "日本語中文한국어",
              "😀🎉🐍\U0010fffd",
              "\x00\x01\x7f\u0080\u07ff\u0800\uffff\U00010000 /."]
_BAD_UTF8 = (b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
             b"\xf5", b"\xff", b"\xe2\x82", b"\xf0\x9f\x98")


def message_names(dialect):
    """The messages the codec decodes in a dialect (plain 9P2000 lacks the .L ones)."""
    return [name for _, name, _ in spec.MESSAGES
            if dialect != P.V9P2000 or name not in spec.ONLY_L]


def wire_fields(name, dialect):
    """The (field, kind) pairs of a message as they are on the wire in a dialect."""
    fields = P.BY_NAME[name].fields
    if dialect == P.V9P2000:
        dotu = _DOTU_FIELDS.get(name, ())
        fields = tuple(f for f in fields if f[0] not in dotu)
    return fields


# ---------------------------------------------------------------------------
# random values

def rand_int(rng, kind):
    top = INT_MAX[kind]
    r = rng.random()
    if r < 0.2:
        return rng.choice((0, 1, top, top - 1, top >> 1, (top >> 1) + 1))
    if r < 0.5:
        return rng.randrange(min(top, 300) + 1)
    return rng.randint(0, top)


def rand_str(rng, huge=True):
    """A string of at most 65535 UTF-8 bytes (huge=False: at most 1,000)."""
    r = rng.random()
    if r < 0.35:
        return rng.choice(NAMES)
    if huge and r > 0.998:
        return "x" * rng.choice((256, 4096, 65534, 65535))
    return "".join(rng.choices(rng.choice(_ALPHABETS), k=rng.randint(0, 40)))


def rand_qid(rng):
    return P.Qid(rand_int(rng, "u8"), rand_int(rng, "u32"), rand_int(rng, "u64"))


def rand_stat(rng, dialect):
    st = P.Stat(rand_int(rng, "u16"), rand_int(rng, "u32"), rand_qid(rng),
                rand_int(rng, "u32"), rand_int(rng, "u32"), rand_int(rng, "u32"),
                rand_int(rng, "u64"), rand_str(rng, False), rand_str(rng, False),
                rand_str(rng, False), rand_str(rng, False))
    if dialect != P.V9P2000:
        st.extension = rand_str(rng, False)
        st.n_uid, st.n_gid, st.n_muid = (rand_int(rng, "u32") for _ in range(3))
    return st


def rand_count(rng, usual, rare):
    """A count: up to usual mostly, up to rare now and then."""
    return rng.randint(0, rare if rng.random() < 0.01 else usual)


def rand_data(rng, name, dialect):
    """A data field; a directory read's payload is made of whole entries a third of the
    time (stat entries in 9P2000/.u Rread, dirents in Rreaddir)."""
    r = rng.random()
    if name == "Rread" and dialect != P.V9P2000L and r < 0.3:
        return b"".join(P.pack_stat(rand_stat(rng, dialect), dialect)
                        for _ in range(rng.randint(1, 4)))
    if name == "Rreaddir" and r < 0.3:
        return b"".join(P.pack_dirent(rand_qid(rng), rand_int(rng, "u64"), rand_int(rng, "u8"),
                                      rand_str(rng, False)) for _ in range(rng.randint(1, 4)))
    return rng.randbytes(rand_count(rng, 200, 70000))


def random_value(rng, kind, name, dialect):
    """A random value of a field kind of message `name`."""
    if kind in INT_MAX:
        return rand_int(rng, kind)
    if kind == "s":
        return rand_str(rng)
    if kind == "qid":
        return rand_qid(rng)
    if kind == "wnames":
        return [rand_str(rng, False) for _ in range(rand_count(rng, 16, 100))]
    if kind == "qids":
        return [rand_qid(rng) for _ in range(rand_count(rng, 16, 300))]
    if kind == "data":
        return rand_data(rng, name, dialect)
    if kind == "stat":
        return rand_stat(rng, dialect)
    raise AssertionError(kind)


def random_message(rng, name, dialect):
    """A message of type `name` with random values that is valid in `dialect` (the
    fields 9P2000 leaves off the wire hold the values a decoder gives them)."""
    cls = P.BY_NAME[name]
    dotu = _DOTU_FIELDS.get(name, ()) if dialect == P.V9P2000 else ()
    vals = {f: DOTU_DEFAULTS[f] if f in dotu else random_value(rng, kind, name, dialect)
            for f, kind in cls.fields}
    return cls(tag=rand_int(rng, "u16"), **vals)


# ---------------------------------------------------------------------------
# layout of a valid frame

def layout(frame, name, dialect):
    """Where a valid frame of message `name` keeps its length prefixes and its strings:
    (prefixes [(offset, width)], strings [(offset, length)]); the frame's size field is
    the first prefix."""
    u16 = _PACK[2].unpack_from
    prefixes = [(0, 4)]
    strings = []

    def string(o):
        n, = u16(frame, o)
        prefixes.append((o, 2))
        strings.append((o + 2, n))
        return o + 2 + n

    o = 7
    for _, kind in wire_fields(name, dialect):
        if kind in FIXED_SIZE:
            o += FIXED_SIZE[kind]
        elif kind == "s":
            o = string(o)
        elif kind == "data":
            prefixes.append((o, 4))
            o += 4 + _PACK[4].unpack_from(frame, o)[0]
        elif kind == "wnames":
            prefixes.append((o, 2))
            n, = u16(frame, o)
            o += 2
            for _ in range(n):
                o = string(o)
        elif kind == "qids":
            prefixes.append((o, 2))
            o += 2 + 13 * u16(frame, o)[0]
        elif kind == "stat":
            prefixes += [(o, 2), (o + 2, 2)]        # stat[n], then the stat's own size
            o += 4 + _STAT_FIXED
            for _ in range(5 if dialect != P.V9P2000 else 4):
                o = string(o)
            o += 12 if dialect != P.V9P2000 else 0
        else:
            raise AssertionError(kind)
    return prefixes, strings


# ---------------------------------------------------------------------------
# mutations: each takes (rng, b bytearray, prefixes, strings, pool) and returns the frame

def _flip(rng, b, *_):
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return b


def _edge_byte(rng, b, *_):
    b[rng.randrange(len(b))] = rng.choice(_EDGES[1] + (rng.randrange(256),))
    return b


def _lie(rng, b, prefixes, *_):
    """A length prefix that says something else: off by one, zero, huge, random."""
    o, w = rng.choice(prefixes)
    if o + w > len(b):
        return b
    v = int.from_bytes(b[o:o + w], "little")
    top = (1 << 8 * w) - 1
    new = rng.choice((0, 1, v - 1, v + 1, v + 2, v * 2, top, top - 1, top >> 1, len(b),
                      rng.randint(0, top))) & top
    b[o:o + w] = _PACK[w].pack(new)
    return b


def _huge(rng, b, prefixes, *_):
    """A count or string length near its maximum."""
    o, w = rng.choice(prefixes)
    if o + w <= len(b):
        b[o:o + w] = _PACK[w].pack(rng.choice(_EDGES[w][2:]))
    return b


def _truncate(rng, b, *_):
    del b[rng.randrange(len(b)):]
    return b


def _extend(rng, b, *_):
    b += rng.randbytes(rng.randint(1, 32)) if rng.random() < 0.5 else bytes(rng.randint(1, 8))
    return b


def _insert(rng, b, *_):
    i = rng.randrange(len(b) + 1)
    b[i:i] = rng.randbytes(rng.randint(1, 8))
    return b


def _delete(rng, b, *_):
    i = rng.randrange(len(b))
    del b[i:i + rng.randint(1, 8)]
    return b


def _bad_utf8(rng, b, prefixes, strings, *_):
    """Invalid UTF-8 inside a string: a stray continuation byte, an overlong form, a
    surrogate, a code point past U+10FFFF, a cut sequence."""
    spans = [s for s in strings if s[1] and s[0] + s[1] <= len(b)]
    if not spans:
        return b
    o, n = rng.choice(spans)
    bad = rng.choice(_BAD_UTF8)
    i = o + rng.randrange(n)
    k = min(len(bad), o + n - i)
    b[i:i + k] = bad[:k]
    return b


def _retype(rng, b, *_):
    if len(b) > 4:
        b[4] = rng.choice(ALL_TYPES) if rng.random() < 0.8 else rng.randrange(256)
    return b


def _splice(rng, b, prefixes, strings, pool):
    other = rng.choice(pool)
    return b[:rng.randrange(len(b) + 1)] + other[rng.randrange(len(other) + 1):]


def _duplicate(rng, b, *_):
    i = rng.randrange(len(b))
    part = b[i:i + rng.randint(1, 32)]
    j = rng.randrange(len(b) + 1)
    b[j:j] = part
    return b


def _random(rng, b, *_):
    body = rng.randbytes(rng.randint(0, 64))
    if rng.random() < 0.5:
        return bytearray(body)
    return bytearray(struct.pack("<IBH", 7 + len(body), rng.choice(ALL_TYPES),
                                 rng.randrange(0x10000)) + body)


MUTATIONS = {f.__name__[1:]: f for f in (_flip, _edge_byte, _lie, _huge, _truncate, _extend,
                                         _insert, _delete, _bad_utf8, _retype, _splice,
                                         _duplicate, _random)}
_WEIGHTED = ["flip"] * 3 + ["lie"] * 4 + ["huge"] * 2 + ["bad_utf8"] * 2 + list(MUTATIONS)


def mutate(rng, frame, prefixes, strings, pool, fix_size=0.85):
    """A damaged copy of a valid frame (1 to 3 mutations) and the mutations' names.
    pool: other frames to splice with.  With probability fix_size the size field is
    made to match the result's length, so that the damage inside gets decoded."""
    b = bytearray(frame)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        if not b:
            break
        name = rng.choice(_WEIGHTED)
        b = MUTATIONS[name](rng, b, prefixes, strings, pool)
        done.append(name)
    if len(b) >= 4 and rng.random() < fix_size:
        b[:4] = _PACK[4].pack(len(b))
    return bytes(b), done
