"""Collection: every host's metrics file read with one group read, and what it gave.

Per host (mode "host"): one group read of the `concat` aggregator over
/host/metrics/NODE of every host, with a timeout: each host that answered gets its
values and the time it answered (REPORTED); one that did not keeps its last values,
growing older (gmond's TN), so that gmetad marks it down after 4 TMAX.

Summary (mode "summary"): one group read of the `mean` aggregator, read as its partial
result, whose cells are (sum, count) per metric: each mux of the tree adds its
children's, so the root receives one row per metric whatever the number of hosts (the
cluster's SUM and NUM of gmond's summary XML); the hosts that failed are named in its
errors (HOSTS DOWN).

The hosts are the names listed in the metrics directory (read again every `rescan`
seconds); a host once seen stays a member, so a host that went away is counted down
rather than forgotten.  A Snapshot is immutable: the servers hand it out while the
next collection builds its successor.
"""

import logging
import time

import gevent

from ..synth.metrics import BY_NAME, Metric

log = logging.getLogger("nine.monitor")


def metric_info(name, units=""):
    """The description of metric `name` (gmond's), or a plain float one for a metric
    that gmond does not have."""
    m = BY_NAME.get(name)
    if m is not None:
        return m
    return Metric(name, "float", units, "both", 60, 0, "nine", name, name, "%g")


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


class HostState:
    """One host: its last values {name: text}, units {name: units}, when they came
    (epoch seconds, None: never) and whether it answered the latest collection."""

    __slots__ = ("name", "values", "units", "reported", "answered", "error")

    def __init__(self, name):
        self.name = name
        self.values = {}
        self.units = {}
        self.reported = None
        self.answered = False
        self.error = None


class Snapshot:
    """What one collection knows, frozen: ``time`` (epoch), ``mode``, ``cluster``,
    ``hosts`` [(name, reported or None, answered, {metric: text}, error)], ``summary``
    {metric: (sum, num)} over the hosts that answered, ``up`` and ``down`` counts,
    ``units`` {metric: units}, ``spread`` {metric: (min, max)} (host mode only),
    ``poll_seconds`` (how long the collection took), ``started`` (the monitor's start,
    epoch)."""

    __slots__ = ("time", "mode", "cluster", "hosts", "summary", "up", "down", "units",
                 "spread", "poll_seconds", "started", "tmax")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def age(self, reported):
        """Seconds since `reported` at this snapshot's time (gmond's TN)."""
        return max(int(self.time - reported), 0) if reported is not None else None


class Collector:
    """Collects from the root at `client` (a nine.client.Client on a gevent
    Connection, or a callable that makes one); see the module's doc."""

    def __init__(self, connect, cluster="nine", mode="host", path="/host/metrics",
                 timeout=5.0, rescan=60.0, tmax=15):
        if mode not in ("host", "summary"):
            raise ValueError("mode is host or summary")
        self.connect = connect
        self.cluster = cluster
        self.mode = mode
        self.path = path.rstrip("/") or "/"
        self.timeout = timeout
        self.rescan = rescan
        self.tmax = tmax
        self.started = time.time()
        self.hosts = {}            # name -> HostState, in the order first seen
        self.client = None
        self.group = None
        self._members = None
        self._listed = None        # monotonic time of the last listing
        self.snapshot = Snapshot(time=self.started, mode=mode, cluster=cluster, hosts=[],
                                 summary={}, up=0, down=0, units={}, spread={},
                                 poll_seconds=0.0, started=self.started, tmax=tmax)
        self.summary = {}          # summary mode: metric -> (sum, num) of the last read

    # -- the link to the root ---------------------------------------------------------
    def _drop(self):
        for x in (self.group, self.client):
            if x is not None:
                try:
                    x.close()
                except Exception:           # closing a broken link: nothing to save
                    pass
        self.group = self.client = None
        self._members = None

    def _list(self):
        """Add the hosts that the metrics directory lists now."""
        names = sorted(self.client.listdir(self.path))
        for n in names:
            if n not in self.hosts:
                self.hosts[n] = HostState(n)
        self._listed = time.monotonic()

    def _group(self):
        members = [(n, "%s/%s" % (self.path, n)) for n in self.hosts]
        if self.group is None or members != self._members:
            if self.group is not None:
                self.group.close()
            agg = "concat" if self.mode == "host" else "mean"
            self.group = self.client.gopen(None, "r", aggregator=agg, members=members,
                                           timeout=self.timeout)
            self._members = members
        return self.group

    # -- one collection -----------------------------------------------------------------
    def poll(self):
        """Collect once; returns (and keeps) the new Snapshot.  A failure of the link to
        the root leaves every host unanswered (their values age) and is retried at the
        next poll with a new connection."""
        t0 = time.monotonic()
        error = None
        partial = None
        try:
            if self.client is None:
                self.client = self.connect()
            if self._listed is None or time.monotonic() - self._listed >= self.rescan:
                self._list()
            if self.hosts:
                partial = self._group().read_partial()
        except (OSError, gevent.Timeout, ValueError) as e:
            error = getattr(e, "strerror", None) or str(e) or type(e).__name__
            log.warning("nine monitor: collection from the root failed: %s", error)
            self._drop()
        now = time.time()
        failed = {}
        if partial is not None:
            for reason, ms in partial.errors.items():
                for m in ms:
                    failed[m] = reason
        if self.mode == "host":
            self._take_hosts(partial, failed, error, now)
        else:
            self._take_summary(partial, failed, error, now)
        self.snapshot = self._freeze(now, time.monotonic() - t0)
        return self.snapshot

    def _take_hosts(self, partial, failed, error, now):
        got = (partial.value or {}) if partial is not None else {}
        for name, h in self.hosts.items():
            data = got.get(name)
            if data is None:
                h.answered = False
                h.error = failed.get(name) or error or "no answer"
                continue
            values, units = {}, {}
            for line in data.decode("utf-8", "replace").splitlines():
                f = line.split()
                if len(f) >= 2:
                    values[f[0]] = f[1]
                    if len(f) > 2:
                        units[f[0]] = f[2]
            h.values, h.units = values, units
            h.reported, h.answered, h.error = now, True, None

    def _take_summary(self, partial, failed, error, now):
        self.summary = {}
        if partial is not None and partial.value:
            for name, row in partial.value.items():
                cell = row[0] if row else None
                if cell is not None:
                    self.summary[name] = (float(cell[0]), int(cell[1]))
        for name, h in self.hosts.items():
            h.answered = partial is not None and name not in failed
            h.error = None if h.answered else (failed.get(name) or error or "no answer")
            if h.answered:
                h.reported = now

    def _freeze(self, now, took):
        hosts = [(h.name, h.reported, h.answered, dict(h.values), h.error)
                 for h in self.hosts.values()]
        up = sum(1 for h in self.hosts.values() if h.answered)
        units = {}
        spread = {}
        if self.mode == "host":
            sums = {}
            for h in self.hosts.values():
                units.update(h.units)
                if not h.answered:
                    continue
                for k, v in h.values.items():
                    x = _number(v)
                    if x is None:
                        continue
                    s, n = sums.get(k, (0.0, 0))
                    sums[k] = (s + x, n + 1)
                    lo, hi = spread.get(k, (x, x))
                    spread[k] = (min(lo, x), max(hi, x))
            summary = sums
        else:
            summary = dict(self.summary)
        return Snapshot(time=now, mode=self.mode, cluster=self.cluster, hosts=hosts,
                        summary=summary, up=up, down=len(hosts) - up, units=units,
                        spread=spread, poll_seconds=took, started=self.started,
                        tmax=self.tmax)

    def close(self):
        self._drop()
