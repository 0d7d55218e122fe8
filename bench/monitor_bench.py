"""nine monitor beside Ganglia's own gmond, on K namespace hosts (interop/hosts.py).

    python bench/monitor_bench.py [--sizes 8,64] [--window 60] [--polls 10]
                                  [--step 5] [--json FILE]

For each K it makes K hosts (network namespaces with their own address and host
name), and on every host starts both

  - a nine leaf (`nine serve --host`, /host/metrics) on the host's address, the
    leaves under a local tree of muxes (`nine tree --topology`, fan-out 8);
  - a real gmond (Debian's ganglia-monitor, Debian's gmond.conf for the metrics) in
    unicast: every gmond sends to node1's, which keeps the cluster and serves its
    XML on node1:8649 (the others are deaf);

then `nine monitor` (per host) over the tree, and one real gmetad polling both
sources every --step seconds (data sources "gmond" and "nine"), writing RRD files.
It prints:

  names     the RRD files gmetad wrote per host for each source, and their difference
  values    each metric of each host from gmetad's XML, nine's against gmond's: how
            many are within 5%, of those that never change (mem_total, boottime, ...)
            and of all levels (load_five, mem_free, ... which gmond samples at other
            moments, up to its time_threshold apart), and which are not (rates and
            percentages cover different windows; mem_shared is 0 in gmond 3.7, which
            reads a line that Linux dropped)
  poll      the time of one collection of all K hosts, per host (a concat group read)
            and in summary mode (a mean read: sums added up inside the tree), median
            and worst of --polls collections made in this process
  cost      over --window seconds of collections every --step seconds: CPU (percent
            of one core) and memory (RSS) of a nine leaf and of a gmond per host
            (senders, and node1's collecting gmond), and of nine's root and monitor
  prometheus  Debian's prometheus-node-exporter also runs on every host (HOST:9100),
            and one real Prometheus scrapes, every --step seconds, two jobs: "nine"
            (one target: the monitor's /metrics, every host's series) and "node" (the
            K node_exporters).  From Prometheus itself (its query API, over the cost
            window): scrape_duration_seconds of each job (median and worst; for
            "node" also the sum over the K targets of their medians, the scrape work
            of one round), scrape_samples_scraped and scrape_body_size_bytes (bytes
            per scrape, uncompressed); the CPU of nine's root+muxes+monitor against
            the K exporters' total over the window; and the monitor's /metrics timed
            directly (--polls GETs from this process: median and worst, bytes)

Needs root, sshd, iproute2 (interop/hosts.py), gmond and gmetad (Debian ganglia-monitor,
gmetad), rrdtool, prometheus and prometheus-node-exporter; whatever is missing is named
and the run stops (--no-prometheus: without the last two).  uptime's load is printed
with the figures: the machine may be shared.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psutil  # noqa: E402

from nine.netwait import free_port, scaled, wait_for, wait_port  # noqa: E402

LEAF_PORT = 5640
GMOND_PORT = 8649
EXPORTER_PORT = 9100
EXPORTER = "prometheus-node-exporter"
#: metrics whose values cover a window (rates, percentages over an interval) or that
#: gmond computes differently: compared, but not expected within 5%
WINDOWED = {"bytes_in", "bytes_out", "pkts_in", "pkts_out", "cpu_user", "cpu_system",
            "cpu_idle", "cpu_nice", "cpu_wio", "proc_run", "mem_shared", "load_one"}
#: metrics that do not change while the machine runs: expected equal
STATIC = {"cpu_num", "cpu_speed", "mem_total", "swap_total", "disk_total", "boottime",
          "os_name", "os_release", "machine_type"}


def need(*programs):
    missing = [p for p in programs if not (shutil.which(p) or os.path.exists("/usr/sbin/" + p))]
    if missing:
        sys.exit("monitor_bench: not installed: %s (apt-get install ganglia-monitor gmetad "
                 "rrdtool prometheus prometheus-node-exporter)" % ", ".join(missing))


def http_get(url, timeout=30):
    """(seconds, body) of one GET."""
    import urllib.request
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
    return time.perf_counter() - t0, body


def prometheus_conf(step, nine_target, node_targets):
    """Prometheus' configuration: job "nine" (the monitor's /metrics, its instance
    labels kept) and job "node" (the node_exporters), both every step seconds."""
    return ("global:\n  scrape_interval: %ds\n  scrape_timeout: %ds\n"
            "scrape_configs:\n"
            "  - job_name: nine\n    honor_labels: true\n"
            "    static_configs:\n      - targets: ['%s']\n"
            "  - job_name: node\n    static_configs:\n      - targets: [%s]\n"
            % (step, min(step, 10), nine_target,
               ", ".join("'%s'" % t for t in node_targets)))


def prom_series(base, query):
    """{instance: [float values]} of a range-vector query at Prometheus' base URL."""
    import urllib.parse
    _, body = http_get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    data = json.loads(body)
    if data.get("status") != "success":
        raise RuntimeError("prometheus: %s: %s" % (query, data))
    out = {}
    for r in data["data"]["result"]:
        vals = r.get("values") or [r.get("value")]
        out[r["metric"].get("instance", "")] = [float(v[1]) for v in vals if v]
    return out


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def read_all(addr, send=b""):
    import socket
    with socket.create_connection(addr, timeout=30) as s:
        if send:
            s.sendall(send)
        out = []
        while True:
            b = s.recv(1 << 16)
            if not b:
                return b"".join(out)
            out.append(b)


