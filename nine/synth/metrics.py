"""Ganglia's host metrics as one synthetic file: /host/metrics on every leaf.

The metrics are those of Ganglia's default gmond (3.7, with Debian's gmond.conf), with
gmond's names, units and meaning, computed as gmond's libmetrics computes them on
Linux from the same sources (/proc and statvfs).  The file is one metric a line:

    NAME VALUE [UNITS]

VALUE is a decimal number formatted as gmond formats it (load_one "%.2f", cpu_user
"%.1f", ...), except for the string metrics (os_name, os_release, machine_type); UNITS
(no blanks) is absent where gmond's are blank (load_*, proc_*).  So the numeric group
aggregators (sum, mean, min, max) work on it directly: a string metric has no number
and is skipped, and the units column is not a number either.

METRICS describes each metric as gmond's XML does (TYPE, UNITS, SLOPE, TMAX, DMAX and
the EXTRA_DATA GROUP, TITLE, DESC), for whoever renders the file again as gmond's XML
(nine.monitor).

Rates and percentages (cpu_*, bytes_*, pkts_*) cover the time since an earlier read
(by anyone) made between MIN_WINDOW seconds and MAX_AGE seconds ago, as gmond's cover
the time since its last collection; a read less than MIN_WINDOW after another gets
that one's, and a read with no earlier read waits WAIT seconds to measure.

Where it differs from gmond 3.7: mem_shared is the kernel's Shmem (gmond reads the
MemShared line that Linux dropped in 2.6, and so always says 0).
"""

import collections
import os
import time

import gevent

Metric = collections.namedtuple("Metric", "name type units slope tmax dmax group title "
                                          "desc fmt")


def _m(name, type_, units, slope, tmax, group, title, desc, fmt):
    return Metric(name, type_, units, slope, tmax, 0, group, title, desc, fmt)


#: gmond 3.7.2's metrics as its XML describes them (Debian's gmond.conf), in its order
METRICS = [
    _m("load_one", "float", "", "both", 70, "load", "One Minute Load Average",
       "One minute load average", "%.2f"),
    _m("load_five", "float", "", "both", 325, "load", "Five Minute Load Average",
       "Five minute load average", "%.2f"),
    _m("load_fifteen", "float", "", "both", 950, "load", "Fifteen Minute Load Average",
       "Fifteen minute load average", "%.2f"),
    _m("cpu_user", "float", "%", "both", 90, "cpu", "CPU User", "Percentage of CPU "
       "utilization that occurred while executing at the user level", "%.1f"),
    _m("cpu_system", "float", "%", "both", 90, "cpu", "CPU System", "Percentage of CPU "
       "utilization that occurred while executing at the system level", "%.1f"),
    _m("cpu_idle", "float", "%", "both", 90, "cpu", "CPU Idle", "Percentage of time "
       "that the CPU or CPUs were idle and the system did not have an outstanding disk "
       "I/O request", "%.1f"),
    _m("cpu_nice", "float", "%", "both", 90, "cpu", "CPU Nice", "Percentage of CPU "
       "utilization that occurred while executing at the user level with nice priority",
       "%.1f"),
    _m("cpu_wio", "float", "%", "both", 90, "cpu", "CPU wio", "Percentage of time that "
       "the CPU or CPUs were idle during which the system had an outstanding disk I/O "
       "request", "%.1f"),
    _m("cpu_aidle", "float", "%", "both", 3800, "cpu", "CPU aidle",
       "Percent of time since boot idle CPU", "%.1f"),
    _m("cpu_num", "uint16", "CPUs", "zero", 1200, "cpu", "CPU Count",
       "Total number of CPUs", "%d"),
    _m("cpu_speed", "uint32", "MHz", "zero", 1200, "cpu", "CPU Speed",
       "CPU Speed in terms of MHz", "%d"),
    _m("mem_total", "float", "KB", "zero", 1200, "memory", "Memory Total",
       "Total amount of memory displayed in KBs", "%.0f"),
    _m("mem_free", "float", "KB", "both", 180, "memory", "Free Memory",
       "Amount of available memory", "%.0f"),
    _m("mem_cached", "float", "KB", "both", 180, "memory", "Cached Memory",
       "Amount of cached memory", "%.0f"),
    _m("mem_buffers", "float", "KB", "both", 180, "memory", "Memory Buffers",
       "Amount of buffered memory", "%.0f"),
    _m("mem_shared", "float", "KB", "both", 180, "memory", "Shared Memory",
       "Amount of shared memory", "%.0f"),
    _m("swap_total", "float", "KB", "zero", 1200, "memory", "Swap Space Total",
       "Total amount of swap space displayed in KBs", "%.0f"),
    _m("swap_free", "float", "KB", "both", 180, "memory", "Free Swap Space",
       "Amount of available swap memory", "%.0f"),
    _m("bytes_in", "float", "bytes/sec", "both", 300, "network", "Bytes Received",
       "Number of bytes in per second", "%.2f"),
    _m("bytes_out", "float", "bytes/sec", "both", 300, "network", "Bytes Sent",
       "Number of bytes out per second", "%.2f"),
    _m("pkts_in", "float", "packets/sec", "both", 300, "network", "Packets Received",
       "Packets in per second", "%.2f"),
    _m("pkts_out", "float", "packets/sec", "both", 300, "network", "Packets Sent",
       "Packets out per second", "%.2f"),
    _m("disk_total", "double", "GB", "both", 1200, "disk", "Total Disk Space",
       "Total available disk space", "%.3f"),
    _m("disk_free", "double", "GB", "both", 180, "disk", "Disk Space Available",
       "Total free disk space", "%.3f"),
    _m("part_max_used", "float", "%", "both", 180, "disk", "Maximum Disk Space Used",
       "Maximum percent used for all partitions", "%.1f"),
    _m("proc_run", "uint32", "", "both", 950, "process", "Total Running Processes",
       "Total number of running processes", "%d"),
    _m("proc_total", "uint32", "", "both", 950, "process", "Total Processes",
       "Total number of processes", "%d"),
    _m("boottime", "uint32", "s", "zero", 1200, "system", "Last Boot Time",
       "The last time that the system was started", "%d"),
    _m("os_name", "string", "", "zero", 1200, "system", "Operating System",
       "Operating system name", "%s"),
    _m("os_release", "string", "", "zero", 1200, "system", "Operating System Release",
       "Operating system release date", "%s"),
    _m("machine_type", "string", "", "zero", 1200, "system", "Machine Type",
       "System architecture", "%s"),
]
BY_NAME = {m.name: m for m in METRICS}

