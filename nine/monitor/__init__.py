"""nine monitor: cluster monitoring over a nine tree (docs/monitor.md).

Every leaf serves Ganglia gmond's metrics as one file (nine.synth.metrics, at
/host/metrics/NODE in the root's name space).  `nine monitor` runs beside the root (or
any mux), reads them all with one group read every few seconds, and serves what it
got, from a snapshot made after each collection:

  collect.py     the group reads, each host's last values and age (Collector, Snapshot)
  gmond_xml.py   gmond's XML (per host, or the cluster summary) for gmetad
  prometheus.py  Prometheus' text exposition format
  history.py     round-robin archives of every metric (whisper files)
  svg.py         graphs of the archives, drawn as SVG
  web.py         the HTTP side: /metrics, the graph pages, the XML
  tcp.py         the listeners: per-client deadlines, a bound on clients
  main.py        the `nine monitor` command
"""
