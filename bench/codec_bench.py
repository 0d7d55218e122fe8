"""Codec microbenchmark: nine.protocol against a bare struct baseline and construct.

    python bench/codec_bench.py [--quick] [--no-construct] [--codec OTHER/codec.py]

For each of three hot messages -- Rread with a 139-byte payload, Twalk with three
names, Rgetattr -- it times encode and decode (and the pair) with

  nine        nine.protocol.encode / decode (message objects, any message, validated)
  baseline    the least struct code that handles exactly that one message, with the
              same validation (size field, type, counts, no trailing bytes, UTF-8)
  construct   tests/reference.py, plain and compiled (for reference only)

and prints microseconds per operation, best of several timeit repeats, and the
ratio nine/baseline.  The target is nine within 2x of the baseline.  Every timed call
goes through one Python-level call (a lambda) on both sides.  --codec FILE times
another copy of codec.py (e.g. `git show HEAD:nine/protocol/codec.py > /tmp/c.py`)
for a before/after comparison.
"""

import argparse
import importlib.util
import os
import struct
import sys
import time
import timeit

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the construct reference, a test oracle

import reference as ref  # noqa: E402
from nine.protocol import Qid  # noqa: E402

DIALECT = "9P2000.L"

# ---------------------------------------------------------------------------
# the bare baseline: one message each, no generality


class BadFrame(ValueError):
    pass


# Rread: size[4] type[1] tag[2] count[4] data[count]
_RREAD = struct.Struct("<IBHI")


def base_enc_rread(tag, data):
    return _RREAD.pack(11 + len(data), 117, tag, len(data)) + data


def base_dec_rread(frame):
    if len(frame) < 11:
        raise BadFrame("short")
    size, typ, tag, count = _RREAD.unpack_from(frame)
    if size != len(frame) or typ != 117 or count + 11 != size:
        raise BadFrame("bad Rread")
    return tag, frame[11:]


# Twalk: size[4] type[1] tag[2] fid[4] newfid[4] nwname[2] nwname*(wname[s])
_TWALK = struct.Struct("<IBHIIH")
_U16 = struct.Struct("<H")


def base_enc_twalk(tag, fid, newfid, wnames):
    parts = [b""]
    for w in wnames:
        b = w.encode("utf-8")
        parts.append(_U16.pack(len(b)))
        parts.append(b)
    names = b"".join(parts)
    return _TWALK.pack(17 + len(names), 110, tag, fid, newfid, len(wnames)) + names


def base_dec_twalk(frame):
    end = len(frame)
    if end < 17:
        raise BadFrame("short")
    size, typ, tag, fid, newfid, n = _TWALK.unpack_from(frame)
    if size != end or typ != 110:
        raise BadFrame("bad Twalk")
    o = 17
    wnames = []
    for _ in range(n):
        if o + 2 > end:
            raise BadFrame("short")
        ln, = _U16.unpack_from(frame, o)
        o += 2
        if o + ln > end:
            raise BadFrame("overrun")
        wnames.append(str(frame[o:o + ln], "utf-8"))
        o += ln
    if o != end:
        raise BadFrame("trailing bytes")
    return tag, fid, newfid, wnames


# Rgetattr: size[4] type[1] tag[2] valid[8] qid[13] mode[4] uid[4] gid[4] 15 x u64
_RGETATTR = struct.Struct("<IBHQBIQIII" + "Q" * 15)


def base_enc_rgetattr(tag, valid, qid, mode, uid, gid, nlink, rdev, size, blksize, blocks,
                      atime_sec, atime_nsec, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec,
                      btime_sec, btime_nsec, gen, data_version):
    return _RGETATTR.pack(160, 25, tag, valid, qid[0], qid[1], qid[2], mode, uid, gid, nlink,
                          rdev, size, blksize, blocks, atime_sec, atime_nsec, mtime_sec,
                          mtime_nsec, ctime_sec, ctime_nsec, btime_sec, btime_nsec, gen,
                          data_version)


