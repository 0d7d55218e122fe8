"""The `nine monitor` command (also the script nine-monitor): collect the tree's host
metrics every few seconds and serve them to gmetad, Prometheus and a browser.

    nine monitor -a ROOT [--interval 15] [--mode host|summary] [--history DIR]
                 [--xml-listen :8649] [--http-listen :8650] [--once]
"""

import argparse
import logging
import math
import sys
import time

log = logging.getLogger("nine.monitor")

XML_PORT = 8649          # gmond's
HTTP_PORT = 8650


def make_parser(prog="nine monitor"):
    from ..cli.common import _add_client_opts
    p = argparse.ArgumentParser(
        prog=prog, description="Cluster monitoring over a nine tree: every host's "
        "Ganglia gmond metrics (/host/metrics/NODE of the root) collected with one group "
        "read, served as gmond's XML (for gmetad), in Prometheus' format and as graphs "
        "(docs/monitor.md).")
    _add_client_opts(p)
    p.add_argument("--interval", type=float, default=15.0, metavar="S",
                   help="seconds between collections (default 15, as gmetad polls)")
    p.add_argument("--timeout", type=float, metavar="S", help="a host that has not "
                   "answered a collection after S seconds is left out of it (default: "
                   "0.8 of the interval, at most 10)")
    p.add_argument("--mode", choices=["host", "summary"], default="host",
                   help="host: every host's metrics (gmond's XML per host); summary: "
                   "only the cluster's sums, added up inside the tree (gmond's XML with "
                   "HOSTS and METRICS: the root's work does not grow with the hosts)")
    p.add_argument("--cluster", default="nine", help="the cluster's name (default nine)")
    p.add_argument("--path", default="/host/metrics", help="the directory of the hosts' "
                   "metrics files in the root's name space (default /host/metrics)")
    p.add_argument("--rescan", type=float, default=60.0, metavar="S", help="list the "
                   "hosts again every S seconds (default 60)")
    p.add_argument("--host-tmax", type=int, metavar="S", help="gmond's HOST TMAX: gmetad "
                   "marks a host down once it has not answered for 4 TMAX (default: the "
                   "interval)")
    p.add_argument("--host-dmax", type=int, default=0, metavar="S", help="gmond's HOST "
                   "DMAX (default 0: never forget a host)")
    p.add_argument("--xml-listen", default=":%d" % XML_PORT, metavar="ADDR",
                   help="gmond's XML port (default :%d; 'off': none)" % XML_PORT)
    p.add_argument("--http-listen", default=":%d" % HTTP_PORT, metavar="ADDR",
                   help="/metrics and the graphs (default :%d; 'off': none)" % HTTP_PORT)
    p.add_argument("--history", metavar="DIR", help="keep round-robin archives of every "
                   "metric here (whisper files) and draw graphs of them")
    p.add_argument("--client-timeout", type=float, default=10.0, metavar="S",
                   help="a client of the XML or HTTP port is cut off S seconds after it "
                   "connected (default 10)")
    p.add_argument("--max-clients", type=int, default=64, metavar="N",
                   help="clients served at once on each port (default 64)")
    p.add_argument("--once", action="store_true", help="collect once, print the XML "
                   "(the summary's in summary mode) and the collection's time, and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def _connector(opts):
    def connect():
        from ..client import Client
        tls = None
        if opts.tls_cert or opts.tls_key or opts.tls_ca:
            from ..auth.tls import from_files
            tls = from_files(opts.tls_cert, opts.tls_key, opts.tls_ca, server_side=False)
        return Client(opts.addr, aname=opts.aname, version=opts.version, uname=opts.uname,
                      msize=opts.msize, tls=tls)
    return connect


class Monitor:
    """The collection loop and what it publishes (see nine.monitor)."""

    def __init__(self, collector, history=None, interval=15.0, dmax=0):
        self.collector = collector
        self.history = history
        self.interval = interval
        self.dmax = dmax
        self.ips = {}
        self.published = self._publish(collector.snapshot)

    def _publish(self, snap):
        from . import prometheus
        from .web import Published
        return Published(snap, prometheus.render(snap), self.ips, self.dmax)

    def current(self):
        return self.published

    def poll(self):
        import gevent
        snap = self.collector.poll()
        self._resolve([h[0] for h in snap.hosts if h[0] not in self.ips])
        self.published = self._publish(snap)
        if self.history is not None:
            try:        # (file writes: in a thread, so the servers go on meanwhile)
                gevent.get_hub().threadpool.apply(self.history.record, (snap,))
            except Exception as e:      # a full disk: the monitor goes on without
                log.warning("nine monitor: history: %s", e)
        return snap

    def _resolve(self, names):
        """Look up the hosts' addresses in the background (gmond's HOST IP); a name
        that does not resolve gets an empty IP."""
        import gevent
        import gevent.socket

        def look(name):
            try:
                self.ips[name] = gevent.socket.gethostbyname(name)
            except OSError:
                self.ips[name] = ""
        for n in names:
            self.ips.setdefault(n, "")
            gevent.spawn(look, n)

    def run(self):
        import gevent
        while True:
            t0 = time.monotonic()
            try:
                snap = self.poll()
                log.info("nine monitor: %d up, %d down in %.3f s", snap.up, snap.down,
                         snap.poll_seconds)
            except Exception:       # a bug must not stop the monitoring: said, retried
                log.exception("nine monitor: collection failed")
            gevent.sleep(max(self.interval - (time.monotonic() - t0), 0.05))


def main(argv=None, prog="nine monitor"):
    opts = make_parser(prog).parse_args(argv)
    if opts.interval <= 0:
        sys.stderr.write("%s: --interval must be > 0\n" % prog)
        return 2
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO if opts.verbose else logging.WARNING)
    from .collect import Collector
    timeout = opts.timeout or min(max(0.8 * opts.interval, 0.2), 10.0)
    tmax = opts.host_tmax or max(int(math.ceil(opts.interval)), 1)
    history = None
    if opts.history and not opts.once:
        from .history import History, available
        why = available()
        if why:
            sys.stderr.write("%s: --history: %s\n" % (prog, why))
            return 2
        history = History(opts.history, opts.interval)
    collector = Collector(_connector(opts), cluster=opts.cluster, mode=opts.mode,
                          path=opts.path, timeout=timeout, rescan=opts.rescan, tmax=tmax)
    mon = Monitor(collector, history, opts.interval, opts.host_dmax)
    if opts.once:
        snap = mon.poll()
        sys.stdout.buffer.write(mon.current().xml(opts.mode == "summary"))
        sys.stdout.flush()
        sys.stderr.write("%s: %d hosts up, %d down, collected in %.3f s\n"
                         % (prog, snap.up, snap.down, snap.poll_seconds))
        collector.close()
        return 0 if snap.up else 1
    return _serve(opts, prog, mon)


