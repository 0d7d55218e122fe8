"""nine ptop: top(1) over the hosts of a nine tree, with htop's habits.

    nine ptop                          live view in the terminal (q quits)
    nine ptop --by cmd                 one row per command over all hosts (summed)
    nine ptop -b -n 1                  one refresh as text, for scripts

Each refresh is a handful of group reads over the hosts' process files (nine.synth.ps:
host/ps, pscmd, psuser, top), merged at every mux of the tree on the way up:

    header   host/top read with `sum`, `min`, `max` and `histogram` (cpu percentages
             in ten bins): the load sum and spread, the cpu histogram, memory, tasks
    rows     --by proc (the default): host/ps read with `topk`: k rows by the sort
             column at every level, so k rows reach the root whatever the hosts'
             number; --by cmd / --by user: host/pscmd / psuser read with `sum` (one
             row per command or user, summed over the hosts); --by host: host/top
             read with `concat` (a row per host)

The reads run with `sync timeout` (0.8 x the refresh interval, --timeout): a host that
has not answered by then does not hold the refresh up; it is shown as late, with the
age of its last answer.  Hosts that fail (their leaf down) are shown as down, by name.
The groups stay open from one refresh to the next; the first read of each (when its
members are found and opened) and a filter's write may take FIRST_TIMEOUT (5) s.

Keys (the live view): P M T sort by cpu, memory, cpu time (--by host: load); / filter
(the command line holds the text; applied at the hosts, before the rows are chosen); u
a user's processes only (empty: all); the up and down arrows choose a row; k kills it
(--by proc: that process; --by cmd or user: every process of that command or user on
every host) through a group write of `kill` to the processes' proc/PID/ctl; h p c U
the views by host, process, command, user; q quits.

Batch mode (-b): -n N refreshes (default 1) written as text, a blank line between.
"""

import argparse
import re
import sys
import time

from .common import ToolError, add_options, connect, errtext, select_hosts

SORTS = {"cpu": ("CPU%", 2), "mem": ("MEM%", 3), "time": ("TIME", 5)}   # ps columns
SUM_CELL = {"cpu": 2, "mem": 3, "time": 5}      # sum rows: PROCS HOSTS CPU MEM RSS TIME
VIEWS = ("proc", "host", "cmd", "user")
BINS = 10
FIRST_TIMEOUT = 5.0     # a group's first read (its members are found and opened) waits


def make_parser(prog="nine ptop"):
    p = argparse.ArgumentParser(prog=prog, description="top(1) over the hosts of a nine "
                                "tree, with htop's keys (docs/tools.md)")
    add_options(p)
    p.add_argument("-d", "--delay", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (default 1)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="how long a refresh waits for the hosts (default 0.8 x delay)")
    p.add_argument("-b", "--batch", action="store_true",
                   help="batch mode: refreshes as text on stdout, no terminal control")
    p.add_argument("-n", dest="iterations", type=int, metavar="N",
                   help="stop after N refreshes (batch mode: default 1)")
    p.add_argument("--by", choices=VIEWS, default="proc",
                   help="rows: processes (default), hosts, or sums per command or user")
    p.add_argument("-s", "--sort", choices=sorted(SORTS), default="cpu",
                   help="sort key (default cpu)")
    p.add_argument("-k", "--rows", type=int, metavar="K",
                   help="rows (default: what the terminal holds; batch mode 20)")
    p.add_argument("--filter", metavar="TEXT", help="processes whose command line "
                   "holds TEXT")
    p.add_argument("-U", "--user", metavar="USER", help="this user's processes only")
    return p


def verb(args):
    """The `nine ptop` verb (its arguments parsed here, not by nine.cli)."""
    return main(args.argv)


def main(argv=None, prog="nine ptop"):
    """nine ptop (argv: the arguments after the command's name)."""
    args = make_parser(prog).parse_args(argv)
    try:
        if args.delay <= 0 or (args.timeout is not None and args.timeout <= 0):
            raise ToolError("-d and --timeout want seconds > 0")
        if args.rows is not None and args.rows < 1:
            raise ToolError("-k wants 1 row or more")
        return run(args)
    except ToolError as ex:
        sys.stderr.write("%s: %s\n" % (prog, ex))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


