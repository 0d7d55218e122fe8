"""The decoder campaign: valid frames of every message, round-tripped, then damaged and
decoded in every dialect.

For each frame (fuzz.frames makes and damages them):
  * the valid frame must round-trip: decode(encode(m)) == m and
    encode(decode(encode(m))) == encode(m);
  * the damaged frame is decoded in each dialect asked for (as bytes, now and then as
    a memoryview, the form the server hands over for large frames); the only
    acceptable outcomes are a message or nine.protocol.ProtocolError, within slow_ms;
  * a damaged frame that still decodes must encode back to the very same bytes (the
    one exception: Tfsync without its optional datasync);
  * a directory read's payload that decodes goes through unpack_stats (9P2000, .u
    Rread) or unpack_dirents (Rreaddir) too, with the same rule;
  * a share of the frames (ref_rate), valid and damaged, is also decoded by the
    construct reference in tests/reference.py (where it defines the message): both
    must accept the same frames and read the same fields;
  * every 64 frames, the damaged frames so far are fed to a Framer in random chunks.
Anything else (another exception, a slow decode, a mismatch) is a finding.
"""

import collections
import os
import random
import sys
import time
import traceback

from nine import protocol as P
from nine.protocol import ProtocolError, decode, encode, spec

from . import frames as F
from .findings import exception_signature

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TFSYNC = P.BY_NAME["Tfsync"].mtype
_RREAD = P.BY_NAME["Rread"].mtype
_RREADDIR = P.BY_NAME["Rreaddir"].mtype
_MISSING = object()
#: the stat fields on the wire in each dialect
_STAT_KEYS = {d: [n for n, _ in spec.STAT_FIELDS + (spec.STAT_DOTU if d != P.V9P2000 else [])]
              for d in P.DIALECTS}