def _serve(opts, prog, mon):
    import gevent
    from ..cli.common import _serve_forever
    from .tcp import Listener, listen_addr
    from .web import Web
    def xml(sock, _address):
        pub = mon.current()
        sock.sendall(pub.xml(pub.snap.mode == "summary"))
    listeners = []          # (what, Listener)
    try:
        for what, where, port, handle in (
                ("XML", opts.xml_listen, XML_PORT, xml),
                ("HTTP", opts.http_listen, HTTP_PORT, Web(mon.current, mon.history).handle)):
            if where != "off":
                listeners.append((what, Listener(listen_addr(where, port), handle,
                                                 opts.client_timeout, opts.max_clients,
                                                 what + " client").start()))
    except (OSError, ValueError) as e:
        for _, lst in listeners:
            lst.stop()
        sys.stderr.write("%s: cannot listen: %s\n" % (prog, e))
        return 1
    loop = gevent.spawn(mon.run)
    names = ", ".join("%s on %s:%d" % ((what,) + lst.address[:2]) for what, lst in listeners)
    try:
        _serve_forever("%s: %s, every %g s from %s (%s mode)\n"
                       % (prog, names or "no ports", opts.interval, opts.addr, opts.mode))
    finally:
        loop.kill()
        for _, lst in listeners:
            lst.stop()
        mon.collector.close()
    return 0


def verb(args):
    """The `nine monitor` verb (its arguments parsed here, not by nine.cli)."""
    return main(args.argv)
