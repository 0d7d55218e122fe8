"""Round-robin archives of every metric, kept by the monitor (whisper files).

Layout under the history directory, as gmetad lays out its RRD files:

    CLUSTER/HOST/METRIC.wsp                 a host's metric (host mode)
    CLUSTER/__SummaryInfo__/METRIC.wsp      the cluster's sum
    CLUSTER/__SummaryInfo__/METRIC.num.wsp  how many hosts reported it
    CLUSTER/__SummaryInfo__/METRIC.min.wsp, .max.wsp   its spread (host mode)

Each file holds gmetad's default archives, in steps of the collection interval S:
S x 240, 24 S x 240, 168 S x 240, 672 S x 240 and 5376 S x 370 (at S = 15: an hour,
a day, a week, four weeks and 345 days; gmetad's last is 5760 S, which whisper refuses
as it is not a multiple of 672 S), each made longer where needed to span at least an
hour, a day, a week, a month and a year (a short interval); averages, a point known
when half of its steps are.

whisper (PyPI) is needed for this part only (setup.cfg's `monitor` extra).
"""

import importlib
import math
import os
import re
import time

SUMMARY = "__SummaryInfo__"
_SAFE = re.compile(r"[^A-Za-z0-9_.@+-]")


def available():
    """None when whisper can be imported, else why not."""
    try:
        importlib.import_module("whisper")
    except ImportError as e:
        return "whisper is not installed (pip install whisper): %s" % e
    return None


def _safe(name):
    """A name fit for one path component (never '.', '..' or with a slash)."""
    s = _SAFE.sub("_", name)
    return s if s.strip(".") else "_" + s


class History:
    """The archives under `root` for collections every `step` seconds."""

    def __init__(self, root, step):
        import whisper
        self.whisper = whisper
        self.root = root
        self.step = max(int(round(step)), 1)
        s = self.step
        self.archives = [(k * s, max(n, math.ceil(span / (k * s))))
                         for k, n, span in ((1, 240, 3600), (24, 240, 86400),
                                            (168, 240, 7 * 86400), (672, 240, 31 * 86400),
                                            (5376, 370, 366 * 86400))]
        self._known = set()

    def path(self, cluster, host, metric, kind=""):
        """The file of a host's metric, or (host None) of the cluster's: kind "" (sum),
        "num", "min" or "max"."""
        d = SUMMARY if host is None else _safe(host)
        name = _safe(metric) + ("." + kind if kind else "") + ".wsp"
        return os.path.join(self.root, _safe(cluster), d, name)

    def _update(self, path, value, when):
        if path not in self._known:
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self.whisper.create(path, self.archives, xFilesFactor=0.5,
                                    aggregationMethod="average", sparse=True)
            self._known.add(path)
        self.whisper.update(path, value, when)

    def record(self, snap):
        """Add Snapshot snap's values: each host that answered, and the cluster's."""
        # the nearest step, not the one below: collections a step apart (give or take
        # their jitter) fill consecutive points
        when = int(round(snap.time / self.step)) * self.step
        # never in the future: whisper refuses a timestamp after its clock's now
        when = min(when, int(time.time()))
        c = snap.cluster
        if snap.mode == "host":
            for name, _reported, answered, values, _error in snap.hosts:
                if not answered:
                    continue
                for key, val in values.items():
                    try:
                        x = float(val)
                    except ValueError:
                        continue
                    self._update(self.path(c, name, key), x, when)
        for key, (s, n) in snap.summary.items():
            self._update(self.path(c, None, key), s, when)
            self._update(self.path(c, None, key, "num"), n, when)
            if key in snap.spread:
                lo, hi = snap.spread[key]
                self._update(self.path(c, None, key, "min"), lo, when)
                self._update(self.path(c, None, key, "max"), hi, when)

    def fetch(self, cluster, host, metric, seconds, kind="", now=None):
        """[(time, value or None)] of the last `seconds`, or [] when there is no such
        archive."""
        p = self.path(cluster, host, metric, kind)
        if not os.path.exists(p):
            return []
        until = int(now or time.time())
        got = self.whisper.fetch(p, until - int(seconds), until)
        if got is None:
            return []
        (start, _end, step), values = got
        return [(start + i * step, v) for i, v in enumerate(values)]

    def hosts(self, cluster):
        """The hosts that have archives."""
        d = os.path.join(self.root, _safe(cluster))
        try:
            return sorted(n for n in os.listdir(d) if n != SUMMARY)
        except OSError:
            return []
