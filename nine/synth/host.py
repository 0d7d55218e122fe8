"""Host information as files.

    server.exports["host"] = SynthFS(host_tree()).attach

Two kinds of files.

proc/ holds copies of the kernel's /proc files: cpuinfo, meminfo, loadavg, uptime, stat,
vmstat, mounts, version, diskstats, partitions, swaps, filesystems, cmdline and net/dev,
net/snmp, net/netstat, net/sockstat (those that exist when the tree is made).  Each open
sees one snapshot, read from /proc at open time; stat shows size 0, as /proc does.

The other files are synthetic, made for aggregation across many hosts: text lines
`KEY VALUE`, one value per line, KEY without blanks, VALUE a decimal number (integer, or
with a fraction where noted) except in `hostname`.  Keys are stable: a key is present on
every host that has the thing it names.  Compound keys are `THING.FIELD`: split at the
last dot (THING may itself hold dots, as eth0.100 does).  Blanks and backslashes in a
THING are written as octal escapes (\\040, \\011, \\012, \\134), as in /proc/mounts.

    hostname    hostname NAME                       (the kernel's node name)
    load        load1 load5 load15                  (load averages, 2 decimals)
    cpu         ncpu N           logical cpus
                ncore N          physical cores (= ncpu when unknown)
                total P          percent busy over all cpus (1 decimal)
                cpuK P           percent busy of cpu K, for each cpu
                interval S       the seconds that the percentages cover (3 decimals)
                user S, nice S, system S, idle S, iowait S, irq S, softirq S, steal S
                                 cumulative seconds since boot, summed over cpus (2 decimals)
    mem         total, available, used, free, buffers, cached, shared, swap_total,
                swap_used, swap_free        bytes
                percent          percent used (1 decimal)
    net         IF.rx_bytes IF.tx_bytes IF.rx_packets IF.tx_packets IF.rx_errs IF.tx_errs
                IF.rx_drop IF.tx_drop       for each interface IF, cumulative counters
    disk        DEV.reads DEV.writes DEV.read_bytes DEV.write_bytes DEV.read_ms DEV.write_ms
                DEV.busy_ms                 for each disk DEV, cumulative counters
                MOUNT.total MOUNT.used MOUNT.free (bytes) MOUNT.percent (1 decimal)
                                            for / and each mounted block-device file
                                            system (MOUNT starts with "/", DEV never does)
    uptime      uptime S (2 decimals), boot_time T (seconds since the epoch), idle S
    users       count N (login sessions), unique N (distinct users), NAME.sessions N
    procs       count N (processes), threads N, running N, blocked N, forks N (since boot)
    metrics     Ganglia gmond's metrics, `NAME VALUE [UNITS]` (nine.synth.metrics)
    ps pscmd psuser top
                the process table, for a top(1) over many hosts (nine.synth.ps)

`cpu` percentages cover the time since an earlier read of `cpu` (by anyone) made between
0.2 and 10 seconds ago; when there was none, the read waits 0.25 s to measure.

Each open computes the text afresh; when it differs from what the previous open saw,
the file's qid.version (and mtime) moves.
"""

import os
import re
import socket
import time

import gevent

from .files import Dir, File
from .metrics import Metrics
from .ps import ps_files

PROC_FILES = ["cpuinfo", "meminfo", "loadavg", "uptime", "stat", "vmstat", "mounts",
              "version", "diskstats", "partitions", "swaps", "filesystems", "cmdline"]
PROC_NET_FILES = ["dev", "snmp", "netstat", "sockstat"]

_ESC = re.compile(r"[\s\\]")


def _esc(name):
    return _ESC.sub(lambda m: "\\%03o" % ord(m.group()), name)


def _fmt(pairs):
    return "".join("%s %s\n" % kv for kv in pairs)


def _f1(x):
    return "%.1f" % x


def _f2(x):
    return "%.2f" % x


def _versioned(name, make, blocking=False):
    """A snapshot file whose qid.version moves when its content changes."""
    last = [None]

    def read(ctx):
        data = make()
        if isinstance(data, str):
            data = data.encode()
        if data != last[0]:
            if last[0] is not None:
                f.touch()
            last[0] = data
        return data
    f = File(name, read=read, mode=0o444, blocking=blocking)
    return f


def _proc_reader(path):
    def make():
        with open(path, "rb") as fp:
            return fp.read()
    return make


# --- synthetic files --------------------------------------------------------------------

def _hostname():
    return "hostname %s\n" % _esc(socket.gethostname() or os.uname().nodename)


def _load():
    l1, l5, l15 = os.getloadavg()
    return _fmt([("load1", _f2(l1)), ("load5", _f2(l5)), ("load15", _f2(l15))])


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class _CpuSampler:
    MIN_WINDOW = 0.2
    MAX_AGE = 10.0
    WAIT = 0.25

    def __init__(self):
        self.samples = []       # (monotonic time, percpu cpu_times), oldest first

    @staticmethod
    def _sample():
        import psutil     # (on first use: a tenth of a leaf's start, for a file read)
        return time.monotonic(), psutil.cpu_times(percpu=True)

    @staticmethod
    def _busy_total(t):
        total = sum(getattr(t, f, 0.0) for f in _CPU_FIELDS)
        idle = t.idle + getattr(t, "iowait", 0.0)
        return total - idle, total

    def text(self):
        now = self._sample()
        base = None
        for s in reversed(self.samples):
            age = now[0] - s[0]
            if self.MIN_WINDOW <= age <= self.MAX_AGE and len(s[1]) == len(now[1]):
                base = s
                break
        if base is None:
            gevent.sleep(self.WAIT)
            base, now = now, self._sample()
        self.samples = [s for s in self.samples if now[0] - s[0] <= self.MAX_AGE][-4:]
        self.samples.append(now)
        per = []
        sb = st = 0.0
        for a, b in zip(base[1], now[1]):
            ba, ta = self._busy_total(a)
            bb, tb = self._busy_total(b)
            db, dt = max(bb - ba, 0.0), max(tb - ta, 0.0)
            per.append(100.0 * db / dt if dt > 0 else 0.0)
            sb += db
            st += dt
        ncpu = len(now[1])
        import psutil
        ncore = psutil.cpu_count(logical=False) or ncpu
        pairs = [("ncpu", ncpu), ("ncore", ncore), ("total", _f1(100.0 * sb / st if st else 0.0))]
        pairs += [("cpu%d" % i, _f1(min(p, 100.0))) for i, p in enumerate(per)]
        pairs.append(("interval", "%.3f" % (now[0] - base[0])))
        tot = psutil.cpu_times()
        pairs += [(f, _f2(getattr(tot, f, 0.0))) for f in _CPU_FIELDS]
        return _fmt(pairs)


