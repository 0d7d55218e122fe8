"""The process table of a host as files, for a top(1) over many hosts (`nine ptop`).

    host_tree() holds them: host/ps, host/pscmd, host/psuser, host/top

Each is a text table of blank-separated columns, made for group reads whose aggregators
work at every level of a tree: `topk` (k rows by one column) over ps, `sum` per key
over pscmd, psuser and top.  ps, pscmd and psuser begin with a line of column names
(with no number in it: the aggregators skip it).  Every process is listed, to every
user, as /proc lists them (command lines included).

    ps      one line per process:
              PID USER CPU MEM RSS TIME S THR CMD ARGS
            CPU: percent of one cpu used since the previous sample (as top: up to
            100 x threads; 1 decimal), MEM: percent of the host's memory in RSS (1
            decimal), RSS: bytes, TIME: cpu seconds used since it started (user +
            system, 2 decimals), S: the state letter of /proc/PID/stat, THR: threads,
            CMD: the process name (comm), ARGS: its command line (the rest of the line;
            [CMD] for a kernel thread)
    pscmd   one line per process name:    CMD PROCS HOSTS CPU MEM RSS TIME
    psuser  one line per user:            USER PROCS HOSTS CPU MEM RSS TIME
            sums over that name's (user's) processes; HOSTS is 1, so that a `sum` over
            many hosts counts the hosts that run it
    top     the host's figures (no process is looked at), KEY VALUE lines: load1 load5
            load15, cpu (percent busy over all cpus since the previous sample, 1
            decimal), ncpu, mem (percent used, 1 decimal), mem_total mem_used (bytes),
            procs, threads, running (as host/procs counts them), hosts (1)

USER and CMD are written without blanks: a blank or backslash in them is an octal escape
(\\040, \\134), as in /proc/mounts.

Filters, per open: write lines to ps, pscmd or psuser to show only some processes in
that open's later reads (each write replaces the filter; an empty line clears it):

    user NAME       processes of that user (a name or a uid)
    match TEXT      processes whose command line (or name) holds TEXT, ignoring case
                    (htop's filter)

Sampling: CPU percentages cover the time since a sample taken between 0.2 and 10 s
before (by any read of these files); without one, a read waits 0.25 s to measure.  Reads
within 0.2 s of a sample share it.  A process's owner and command line are read again
only when its name or start time changed since the previous sample.
"""

import errno
import os
import re
import time

import gevent
from gevent.event import Event

from ..server.node import error
from ..server.users import USERS
from .files import File

MIN_WINDOW = 0.2
MAX_AGE = 10.0
WAIT = 0.25
_HZ = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_ESC = re.compile(r"[\s\\]")

PS_HEAD = "PID USER CPU MEM RSS TIME S THR CMD ARGS\n"
SUM_COLUMNS = "PROCS HOSTS CPU MEM RSS TIME"


def esc(name):
    """A name without blanks: blanks and backslashes as octal escapes."""
    return _ESC.sub(lambda m: "\\%03o" % ord(m.group()), name)


def unesc(name):
    """esc() undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), name)


class Proc:
    """One process of a sample."""
    __slots__ = ("pid", "uid", "user", "start", "ticks", "cpu", "rss", "state", "threads",
                 "comm", "args")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _proc(pid, known):
    """A Proc from /proc/PID (cpu not yet known), or None if it is gone.  known: the
    previous sample's processes: the owner and command line of one that has not changed
    (same start time and name) are taken from there."""
    try:
        st = _read("/proc/%d/stat" % pid).decode("utf-8", "replace")
    except OSError:
        return None
    head, _, tail = st.rpartition(")")
    f = tail.split()
    if len(f) < 22:
        return None
    p = Proc()
    p.pid = pid
    p.comm = head.partition("(")[2]
    p.state = f[0]
    p.ticks = int(f[11]) + int(f[12])
    p.threads = int(f[17])
    p.start = int(f[19])
    p.rss = int(f[21]) * _PAGE
    p.cpu = 0.0
    old = known.get(pid)
    if old is not None and old.start == p.start and old.comm == p.comm:
        p.uid, p.user, p.args = old.uid, old.user, old.args
        return p
    try:
        p.uid = os.stat("/proc/%d" % pid).st_uid
        cmdline = _read("/proc/%d/cmdline" % pid)
    except OSError:
        return None
    p.user = USERS.uname(p.uid)
    args = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    p.args = " ".join(args.split()) or "[%s]" % p.comm
    return p


def _cpu_ticks():
    """(busy, total) jiffies of all cpus from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return total - idle, total


class Sample:
    """One moment of the host: its cpu ticks and memory, and (for the process tables)
    every process, with cpu percentages against an earlier sample."""

    def __init__(self, previous=None, processes=True):
        self.t = time.monotonic()
        self.procs = {}
        if processes:
            known = previous.procs if previous is not None else {}
            for name in os.listdir("/proc"):
                if name.isdigit():
                    p = _proc(int(name), known)
                    if p is not None:
                        self.procs[p.pid] = p
        self.busy, self.total = _cpu_ticks()
        self.cpu = 0.0
        with open("/proc/meminfo") as f:
            info = dict((line.split(":")[0], line.split()[1]) for line in f if ":" in line)
        self.mem_total = int(info.get("MemTotal", 0)) * 1024
        avail = int(info.get("MemAvailable", info.get("MemFree", 0))) * 1024
        self.mem_used = self.mem_total - avail

    def against(self, base):
        """Set the cpu percentages from an earlier sample."""
        dt = self.t - base.t
        for p in self.procs.values():
            b = base.procs.get(p.pid)
            if b is not None and b.start == p.start and dt > 0:
                p.cpu = max(0.0, 100.0 * (p.ticks - b.ticks) / _HZ / dt)
        db, dtot = self.busy - base.busy, self.total - base.total
        self.cpu = 100.0 * db / dtot if dtot > 0 else 0.0

    def mem(self, p):
        return 100.0 * p.rss / self.mem_total if self.mem_total else 0.0