def gmond_conf(collector, debian="/etc/ganglia/gmond.conf", deaf=True):
    """Debian's gmond.conf (its modules and collection groups), in unicast to the
    collector; the collector also keeps the cluster and serves it on TCP."""
    with open(debian) as f:
        text = f.read()
    text = re.sub(r"setuid = yes", "setuid = no", text)
    text = re.sub(r"daemonize = yes", "daemonize = no", text)
    text = re.sub(r"deaf = no", "deaf = %s" % ("yes" if deaf else "no"), text)
    text = re.sub(r"send_metadata_interval = \d+", "send_metadata_interval = 30", text)
    text = re.sub(r'name = "unspecified"', 'name = "gmond"', text, count=1)
    text = re.sub(r"udp_send_channel \{.*?\}", "udp_send_channel {\n  host = %s\n  port = %d\n"
                  "  ttl = 1\n}" % (collector, GMOND_PORT), text, count=1, flags=re.S)
    recv = ("udp_recv_channel {\n  port = %d\n}" % GMOND_PORT) if not deaf else ""
    text = re.sub(r"udp_recv_channel \{.*?\}", recv, text, count=1, flags=re.S)
    tcp = ("tcp_accept_channel {\n  port = %d\n}" % GMOND_PORT) if not deaf else ""
    text = re.sub(r"tcp_accept_channel \{.*?\}", tcp, text, count=1, flags=re.S)
    text = re.sub(r"include \(.*?\)", "", text)
    return text


def hosts_values(xml, cluster):
    """{host: {metric: value}} of a cluster in gmetad's XML."""
    out = {}
    for c in ET.fromstring(xml).iter("CLUSTER"):
        if c.get("NAME") != cluster:
            continue
        for h in c.iter("HOST"):
            out[h.get("NAME")] = {m.get("NAME"): m.get("VAL") for m in h.iter("METRIC")}
    return out


def cpu_seconds(pids):
    total = 0.0
    for p in pids:
        try:
            t = psutil.Process(p).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def rss(pids):
    out = []
    for p in pids:
        try:
            out.append(psutil.Process(p).memory_info().rss)
        except psutil.Error:
            pass
    return out


def collect_times(addr, mode, polls):
    """Seconds of `polls` collections of every host, after one to warm up."""
    from nine.client import Client
    from nine.monitor.collect import Collector
    col = Collector(lambda: Client(addr), mode=mode, timeout=10.0)
    try:
        snap = col.poll()
        times = []
        for _ in range(polls):
            snap = col.poll()
            times.append(snap.poll_seconds)
        return times, snap.up
    finally:
        col.close()