#: gmond's machine_type names where they differ from the kernel's (uname -m)
_MACHINE = {"i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "armv7l": "arm",
            "armv6l": "arm", "ppc": "powerpc", "ppc64": "powerpc", "ppc64le": "powerpc",
            "s390x": "s390", "parisc": "hppa", "parisc64": "hppa"}
#: file systems gmond counts as remote (libmetrics remote_mount), besides DEV:PATH ones
_REMOTE_TYPES = ("nfs", "nfs4", "autofs", "gfs", "none")


def parse(text):
    """{name: (value, units)} of a metrics file's text (value: str as written)."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 2:
            out[f[0]] = (f[1], f[2] if len(f) > 2 else "")
    return out


def _unescape(path):
    """A /proc/mounts field with its octal escapes (\\040) decoded."""
    if "\\" not in path:
        return path
    return path.encode("latin-1").decode("unicode_escape").encode("latin-1").decode(
        "utf-8", "surrogateescape")


class Metrics:
    """The metrics of the host whose /proc is at procroot (and whose mount points are
    this machine's).  text() is the file's content; samples of the counters that
    rates are computed from are kept between reads."""

    MIN_WINDOW = 0.5
    MAX_AGE = 900.0
    WAIT = 0.5
    KEEP = 8

    def __init__(self, procroot="/proc"):
        self.procroot = procroot
        self.samples = collections.deque(maxlen=self.KEEP)   # (monotonic, cpu, net)
        self.last = None            # the latest rates: (cpu, net)
        self._speed = None

    def _read(self, *path):
        with open(os.path.join(self.procroot, *path)) as f:
            return f.read()

    # -- counters (cpu jiffies, network) ----------------------------------------------
    def _cpu(self):
        """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq
        softirq steal (jiffies; missing fields 0)."""
        for line in self._read("stat").splitlines():
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:9]]
                return v + [0] * (8 - len(v))
        return [0] * 8

    def _net(self):
        """{interface: (rx bytes, rx packets, tx bytes, tx packets)} of the interfaces
        gmond counts: not lo*, bond* or VLAN interfaces."""
        try:
            vlan = {line.split("|")[0].strip()
                    for line in self._read("net", "vlan", "config").splitlines()[2:]}
        except OSError:
            vlan = set()
        out = {}
        for line in self._read("net", "dev").splitlines()[2:]:
            name, sep, rest = line.partition(":")
            name = name.strip()
            if not sep or name.startswith(("lo", "bond")) or name in vlan:
                continue
            f = [int(x) for x in rest.split()]
            out[name] = (f[0], f[1], f[8], f[9])
        return out

    def _sample(self):
        return time.monotonic(), self._cpu(), self._net()

    def _rates(self):
        """(cpu percentages dict, net rates dict) since a fitting earlier sample; the
        previous read's when that was less than MIN_WINDOW ago."""
        if self.last is not None and time.monotonic() - self.samples[-1][0] < self.MIN_WINDOW:
            return self.last
        now = self._sample()
        base = None
        for s in reversed(self.samples):
            if self.MIN_WINDOW <= now[0] - s[0] <= self.MAX_AGE:
                base = s
                break
        if base is None:
            gevent.sleep(self.WAIT)
            base, now = now, self._sample()
        self.samples.append(now)
        d = [max(b - a, 0) for a, b in zip(base[1], now[1])]
        total = sum(d)

        def pct(x):
            return min(max(100.0 * x / total, 0.0), 100.0) if total else 0.0
        user, nice, system, idle, iowait, irq, softirq, steal = d
        cpu = {"cpu_user": pct(user), "cpu_nice": pct(nice),
               "cpu_system": pct(system + irq + softirq), "cpu_idle": pct(idle),
               "cpu_wio": pct(iowait)}
        dt = now[0] - base[0]
        sums = [0, 0, 0, 0]
        for name, c in now[2].items():
            old = base[2].get(name)
            if old is not None:
                for i in range(4):
                    sums[i] += max(c[i] - old[i], 0)   # a reset counter counts 0
        net = {"bytes_in": sums[0] / dt, "pkts_in": sums[1] / dt,
               "bytes_out": sums[2] / dt, "pkts_out": sums[3] / dt}
        self.last = cpu, net
        return self.last

    # -- levels -----------------------------------------------------------------------
    def _meminfo(self):
        out = {}
        for line in self._read("meminfo").splitlines():
            k, _, v = line.partition(":")
            f = v.split()
            if f:
                out[k] = float(f[0])
        return out

    def _disk(self):
        """(total GB, free GB, max percent used) over the local read-write file systems
        on devices, each device once (libmetrics find_disk_space)."""
        total = free = 0.0
        worst = 0.0
        seen = set()
        for line in self._read("mounts").splitlines():
            f = line.split()
            if len(f) < 4:
                continue
            dev, mnt, fstype, opts = f[0], _unescape(f[1]), f[2], f[3]
            if opts.startswith("ro"):
                continue
            if ":" in dev or fstype.startswith("nfs") or fstype in _REMOTE_TYPES or \
                    (fstype == "smbfs" and dev.startswith("//")):
                continue
            if not dev.startswith(("/dev/", "/dev2/")) and not fstype.startswith("zfs"):
                continue
            if dev in seen:
                continue
            seen.add(dev)
            try:
                st = os.statvfs(mnt)
            except OSError:
                continue
            total += st.f_blocks * st.f_bsize
            free += st.f_bavail * st.f_bsize
            if st.f_blocks:
                worst = max(worst, 100.0 * (st.f_blocks - st.f_bavail) / st.f_blocks)
        return total / 1e9, free / 1e9, worst

    def _cpu_speed(self):
        """MHz: cpufreq's scaling_max_freq of cpu0, else /proc/cpuinfo's first `cpu
        MHz` (read once, as gmond does)."""
        if self._speed is None:
            self._speed = 0
            try:
                with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq") as f:
                    self._speed = int(f.read().split()[0]) // 1000
            except (OSError, ValueError, IndexError):
                for line in self._read("cpuinfo").splitlines():
                    if line.startswith(("cpu MHz", "clock")):
                        num = line.partition(":")[2].strip().rstrip("MHz")
                        try:
                            self._speed = int(float(num))
                        except ValueError:
                            pass
                        break
        return self._speed

    def values(self):
        """{name: value} of every metric (numbers, and str for the string ones)."""
        cpu, net = self._rates()
        v = dict(cpu)
        v.update(net)
        load = self._read("loadavg").split()
        v["load_one"], v["load_five"], v["load_fifteen"] = (float(x) for x in load[:3])
        running, _, total = load[3].partition("/")
        v["proc_run"] = max(int(running) - 1, 0)     # not counting the reader itself
        v["proc_total"] = int(total)
        stat = self._read("stat")
        btime = 0
        idle_all = 0.0
        for line in stat.splitlines():
            if line.startswith("btime "):
                btime = int(line.split()[1])
            elif line.startswith("cpu "):
                j = [int(x) for x in line.split()[1:9]]
                idle_all = 100.0 * j[3] / sum(j) if sum(j) else 0.0
        v["cpu_aidle"] = idle_all
        v["boottime"] = btime
        v["cpu_num"] = os.cpu_count() or 1
        v["cpu_speed"] = self._cpu_speed()
        mi = self._meminfo()
        for name, key in (("mem_total", "MemTotal"), ("mem_free", "MemFree"),
                          ("mem_cached", "Cached"), ("mem_buffers", "Buffers"),
                          ("mem_shared", "Shmem"), ("swap_total", "SwapTotal"),
                          ("swap_free", "SwapFree")):
            v[name] = mi.get(key, 0.0)
        v["disk_total"], v["disk_free"], v["part_max_used"] = self._disk()
        un = os.uname()
        v["os_name"] = un.sysname
        v["os_release"] = self._read("sys", "kernel", "osrelease").strip()
        v["machine_type"] = _MACHINE.get(un.machine, un.machine)
        return v

    def text(self):
        v = self.values()
        lines = []
        for m in METRICS:
            x = v[m.name]
            val = m.fmt % x if m.type != "string" else str(x).replace(" ", "_")
            lines.append("%s %s %s\n" % (m.name, val, m.units) if m.units
                         else "%s %s\n" % (m.name, val))
        return "".join(lines)