def _mem():
    import psutil
    v = psutil.virtual_memory()
    s = psutil.swap_memory()
    return _fmt([("total", v.total), ("available", v.available), ("used", v.used),
                 ("free", v.free), ("buffers", getattr(v, "buffers", 0)),
                 ("cached", getattr(v, "cached", 0)), ("shared", getattr(v, "shared", 0)),
                 ("swap_total", s.total), ("swap_used", s.used), ("swap_free", s.free),
                 ("percent", _f1(v.percent))])


def _net():
    import psutil
    pairs = []
    counters = psutil.net_io_counters(pernic=True) or {}
    for name in sorted(counters):
        c = counters[name]
        n = _esc(name)
        pairs += [(n + ".rx_bytes", c.bytes_recv), (n + ".tx_bytes", c.bytes_sent),
                  (n + ".rx_packets", c.packets_recv), (n + ".tx_packets", c.packets_sent),
                  (n + ".rx_errs", c.errin), (n + ".tx_errs", c.errout),
                  (n + ".rx_drop", c.dropin), (n + ".tx_drop", c.dropout)]
    return _fmt(pairs)


def _disk():
    import psutil
    pairs = []
    try:
        counters = psutil.disk_io_counters(perdisk=True) or {}
    except (OSError, RuntimeError):
        counters = {}
    for name in sorted(counters):
        c = counters[name]
        n = _esc(name)
        pairs += [(n + ".reads", c.read_count), (n + ".writes", c.write_count),
                  (n + ".read_bytes", c.read_bytes), (n + ".write_bytes", c.write_bytes),
                  (n + ".read_ms", c.read_time), (n + ".write_ms", c.write_time),
                  (n + ".busy_ms", getattr(c, "busy_time", 0))]
    mounts = ["/"]
    try:
        for p in psutil.disk_partitions(all=False):
            if p.mountpoint not in mounts:
                mounts.append(p.mountpoint)
    except OSError:
        pass
    for m in sorted(mounts):
        try:
            u = psutil.disk_usage(m)
        except OSError:
            continue
        n = _esc(m)
        pairs += [(n + ".total", u.total), (n + ".used", u.used), (n + ".free", u.free),
                  (n + ".percent", _f1(u.percent))]
    return _fmt(pairs)


def _uptime():
    import psutil
    with open("/proc/uptime") as fp:
        up, idle = (float(x) for x in fp.read().split()[:2])
    return _fmt([("uptime", _f2(up)), ("boot_time", int(psutil.boot_time())),
                 ("idle", _f2(idle))])


def _users():
    import psutil
    try:
        us = psutil.users()
    except OSError:
        us = []
    per = {}
    for u in us:
        per[u.name] = per.get(u.name, 0) + 1
    pairs = [("count", len(us)), ("unique", len(per))]
    pairs += [(_esc(name) + ".sessions", k) for name, k in sorted(per.items())]
    return _fmt(pairs)


def _procs():
    count = sum(1 for d in os.listdir("/proc") if d.isdigit())
    threads = running = blocked = forks = 0
    with open("/proc/loadavg") as fp:
        f = fp.read().split()
    if len(f) >= 4 and "/" in f[3]:
        threads = int(f[3].split("/")[1])
    with open("/proc/stat") as fp:
        for line in fp:
            k, _, v = line.partition(" ")
            if k == "procs_running":
                running = int(v)
            elif k == "procs_blocked":
                blocked = int(v)
            elif k == "processes":
                forks = int(v)
    return _fmt([("count", count), ("threads", threads), ("running", running),
                 ("blocked", blocked), ("forks", forks)])


def host_tree(procroot="/proc"):
    """A Dir for SynthFS: proc/ copies and the synthetic files (see the module docstring)."""
    proc = [_versioned(n, _proc_reader(os.path.join(procroot, n)))
            for n in PROC_FILES if os.path.isfile(os.path.join(procroot, n))]
    net = [_versioned(n, _proc_reader(os.path.join(procroot, "net", n)))
           for n in PROC_NET_FILES if os.path.isfile(os.path.join(procroot, "net", n))]
    if net:
        proc.append(Dir("net", net))
    cpu = _CpuSampler()
    return Dir("", [
        Dir("proc", proc),
        _versioned("hostname", _hostname),
        _versioned("load", _load),
        _versioned("cpu", cpu.text, blocking=True),
        _versioned("mem", _mem),
        _versioned("net", _net),
        _versioned("disk", _disk),
        _versioned("uptime", _uptime),
        _versioned("users", _users),
        _versioned("procs", _procs),
        _versioned("metrics", Metrics(procroot).text, blocking=True),
    ] + ps_files())