def prometheus_figures(k, res, url, dt, pct, exp_pids, nine_top, http_port, polls):
    """Prometheus' own scrape figures of both jobs over the last dt seconds, the CPU of
    nine's top against the exporters', and the monitor's /metrics timed here."""
    w = "%ds" % int(dt)
    figs = {}
    for job in ("nine", "node"):
        dur = prom_series(url, 'scrape_duration_seconds{job="%s"}[%s]' % (job, w))
        smp = prom_series(url, 'scrape_samples_scraped{job="%s"}[%s]' % (job, w))
        size = prom_series(url, 'scrape_body_size_bytes{job="%s"}[%s]' % (job, w))
        every = [x for v in dur.values() for x in v]
        meds = [statistics.median(v) for v in dur.values() if v]
        figs[job] = {"targets": len(dur), "scrapes": len(every),
                     "median": statistics.median(every), "max": max(every),
                     "sum_of_target_medians": sum(meds),
                     "samples": sum(statistics.median(v) for v in smp.values() if v),
                     "bytes": sum(statistics.median(v) for v in size.values() if v)}
    times, nbytes = [], 0
    for _ in range(polls):
        t, body = http_get("http://127.0.0.1:%d/metrics" % http_port)
        times.append(t)
        nbytes = len(body)
    figs["direct"] = {"median": statistics.median(times), "max": max(times),
                      "bytes": nbytes, "gets": polls}
    figs["cpu_pct"] = {"nine_root_and_monitor": pct[3], "exporters_total": pct[4],
                       "exporter_each": pct[4] / max(len(exp_pids), 1),
                       "prometheus": pct[5]}
    res["prometheus"] = figs
    n, e = figs["nine"], figs["node"]
    print("prometheus, %d hosts, over %.0f s (from Prometheus' scrape_* series):" % (k, dt))
    print("  job nine  1 target : scrape median %.3f s, worst %.3f s (%d scrapes); "
          "%d samples, %d bytes per scrape" % (n["median"], n["max"], n["scrapes"],
                                              n["samples"], n["bytes"]))
    print("  job node %2d targets: scrape median %.3f s, worst %.3f s per target (%d "
          "scrapes); sum of the targets' medians %.3f s; %d samples, %d bytes per round"
          % (e["targets"], e["median"], e["max"], e["scrapes"], e["sum_of_target_medians"],
             e["samples"], e["bytes"]))
    print("  ratios nine/node: scrape time %.4fx (one scrape vs the sum of %d), bytes "
          "%.2fx, samples %.2fx" % (n["median"] / e["sum_of_target_medians"], e["targets"],
                                   n["bytes"] / max(e["bytes"], 1),
                                   n["samples"] / max(e["samples"], 1)))
    c = figs["cpu_pct"]
    print("  CPU over the window: nine root+muxes+monitor %.2f%% of a core, the %d "
          "exporters %.2f%% (%.2f%% each; ratio nine/exporters %.2fx), prometheus %.2f%%"
          % (c["nine_root_and_monitor"], len(exp_pids), c["exporters_total"],
             c["exporter_each"], c["nine_root_and_monitor"] / max(c["exporters_total"], 1e-9),
             c["prometheus"]))
    d = figs["direct"]
    print("  nine's /metrics GET from here: median %.4f s, worst %.4f s of %d, %d bytes"
          % (d["median"], d["max"], d["gets"], d["bytes"]), flush=True)


