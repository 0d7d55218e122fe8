"""gmond's XML (Ganglia 3.7) of a Snapshot, as gmond writes it on its TCP port.

Per host (render_hosts): GANGLIA_XML / CLUSTER / HOST / METRIC with EXTRA_DATA (GROUP,
DESC, TITLE), as gmond 3.7.2 writes them.  A HOST's REPORTED is when it last answered
and TN the seconds since; a host that did not answer keeps its last values (their TN
grows with the host's) so that gmetad marks it down once TN reaches 4 TMAX, as it does
a silent gmond host.  HOST TMAX is the monitor's collection interval.

Summary (render_summary): GANGLIA_XML / CLUSTER / HOSTS (UP, DOWN) and one METRICS
(SUM, NUM) per numeric metric: what gmetad keeps of a cluster it summarizes.

The document begins with gmond's own DOCTYPE (its DTD, gmond/dtd.h in Ganglia's
monitor-core), so a validating parser checks it against Ganglia's DTD.
"""

from xml.sax.saxutils import quoteattr

from .collect import metric_info

VERSION = "3.7.2"       # the gmond whose XML this is (gmetad reads 2.5 and later alike)

#: gmond/dtd.h of Ganglia's monitor-core, verbatim
DTD = """<?xml version="1.0" encoding="ISO-8859-1" standalone="yes"?>
<!DOCTYPE GANGLIA_XML [
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
]>
"""


def _a(text):
    return quoteattr(str(text))


def _units(m):
    """UNITS as gmond writes them: a blank for a number without units."""
    return m.units or ("" if m.type == "string" else " ")


def _extra(m):
    return ("<EXTRA_DATA>\n<EXTRA_ELEMENT NAME=\"GROUP\" VAL=%s/>\n"
            "<EXTRA_ELEMENT NAME=\"DESC\" VAL=%s/>\n"
            "<EXTRA_ELEMENT NAME=\"TITLE\" VAL=%s/>\n</EXTRA_DATA>\n"
            % (_a(m.group), _a(m.desc), _a(m.title)))


def _head(snap, now):
    return [DTD, "<GANGLIA_XML VERSION=\"%s\" SOURCE=\"gmond\">\n" % VERSION,
            "<CLUSTER NAME=%s LOCALTIME=\"%d\" OWNER=\"unspecified\" "
            "LATLONG=\"unspecified\" URL=\"unspecified\">\n"
            % (_a(snap.cluster), int(now))]


def _encode(parts):
    return "".join(parts).encode("iso-8859-1", "xmlcharrefreplace")


def render_hosts(snap, now, ips=None, dmax=0):
    """The per-host XML of Snapshot snap at time `now` (LOCALTIME, and the TNs: gmetad
    stamps its RRD updates with LOCALTIME) as bytes; ips: {host: address}."""
    ips = ips or {}
    out = _head(snap, now)
    started = int(snap.started)
    for name, reported, _answered, values, _error in snap.hosts:
        if reported is None:
            continue            # never answered: nothing to say about it yet
        tn = max(int(now - reported), 0)
        out.append("<HOST NAME=%s IP=%s TAGS=\"\" REPORTED=\"%d\" TN=\"%d\" TMAX=\"%d\" "
                   "DMAX=\"%d\" LOCATION=\"unspecified\" GMOND_STARTED=\"%d\">\n"
                   % (_a(name), _a(ips.get(name, "")), int(reported), tn, snap.tmax,
                      dmax, started))
        for key, val in values.items():
            m = metric_info(key, snap.units.get(key, ""))
            out.append("<METRIC NAME=%s VAL=%s TYPE=\"%s\" UNITS=%s TN=\"%d\" TMAX=\"%d\" "
                       "DMAX=\"%d\" SLOPE=\"%s\">\n"
                       % (_a(key), _a(val), m.type, _a(_units(m)), tn, m.tmax, m.dmax,
                      m.slope))
            out.append(_extra(m))
            out.append("</METRIC>\n")
        out.append("</HOST>\n")
    out.append("</CLUSTER>\n</GANGLIA_XML>\n")
    return _encode(out)


def _sum_text(x):
    return ("%d" % x) if float(x).is_integer() and abs(x) < 1e15 else ("%f" % x)


def render_summary(snap, now):
    """The summary XML of Snapshot snap at time `now` (bytes): hosts up and down, and
    per numeric metric its sum and the number of hosts that reported it."""
    out = _head(snap, now)
    out.append("<HOSTS UP=\"%d\" DOWN=\"%d\" SOURCE=\"gmond\"/>\n" % (snap.up, snap.down))
    for key in sorted(snap.summary):
        s, n = snap.summary[key]
        m = metric_info(key, snap.units.get(key, ""))
        if m.type == "string":
            continue
        out.append("<METRICS NAME=%s SUM=\"%s\" NUM=\"%d\" TYPE=\"%s\" UNITS=%s "
                   "SLOPE=\"%s\" SOURCE=\"gmond\">\n"
                   % (_a(key), _sum_text(s), n, m.type, _a(_units(m)), m.slope))
        out.append(_extra(m))
        out.append("</METRICS>\n")
    out.append("</CLUSTER>\n</GANGLIA_XML>\n")
    return _encode(out)
