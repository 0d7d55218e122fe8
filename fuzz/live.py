"""The live campaign: plausible but damaged request streams sent to a running server.

A target server (fuzz.target: a synthetic tree that mounts a real scratch directory,
no authentication) runs in a subprocess.  Several connections at once each negotiate
a dialect, attach, and then send batches of requests (fuzz.requests) in a pipeline:
walks along the tree's paths, opens, reads, writes, creates, removes, directory
reads, stat/wstat, getattr/setattr, xattrs, locks, flushes, renames, links, with fids,
tags, offsets and counts that are valid or not; a share of the frames is damaged
(fuzz.frames), some are garbage, and now and then a frame lies about its size, a
Tversion comes in the middle, or a connection is cut halfway through a frame.  Each
batch ends with a sentinel request (a Tclunk of an unused fid) whose answer says the
batch was read.

After each round of batches the campaign checks:
  death       the server process has exited;
  hang        a new probe connection (Tversion, Tattach, Tgetattr) gets no answers in
              2 s, twice in a row, or a new connection is refused;
  stall       a connection that still holds together never answered its sentinel;
  traceback   a Python traceback in the server's log (its stderr);
  badreply    a reply that is not a valid R-message of the connection's dialect;
  rss         the server's resident memory grew more than rss_mib over its level
              after the first rounds;
  escape      a file next to the exported directory was made or changed (the export
              holds symlinks that point out of it).
The bytes sent on every connection of the session so far are saved with a finding;
`python3 -m fuzz --replay FILE` sends them again to a fresh server.
"""

import collections
import random
import selectors
import socket
import struct
import time

from nine import protocol as P
from nine.protocol import ProtocolError

from . import frames as F
from .requests import Session
from .target import Target, seed_export

PROBE_TIMEOUT = 2.0
SENTINEL_TAG = 0xFFFE
SENTINEL_FID = 0xFFFFFFF0
MAX_REPLY = 1 << 21             # larger than any msize the server agrees to
RSS_AFTER_ROUNDS = 20           # the server's memory then is the base of its growth
_STREAM = struct.Struct("<4sI")  # a saved finding: one record per connection
_TFLUSH = P.Tflush.mtype
_SENTINEL_TAG_BYTES = struct.pack("<H", SENTINEL_TAG)

# ---------------------------------------------------------------------------
# one fuzzed connection


def flushes_sentinel(frame):
    """Is frame a Tflush of the sentinel's tag?  Such a flush may end the sentinel before
    it is answered (a flushed request gets no reply), so it is never sent."""
    return len(frame) >= 9 and frame[4] == _TFLUSH and frame[7:9] == _SENTINEL_TAG_BYTES


class Conn:
    """A non-blocking client connection: bytes to send, replies read and checked."""

    def __init__(self, port, session, lifetime):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.session = session
        self.rounds_left = lifetime
        self.out = bytearray()
        self.inbuf = bytearray()
        self.sent = bytearray()         # everything sent this session, for a finding
        self.reply_dialect = None       # from the Rversion replies
        self.waiting = False            # for the sentinel's reply
        self.desync = False             # a frame lied about its size: no more framing
        self.cut = False                # closes after sending (cut mid-batch)
        self.eof = False
        self.replies = 0
        self.errors = 0
        self.bad = []                   # (signature, detail) of malformed replies

    def queue(self, frame):
        self.out += frame
        self.sent += frame

    def feed(self, data):
        buf = self.inbuf
        buf += data
        while len(buf) >= 4:
            size = buf[0] | buf[1] << 8 | buf[2] << 16 | buf[3] << 24
            if size < 7 or size > MAX_REPLY:
                self.bad.append(("reply size %d" % size, "reply frame size %d: %r"
                                 % (size, bytes(buf[:32]))))
                self.eof = True
                return
            if len(buf) < size:
                return
            self.check(bytes(buf[:size]))
            del buf[:size]

    def check(self, frame):
        self.replies += 1
        typ, tag = frame[4], frame[5] | frame[6] << 8
        if tag == SENTINEL_TAG:
            self.waiting = False
        dialect = self.reply_dialect or P.V9P2000L
        try:
            msg = P.decode(frame, dialect)
        except ProtocolError as ex:
            self.bad.append(("type %d in %s" % (typ, dialect),
                             "reply %r does not decode in %s: %s" % (frame[:64], dialect, ex)))
            return
        self.session.answered(tag, msg)
        if typ % 2 == 0:
            self.bad.append(("T-message %s" % type(msg).__name__, "reply %r" % (msg,)))
        elif typ == 101:
            self.reply_dialect = msg.version if msg.version in P.DIALECTS else None
        elif typ in (7, 107):
            self.errors += 1

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def pump(conns, timeout):
    """Send every connection's queued bytes and read replies until each waiting one has
    its sentinel's answer (or is closed), or timeout seconds have passed."""
    sel = selectors.DefaultSelector()
    live = {}
    for c in conns:
        if not c.eof:
            sel.register(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0),
                         c)
            live[c] = True
    deadline = time.monotonic() + timeout

    def drop(c):
        sel.unregister(c.sock)
        del live[c]

    while live and any(c.waiting or c.out for c in live):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, ev in sel.select(min(left, 0.5)):
            c = key.data
            if c not in live:
                continue
            try:
                if ev & selectors.EVENT_WRITE and c.out:
                    n = c.sock.send(c.out[:1 << 18])
                    del c.out[:n]
                    if not c.out:
                        if c.cut:
                            c.eof = True
                            drop(c)
                            c.close()
                            continue
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                if ev & selectors.EVENT_READ:
                    data = c.sock.recv(1 << 20)
                    if not data:
                        c.eof = True
                    else:
                        c.feed(data)
                    if c.eof:
                        drop(c)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                c.eof = True
                drop(c)
    sel.close()