def load_reference():
    """tests/reference.py, the construct description of the wire format (a test
    requirement: pip install construct)."""
    tests = os.path.join(ROOT, "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import reference
    return reference


def differs_from_reference(msg, fields, dialect):
    """Why the codec's message is not the reference's fields ('' when it is)."""
    for k, want in fields.items():
        have = getattr(msg, k, _MISSING)
        if k == "stat" and have is not _MISSING:
            extra = {sk: getattr(have, sk) for sk in P.Stat.__slots__ if sk not in want}
            if any(F.STAT_DOTU_DEFAULTS[sk] != v for sk, v in extra.items()):
                return "stat .u fields %r where the reference has none" % extra
            have = {sk: getattr(have, sk) for sk in want}
        elif k == "datasync" and want is None:
            want = 0
        elif k == "data" and have is not _MISSING:
            have = bytes(have)
        if have != want:
            return "field %s: codec %r, reference %r" % (k, have, want)
    for k in set(type(msg).__slots__) - set(fields):  # the .u fields of a 9P2000 message
        if dialect != P.V9P2000 or getattr(msg, k) != F.DOTU_DEFAULTS.get(k, _MISSING):
            return "field %s: codec %r, the reference has no such field" % (k, getattr(msg, k))
    return ""


class DecoderCampaign:
    """One decoder campaign: seed, the dialects to decode in, where findings go."""

    def __init__(self, seed, dialects, findings, slow_ms=50.0, ref_rate=0.1):
        self.rng = random.Random("decoder-%s" % seed)
        self.dialects = tuple(dialects)
        self.findings = findings
        self.slow = slow_ms / 1000.0
        self.ref_rate = ref_rate
        self.ref = load_reference() if ref_rate > 0 else None
        self.ref_types = {d: {self.ref.TYPE_NUMBERS[n] for n in self.ref.DIALECTS[d]}
                          for d in P.DIALECTS} if self.ref else {}
        self.names = {d: F.message_names(d) for d in P.DIALECTS}
        self.pool = collections.deque(maxlen=64)     # recent valid frames, to splice with
        self.recent = []                             # damaged frames for the Framer
        self.stats = collections.Counter()

    # --- one frame --------------------------------------------------------------------
    def step(self, dialect):
        """Make one valid frame of `dialect`, check it, damage it, check that."""
        rng = self.rng
        while True:
            name = rng.choice(self.names[dialect])
            msg = F.random_message(rng, name, dialect)
            try:
                frame = encode(msg, dialect)
                break
            except ProtocolError:   # a stat or a string over its limits: make another
                self.stats["unencodable"] += 1
        self.round_trip(msg, frame, dialect)
        if self.ref and rng.random() < self.ref_rate:
            self.against_reference(frame, dialect, msg)
        self.pool.append(frame)
        prefixes, strings = F.layout(frame, name, dialect)
        bad, how = F.mutate(rng, frame, prefixes, strings, self.pool)
        self.stats["frames"] += 1
        results = {}
        for d in self.dialects:
            buf = memoryview(bad) if rng.random() < 0.125 else bad
            results[d] = self.check(bad, buf, d, how)
        if self.ref and dialect in results and rng.random() < self.ref_rate:
            self.against_reference(bad, dialect, results[dialect], how)
        self.recent.append(bad)
        if len(self.recent) == 64:
            self.framer(self.recent)
            self.recent = []

    def round_trip(self, msg, frame, dialect):
        self.stats["round_trips"] += 1
        try:
            back = decode(frame, dialect)
            again = encode(back, dialect)
        except Exception as ex:
            self.crash("roundtrip", ex, frame, dialect, "valid %s" % type(msg).__name__)
            return
        if back != msg or again != frame:
            self.findings.add("roundtrip", "%s in %s" % (type(msg).__name__, dialect),
                              "sent %r\ngot  %r" % (msg, back), frame, dialect)

    def check(self, frame, buf, dialect, how):
        """Decode a damaged frame: the message, None (ProtocolError) or False (a crash)."""
        self.stats["decodes"] += 1
        t0 = time.perf_counter()
        try:
            msg = decode(buf, dialect)
        except ProtocolError:
            msg = None
        except Exception as ex:
            self.crash("crash", ex, frame, dialect, "mutations %s" % "+".join(how))
            return False
        dt = time.perf_counter() - t0
        if dt > self.slow:
            self.timing(frame, dialect, dt)
        if msg is None:
            return None
        self.stats["accepted"] += 1
        try:
            again = encode(msg, dialect)
        except Exception as ex:
            self.crash("reencode", ex, frame, dialect, "decoded %r" % (msg,))
            return msg
        if again != frame and not (msg.mtype == _TFSYNC and len(frame) == 11):
            self.findings.add("reencode", "%s in %s" % (type(msg).__name__, dialect),
                              "decoded %r\nencodes as %r" % (msg, again), frame, dialect)
        if msg.mtype == _RREAD and dialect != P.V9P2000L:
            self.payload("stats", msg.data, frame, dialect)
        elif msg.mtype == _RREADDIR:
            self.payload("dirents", msg.data, frame, dialect)
        return msg

    def payload(self, kind, data, frame, dialect):
        """A directory read's payload: "stats" (9P2000, .u) or "dirents" (9P2000.L)."""
        try:
            out = P.unpack_stats(data, dialect) if kind == "stats" else P.unpack_dirents(data)
        except ProtocolError:
            out = None
        except Exception as ex:
            self.crash("crash", ex, frame, dialect, "unpacking the %s of the payload" % kind)
            return
        if not self.ref or self.rng.random() >= self.ref_rate:
            return
        self.stats["reference"] += 1
        try:
            want = (self.ref.ref_unpack_stats(bytes(data), dialect) if kind == "stats" else
                    self.ref.ref_unpack_dirents(bytes(data)))
        except Exception:
            want = None
        if out is not None and kind == "stats":
            keys = _STAT_KEYS[dialect]
            out = [{k: getattr(st, k) for k in keys} for st in out]
        if out != want:
            self.findings.add("reference", "%s in %s" % (kind, dialect),
                              "codec %r\nreference %r" % (out, want), frame, dialect)

    def timing(self, frame, dialect, dt):
        """A decode over the limit: timed three more times, a finding if still slow."""
        best = dt
        for _ in range(3):
            t0 = time.perf_counter()
            try:
                decode(frame, dialect)
            except Exception:
                pass
            best = min(best, time.perf_counter() - t0)
        if best > self.slow:
            self.findings.add("slow", "type %d in %s" % (frame[4] if len(frame) > 4 else -1,
                                                         dialect),
                              "decode took %.1f ms (%d bytes)" % (best * 1000, len(frame)),
                              frame, dialect)

    def against_reference(self, frame, dialect, msg, how=()):
        """The codec's verdict (msg: a message, None for ProtocolError, False for a
        crash) against the reference's, where the reference defines the type."""
        if msg is False or len(frame) < 5 or frame[4] not in self.ref_types[dialect]:
            return
        self.stats["reference"] += 1
        try:
            name, fields = self.ref.ref_decode(frame, dialect)
        except Exception:
            name = fields = None
        if msg is None and fields is None:
            return
        if msg is None or fields is None:
            why = ("codec rejects a %s the reference accepts" % name if msg is None else
                   "codec accepts %r, the reference rejects it" % (msg,))
            why += " (mutations %s)" % "+".join(how)
        else:
            why = differs_from_reference(msg, fields, dialect)
            if not why:
                return
        self.findings.add("reference", "type %d in %s" % (frame[4], dialect), why, frame,
                          dialect)

    def framer(self, frames):
        """The frames, concatenated, through a Framer in random chunks."""
        rng = self.rng
        stream = b"".join(frames)
        fr = P.Framer(rng.choice((8192, 65536, 1 << 20)))
        o = 0
        self.stats["framer_streams"] += 1
        try:
            while o < len(stream):
                k = rng.randint(1, 4096)
                for f in fr.feed(stream[o:o + k]):
                    if P.peek_header(f)[0] != len(f):
                        self.findings.add("framer", "frame size", "size field %d, %d bytes"
                                          % (P.peek_header(f)[0], len(f)), stream)
                o += k
        except ProtocolError:
            pass
        except Exception as ex:
            self.crash("framer", ex, stream, None, "Framer.feed")

    def crash(self, kind, ex, frame, dialect, what):
        self.findings.add(kind, "%s in %s" % (exception_signature(ex), dialect),
                          "%s, %d bytes %r\n%s" % (what, len(frame), bytes(frame[:64]),
                                                   "".join(traceback.format_exception(ex))),
                          frame, dialect)

    # --- a campaign ---------------------------------------------------------------------
    def run(self, frames, progress=None, every=100000, make=None):
        """Make and check `frames` damaged frames, made in turn in each dialect of make
        (default: the dialects decoded in); progress(text) every `every` frames.
        Returns the seconds taken."""
        t0 = time.monotonic()
        dialects = tuple(make or self.dialects)
        for i in range(frames):
            self.step(dialects[i % len(dialects)])
            if progress and (i + 1) % every == 0:
                dt = time.monotonic() - t0
                progress("decoder: %d frames in %.0f s (%.0f/s), %d findings"
                         % (i + 1, dt, (i + 1) / dt, len(self.findings)))
        return time.monotonic() - t0


def replay(path, dialects):
    """Decode a saved frame in each dialect; (dialect, outcome text) pairs."""
    with open(path, "rb") as f:
        frame = f.read()
    out = []
    for d in dialects:
        try:
            out.append((d, "decodes: %r" % (decode(frame, d),)))
        except ProtocolError as ex:
            out.append((d, "ProtocolError: %s" % ex))
        except Exception as ex:
            out.append((d, "".join(traceback.format_exception(ex)).rstrip()))
    return out