# --- figures ----------------------------------------------------------------------------

def human(n):
    """Bytes as htop shows them: 512K, 12.3M, 1.2G."""
    n = float(n)
    for unit in "KMGTP":
        n /= 1024.0
        if n < 1024 or unit == "P":
            return ("%.0f%s" if n >= 100 or unit == "K" else "%.1f%s") % (n, unit)


def cputime(s):
    """Seconds as top's TIME+: M:SS.hh, or H:MM:SS past an hour."""
    s = float(s)
    if s >= 3600:
        return "%d:%02d:%02d" % (s // 3600, s % 3600 // 60, s % 60)
    return "%d:%05.2f" % (s // 60, s % 60)


class Row:
    """One row of the table: `cells` by column name, `kill` what k kills."""
    __slots__ = ("cells", "kill")

    def __init__(self, cells, kill=None):
        self.cells = cells
        self.kill = kill


COLUMNS = {
    "proc": ["HOST", "PID", "USER", "CPU%", "MEM%", "RSS", "TIME", "S", "THR", "COMMAND"],
    "cmd": ["COMMAND", "PROCS", "HOSTS", "CPU%", "MEM%", "RSS", "TIME"],
    "user": ["USER", "PROCS", "HOSTS", "CPU%", "MEM%", "RSS", "TIME"],
    "host": ["HOST", "LOAD1", "CPU%", "MEM%", "MEM", "PROCS", "RUN"],
}


def _proc_rows(value):
    from ..synth.ps import unesc
    rows = []
    for _, host, line in value or []:
        f = line.split(" ", 9)
        if len(f) < 10:
            continue
        rows.append(Row({"HOST": host, "PID": f[0], "USER": unesc(f[1]), "CPU%": f[2],
                         "MEM%": f[3], "RSS": human(int(f[4])), "TIME": cputime(f[5]),
                         "S": f[6], "THR": f[7], "COMMAND": f[9]},
                        kill=("pid", host, int(f[0]))))
    return rows


def _sum_rows(value, by, sort):
    from ..synth.ps import unesc
    i = SUM_CELL[sort]
    items = sorted((value or {}).items(),
                   key=lambda kv: -((kv[1] + [0] * 6)[i] or 0))
    rows = []
    for key, cells in items:
        cells = (cells + [0] * 6)[:6]
        procs, nhosts, cpu, mem, rss, t = [c or 0 for c in cells]
        name = unesc(key)
        rows.append(Row({"COMMAND" if by == "cmd" else "USER": name, "PROCS": "%d" % procs,
                         "HOSTS": "%d" % nhosts, "CPU%": "%.1f" % cpu, "MEM%": "%.1f" % mem,
                         "RSS": human(rss), "TIME": cputime(t)}, kill=(by, name)))
    return rows


def _host_rows(value, sort):
    per = {}
    for host, data in (value or {}).items():
        kv = {}
        for line in data.decode(errors="replace").splitlines():
            k, _, v = line.partition(" ")
            try:
                kv[k] = float(v)
            except ValueError:
                pass
        per[host] = kv
    key = {"cpu": "cpu", "mem": "mem", "time": "load1"}[sort]
    from ..group.aggregate import natural_key
    hosts = sorted(per, key=lambda h: (-per[h].get(key, 0), natural_key(h)))
    return [Row({"HOST": h, "LOAD1": "%.2f" % per[h].get("load1", 0),
                 "CPU%": "%.1f" % per[h].get("cpu", 0), "MEM%": "%.1f" % per[h].get("mem", 0),
                 "MEM": human(per[h].get("mem_used", 0)),
                 "PROCS": "%d" % per[h].get("procs", 0),
                 "RUN": "%d" % per[h].get("running", 0)}) for h in hosts]


class Refresh:
    """What one refresh found: the hosts' states and the figures of the header."""

    def __init__(self, hosts):
        self.t = time.time()
        self.hosts = hosts
        self.up = set()
        self.down = {}            # host -> why
        self.late = {}            # host -> seconds since its last answer (None: never)
        self.sum = self.min = self.max = {}
        self.hist = {}
        self.rows = []
        self.seconds = 0.0        # the refresh's time
        self.bytes = 0            # bytes received for it

    @staticmethod
    def fig(table, key):
        """The first value of key in a Numeric aggregator's table (0 when none)."""
        cells = table.get(key) or [None]
        return cells[0] if cells[0] is not None else 0.0

    def header(self):
        """The header as text lines (the live view's and the batch mode's)."""
        from ..group.aggregate import fold
        n = len(self.up)
        out = ["hosts: %d, %d up, %d down, %d late" % (len(self.hosts), n, len(self.down),
                                                       len(self.late))]
        if self.up:
            out.append("up: %s" % fold(self.up))
        by_why = {}
        for h, why in self.down.items():
            by_why.setdefault(why, set()).add(h)
        for why, hs in sorted(by_why.items(), key=lambda wh: -len(wh[1])):
            out.append("down: %s: %s" % (fold(hs), " ".join(why.split())))
        if self.late:
            out.append("late: " + ", ".join(
                "%s (%s)" % (h, "never answered" if age is None else "%.1fs ago" % age)
                for h, age in sorted(self.late.items())))
        s, lo, hi = self.sum, self.min, self.max
        out.append("load: sum %.2f %.2f %.2f, load1 min %.2f max %.2f" % (
            self.fig(s, "load1"), self.fig(s, "load5"), self.fig(s, "load15"),
            self.fig(lo, "load1"), self.fig(hi, "load1")))
        out.append("cpu: mean %.1f%% min %.1f%% max %.1f%%, hosts by cpu%%: %s" % (
            self.fig(s, "cpu") / n if n else 0.0, self.fig(lo, "cpu"), self.fig(hi, "cpu"),
            " ".join("%d-%d:%d" % (10 * i, 10 * i + 10, k)
                     for i, k in enumerate(self.cpu_bins()))))
        used, total = self.fig(s, "mem_used"), self.fig(s, "mem_total")
        out.append("mem: %s of %s used (%.1f%%)" % (human(used), human(total),
                                                    100.0 * used / total if total else 0))
        out.append("tasks: %d procs, %d threads, %d running" % (
            self.fig(s, "procs"), self.fig(s, "threads"), self.fig(s, "running")))
        return out

    def cpu_bins(self):
        c = self.hist.get("cpu")
        return c[1:-1] if c else [0] * BINS


# --- the reads ----------------------------------------------------------------------------

class Cluster:
    """The groups of the refreshes (kept open: each read sends only what changed) and
    the hosts' last answers."""

    def __init__(self, client, hosts, timeout, nodes_dir="/nodes"):
        self.client = client
        self.hosts = hosts
        self.timeout = timeout
        self.nodes = nodes_dir
        self.unknown = []         # hosts named that the root has not
        self.groups = {}
        self.last_ok = {}
        self.filter = b""
        self.filter_sent = None
        self.failed = {}          # host -> why, at the last refresh
        self.answered = set()     # the groups read once

    def group(self, key, file, agg, mode="r", **params):
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = self.client.gopen(
                None, mode, members=[(h, "%s/%s/host/%s" % (self.nodes, h, file))
                                     for h in self.hosts],
                aggregator=agg, sync="timeout", timeout=self.timeout, **params)
        elif g.agg != (agg, params):
            g.bindaggr("read", agg, **params)
        return g

    def set_filter(self, match=None, user=None):
        lines = ([("user %s" % user)] if user else []) + ([("match %s" % match)]
                                                          if match else [])
        self.filter = ("\n".join(lines) + "\n").encode()

    def _send_filter(self, g):
        """Send the filter to a rows group when it changed (or hosts came back: a
        member opened again has no filter)."""
        if (g, self.filter) != self.filter_sent:
            g.set_sync("timeout", max(self.timeout, FIRST_TIMEOUT))
            try:
                g.write(self.filter)
            finally:
                g.set_sync("timeout", self.timeout)
            g.lseek(0)
            self.filter_sent = (g, self.filter)

    def _read(self, g):
        """A read of group g; its first (its members are found and opened, the hosts'
        first samples taken) may take FIRST_TIMEOUT s."""
        first = g not in self.answered
        if first:
            g.set_sync("timeout", max(self.timeout, FIRST_TIMEOUT))
        try:
            return g.read_partial()
        finally:
            if first:
                g.set_sync("timeout", self.timeout)
                self.answered.add(g)

    def refresh(self, by, sort, k):
        import gevent
        r = Refresh(self.hosts + list(self.unknown))
        rx0 = getattr(self.client.conn, "bytes_in", 0)
        t0 = time.monotonic()
        if by == "proc":
            rows = self.group("rows-proc", "ps", "topk", "rw", k=k, column=SORTS[sort][1])
        elif by == "host":
            rows = self.group("rows-host", "top", "concat")
        else:
            rows = self.group("rows-" + by, "ps" + by, "sum", "rw")
        if by in ("proc", "cmd", "user"):
            self._send_filter(rows)
        jobs = {
            "sum": self.group("sum", "top", "sum"),
            "min": self.group("min", "top", "min"),
            "max": self.group("max", "top", "max"),
            "hist": self.group("hist", "top", "histogram", bins=BINS, range=(0.0, 100.0)),
            "rows": rows,
        }
        got = {}

        def read(name, g):
            got[name] = self._read(g)
        gevent.joinall([gevent.spawn(read, n, g) for n, g in jobs.items()],
                       raise_error=True)
        now = time.monotonic()
        failed = {}
        for why, hs in got["sum"].errors.items():
            for h in hs:
                failed[h] = why
        if set(self.failed) - set(failed):
            self.filter_sent = None     # hosts came back: send the filter again
        self.failed = failed
        for h in self.hosts:
            why = failed.get(h)
            if why is None:
                r.up.add(h)
                self.last_ok[h] = now
            elif why.startswith("timed out"):
                last = self.last_ok.get(h)
                r.late[h] = None if last is None else now - last
            else:
                r.down[h] = why
        r.down.update((h, "no such host") for h in self.unknown)
        r.sum = got["sum"].value or {}
        r.min = got["min"].value or {}
        r.max = got["max"].value or {}
        r.hist = got["hist"].value or {}
        v = got["rows"].value
        r.rows = (_proc_rows(v) if by == "proc" else _host_rows(v, sort) if by == "host"
                  else _sum_rows(v, by, sort))[:k]
        r.seconds = now - t0
        r.bytes = getattr(self.client.conn, "bytes_in", 0) - rx0
        return r

    def kill(self, target):
        """Kill what a row names (Row.kill) through a group write of `kill` to the
        processes' ctl files; returns (processes, {member: why} of the failures)."""
        what = target[0]
        if what == "pid":
            members = [("%s-%d" % (target[1], target[2]),
                        "%s/%s/proc/%d/ctl" % (self.nodes, target[1], target[2]))]
        else:
            members = self.find(what, target[1])
        if not members:
            return 0, {}
        g = self.client.gopen(None, "w", members=members)
        try:
            try:
                g.write(b"kill\n")
            except OSError:
                pass
            return len(members), g.failed
        finally:
            g.close()

    def find(self, what, name):
        """[(label, ctl path)] of every process of command (or user) `name` on every
        host: a group read of host/ps with the grep aggregator."""
        from ..group.textagg import text_param
        from ..synth.ps import esc
        before = 7 if what == "cmd" else 0        # columns between PID and it
        pat = r"^\d+ (\S+ ){%d}%s( |$)" % (before, re.escape(esc(name)))
        g = self.client.gopen(None, "r", members=[(h, "%s/%s/host/ps" % (self.nodes, h))
                                                  for h in self.hosts],
                              aggregator="grep", sync="timeout", timeout=self.timeout,
                              pattern=text_param(pat), syntax="perl")
        try:
            p = g.read_partial()
        finally:
            g.close()
        out = []
        for (_, text, _), hs in (p.value or {}).items():
            for line in text.decode(errors="replace").splitlines():
                pid = int(line.split(" ", 1)[0])
                out += [("%s-%d" % (h, pid), "%s/%s/proc/%d/ctl" % (self.nodes, h, pid))
                        for h in sorted(hs)]
        return out

    def close(self):
        for g in self.groups.values():
            g.close()
        self.groups = {}


# --- batch mode ------------------------------------------------------------------------------

def table_text(by, rows):
    """The rows as aligned text."""
    cols = COLUMNS[by]
    cells = [cols] + [[r.cells.get(c, "") for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols) - 1)]
    out = []
    for line in cells:
        out.append(" ".join(v.ljust(w) if i in (0, 2) and by == "proc" or i == 0 else
                            v.rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
                   + " " + line[-1])
    return "\n".join(out) + "\n"


def _batch(cluster, args, k):
    n = args.iterations or 1
    for i in range(n):
        t0 = time.monotonic()
        r = cluster.refresh(args.by, args.sort, k)
        if i:
            sys.stdout.write("\n")
        sys.stdout.write("\n".join(["nine ptop: %s, %.3f s, %d bytes" % (
            time.strftime("%H:%M:%S", time.localtime(r.t)), r.seconds, r.bytes)]
            + r.header()) + "\n\n" + table_text(args.by, r.rows))
        sys.stdout.flush()
        if i + 1 < n:
            import gevent
            gevent.sleep(max(0.0, args.delay - (time.monotonic() - t0)))
    return 0


# --- the live view ------------------------------------------------------------------------------

class Live:
    """The terminal view: rich renders, keys come from the terminal in cbreak mode."""

    def __init__(self, cluster, args):
        self.cluster = cluster
        self.args = args
        self.by = args.by
        self.sort = args.sort
        self.match = args.filter
        self.user = args.user
        self.cursor = 0
        self.prompt = None        # (what, text) while a line is typed
        self.message = ""
        self.last = None
        self.wake = None
        self.due = False          # a key asked for a refresh now
        self.done = False

    # -- keys ----------------------------------------------------------------------
    def key(self, ch):
        if self.prompt is not None:
            return self._prompt_key(ch)
        if ch == "q":
            self.done = True
        elif ch in ("P", "M", "T"):
            self.sort = {"P": "cpu", "M": "mem", "T": "time"}[ch]
            self.refresh_now()
        elif ch in ("h", "p", "c", "U"):
            self.by = {"h": "host", "p": "proc", "c": "cmd", "U": "user"}[ch]
            self.cursor = 0
            self.refresh_now()
        elif ch == "/":
            self.prompt = ["filter", self.match or ""]
        elif ch == "u":
            self.prompt = ["user", self.user or ""]
        elif ch == "k":
            row = self.selected()
            if row is not None and row.kill is not None:
                self.prompt = ["kill", row.kill]
        elif ch in ("\x1b[A", "\x1bOA"):
            self.cursor = max(0, self.cursor - 1)
        elif ch in ("\x1b[B", "\x1bOB"):
            self.cursor += 1

    def _prompt_key(self, ch):
        what, text = self.prompt
        if what == "kill":
            self.prompt = None
            if ch in ("y", "Y"):
                n, failed = self.cluster.kill(text)
                self.message = "killed %d process%s%s" % (
                    n - len(failed), "" if n - len(failed) == 1 else "es",
                    ", %d failed: %s" % (len(failed), next(iter(failed.values())))
                    if failed else "")
                self.refresh_now()
            return
        if ch in ("\r", "\n"):
            self.prompt = None
            if what == "filter":
                self.match = text or None
            else:
                self.user = text or None
            self.cluster.set_filter(self.match, self.user)
            self.refresh_now()
        elif ch == "\x1b":
            self.prompt = None
        elif ch in ("\x7f", "\b"):
            self.prompt[1] = text[:-1]
        elif ch.isprintable():
            self.prompt[1] = text + ch

    def selected(self):
        if self.last is None or not self.last.rows:
            return None
        self.cursor = min(self.cursor, len(self.last.rows) - 1)
        return self.last.rows[self.cursor]

    def refresh_now(self):
        self.due = True

    # -- drawing ---------------------------------------------------------------------
    def render(self, height):
        from rich.console import Group
        from rich.text import Text
        r = self.last
        parts = []
        title = Text("nine ptop", style="bold")
        title.append("  by %s, sorted by %s%s%s" % (
            self.by, SORTS[self.sort][0], ", filter %r" % self.match if self.match else "",
            ", user %s" % self.user if self.user else ""))
        if r is not None:
            title.append("   %s  %.2f s  %d B" % (time.strftime("%H:%M:%S",
                                                              time.localtime(r.t)),
                                                r.seconds, r.bytes))
        parts.append(title)
        if r is not None:
            for line in r.header():
                if line.startswith("down:"):
                    parts.append(Text(line, style="red"))
                elif line.startswith("late:"):
                    parts.append(Text(line, style="yellow"))
                else:
                    parts.append(Text(line))
            bars = " ".join("▁▂▃▄▅▆▇█"[min(7, k * 8 // max(1, len(r.hosts)))] if k else " "
                            for k in r.cpu_bins())
            parts.append(Text("cpu%% of hosts  0 [%s] 100" % bars))
            room = max(1, height - len(parts) - 3)
            lines = table_text(self.by, r.rows[:room]).splitlines()
            self.selected()
            for i, line in enumerate(lines):
                style = "reverse" if i == 0 else \
                    "reverse cyan" if i - 1 == self.cursor else None
                parts.append(Text(line, style=style, no_wrap=True, overflow="ellipsis"))
        parts.append(Text(self.footer(), style="bold"))
        return Group(*parts)

    def footer(self):
        if self.prompt is not None:
            what, text = self.prompt
            if what == "kill":
                name = ("process %d on %s" % (text[2], text[1]) if text[0] == "pid" else
                        "every process of %s %s" % ("command" if text[0] == "cmd" else
                                                    "user", text[1]))
                return "kill %s? (y/n)" % name
            return "%s: %s_   (Enter: apply, Esc: cancel)" % (what, text)
        keys = "P cpu  M mem  T time  / filter  u user  k kill  h p c U views  q quit"
        return keys + ("   " + self.message if self.message else "")

    # -- running -----------------------------------------------------------------------
    def run(self):
        import termios
        import tty

        import gevent
        import gevent.event
        from rich.console import Console
        from rich.live import Live as RichLive
        console = Console()
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self.wake = gevent.event.Event()
        reader = gevent.spawn(self._keys, fd)
        n = 0
        try:
            with RichLive(console=console, screen=True, auto_refresh=False) as live:
                while not self.done:
                    k = self.args.rows or max(5, console.size.height - 12)
                    self.due = False
                    self.last = self.cluster.refresh(self.by, self.sort, k)
                    n += 1
                    live.update(self.render(console.size.height), refresh=True)
                    if self.args.iterations and n >= self.args.iterations:
                        break
                    deadline = time.monotonic() + self.args.delay
                    while not (self.done or self.due):
                        self.wake.clear()
                        if not self.wake.wait(max(0.0, deadline - time.monotonic())):
                            break           # time for the next refresh
                        live.update(self.render(console.size.height), refresh=True)
        finally:
            reader.kill()
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        return 0

    def _keys(self, fd):
        import os
        from gevent.select import select
        while True:
            select([fd], [], [])
            data = os.read(fd, 64).decode(errors="replace")
            if not data:
                self.done = True
            for ch in _split_keys(data):
                self.key(ch)
            self.wake.set()
            if self.done:
                return


def _split_keys(data):
    """Keys from what the terminal sent: escape sequences (arrows) kept whole."""
    return re.findall(r"\x1b\[[0-9;]*[A-Za-z~]|\x1bO[A-Za-z]|\x1b|.", data, re.S)


def run(args):
    from ..client import NineError
    c = connect(args, blocking=False)
    cluster = None
    try:
        hosts, unknown = select_hosts(c, args)
        if not hosts:
            raise ToolError("no hosts")
        cluster = Cluster(c, hosts, args.timeout or 0.8 * args.delay, args.nodes_dir)
        cluster.unknown = unknown
        cluster.set_filter(args.filter, args.user)
        if args.batch:
            return _batch(cluster, args, args.rows or 20)
        if not sys.stdin.isatty():
            raise ToolError("the live view needs a terminal (or -b)")
        return Live(cluster, args).run()
    except NineError as ex:
        raise ToolError("the root at %s: %s" % (c.conn, errtext(ex)))
    finally:
        if cluster is not None:
            cluster.close()
        c.close()
