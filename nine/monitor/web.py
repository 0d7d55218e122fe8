"""The monitor's HTTP side: Prometheus' /metrics, gmond's XML, and pages of graphs.

    /                       the cluster: hosts up and down, each host's main values,
                            and a graph per metric of the cluster's sum and spread
    /host/HOST              a graph per metric of one host
    /metric/METRIC          one metric: the cluster's sum and spread, and every host
    /graph/cluster/METRIC.svg, /graph/host/HOST/METRIC.svg, /graph/hosts/METRIC.svg
                            the graphs themselves (?range=hour|day|week|month|year,
                            or a number of seconds)
    /metrics                Prometheus' text format (nine.monitor.prometheus)
    /xml, /xml?filter=summary   gmond's XML, per host or summarized

A small HTTP/1.1 server of its own (one request per connection, GET and HEAD),
served by nine.monitor.tcp under a per-client deadline.  Everything is made from the
latest snapshot (the pages) or taken as made after the collection (/metrics, /xml);
graphs are made from the history archives and kept per snapshot (a bounded cache).
"""

import collections
import html
import time
import urllib.parse

from . import svg
from .collect import metric_info

RANGES = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 31 * 86400,
          "year": 366 * 86400}
MAX_HEAD = 16384
CACHE = 256
#: the columns of the hosts table on the cluster page
COLUMNS = ["load_one", "cpu_user", "cpu_system", "cpu_idle", "mem_free", "bytes_in",
           "bytes_out", "part_max_used"]

_STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large"}
_STYLE = ("body{font-family:sans-serif;margin:16px}table{border-collapse:collapse}"
          "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
          "td:first-child,th:first-child,td.state{text-align:left}.down{color:#b00}"
          "img{margin:4px;border:1px solid #ccc}")


class Published:
    """What the collection hands to the servers after each poll, replaced whole: the
    Snapshot, its Prometheus text, and gmond's XML of it made at most once a second
    (its LOCALTIME and TNs are those of the request, as gmond's are)."""

    def __init__(self, snap, prom, ips=None, dmax=0):
        self.snap, self.prom, self.ips, self.dmax = snap, prom, ips, dmax
        self._xml = {}          # summary? -> (second, bytes)

    def xml(self, summary=False):
        from . import gmond_xml
        now = int(time.time())
        hit = self._xml.get(summary)
        if hit is None or hit[0] != now:
            data = (gmond_xml.render_summary(self.snap, now) if summary else
                    gmond_xml.render_hosts(self.snap, now, self.ips, self.dmax))
            hit = self._xml[summary] = (now, data)
        return hit[1]