def probe(port, timeout=PROBE_TIMEOUT):
    """'' when a new connection gets Rversion, Rattach and Rgetattr within timeout
    seconds, else what went wrong."""
    want = [101, 105, 25]
    frames = [P.Tversion(msize=8192, version=P.V9P2000L, tag=P.NOTAG),
              P.Tattach(fid=0, afid=P.NOFID, uname="root", aname="", n_uname=0, tag=1),
              P.Tgetattr(fid=0, request_mask=P.GETATTR_ALL, tag=2)]
    deadline = time.monotonic() + timeout
    got = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"".join(P.encode(m, P.V9P2000L) for m in frames))
            buf = b""
            while len(got) < 3:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "probe: %d of 3 replies in %.1f s" % (len(got), timeout)
                s.settimeout(left)
                d = s.recv(65536)
                if not d:
                    return "probe: connection closed after %d replies" % len(got)
                buf += d
                while len(buf) >= 7 and len(buf) >= struct.unpack_from("<I", buf)[0]:
                    n = struct.unpack_from("<I", buf)[0]
                    got.append(P.decode(buf[:n], P.V9P2000L))
                    buf = buf[n:]
    except socket.timeout:
        return "probe: %d of 3 replies in %.1f s" % (len(got), timeout)
    except (OSError, ProtocolError) as ex:
        return "probe: %s after %d replies" % (ex, len(got))
    types = [m.mtype for m in got]
    return "" if types == want else "probe: replies %r" % (got,)


# ---------------------------------------------------------------------------
# the campaign