def base_dec_rgetattr(frame):
    if len(frame) != 160:
        raise BadFrame("bad size")
    t = _RGETATTR.unpack(frame)
    if t[0] != 160 or t[1] != 25:
        raise BadFrame("bad Rgetattr")
    return t[2], t[3], Qid(t[4], t[5], t[6]), t[7:]


# ---------------------------------------------------------------------------
# the three messages

PAYLOAD = bytes(range(139))
WNAMES = ["usr", "glenda", "lib"]
GETATTR_U64 = [2, 0, 139, 4096, 8, 1700000000, 123456789, 1700000001, 223456789,
               1700000002, 323456789, 0, 0, 0, 0]
GETATTR = dict(valid=0x7FF, qid=Qid(0, 7, 0x1234567), mode=0o100644, uid=1000, gid=1000,
               nlink=2, rdev=0, size=139, blksize=4096, blocks=8,
               atime_sec=1700000000, atime_nsec=123456789,
               mtime_sec=1700000001, mtime_nsec=223456789,
               ctime_sec=1700000002, ctime_nsec=323456789,
               btime_sec=0, btime_nsec=0, gen=0, data_version=0)


def cases(codec):
    """(label, frame, nine ops, baseline ops, construct fields, message name) per message.

    nine ops: encode of a prebuilt message, build the message and encode it, decode."""
    enc, dec, M = codec.encode, codec.decode, codec.BY_NAME
    Rread, Twalk, Rgetattr = M["Rread"], M["Twalk"], M["Rgetattr"]
    out = []

    # Rread -----------------------------------------------------------------
    msg = Rread(data=PAYLOAD, tag=1)
    frame = enc(msg, DIALECT)
    assert base_enc_rread(1, PAYLOAD) == frame
    assert base_dec_rread(frame) == (1, PAYLOAD)
    out.append(("Rread 139B", frame,
                (lambda msg=msg: enc(msg, DIALECT),
                 lambda: enc(Rread(data=PAYLOAD, tag=1), DIALECT),
                 lambda frame=frame: dec(frame, DIALECT)),
                (lambda: base_enc_rread(1, PAYLOAD),
                 lambda frame=frame: base_dec_rread(frame)),
                {"tag": 1, "data": PAYLOAD}, "Rread"))

    # Twalk with three names --------------------------------------------------
    msg = Twalk(fid=1, newfid=2, wnames=WNAMES, tag=2)
    frame = enc(msg, DIALECT)
    assert base_enc_twalk(2, 1, 2, WNAMES) == frame
    assert base_dec_twalk(frame) == (2, 1, 2, WNAMES)
    out.append(("Twalk 3 names", frame,
                (lambda msg=msg: enc(msg, DIALECT),
                 lambda: enc(Twalk(fid=1, newfid=2, wnames=WNAMES, tag=2), DIALECT),
                 lambda frame=frame: dec(frame, DIALECT)),
                (lambda: base_enc_twalk(2, 1, 2, WNAMES),
                 lambda frame=frame: base_dec_twalk(frame)),
                {"tag": 2, "fid": 1, "newfid": 2, "wnames": WNAMES}, "Twalk"))

    # Rgetattr --------------------------------------------------------------
    msg = Rgetattr(tag=3, **GETATTR)
    frame = enc(msg, DIALECT)
    q = GETATTR["qid"]
    assert base_enc_rgetattr(3, 0x7FF, q, 0o100644, 1000, 1000, *GETATTR_U64) == frame
    assert GETATTR_U64 == [2, 0, 139, 4096, 8, 1700000000, 123456789, 1700000001, 223456789,
                           1700000002, 323456789, 0, 0, 0, 0]
    assert base_dec_rgetattr(frame)[2] == q
    out.append(("Rgetattr", frame,
                (lambda msg=msg: enc(msg, DIALECT),
                 lambda: enc(Rgetattr(tag=3, **GETATTR), DIALECT),
                 lambda frame=frame: dec(frame, DIALECT)),
                (lambda: base_enc_rgetattr(3, 0x7FF, q, 0o100644, 1000, 1000, 2, 0, 139, 4096,
                                           8, 1700000000, 123456789, 1700000001, 223456789,
                                           1700000002, 323456789, 0, 0, 0, 0),
                 lambda frame=frame: base_dec_rgetattr(frame)),
                dict(GETATTR, tag=3), "Rgetattr"))
    return out


