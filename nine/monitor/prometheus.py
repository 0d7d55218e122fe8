"""Prometheus' text exposition format (version 0.0.4) of a Snapshot.

Families (every one a gauge):

  ganglia_METRIC{cluster, instance}   each numeric gmond metric of each host that
                                      answered the latest collection (host mode); a
                                      host that did not has no sample, so Prometheus
                                      marks its series stale at once
  ganglia_host_info{cluster, instance, os_name, os_release, machine_type}  1
  ganglia_cluster_sum{cluster, metric}  the metric summed over the hosts that answered
  ganglia_cluster_num{cluster, metric}  how many hosts that is
  nine_monitor_host_up{cluster, instance}       1 answered the latest collection, else 0
  nine_monitor_host_age_seconds{cluster, instance}  seconds since it last answered
  nine_monitor_hosts{cluster, state}    hosts up and down
  nine_monitor_poll_seconds{cluster}    how long the latest collection took

The `instance` label names the host, not the monitor: scrape with ``honor_labels:
true`` so that Prometheus keeps it (else it is renamed exported_instance).
"""

from .collect import metric_info

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v):
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kw):
    return "{" + ",".join('%s="%s"' % (k, _esc(v)) for k, v in kw.items()) + "}"


def _help(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _num(text):
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if x == x else None


def render(snap):
    """The exposition text of Snapshot snap (bytes)."""
    c = snap.cluster
    fam = {}                  # family -> [(labels, value)]
    info = []
    for name, reported, answered, values, _error in snap.hosts:
        if not answered or snap.mode != "host":
            continue
        for key, val in values.items():
            m = metric_info(key, snap.units.get(key, ""))
            if m.type == "string":
                continue
            x = _num(val)
            if x is not None:
                fam.setdefault(key, []).append((_labels(cluster=c, instance=name), x))
        info.append((_labels(cluster=c, instance=name, os_name=values.get("os_name", ""),
                             os_release=values.get("os_release", ""),
                             machine_type=values.get("machine_type", "")), 1))
    out = []

    def family(name, helptext, samples):
        out.append("# HELP %s %s\n# TYPE %s gauge\n" % (name, _help(helptext), name))
        out.extend("%s%s %s\n" % (name, lab, repr(float(v))) for lab, v in samples)

    for key in sorted(fam):
        m = metric_info(key)
        unit = (" (%s)" % m.units) if m.units else ""
        family("ganglia_" + key, m.desc + unit, fam[key])
    if info:
        family("ganglia_host_info", "The host's os_name, os_release and machine_type", info)
    sums = sorted(snap.summary.items())
    family("ganglia_cluster_sum", "A gmond metric summed over the hosts that answered",
           [(_labels(cluster=c, metric=k), s) for k, (s, _n) in sums])
    family("ganglia_cluster_num", "How many hosts reported the metric",
           [(_labels(cluster=c, metric=k), n) for k, (_s, n) in sums])
    family("nine_monitor_host_up", "1 when the host answered the latest collection",
           [(_labels(cluster=c, instance=h[0]), 1 if h[2] else 0) for h in snap.hosts])
    family("nine_monitor_host_age_seconds", "Seconds since the host last answered",
           [(_labels(cluster=c, instance=h[0]), snap.time - h[1])
            for h in snap.hosts if h[1] is not None])
    family("nine_monitor_hosts", "Hosts that answered the latest collection (up) or not",
           [(_labels(cluster=c, state="up"), snap.up),
            (_labels(cluster=c, state="down"), snap.down)])
    family("nine_monitor_poll_seconds", "How long the latest collection took",
           [(_labels(cluster=c), snap.poll_seconds or 0.0)])
    return "".join(out).encode("utf-8")
