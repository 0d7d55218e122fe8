"""nine monitor (docs/monitor.md) against the real thing: a local tree of 4 leaves
serving /host/metrics, `nine monitor` over it, Ganglia's own gmetad polling its XML
and writing RRD files, a real Prometheus scraping /metrics, headless Chromium showing
the graphs; a host killed during collection; slow clients; values checked against
this machine's /proc (every leaf runs here).

Needs Debian's gmetad, rrdtool, prometheus, chromium, libxml2-utils (xmllint) and
ganglia-monitor (gmond, for Ganglia's DTD as gmond writes it), and whisper (PyPI) for
the history; a test whose program is missing is skipped, naming it.
"""

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import types
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
import zlib

import psutil
import pytest

from conftest import ENV_ROOT
from nine.netwait import free_port, scaled, wait_for, wait_port

LEAVES = 4
INTERVAL = 1          # seconds between collections, and gmetad's polls
HOSTS = ["node%d" % i for i in range(1, LEAVES + 1)]
#: gmond/dtd.h of Ganglia's monitor-core (github.com/ganglia/monitor-core), the
#: internal subset of the DOCTYPE that gmond 3.7 writes: a copy of the test's own, so
#: that the check does not lean on nine's copy
GANGLIA_DTD = """
   <!ELEMENT GANGLIA_XML (GRID|CLUSTER|HOST)*>
      <!ATTLIST GANGLIA_XML VERSION CDATA #REQUIRED>
      <!ATTLIST GANGLIA_XML SOURCE CDATA #REQUIRED>
   <!ELEMENT GRID (CLUSTER | GRID | HOSTS | METRICS)*>
      <!ATTLIST GRID NAME CDATA #REQUIRED>
      <!ATTLIST GRID AUTHORITY CDATA #REQUIRED>
      <!ATTLIST GRID LOCALTIME CDATA #IMPLIED>
   <!ELEMENT CLUSTER (HOST | HOSTS | METRICS)*>
      <!ATTLIST CLUSTER NAME CDATA #REQUIRED>
      <!ATTLIST CLUSTER OWNER CDATA #IMPLIED>
      <!ATTLIST CLUSTER LATLONG CDATA #IMPLIED>
      <!ATTLIST CLUSTER URL CDATA #IMPLIED>
      <!ATTLIST CLUSTER LOCALTIME CDATA #REQUIRED>
   <!ELEMENT HOST (METRIC)*>
      <!ATTLIST HOST NAME CDATA #REQUIRED>
      <!ATTLIST HOST IP CDATA #REQUIRED>
      <!ATTLIST HOST LOCATION CDATA #IMPLIED>
      <!ATTLIST HOST TAGS CDATA #IMPLIED>
      <!ATTLIST HOST REPORTED CDATA #REQUIRED>
      <!ATTLIST HOST TN CDATA #IMPLIED>
      <!ATTLIST HOST TMAX CDATA #IMPLIED>
      <!ATTLIST HOST DMAX CDATA #IMPLIED>
      <!ATTLIST HOST GMOND_STARTED CDATA #IMPLIED>
   <!ELEMENT METRIC (EXTRA_DATA*)>
      <!ATTLIST METRIC NAME CDATA #REQUIRED>
      <!ATTLIST METRIC VAL CDATA #REQUIRED>
      <!ATTLIST METRIC TYPE (string | int8 | uint8 | int16 | uint16 | int32 | uint32 | float | double | timestamp) #REQUIRED>
      <!ATTLIST METRIC UNITS CDATA #IMPLIED>
      <!ATTLIST METRIC TN CDATA #IMPLIED>
      <!ATTLIST METRIC TMAX CDATA #IMPLIED>
      <!ATTLIST METRIC DMAX CDATA #IMPLIED>
      <!ATTLIST METRIC SLOPE (zero | positive | negative | both | unspecified) #IMPLIED>
      <!ATTLIST METRIC SOURCE (gmond) 'gmond'>
   <!ELEMENT EXTRA_DATA (EXTRA_ELEMENT*)>
   <!ELEMENT EXTRA_ELEMENT EMPTY>
      <!ATTLIST EXTRA_ELEMENT NAME CDATA #REQUIRED>
      <!ATTLIST EXTRA_ELEMENT VAL CDATA #REQUIRED>
   <!ELEMENT HOSTS EMPTY>
      <!ATTLIST HOSTS UP CDATA #REQUIRED>
      <!ATTLIST HOSTS DOWN CDATA #REQUIRED>
      <!ATTLIST HOSTS SOURCE (gmond | gmetad) #REQUIRED>
   <!ELEMENT METRICS (EXTRA_DATA*)>
      <!ATTLIST METRICS NAME CDATA #REQUIRED>
      <!ATTLIST METRICS SUM CDATA #REQUIRED>
      <!ATTLIST METRICS NUM CDATA #REQUIRED>
      <!ATTLIST METRICS TYPE (string | int8 | uint8 | int16 | uint16 | int32 | uint32 | float | double | timestamp) #REQUIRED>
      <!ATTLIST METRICS UNITS CDATA #IMPLIED>
      <!ATTLIST METRICS SLOPE (zero | positive | negative | both | unspecified) #IMPLIED>
      <!ATTLIST METRICS SOURCE (gmond) 'gmond'>
"""
NUMERIC = ["load_one", "load_five", "load_fifteen", "cpu_user", "cpu_system", "cpu_idle",
           "cpu_nice", "cpu_wio", "cpu_aidle", "cpu_num", "cpu_speed", "mem_total",
           "mem_free", "mem_cached", "mem_buffers", "mem_shared", "swap_total",
           "swap_free", "bytes_in", "bytes_out", "pkts_in", "pkts_out", "disk_total",
           "disk_free", "part_max_used", "proc_run", "proc_total", "boottime"]