class LiveCampaign:
    """Rounds of batches on `conns` connections against one target server."""

    def __init__(self, seed, dialects, findings, conns=4, rss_mib=256, stall_s=20.0,
                 probe_s=PROBE_TIMEOUT):
        self.rng = random.Random("live-%s" % seed)
        self.dialects = tuple(dialects)
        self.findings = findings
        self.nconns = conns
        self.rss_bound = rss_mib
        self.stall_s = stall_s
        self.probe_s = probe_s
        self.stats = collections.Counter()
        self.rss_base = None            # the server's rss after RSS_AFTER_ROUNDS rounds
        self.rounds_up = 0              # rounds since the server started
        self.rss_peak = 0.0
        self.target = None

    def new_conn(self):
        rng = self.rng
        s = Session(rng, rng.choice(self.dialects))
        try:
            c = Conn(self.target.port, s, rng.randint(1, 30))
        except OSError as ex:
            self.findings.add("hang", "connect: %s" % type(ex).__name__, str(ex))
            return None
        for m in s.start():
            c.queue(s.encode(m)[0])
        self.stats["sessions"] += 1
        self.stats["frames"] += 2
        return c

    def batch(self, c):
        """Queue one batch of requests on c, then its sentinel."""
        rng = self.rng
        s = c.session
        for _ in range(rng.randint(5, 60)):
            r = rng.random()
            if r < 0.02:        # garbage with a true size
                body = rng.randbytes(rng.randint(0, 40))
                frame = struct.pack("<IBH", 7 + len(body), rng.randrange(256), s.tag()) + body
                if not flushes_sentinel(frame):
                    c.queue(frame)
                    self.stats["frames"] += 1
                continue
            for msg in s.request():
                frame, d = s.encode(msg)
                if frame is None:
                    continue
                if r > 0.92:    # a damaged request (its size field tells the truth)
                    frame, _ = F.mutate(rng, frame, *F.layout(frame, type(msg).__name__, d),
                                        s.pool or [frame], fix_size=1.0)
                    if len(frame) < 7:
                        c.desync = True
                else:
                    s.pool.append(frame)
                if flushes_sentinel(frame):
                    continue
                c.queue(frame)
                self.stats["frames"] += 1
            if c.desync:
                return
        r = rng.random()
        if r < 0.003:           # a frame that lies about its size
            lie = rng.choice((3, 0xFFFFFFFF, min(s.msize + 1, 0xFFFFFFFF), 1 << 20, 100))
            c.queue(struct.pack("<I", lie) + rng.randbytes(rng.randint(3, 50)))
            c.desync = True
            self.stats["frames"] += 1
            return
        if r < 0.013:           # cut halfway through the batch
            del c.out[rng.randrange(len(c.out) + 1):]
            c.cut = True
            return
        c.queue(P.encode(P.Tclunk(fid=SENTINEL_FID, tag=SENTINEL_TAG), P.V9P2000L))
        c.waiting = True
        self.stats["frames"] += 1

    def streams(self, conns):
        """The bytes each connection sent this session, as one saved finding."""
        return b"".join(_STREAM.pack(b"CONN", len(c.sent)) + bytes(c.sent) for c in conns)

    def run(self, frames, progress=None, every=20000):
        """Send about `frames` frames; returns the seconds taken."""
        t0 = time.monotonic()
        self.target = Target()
        conns = []
        rounds = 0
        next_report = every
        try:
            while self.stats["frames"] < frames:
                rounds += 1
                while len(conns) < self.nconns:
                    c = self.new_conn()
                    if c is None:
                        break
                    conns.append(c)
                for c in conns:
                    c.rounds_left -= 1
                    self.batch(c)
                pump(conns, self.stall_s)
                self.after_round(conns, rounds)
                going = []
                for c in conns:
                    if c.eof or c.desync or c.cut or c.rounds_left <= 0:
                        self.retire(c)
                    else:
                        going.append(c)
                conns = going
                if progress and self.stats["frames"] >= next_report:
                    next_report += every
                    dt = time.monotonic() - t0
                    progress("live: %d frames in %.0f s (%.0f/s), %d findings, rss %.0f MiB"
                             % (self.stats["frames"], dt, self.stats["frames"] / dt,
                                len(self.findings), self.rss_peak))
            for c in conns:
                self.retire(c)
            conns = []
            for e in self.target.escapes():
                self.findings.add("escape", e, e)
        finally:
            for c in conns:
                c.close()
            self.stats["rounds"] = rounds
            self.target.remove()
        return time.monotonic() - t0

    def retire(self, c):
        self.stats["replies"] += c.replies
        self.stats["errors"] += c.errors
        self.stats["disconnects"] += c.eof and not (c.desync or c.cut)
        c.replies = c.errors = 0
        c.close()

    def after_round(self, conns, rounds):
        t = self.target
        for c in conns:
            for sig, detail in c.bad:
                self.findings.add("badreply", sig, detail, self.streams([c]),
                                  c.session.dialect)
            c.bad = []
            if c.waiting and not c.eof:
                self.findings.add("stall", "sentinel unanswered in %s" % c.session.dialect,
                                  "no answer to the batch's sentinel in %.0f s" % self.stall_s,
                                  self.streams([c]), c.session.dialect)
                c.eof = True
        for sig, text in t.new_tracebacks():
            self.findings.add("traceback", sig, text, self.streams(conns))
        if not t.alive():
            self.findings.add("death", "exit status %s" % t.proc.returncode, t.log_tail(),
                              self.streams(conns))
            self.restart(conns)
            return
        why = probe(t.port, self.probe_s)
        if why:
            self.stats["slow_probes"] += 1
            again = probe(t.port, self.probe_s)
            if again:
                self.findings.add("hang", why.split(":")[0], "%s\n%s" % (why, again),
                                  self.streams(conns))
                self.restart(conns)
                return
        rss = t.rss_mib()
        self.rss_peak = max(self.rss_peak, rss)
        self.rounds_up += 1
        if self.rounds_up == RSS_AFTER_ROUNDS:
            self.rss_base = rss
        elif self.rss_base is not None and rss - self.rss_base > self.rss_bound:
            self.findings.add("rss", "growth over %d MiB" % self.rss_bound,
                              "rss %.0f MiB, %.0f MiB after %d rounds"
                              % (rss, self.rss_base, RSS_AFTER_ROUNDS), self.streams(conns))
            self.rss_base = rss         # report each further growth by the bound once
        if rounds % 20 == 0:
            seed_export(t.export)

    def restart(self, conns):
        for c in conns:
            c.eof = True
        self.target.stop()
        self.target.start()
        self.stats["restarts"] += 1
        self.rss_base = None
        self.rounds_up = 0


def read_streams(data):
    """The per-connection byte streams of a saved live finding."""
    out = []
    o = 0
    while o + _STREAM.size <= len(data):
        magic, n = _STREAM.unpack_from(data, o)
        if magic != b"CONN":
            raise ValueError("not a saved live finding")
        o += _STREAM.size
        out.append(data[o:o + n])
        o += n
    return out


def replay(path):
    """Send a saved live finding's streams, one connection each in turn, to a fresh
    target; what happened, as lines of text."""
    with open(path, "rb") as f:
        streams = read_streams(f.read())
    t = Target()
    out = []
    try:
        for i, stream in enumerate(streams):
            with socket.create_connection(("127.0.0.1", t.port), timeout=5) as s:
                try:
                    s.sendall(stream)
                    s.settimeout(2)
                    while s.recv(1 << 20):
                        pass
                except OSError:
                    pass
            out.append("connection %d: %d bytes sent; server %s; %s" % (
                i, len(stream), "alive" if t.alive() else "DEAD",
                probe(t.port) or "probe answered" if t.alive() else ""))
            for sig, text in t.new_tracebacks():
                out.append("traceback %s\n%s" % (sig, text))
            if not t.alive():
                break
        out += ["escape: %s" % e for e in t.escapes()]
    finally:
        t.remove()
    return out