class Sampler:
    """Samples shared by the readers of one host's files (processes=False: the cpu and
    memory figures only, for `top`)."""

    def __init__(self, processes=True):
        self.processes = processes
        self.samples = []       # oldest first
        self.taking = None      # an Event while a sample is being taken

    def sample(self):
        if self.taking is not None:      # readers at one moment share one sample
            self.taking.wait()
        now = time.monotonic()
        if self.samples and now - self.samples[-1].t < MIN_WINDOW:
            return self.samples[-1]
        self.taking = Event()
        try:
            return self._take()
        finally:
            self.taking.set()
            self.taking = None

    def _take(self):
        last = self.samples[-1] if self.samples else None
        s = Sample(last, self.processes)
        base = None
        for old in reversed(self.samples):
            if MIN_WINDOW <= s.t - old.t <= MAX_AGE:
                base = old
                break
        if base is None:
            gevent.sleep(WAIT)
            base, s = s, Sample(s, self.processes)
        s.against(base)
        self.samples = [x for x in self.samples if s.t - x.t <= MAX_AGE][-3:] + [s]
        return s


# --- per-open filters ---------------------------------------------------------------

class Filter:
    """An open's filter (see the module's doc)."""
    __slots__ = ("uid", "match")

    def __init__(self):
        self.uid = None
        self.match = None

    def set(self, text):
        uid = match = None
        for line in text.splitlines():
            word, _, rest = line.strip().partition(" ")
            rest = rest.strip()
            if not word:
                continue
            if word == "user" and rest:
                uid = USERS.uid_of(rest)
                if uid is None:
                    raise error(errno.EINVAL, "unknown user %r" % rest)
            elif word == "match" and rest:
                match = rest.lower()
            else:
                raise error(errno.EINVAL, "filter lines: user NAME, match TEXT")
        self.uid, self.match = uid, match

    def keeps(self, p):
        if self.uid is not None and p.uid != self.uid:
            return False
        return self.match is None or self.match in p.args.lower() or \
            self.match in p.comm.lower()


# --- the tables -----------------------------------------------------------------------

def ps_text(s, keep):
    out = [PS_HEAD]
    for pid in sorted(s.procs):
        p = s.procs[pid]
        if keep(p):
            out.append("%d %s %.1f %.1f %d %.2f %s %d %s %s\n" % (
                pid, esc(p.user), p.cpu, s.mem(p), p.rss, p.ticks / _HZ, p.state,
                p.threads, esc(p.comm), p.args))
    return "".join(out)


def sums_text(s, keep, key, title):
    rows = {}
    for p in s.procs.values():
        if keep(p):
            r = rows.setdefault(key(p), [0, 0.0, 0.0, 0, 0.0])
            r[0] += 1
            r[1] += p.cpu
            r[2] += s.mem(p)
            r[3] += p.rss
            r[4] += p.ticks / _HZ
    out = ["%s %s\n" % (title, SUM_COLUMNS)]
    for k in sorted(rows):
        n, cpu, mem, rss, t = rows[k]
        out.append("%s %d 1 %.1f %.1f %d %.2f\n" % (esc(k), n, cpu, mem, rss, t))
    return "".join(out)


def top_text(s):
    l1, l5, l15 = os.getloadavg()
    with open("/proc/loadavg") as f:
        threads = int(f.read().split()[3].split("/")[1])
    with open("/proc/stat") as f:
        running = next((int(line.split()[1]) for line in f
                        if line.startswith("procs_running ")), 0)
    pairs = [("load1", "%.2f" % l1), ("load5", "%.2f" % l5), ("load15", "%.2f" % l15),
             ("cpu", "%.1f" % s.cpu), ("ncpu", os.cpu_count() or 1),
             ("mem", "%.1f" % (100.0 * s.mem_used / s.mem_total if s.mem_total else 0)),
             ("mem_total", s.mem_total), ("mem_used", s.mem_used),
             ("procs", sum(1 for d in os.listdir("/proc") if d.isdigit())),
             ("threads", threads), ("running", running), ("hosts", 1)]
    return "".join("%s %s\n" % kv for kv in pairs)


def ps_files():
    """The files ps, pscmd, psuser and top (see the module's doc)."""
    procs = Sampler()
    host = Sampler(processes=False)

    def table(make):
        def read(ctx, state):
            return make(procs.sample(), state.keeps).encode("utf-8", "surrogateescape")
        return read

    def write(ctx, offset, data, state):
        state.set(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def opened(ctx, flags):
        return Filter()

    def mk(name, make):
        return File(name, read=table(make), write=write, open=opened, blocking=True)
    return [mk("ps", ps_text),
            mk("pscmd", lambda s, keep: sums_text(s, keep, lambda p: p.comm, "CMD")),
            mk("psuser", lambda s, keep: sums_text(s, keep, lambda p: p.user, "USER")),
            File("top", read=lambda ctx: top_text(host.sample()).encode(), blocking=True)]