def need(program, package):
    path = shutil.which(program) or next(
        (p for p in ("/usr/sbin/" + program, "/sbin/" + program) if os.path.exists(p)), None)
    if path is None:
        pytest.skip("%s is not installed (Debian package %s)" % (program, package))
    return path


def need_whisper():
    from nine.monitor.history import available
    why = available()
    if why:
        pytest.skip(why)


# ---------------------------------------------------------------------------------------
# helpers

def read_all(port, send=b"", timeout=10):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if send:
            s.sendall(send)
        out = []
        while True:
            b = s.recv(65536)
            if not b:
                return b"".join(out)
            out.append(b)


def http(port, path, timeout=10):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
        return r.read()


def meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rrd_last(path):
    """(last update time, value) of an RRD file (its one data source)."""
    out = subprocess.run(["rrdtool", "lastupdate", path], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    t, _, v = [line for line in out if ":" in line][-1].partition(":")
    return int(t), float(v)


def hosts_of(xml):
    """{name: HOST element} of a Ganglia XML document."""
    return {h.get("NAME"): h for h in ET.fromstring(xml).iter("HOST")}


def png_pixels(path):
    """(width, height, [row bytes], channels) of an 8-bit RGB or RGBA PNG."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and not interlace
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    ch = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = w * ch
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows, ch


def count_colour(png, colour, box=None):
    """How many pixels of the screenshot have exactly colour "#rrggbb" (inside box
    (x0, y0, x1, y1) if given)."""
    w, h, rows, ch = png_pixels(png)
    want = bytes.fromhex(colour[1:])
    x0, y0, x1, y1 = box or (0, 0, w, h)
    return sum(1 for y in range(y0, min(y1, h)) for x in range(x0, min(x1, w))
               if rows[y][x * ch:x * ch + 3] == want)


def screenshot(url, path, size):
    chromium = need("chromium", "chromium")
    args = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars",
            "--window-size=%d,%d" % size, "--screenshot=" + path, url]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")      # (Chromium refuses root otherwise)
    subprocess.run(args, capture_output=True, timeout=scaled(90), check=True)
    assert os.path.getsize(path) > 0


# ---------------------------------------------------------------------------------------
# the processes

class Proc:
    """A program in the background, its output in a file; stopped by its pid."""

    def __init__(self, argv, log, env=None, cwd=None):
        self.log = log
        with open(log, "wb") as out:
            self.p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env or ENV_ROOT,
                                      cwd=cwd)

    def output(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(scaled(10))
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class Tree:
    """`nine tree` of LEAVES local leaves; leaf_pid(name) for killing one."""

    def __init__(self, tmp):
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.proc = Proc([sys.executable, "-m", "nine", "tree", "--leaves", str(LEAVES),
                          "--fanout", "2", "--listen", self.addr], os.path.join(tmp, "tree.log"))
        wait_for(lambda: "leaves:" in self.proc.output() or self.proc.p.poll() is not None,
                 scaled(60), "the tree's banner")
        line = re.search(r"^leaves:\s+(.*)$", self.proc.output(), re.M)
        assert line, self.proc.output()
        self.leaves = dict(kv.split("=", 1) for kv in line.group(1).split())
        wait_port(self.port, scaled(30))

    def leaf_pid(self, name):
        port = int(self.leaves[name].rpartition(":")[2])
        for child in psutil.Process(self.proc.p.pid).children(recursive=True):
            try:
                if any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                       for c in child.net_connections("tcp")):
                    return child.pid
            except psutil.Error:
                continue
        raise LookupError("no process listens on %s" % self.leaves[name])

    def stop(self):
        self.proc.stop()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    t = Tree(str(tmp_path_factory.mktemp("tree")))
    yield t
    t.stop()


def monitor(tree, tmp, *args):
    """`nine monitor` over the tree every INTERVAL s: (Proc, xml port, http port)."""
    xml_port, http_port = free_port(), free_port()
    p = Proc([sys.executable, "-m", "nine", "monitor", "-a", tree.addr, "--interval",
              str(INTERVAL), "--xml-listen", "127.0.0.1:%d" % xml_port, "--http-listen",
              "127.0.0.1:%d" % http_port, "--client-timeout", "3", "--timeout", "2"]
             + list(args),
             os.path.join(tmp, "monitor%d.log" % xml_port))
    wait_port(xml_port, scaled(30), proc=p.p)
    wait_port(http_port, scaled(30), proc=p.p)
    return p, xml_port, http_port


@pytest.fixture(scope="module")
def stack(tree, tmp_path_factory):
    """Two monitors (per host, with history; summary), gmetad polling both, Prometheus
    scraping the first."""
    gmetad = need("gmetad", "gmetad")
    need("rrdtool", "rrdtool")
    prometheus = need("prometheus", "prometheus")
    tmp = str(tmp_path_factory.mktemp("stack"))
    s = types.SimpleNamespace(procs=[])
    try:
        s.hist = os.path.join(tmp, "history")
        from nine.monitor.history import available
        hist_args = ["--history", s.hist] if available() is None else []
        s.mon, s.xml, s.http = monitor(tree, tmp, *hist_args)
        s.procs.append(s.mon)
        s.smon, s.sxml, s.shttp = monitor(tree, tmp, "--mode", "summary", "--cluster", "sums")
        s.procs.append(s.smon)
        s.rrds = os.path.join(tmp, "rrds")
        os.mkdir(s.rrds)
        s.gxml, s.gint = free_port(), free_port()
        conf = os.path.join(tmp, "gmetad.conf")
        with open(conf, "w") as f:
            f.write('data_source "nine" %d 127.0.0.1:%d\n' % (INTERVAL, s.xml)
                    + 'data_source "sums" %d 127.0.0.1:%d\n' % (INTERVAL, s.sxml)
                    + 'gridname "test"\nsetuid off\nxml_port %d\ninteractive_port %d\n'
                      'rrd_rootdir "%s"\nserver_threads 2\n' % (s.gxml, s.gint, s.rrds))
        s.gmetad = Proc([gmetad, "-d", "1", "-c", conf, "-p", os.path.join(tmp, "gmetad.pid")],
                        os.path.join(tmp, "gmetad.log"))
        s.procs.append(s.gmetad)
        wait_port(s.gxml, scaled(30), proc=s.gmetad.p)
        s.prom_port = free_port()
        pconf = os.path.join(tmp, "prometheus.yml")
        with open(pconf, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: nine\n    honor_labels: true\n"
                    "    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % s.http)
        s.prom = Proc([prometheus, "--config.file=" + pconf, "--storage.tsdb.path="
                       + os.path.join(tmp, "tsdb"), "--web.listen-address=127.0.0.1:%d"
                       % s.prom_port], os.path.join(tmp, "prometheus.log"), cwd=tmp)
        s.procs.append(s.prom)
        wait_for(lambda: _ready(s.prom_port), scaled(60), "Prometheus ready")
        yield s
    finally:
        for p in reversed(s.procs):
            p.stop()


def _ready(port):
    try:
        return http(port, "/-/ready", timeout=2).strip() != b""
    except OSError:
        return False


def promql(s, query):
    """The instant vector of a PromQL query: {metric or instance label: value}."""
    got = json.loads(http(s.prom_port, "/api/v1/query?" + urllib.parse.urlencode(
        {"query": query})))
    assert got["status"] == "success", got
    return {r["metric"].get("metric") or r["metric"].get("instance"): float(r["value"][1])
            for r in got["data"]["result"]}


# ---------------------------------------------------------------------------------------
# the metrics file at the leaves

def test_metrics_file_matches_proc(tree):
    from nine.client import Client
    from nine.synth.metrics import METRICS, parse
    c = Client(tree.addr, blocking=True)
    try:
        assert sorted(c.listdir("/host/metrics")) == HOSTS
        for h in HOSTS:
            lo = os.getloadavg()[0]
            got = parse(c.read_file("/host/metrics/" + h).decode())
            hi = os.getloadavg()[0]
            assert [m.name for m in METRICS] == list(got), h
            for m in METRICS:
                assert got[m.name][1] == m.units, (h, m.name)
            v = {k: x for k, (x, _u) in got.items()}
            assert int(v["mem_total"]) == meminfo("MemTotal")      # exact
            assert int(v["swap_total"]) == meminfo("SwapTotal")
            assert abs(float(v["mem_free"]) - meminfo("MemFree")) <= 0.05 * meminfo("MemTotal")
            assert min(lo, hi) * 0.95 - 0.02 <= float(v["load_one"]) <= max(lo, hi) * 1.05 + 0.02
            assert int(v["cpu_num"]) == os.cpu_count()
            with open("/proc/stat") as f:
                btime = int(re.search(r"^btime (\d+)", f.read(), re.M).group(1))
            assert int(v["boottime"]) == btime
            with open("/proc/sys/kernel/osrelease") as f:
                assert v["os_release"] == f.read().strip()
            assert v["os_name"] == "Linux"
            st = os.statvfs("/")
            assert float(v["disk_total"]) >= 0.95 * st.f_blocks * st.f_bsize / 1e9
            cpu = sum(float(v[k]) for k in ("cpu_user", "cpu_system", "cpu_idle",
                                            "cpu_nice", "cpu_wio"))
            assert 95.0 <= cpu <= 100.5, v        # (steal, the rest, is 0 here)
            with open("/proc/loadavg") as f:
                total = int(f.read().split()[3].split("/")[1])
            assert abs(int(v["proc_total"]) - total) <= max(0.05 * total, 10)
    finally:
        c.close()


def test_rates_between_reads(tmp_path):
    """cpu_* percentages and bytes/packets per second cover the time between reads."""
    from nine.synth.metrics import Metrics, parse
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "sys" / "kernel" / "osrelease").write_text("6.1.0-test\n")
    (proc / "loadavg").write_text("0.50 0.40 0.30 3/200 1234\n")
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 400 kB\nBuffers: 10 kB\n"
                                  "Cached: 100 kB\nSwapCached: 7 kB\nShmem: 5 kB\n"
                                  "SwapTotal: 0 kB\nSwapFree: 0 kB\n")
    (proc / "mounts").write_text("")
    (proc / "cpuinfo").write_text("cpu MHz\t\t: 2000.5\n")

    def counters(cpu, rx, tx):
        (proc / "stat").write_text("cpu  %s 0 0\nbtime 1700000000\n"
                                   % " ".join(str(x) for x in cpu))
        (proc / "net" / "dev").write_text(
            "Inter-| head\n face | head\n    lo: 999999 999 0 0 0 0 0 0 999999 999 0 0 0 0 0 0\n"
            "  eth0: %d %d 0 0 0 0 0 0 %d %d 0 0 0 0 0 0\n" % (rx, rx // 100, tx, tx // 100))
    m = Metrics(str(proc))
    counters([100, 0, 50, 800, 50, 0, 0, 0], 10000, 5000)
    parse(m.text())                   # the first read measures over WAIT seconds
    time.sleep(1.0)
    #            user nice system idle iowait irq softirq steal: +100 jiffies
    counters([130, 10, 60, 840, 60, 0, 0, 0], 30000, 6000)
    got = {k: v for k, (v, _u) in parse(m.text()).items()}
    dt = m.samples[-1][0] - m.samples[-2][0]
    assert float(got["cpu_user"]) == 30.0 and float(got["cpu_nice"]) == 10.0
    assert float(got["cpu_system"]) == 10.0 and float(got["cpu_idle"]) == 40.0
    assert float(got["cpu_wio"]) == 10.0
    assert float(got["bytes_in"]) == pytest.approx(20000 / dt, rel=0.01)
    assert float(got["bytes_out"]) == pytest.approx(1000 / dt, rel=0.01)
    assert float(got["pkts_in"]) == pytest.approx(200 / dt, rel=0.01)     # lo not counted
    assert got["cpu_speed"] == "2000" and got["mem_cached"] == "100"
    assert got["mem_shared"] == "5" and got["proc_run"] == "2"
    assert got["os_release"] == "6.1.0-test" and got["boottime"] == "1700000000"
    assert float(got["cpu_aidle"]) == pytest.approx(100.0 * 840 / 1100, abs=0.05)


# ---------------------------------------------------------------------------------------
# gmond's XML

def once(tree, *args):
    r = subprocess.run([sys.executable, "-m", "nine", "monitor", "-a", tree.addr, "--once"]
                       + list(args), env=ENV_ROOT, capture_output=True, timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    return r.stdout


def gmond_dtd(tmp):
    """The DTD that a real gmond writes (None when gmond is not installed)."""
    gmond = shutil.which("gmond") or ("/usr/sbin/gmond" if os.path.exists("/usr/sbin/gmond")
                                      else None)
    if gmond is None:
        return None
    port = free_port()
    conf = os.path.join(tmp, "gmond.conf")
    with open(conf, "w") as f:
        f.write("globals {\n daemonize = no\n setuid = no\n mute = yes\n}\n"
                "cluster {\n name = \"dtd\"\n}\n"
                "tcp_accept_channel {\n bind = 127.0.0.1\n port = %d\n}\n" % port)
    p = Proc([gmond, "-c", conf], os.path.join(tmp, "gmond.log"))
    try:
        wait_port(port, scaled(20), proc=p.p)
        xml = read_all(port).decode("iso-8859-1")
    finally:
        p.stop()
    return xml[xml.index("[") + 1:xml.index("]>")]


def test_xml_validates_against_ganglia_dtd(tree, tmp_path):
    xmllint = need("xmllint", "libxml2-utils")
    real = gmond_dtd(str(tmp_path))
    if real is not None:            # the test's copy is gmond's own
        assert real.split() == GANGLIA_DTD.split()
    for mode in ("host", "summary"):
        doc = tmp_path / ("%s.xml" % mode)
        doc.write_bytes(once(tree, "--mode", mode))
        text = doc.read_text(encoding="iso-8859-1")
        inner = text[text.index("[") + 1:text.index("]>")]
        assert inner.split() == GANGLIA_DTD.split()       # gmond's DOCTYPE, verbatim
        # and valid against the test's copy of Ganglia's DTD, put in its place (a
        # standalone document cannot take it as an external subset)
        ours = tmp_path / ("%s-dtd.xml" % mode)
        ours.write_text('<?xml version="1.0" encoding="ISO-8859-1" standalone="yes"?>\n'
                        "<!DOCTYPE GANGLIA_XML [%s]>\n" % GANGLIA_DTD
                        + text[text.index("]>") + 3:], encoding="iso-8859-1")
        for f in (doc, ours):
            r = subprocess.run([xmllint, "--noout", "--valid", str(f)], capture_output=True,
                               text=True)
            assert r.returncode == 0 and not r.stderr, r.stderr[-3000:]
    hosts = hosts_of((tmp_path / "host.xml").read_bytes())
    assert sorted(hosts) == HOSTS
    for h in hosts.values():
        metrics = {m.get("NAME"): m for m in h.iter("METRIC")}
        assert set(NUMERIC) < set(metrics)
        assert metrics["mem_total"].get("UNITS") == "KB"
        assert metrics["mem_total"].get("TYPE") == "float"
        assert int(metrics["mem_total"].get("VAL")) == meminfo("MemTotal")
        assert metrics["load_one"].get("TMAX") == "70"
        groups = {e.get("NAME"): e.get("VAL") for e in metrics["cpu_user"].iter("EXTRA_ELEMENT")}
        assert groups == {"GROUP": "cpu", "TITLE": "CPU User", "DESC": "Percentage of CPU "
                          "utilization that occurred while executing at the user level"}


def test_summary_mode_sums(tree):
    root = ET.fromstring(once(tree, "--mode", "summary"))
    assert root.find("CLUSTER/HOSTS").attrib == {"UP": str(LEAVES), "DOWN": "0",
                                                 "SOURCE": "gmond"}
    m = {e.get("NAME"): e for e in root.iter("METRICS")}
    assert int(m["mem_total"].get("SUM")) == LEAVES * meminfo("MemTotal")
    assert int(m["cpu_num"].get("SUM")) == LEAVES * os.cpu_count()
    assert all(e.get("NUM") == str(LEAVES) for e in m.values())
    assert "os_name" not in m and root.find("CLUSTER/HOST") is None


# ---------------------------------------------------------------------------------------
# gmetad, Prometheus and a browser over a running monitor

def rrd(s, cluster, host, metric):
    return os.path.join(s.rrds, cluster, host, metric + ".rrd")


def test_gmetad_writes_the_rrds(stack):
    s = stack
    want = [rrd(s, "nine", h, m) for h in HOSTS for m in NUMERIC]
    want += [rrd(s, "nine", "__SummaryInfo__", m) for m in NUMERIC]
    want += [rrd(s, "sums", "__SummaryInfo__", m) for m in NUMERIC]
    wait_for(lambda: all(os.path.exists(p) for p in want), scaled(60),
             "gmetad's RRD files: " + s.gmetad.output()[-2000:])
    # the RRD names are gmond's: nothing more than the numeric metrics, per host
    assert sorted(os.listdir(os.path.join(s.rrds, "nine"))) == ["__SummaryInfo__"] + HOSTS
    assert sorted(os.listdir(os.path.join(s.rrds, "nine", "node1"))) == sorted(
        m + ".rrd" for m in NUMERIC)
    wait_for(lambda: rrd_last(rrd(s, "nine", "node1", "mem_total"))[1] > 0, scaled(30),
             "a value in node1's mem_total.rrd")
    assert rrd_last(rrd(s, "nine", "node1", "mem_total"))[1] == meminfo("MemTotal")
    t0 = rrd_last(rrd(s, "nine", "node2", "load_one"))[0]
    wait_for(lambda: rrd_last(rrd(s, "nine", "node2", "load_one"))[0] >= t0 + 2, scaled(30),
             "gmetad's updates going on")
    # gmetad's sums of the hosts' values
    out = subprocess.run(["rrdtool", "lastupdate", rrd(s, "nine", "__SummaryInfo__",
                                                       "cpu_num")],
                         capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == ["sum", "num"]
    last = out.strip().splitlines()[-1].split()
    assert float(last[1]) == LEAVES * os.cpu_count() and float(last[2]) == LEAVES
    # the summary source: gmetad counts its hosts up (its METRICS sums gmetad 3.7
    # zeroes: startElement_METRICS adds into the table that endElement_CLUSTER swaps
    # out before writing; docs/monitor.md)
    grid = ET.fromstring(read_all(s.gint, b"/sums?filter=summary\n"))
    hs = grid.find(".//CLUSTER[@NAME='sums']/HOSTS")
    assert (hs.get("UP"), hs.get("DOWN")) == (str(LEAVES), "0")
    # gmetad's own XML knows every host, up (TN < 4 TMAX)
    hosts = hosts_of(read_all(s.gxml))
    assert set(HOSTS) <= set(hosts)
    assert all(int(hosts[h].get("TN")) < 4 * int(hosts[h].get("TMAX")) for h in HOSTS)


def test_prometheus_scrapes(stack):
    s = stack
    wait_for(lambda: set(promql(s, "ganglia_load_one")) == set(HOSTS), scaled(60),
             "Prometheus' series of the 4 hosts")
    mem = promql(s, "ganglia_mem_total")
    assert all(v == meminfo("MemTotal") for v in mem.values())
    assert promql(s, 'ganglia_cluster_num{metric="mem_total"}') == {"mem_total": LEAVES}
    assert promql(s, 'ganglia_cluster_sum{metric="cpu_num"}') == {
        "cpu_num": LEAVES * os.cpu_count()}
    wait_for(lambda: promql(s, "nine_monitor_host_up") == {h: 1.0 for h in HOSTS},
             scaled(30), "every host up in Prometheus")


def test_graphs_in_chromium(stack, tmp_path):
    s = stack
    need_whisper()
    from nine.monitor import svg
    hist = os.path.join(s.hist, "nine")
    wait_for(lambda: os.path.isdir(hist) and len(os.listdir(hist)) == LEAVES + 1, scaled(30),
             "history archives")
    time.sleep(8 * INTERVAL)                  # some points to draw a line through
    # the graph alone: its line's colour inside the plot area
    png = str(tmp_path / "graph.png")
    screenshot("http://127.0.0.1:%d/graph/cluster/mem_total.svg?range=60" % s.http, png,
               (svg.W, svg.H))
    plot = (svg.LEFT + 1, svg.TOP + 1, svg.W - svg.RIGHT - 1, svg.H - svg.BOTTOM - 1)
    line = count_colour(png, svg.SUM_COLOUR, plot)
    assert line >= 40, "%d pixels of the sum's line" % line
    # the page: every host's line in the metric's page, the sum's line besides its legend
    png = str(tmp_path / "page.png")
    screenshot("http://127.0.0.1:%d/metric/mem_total?range=60" % s.http, png, (900, 700))
    assert count_colour(png, svg.SUM_COLOUR) >= 100 + 40       # legend swatch: 10 x 10
    assert count_colour(png, svg.PALETTE[0]) > 100 or count_colour(png, svg.PALETTE[3]) > 100
    page = http(s.http, "/").decode()
    assert all('href="/host/%s"' % h in page for h in HOSTS)
    assert "%d hosts up, 0 down" % LEAVES in page


def test_slow_clients_stall_nothing(stack):
    """Clients that connect and never read (XML port), or never finish their request
    (HTTP port), stall neither the collection, nor gmetad, nor other clients; they are
    cut off after --client-timeout; memory stays flat."""
    s = stack
    mon = psutil.Process(s.mon.p.pid)
    for _ in range(20):
        http(s.http, "/metrics")
        read_all(s.xml)
    rss0 = mon.memory_info().rss
    stuck = []
    try:
        for _ in range(20):
            a = socket.create_connection(("127.0.0.1", s.xml))
            a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            b = socket.create_connection(("127.0.0.1", s.http))
            b.sendall(b"GET /metrics HTTP/1.1\r\n")          # and never the end of it
            stuck += [a, b]
        t0 = rrd_last(rrd(s, "nine", "node1", "load_one"))[0]
        for _ in range(5 * 10):
            t = time.monotonic()
            assert hosts_of(read_all(s.xml, timeout=5)).keys() == set(HOSTS)
            assert b"ganglia_load_one" in http(s.http, "/metrics", timeout=5)
            assert time.monotonic() - t < scaled(1.0)
            time.sleep(0.1)
        assert rrd_last(rrd(s, "nine", "node1", "load_one"))[0] >= t0 + 3   # gmetad polls on
        time.sleep(4)                 # past --client-timeout 3: the stuck ones were cut off
        for c in stuck[1::2]:
            c.settimeout(5)
            assert c.recv(100) == b""
        rss1 = mon.memory_info().rss
        assert rss1 - rss0 < 8 << 20, "%d -> %d" % (rss0, rss1)
    finally:
        for c in stuck:
            c.close()


def test_killed_host_is_down_everywhere(stack, tree):
    """A leaf killed during collection: gmetad marks it down (TN >= 4 TMAX, its RRDs
    stop) while the others go on; Prometheus drops its series; the monitor keeps its
    last values, REPORTED unchanged."""
    s = stack
    os.kill(tree.leaf_pid("node4"), signal.SIGKILL)
    killed = time.time()

    def down():
        h = hosts_of(read_all(s.gxml))["node4"]
        return int(h.get("TN")) >= 4 * int(h.get("TMAX"))
    wait_for(down, scaled(60), "gmetad marking node4 down")
    stopped = rrd_last(rrd(s, "nine", "node4", "load_one"))[0]
    alive = rrd_last(rrd(s, "nine", "node1", "load_one"))[0]
    assert stopped <= killed + 4 * INTERVAL + scaled(2)
    time.sleep(3 * INTERVAL)
    assert rrd_last(rrd(s, "nine", "node4", "load_one"))[0] == stopped
    assert rrd_last(rrd(s, "nine", "node1", "load_one"))[0] > alive
    summary = read_all(s.gint, b"/nine?filter=summary\n")
    hs = ET.fromstring(summary).find(".//CLUSTER[@NAME='nine']/HOSTS")
    assert (hs.get("UP"), hs.get("DOWN")) == (str(LEAVES - 1), "1")
    mine = hosts_of(read_all(s.xml))["node4"]
    reported = int(mine.get("REPORTED"))
    assert reported <= killed + 1 and int(mine.get("TN")) >= 4 * INTERVAL
    assert {m.get("NAME") for m in mine.iter("METRIC")} >= set(NUMERIC)   # last values
    time.sleep(INTERVAL + 0.5)
    assert int(hosts_of(read_all(s.xml))["node4"].get("REPORTED")) == reported
    # the summary monitor counts it down
    hs = ET.fromstring(read_all(s.sxml)).find("CLUSTER/HOSTS")
    assert (hs.get("UP"), hs.get("DOWN")) == (str(LEAVES - 1), "1")
    # Prometheus: node4's series went stale, its up gauge is 0
    wait_for(lambda: set(promql(s, "ganglia_load_one")) == set(HOSTS[:-1]), scaled(30),
             "node4's series gone from Prometheus")
    assert promql(s, "nine_monitor_host_up")["node4"] == 0.0
