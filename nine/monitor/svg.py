"""Time-series graphs drawn as SVG (what the monitor's web pages show).

    graph("load_one", "", [("node1", "#1565c0", [(t, v), ...])], t0, t1,
          band=("#90caf9", lows, highs))

Each series is a line (broken where a value is unknown); a band is the area between
two series (a cluster's spread, min to max).  Lines are drawn without anti-aliasing
(crispEdges), so their pixels have exactly their colour.
"""

import math
import time
from xml.sax.saxutils import escape, quoteattr

#: the cluster's sum, its spread (min..max across hosts), then one colour per host
SUM_COLOUR = "#1565c0"
BAND_COLOUR = "#90caf9"
PALETTE = ["#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f", "#1f77b4", "#393b79", "#637939"]
LEGEND_MAX = 12

W, H = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 26, 40


def _nice(x):
    """A round number near x (1, 2, 2.5 or 5 times a power of ten), x > 0."""
    e = math.floor(math.log10(x))
    f = x / 10 ** e
    for n in (1, 2, 2.5, 5, 10):
        if f <= n:
            return n * 10 ** e
    return 10 * 10 ** e


def _axis(lo, hi, n=4):
    """(low, high, ticks): the range lo..hi widened to round ticks about n apart."""
    step = _nice((hi - lo) / n)
    lo2 = math.floor(lo / step) * step
    hi2 = math.ceil(hi / step) * step
    return lo2, hi2, [lo2 + i * step for i in range(int(round((hi2 - lo2) / step)) + 1)]


_TIME_STEPS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600,
               86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 91 * 86400]


def _time_ticks(t0, t1, n=6):
    """Round times (local time: whole minutes, hours, days) between t0 and t1."""
    step = next((s for s in _TIME_STEPS if s >= (t1 - t0) / n), _TIME_STEPS[-1])
    off = time.localtime(t0).tm_gmtoff
    first = math.ceil((t0 + off) / step) * step - off
    return [first + i * step for i in range(int((t1 - first) // step) + 1)]


def _label(v):
    a = abs(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return ("%.3g" % (v / div)) + suffix
    return "%.3g" % v if v else "0"


def _time_fmt(span):
    if span <= 2 * 86400:
        return "%H:%M"
    if span <= 60 * 86400:
        return "%m-%d"
    return "%Y-%m"


def graph(title, units, series, t0, t1, band=None, width=W, height=H):
    """The SVG document (str) of series [(label, colour, [(t, value or None)])] over
    the times t0..t1, with an optional band (colour, lows, highs) under them."""
    values = [v for _, _, pts in series for _, v in pts if v is not None]
    if band:
        values += [v for pts in band[1:] for _, v in pts if v is not None]
    lo = min(values + [0.0])
    hi = max(values + [0.0])
    if hi <= lo:
        hi = lo + 1.0
    lo, hi, yt = _axis(lo, hi)
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM
    span = max(t1 - t0, 1)

    def x(t):
        return LEFT + (t - t0) * pw / span

    def y(v):
        return TOP + ph - (v - lo) * ph / (hi - lo)

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">'
           % (width, height, width, height),
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           '<text x="%d" y="16" font-size="13" font-weight="bold">%s</text>'
           % (LEFT, escape(title + (" (%s)" % units if units.strip() else "")))]
    for v in yt:
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e0e0e0"/>'
                   % (LEFT, LEFT + pw, y(v), y(v)))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>'
                   % (LEFT - 6, y(v) + 4, _label(v)))
    fmt = _time_fmt(span)
    for t in _time_ticks(t0, t1):
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#e0e0e0"/>'
                   % (x(t), x(t), TOP, TOP + ph))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                   % (x(t), TOP + ph + 14, time.strftime(fmt, time.localtime(t))))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#808080"/>'
               % (LEFT, TOP, pw, ph))
    if band:
        colour, lows, highs = band
        for run in _runs(list(zip(lows, highs))):
            pts = ["%.1f,%.1f" % (x(t), y(h)) for (t, _), (_, h) in run]
            pts += ["%.1f,%.1f" % (x(t), y(lw)) for (t, lw), _ in reversed(run)]
            out.append('<polygon points="%s" fill=%s stroke="none"/>'
                       % (" ".join(pts), quoteattr(colour)))
    for _name, colour, pts in series:
        for run in _runs([(p, p) for p in pts]):
            coords = " ".join("%.1f,%.1f" % (x(t), y(v)) for (t, v), _ in run)
            if len(run) == 1:
                (t, v), _ = run[0]
                out.append('<rect x="%.1f" y="%.1f" width="3" height="3" fill=%s '
                           'shape-rendering="crispEdges"/>' % (x(t) - 1, y(v) - 1,
                                                                quoteattr(colour)))
            else:
                out.append('<polyline points="%s" fill="none" stroke=%s stroke-width="2" '
                           'shape-rendering="crispEdges"/>' % (coords, quoteattr(colour)))
    if 1 < len(series) <= LEGEND_MAX or band:
        lx = LEFT
        entries = [(lab, col) for lab, col, _ in series]
        if band:
            entries.append(("min..max", band[0]))
        for lab, col in entries:
            out.append('<rect x="%d" y="%d" width="10" height="10" fill=%s/>'
                       % (lx, height - 14, quoteattr(col)))
            out.append('<text x="%d" y="%d">%s</text>' % (lx + 14, height - 5, escape(lab)))
            lx += 24 + 7 * len(lab)
    out.append("</svg>")
    return "\n".join(out)


def _runs(pairs):
    """The runs of consecutive pairs whose values are all known: pairs are
    ((t, v), (t, w)) and a run breaks where v or w is None."""
    runs, cur = [], []
    for a, b in pairs:
        if a[1] is None or b[1] is None:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append((a, b))
    if cur:
        runs.append(cur)
    return runs