class Web:
    """Answers HTTP requests from `current()` (the Published of the latest collection)
    and `history` (a nine.monitor.history.History, or None: no graphs)."""

    def __init__(self, current, history=None):
        self.current = current
        self.history = history
        self.cache = collections.OrderedDict()      # (path, query, snap time) -> reply

    # -- the connection -------------------------------------------------------------
    def handle(self, sock, _address):
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            data = sock.recv(4096)
            if not data:
                return
            head += data
            if len(head) > MAX_HEAD:
                sock.sendall(_reply(431, "text/plain", b"request head too long\n"))
                return
        line = head.split(b"\n", 1)[0].decode("latin-1").split()
        if len(line) < 2:
            sock.sendall(_reply(400, "text/plain", b"bad request\n"))
            return
        method, target = line[0], line[1]
        if method not in ("GET", "HEAD"):
            sock.sendall(_reply(405, "text/plain", b"GET or HEAD\n"))
            return
        status, ctype, body = self.answer(target)
        sock.sendall(_reply(status, ctype, body, head_only=method == "HEAD"))

    def answer(self, target):
        """(status, content type, body bytes) for a request target."""
        u = urllib.parse.urlsplit(target)
        q = urllib.parse.parse_qs(u.query)
        path = urllib.parse.unquote(u.path)
        pub = self.current()
        if path == "/metrics":
            from .prometheus import CONTENT_TYPE
            return 200, CONTENT_TYPE, pub.prom
        if path == "/xml":
            summary = q.get("filter", [""])[0] == "summary" or pub.snap.mode == "summary"
            return 200, "text/xml", pub.xml(summary)
        key = (path, u.query, pub.snap.time)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        rng = q.get("range", ["hour"])[0]
        seconds = RANGES.get(rng) or (int(rng) if rng.isdigit() else 0)
        if not 10 <= seconds <= RANGES["year"]:
            return 400, "text/plain", b"range: hour, day, week, month, year or seconds\n"
        parts = [p for p in path.split("/") if p]
        got = self._route(parts, pub.snap, rng, seconds)
        if got is None:
            return 404, "text/plain", b"not found\n"
        self.cache[key] = got
        while len(self.cache) > CACHE:
            self.cache.popitem(last=False)
        return got

    def _route(self, parts, snap, rng, seconds):
        if not parts:
            return _html(self.cluster_page(snap, rng))
        if len(parts) == 2 and parts[0] == "host":
            if parts[1] not in {h[0] for h in snap.hosts}:
                return None
            return _html(self.host_page(snap, parts[1], rng))
        if len(parts) == 2 and parts[0] == "metric":
            return _html(self.metric_page(snap, parts[1], rng))
        if parts[0] == "graph" and parts[-1].endswith(".svg") and self.history:
            metric = parts[-1][:-4]
            if parts[1:2] == ["cluster"] and len(parts) == 3:
                return _svg(self.cluster_graph(snap, metric, seconds))
            if parts[1:2] == ["hosts"] and len(parts) == 3:
                return _svg(self.hosts_graph(snap, metric, seconds))
            if parts[1:2] == ["host"] and len(parts) == 4:
                return _svg(self.host_graph(snap, parts[2], metric, seconds))
        return None

    # -- graphs ---------------------------------------------------------------------
    def _title(self, metric):
        m = metric_info(metric)
        return m.title, m.units

    def cluster_graph(self, snap, metric, seconds):
        h = self.history
        now = snap.time
        sums = h.fetch(snap.cluster, None, metric, seconds, now=now)
        band = None
        lows = h.fetch(snap.cluster, None, metric, seconds, "min", now=now)
        if lows:
            band = (svg.BAND_COLOUR, lows,
                    h.fetch(snap.cluster, None, metric, seconds, "max", now=now))
        title, units = self._title(metric)
        return svg.graph("%s: %s, sum of hosts" % (snap.cluster, title), units,
                         [("sum", svg.SUM_COLOUR, sums)], now - seconds, now, band=band)

    def host_graph(self, snap, host, metric, seconds):
        now = snap.time
        pts = self.history.fetch(snap.cluster, host, metric, seconds, now=now)
        title, units = self._title(metric)
        return svg.graph("%s: %s" % (host, title), units, [(host, svg.PALETTE[0], pts)],
                         now - seconds, now)

    def hosts_graph(self, snap, metric, seconds):
        now = snap.time
        series = []
        for i, h in enumerate(snap.hosts):
            pts = self.history.fetch(snap.cluster, h[0], metric, seconds, now=now)
            series.append((h[0], svg.PALETTE[i % len(svg.PALETTE)], pts))
        title, units = self._title(metric)
        return svg.graph("%s: %s, each host" % (snap.cluster, title), units, series,
                         now - seconds, now)

    # -- pages ----------------------------------------------------------------------
    def _numeric(self, snap):
        """The numeric metrics that the snapshot has, in gmond's order."""
        from ..synth.metrics import METRICS
        known = [m.name for m in METRICS if m.type != "string" and m.name in snap.summary]
        return known + sorted(set(snap.summary) - set(known))

    def _page(self, snap, title, body, rng, here):
        ranges = " ".join(
            '<a href="%s?range=%s">%s</a>' % (here, r, r) if r != rng else "<b>%s</b>" % r
            for r in RANGES)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.time))
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>%s</title>"
                "<style>%s</style></head><body><h1>%s</h1><p>%s &middot; collected %s in "
                "%.3f s &middot; <a href=\"/\">cluster</a> &middot; "
                "<a href=\"/metrics\">/metrics</a> &middot; <a href=\"/xml\">XML</a></p>%s"
                "</body></html>\n"
                % (html.escape(title), _STYLE, html.escape(title), ranges, when,
                   snap.poll_seconds or 0.0, body))

    def _graphs(self, urls):
        if not self.history:
            return "<p>No history: start the monitor with --history DIR for graphs.</p>"
        return "".join('<a href="%s"><img src="%s" alt="%s"></a>'
                       % (html.escape(link), html.escape(src), html.escape(alt))
                       for src, link, alt in urls)

    def cluster_page(self, snap, rng):
        rows = []
        for name, reported, answered, values, error in snap.hosts:
            state = "up" if answered else "down (%s)" % (error or "no answer")
            age = snap.age(reported)
            cells = "".join("<td>%s</td>" % html.escape(values.get(c, "")) for c in COLUMNS)
            rows.append('<tr class="%s"><td><a href="/host/%s">%s</a></td><td class="state">%s</td>'
                        "<td>%s</td>%s</tr>"
                        % ("" if answered else "down", urllib.parse.quote(name),
                           html.escape(name), html.escape(state),
                           "-" if age is None else "%d s" % age, cells))
        head = "".join("<th>%s</th>" % c for c in ["host", "state", "age"] + COLUMNS)
        table = ("<p>%d hosts up, %d down</p>" % (snap.up, snap.down)
                 + ("<table><tr>%s</tr>%s</table>" % (head, "".join(rows))
                    if snap.mode == "host" else ""))
        urls = [("/graph/cluster/%s.svg?range=%s" % (m, rng), "/metric/%s?range=%s" % (m, rng),
                 m) for m in self._numeric(snap)]
        return self._page(snap, "Cluster %s" % snap.cluster, table + self._graphs(urls),
                          rng, "/")

    def host_page(self, snap, host, rng):
        q = urllib.parse.quote(host)
        urls = [("/graph/host/%s/%s.svg?range=%s" % (q, m, rng), "/metric/%s?range=%s"
                 % (m, rng), m) for m in self._numeric(snap)]
        return self._page(snap, "Host %s" % host, self._graphs(urls), rng, "/host/" + q)

    def metric_page(self, snap, metric, rng):
        urls = [("/graph/cluster/%s.svg?range=%s" % (metric, rng), "/", metric)]
        if snap.mode == "host":
            urls.append(("/graph/hosts/%s.svg?range=%s" % (metric, rng), "/", metric))
        return self._page(snap, "Metric %s" % metric, self._graphs(urls), rng,
                          "/metric/" + urllib.parse.quote(metric))


def _html(text):
    return 200, "text/html; charset=utf-8", text.encode("utf-8")


def _svg(text):
    return 200, "image/svg+xml", text.encode("utf-8")


def _reply(status, ctype, body, head_only=False):
    head = ("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            "Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
            % (status, _STATUS.get(status, ""), ctype, len(body))).encode("latin-1")
    return head if head_only else head + body