def run(k, args, out):
    """One cluster of k hosts: its figures appended to out."""
    from interop.hosts import available
    why = available()
    if why:
        sys.exit("monitor_bench: namespace hosts cannot be made here: %s" % why)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    tmp = tempfile.mkdtemp(prefix="nine-monitor-bench-")
    try:
        _run(k, args, out, env, tmp)
    except BaseException:
        for name in sorted(os.listdir(tmp)):     # what the peers said, for the failure
            if name.endswith(".log") and not name.startswith(("leaf-", "gmond-", "exporter-")):
                with open(os.path.join(tmp, name), "rb") as f:
                    tail = f.read()[-1500:].decode(errors="replace").strip()
                if tail:
                    print("== %s:\n%s" % (name, tail))
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(k, args, out, env, tmp):
    from interop.hosts import Cluster
    procs = []
    res = {"hosts": k}
    t0 = time.monotonic()
    with Cluster(k) as c:
        collector = c.host("node1").address
        print("%d hosts up in %.1f s" % (k, time.monotonic() - t0), flush=True)
        leaves, gmonds = {}, {}
        for h in c.hosts:
            log = open(os.path.join(tmp, "leaf-%s.log" % h.name), "wb")
            leaves[h.name] = c.run_in(h, [sys.executable, "-m", "nine", "serve", "-q",
                                          "--host", "--listen",
                                          "%s:%d" % (h.address, LEAF_PORT)],
                                      env=env, stdout=log, stderr=log)
        for h in c.hosts:
            conf = os.path.join(tmp, "gmond-%s.conf" % h.name)
            with open(conf, "w") as f:
                f.write(gmond_conf(collector, deaf=h.name != "node1"))
            log = open(os.path.join(tmp, "gmond-%s.log" % h.name), "wb")
            gmonds[h.name] = c.run_in(h, ["gmond", "-c", conf], stdout=log, stderr=log)
        exporters = {}
        if args.prometheus:
            for h in c.hosts:
                log = open(os.path.join(tmp, "exporter-%s.log" % h.name), "wb")
                exporters[h.name] = c.run_in(h, [shutil.which(EXPORTER), "--web.listen-address"
                                                 "=%s:%d" % (h.address, EXPORTER_PORT)],
                                             stdout=log, stderr=log)
        for h in c.hosts:
            wait_port((h.address, LEAF_PORT), scaled(120), proc=leaves[h.name])
            if exporters:
                wait_port((h.address, EXPORTER_PORT), scaled(60), proc=exporters[h.name])
        wait_port((collector, GMOND_PORT), scaled(60), proc=gmonds["node1"])
        print("leaves and gmonds up in %.1f s" % (time.monotonic() - t0), flush=True)
        topo = os.path.join(tmp, "tree.ini")
        root_port = free_port()
        with open(topo, "w") as f:
            f.write("[tree]\nlisten = 127.0.0.1:%d\nfanout = 8\n[leaves]\n" % root_port)
            f.writelines("%s = %s:%d\n" % (h.name, h.address, LEAF_PORT) for h in c.hosts)
        tree = subprocess.Popen([sys.executable, "-m", "nine", "tree", "--topology", topo],
                                env=env, stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(tmp, "tree.log"), "wb"))
        procs.append(tree)
        root = "127.0.0.1:%d" % root_port
        wait_port(root_port, scaled(120), proc=tree)

        # poll times, in this process
        print("load: %s" % uptime(), flush=True)
        for mode in ("host", "summary"):
            times, up = collect_times(root, mode, args.polls)
            res["poll_%s" % mode] = {"median": statistics.median(times), "max": max(times),
                                     "up": up}
            print("poll %-7s %3d hosts: median %.3f s, worst %.3f s (%d up)"
                  % (mode, k, statistics.median(times), max(times), up), flush=True)

        # the monitor and gmetad over both sources
        xml_port, http_port = free_port(), free_port()
        mon = subprocess.Popen([sys.executable, "-m", "nine", "monitor", "-a", root,
                                "--interval", str(args.step), "--xml-listen",
                                "127.0.0.1:%d" % xml_port, "--http-listen",
                                "127.0.0.1:%d" % http_port],
                               env=env, stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(tmp, "monitor.log"), "wb"))
        procs.append(mon)
        wait_port(xml_port, scaled(60), proc=mon)
        wait_port(http_port, scaled(60), proc=mon)
        rrds = os.path.join(tmp, "rrds")
        os.mkdir(rrds)
        gxml = free_port()
        conf = os.path.join(tmp, "gmetad.conf")
        with open(conf, "w") as f:
            f.write('data_source "gmond" %d %s:%d\ndata_source "nine" %d 127.0.0.1:%d\n'
                    'gridname "bench"\nsetuid off\nxml_port %d\ninteractive_port %d\n'
                    'rrd_rootdir "%s"\n' % (args.step, collector, GMOND_PORT, args.step,
                                            xml_port, gxml, free_port(), rrds))
        gmetad = subprocess.Popen(["gmetad", "-d", "1", "-c", conf, "-p",
                                   os.path.join(tmp, "gmetad.pid")],
                                  stdout=open(os.path.join(tmp, "gmetad.log"), "wb"),
                                  stderr=subprocess.STDOUT)
        procs.append(gmetad)
        wait_port(gxml, scaled(60), proc=gmetad)
        # (after gmetad listens: Prometheus' connections take ephemeral ports)
        prom = None
        if args.prometheus:
            prom_port = free_port()
            pconf = os.path.join(tmp, "prometheus.yml")
            with open(pconf, "w") as f:
                f.write(prometheus_conf(args.step, "127.0.0.1:%d" % http_port,
                                        ["%s:%d" % (h.address, EXPORTER_PORT)
                                         for h in c.hosts]))
            prom = subprocess.Popen(
                ["prometheus", "--config.file", pconf, "--storage.tsdb.path",
                 os.path.join(tmp, "tsdb"), "--web.listen-address",
                 "127.0.0.1:%d" % prom_port, "--enable-feature=extra-scrape-metrics"],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "prometheus.log"), "wb"))
            procs.append(prom)
            prom_url = "http://127.0.0.1:%d" % prom_port
            wait_port(prom_port, scaled(60), proc=prom)

        def both_complete():
            x = read_all(("127.0.0.1", gxml))
            g, n = hosts_values(x, "gmond"), hosts_values(x, "nine")
            return (len(g) == k and len(n) == k and
                    all("part_max_used" in v and "cpu_num" in v for v in g.values()))
        wait_for(both_complete, scaled(240), "gmond's and nine's hosts in gmetad", interval=2)
        print("gmetad has both sources in %.1f s" % (time.monotonic() - t0), flush=True)
        if prom is not None:
            def scraped():
                try:
                    up = prom_series(prom_url, "up")
                    n = prom_series(prom_url, 'count(ganglia_load_one{job="nine"})')
                except (OSError, RuntimeError, ValueError):
                    return False
                return (len(up) == k + 1 and all(v == [1.0] for v in up.values())
                        and n.get("") == [float(k)])
            wait_for(scraped, scaled(120), "Prometheus scraping both jobs", interval=1)
            print("Prometheus scrapes both jobs in %.1f s" % (time.monotonic() - t0),
                  flush=True)

        # cost over a window
        leaf_pids = [p.pid for p in leaves.values()]
        send_pids = [p.pid for n, p in gmonds.items() if n != "node1"]
        coll_pid = [gmonds["node1"].pid]
        nine_top = [mon.pid, tree.pid] + [ch.pid for ch in psutil.Process(tree.pid).children()]
        exp_pids = [p.pid for p in exporters.values()]
        prom_pid = [prom.pid] if prom is not None else []
        groups = (leaf_pids, send_pids, coll_pid, nine_top, exp_pids, prom_pid)
        before = [cpu_seconds(x) for x in groups]
        w0 = time.monotonic()
        time.sleep(args.window)
        dt = time.monotonic() - w0
        after = [cpu_seconds(x) for x in groups]
        pct = [100.0 * (a - b) / dt for a, b in zip(after, before)]
        cost = {"nine_leaf_cpu_pct": pct[0] / len(leaf_pids),
                "gmond_sender_cpu_pct": pct[1] / max(len(send_pids), 1),
                "gmond_collector_cpu_pct": pct[2], "nine_root_and_monitor_cpu_pct": pct[3],
                "nine_leaf_rss_mb": statistics.median(rss(leaf_pids)) / 2**20,
                "gmond_sender_rss_mb": statistics.median(rss(send_pids) or [0]) / 2**20,
                "gmond_collector_rss_mb": rss(coll_pid)[0] / 2**20,
                "nine_root_and_monitor_rss_mb": sum(rss(nine_top)) / 2**20}
        res["cost"] = cost
        print("cost per host over %.0f s (every %g s): nine leaf %.2f%% CPU, %.1f MB; "
              "gmond %.2f%% CPU, %.1f MB; gmond collector %.2f%% CPU, %.1f MB; nine "
              "root+muxes+monitor %.2f%% CPU, %.1f MB"
              % (dt, args.step, cost["nine_leaf_cpu_pct"], cost["nine_leaf_rss_mb"],
                 cost["gmond_sender_cpu_pct"], cost["gmond_sender_rss_mb"],
                 cost["gmond_collector_cpu_pct"], cost["gmond_collector_rss_mb"],
                 cost["nine_root_and_monitor_cpu_pct"], cost["nine_root_and_monitor_rss_mb"]),
              flush=True)
        print("load: %s" % uptime(), flush=True)
        if prom is not None:
            prometheus_figures(k, res, prom_url, dt, pct, exp_pids, nine_top, http_port,
                               args.polls)

        # names and values
        names = {}
        for src in ("gmond", "nine"):
            names[src] = {h: set(os.listdir(os.path.join(rrds, src, h)))
                          for h in os.listdir(os.path.join(rrds, src))}
        only_g = set().union(*(names["gmond"].get(h, set()) - names["nine"].get(h, set())
                               for h in names["gmond"]))
        only_n = set().union(*(names["nine"].get(h, set()) - names["gmond"].get(h, set())
                               for h in names["nine"]))
        same_hosts = sorted(names["gmond"]) == sorted(names["nine"])
        res["names"] = {"same_hosts": same_hosts, "only_gmond": sorted(only_g),
                        "only_nine": sorted(only_n),
                        "per_host": len(names["nine"].get("node1", ()))}
        print("RRD names: hosts %s; %d files per host; only gmond's: %s; only nine's: %s"
              % ("the same" if same_hosts else "DIFFER: %s vs %s" % (
                  sorted(names["gmond"])[:5], sorted(names["nine"])[:5]),
                 res["names"]["per_host"], sorted(only_g) or "none", sorted(only_n) or "none"),
              flush=True)
        x = read_all(("127.0.0.1", gxml))
        g, n = hosts_values(x, "gmond"), hosts_values(x, "nine")
        within, total, off = 0, 0, {}
        static = [0, 0]
        for h in sorted(set(g) & set(n)):
            for m, gv in g[h].items():
                if m not in n[h]:
                    continue
                try:
                    a, b = float(gv), float(n[h][m])
                except ValueError:
                    ok = gv == n[h][m]
                else:
                    ok = abs(a - b) <= 0.05 * max(abs(a), abs(b)) or abs(a - b) < 1e-9
                if m not in WINDOWED:
                    total += 1
                    within += ok
                if m in STATIC:
                    static[0] += 1
                    static[1] += ok
                if not ok:
                    off.setdefault(m, []).append((h, gv, n[h][m]))
        res["values"] = {"within_5pct": within, "compared": total, "static": static,
                         "off": {m: v[:3] for m, v in off.items()}}
        print("values: static %d of %d within 5%%; level metrics %d of %d within 5%% of "
              "gmond's (gmond samples them at other times); off (any metric): %s"
              % (static[1], static[0], within, total, ", ".join("%s (%d hosts, e.g. %s: gmond %s, nine %s)"
                                          % ((m, len(v)) + v[0]) for m, v in sorted(off.items()))
                 or "none"), flush=True)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(scaled(20))
            except subprocess.TimeoutExpired:
                p.kill()
    out.append(res)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="8,64", help="numbers of hosts (default 8,64)")
    p.add_argument("--window", type=float, default=60.0, help="seconds of the cost window")
    p.add_argument("--polls", type=int, default=10, help="collections timed per mode")
    p.add_argument("--step", type=int, default=5, help="seconds between collections and "
                   "gmetad's polls (default 5)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--no-prometheus", dest="prometheus", action="store_false",
                   help="without node_exporters and Prometheus")
    args = p.parse_args()
    need("gmond", "gmetad", "rrdtool", *(("prometheus", EXPORTER) if args.prometheus else ()))
    out = []
    keydir = None
    if not os.environ.get("NINE_KEY"):     # the servers' and this client's shared key
        from nine.auth.key import make_key
        keydir = tempfile.mkdtemp(prefix="nine-monitor-bench-key-")
        os.environ["NINE_KEY"] = os.path.join(keydir, "key")
        make_key(os.environ["NINE_KEY"])
    try:
        for k in (int(x) for x in args.sizes.split(",")):
            print("== %d hosts" % k, flush=True)
            run(k, args, out)
    finally:
        if keydir:
            shutil.rmtree(keydir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