def best_us(fns, repeat, min_time):
    """Best time per call of each function, in microseconds.  The functions are timed
    in turns, repeat rounds, so that each sees the same machine load; process CPU time,
    so that time spent descheduled on a busy machine does not count."""
    timers = [timeit.Timer(fn, timer=time.process_time) for fn in fns]
    numbers = [max(1, int(t.autorange()[0] * min_time / 0.2)) for t in timers]
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, (t, n) in enumerate(zip(timers, numbers)):
            best[i] = min(best[i], t.timeit(n) / n * 1e6)
    return best


def load_codec(path):
    """Another version of codec.py (say, the one before a change), for an A/B run."""
    spec = importlib.util.spec_from_file_location("nine.protocol._codec_alt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    ap.add_argument("--codec", metavar="FILE",
                    help="benchmark this copy of nine/protocol/codec.py instead")
    ap.add_argument("--no-construct", action="store_true", help="skip the construct columns")
    opts = ap.parse_args()
    codec = load_codec(opts.codec) if opts.codec else importlib.import_module(
        "nine.protocol.codec")
    repeat, min_time = (5, 0.01) if opts.quick else (40, 0.01)
    print("python %s, %s, codec %s; best of %d repeats; microseconds per operation"
          % (sys.version.split()[0], DIALECT, opts.codec or "nine.protocol.codec", repeat))
    print("  encode = encode a prebuilt message, build+enc = construct the message object and"
          " encode it,\n  round trip = build+enc + decode; baseline: struct code for that"
          " message alone")
    print("%-14s %-10s %8s %9s %7s %10s %9s" % ("message", "op", "nine", "baseline", "ratio",
                                               "construct", "compiled"))
    ratios = {}
    for label, frame, (n_enc, n_build, n_dec), (b_enc, b_dec), fields, name in cases(codec):
        plain = ref.DIALECTS[DIALECT][name]
        compiled = plain.compile()
        obj = ref._fields_in(fields)
        assert plain.build(obj) == frame and compiled.build(obj) == frame
        c_enc, cc_enc = (lambda: plain.build(obj)), (lambda: compiled.build(obj))
        c_dec, cc_dec = (lambda: plain.parse(frame)), (lambda: compiled.parse(frame))
        ops = [
            ("encode", n_enc, b_enc, c_enc, cc_enc),
            ("build+enc", n_build, b_enc, c_enc, cc_enc),
            ("decode", n_dec, b_dec, c_dec, cc_dec),
            ("round trip", lambda: (n_build(), n_dec()), lambda: (b_enc(), b_dec()),
             lambda: (c_enc(), c_dec()), lambda: (cc_enc(), cc_dec())),
        ]
        for op, n, b, c, cc in ops:
            tn, tb = best_us([n, b], repeat, min_time)
            ratios[label, op] = tn / tb
            if opts.no_construct:
                tc = tcc = float("nan")
            else:
                tc, tcc = best_us([c, cc], max(3, repeat // 4), min_time)
            print("%-14s %-10s %8.3f %9.3f %6.2fx %10.2f %9.2f" % (label, op, tn, tb, tn / tb,
                                                                  tc, tcc))
    for op in ("encode", "build+enc", "decode", "round trip"):
        worst = max(r for (_, o), r in ratios.items() if o == op)
        print("worst nine/baseline, %-10s %.2fx%s" % (op + ":", worst,
                                                    "" if worst <= 2 else "  (over 2x)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
