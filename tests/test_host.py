"""nine.synth.host: /proc copies and parseable host files, over real sockets."""

import os
import time

import pytest

import nine.protocol as P
from conftest import ThreadServer
from test_exec import Client, _readdir_names

SYNTH = ["hostname", "load", "cpu", "mem", "net", "disk", "uptime", "users", "procs"]


@pytest.fixture(scope="module")
def hsrv():
    def make():
        from nine.synth.files import SynthFS
        from nine.synth.host import host_tree
        return {None: SynthFS(host_tree()).attach}
    s = ThreadServer(make)
    yield s
    s.stop()


@pytest.fixture
def c(hsrv):
    cl = Client(hsrv.port)
    yield cl
    cl.close()


def parse(text):
    """key -> list of values; every line `KEY VALUE...`, keys unique."""
    out = {}
    for line in text.splitlines():
        parts = line.split(" ")
        assert len(parts) >= 2 and all(parts), "bad line %r" % line
        assert parts[0] not in out, "duplicate key %r" % parts[0]
        out[parts[0]] = parts[1:]
    return out


def numbers(text):
    d = parse(text)
    for k, v in d.items():
        for x in v:
            float(x)    # raises on anything that is not a number
    return {k: float(v[0]) for k, v in d.items()}


def test_listing(c):
    names = _readdir_names(c)
    assert set(SYNTH) | {"proc"} <= set(names)
    proc = _readdir_names(c, "proc")
    for n in ("cpuinfo", "meminfo", "loadavg", "uptime", "stat", "mounts", "version",
              "diskstats", "net"):
        assert n in proc
    assert "dev" in _readdir_names(c, "proc/net")


def test_proc_copies_match(c):
    for name in ("cpuinfo", "meminfo", "version", "mounts", "net/dev"):
        with open("/proc/" + name, "rb") as f:
            first = f.readline()
        got = c.cat("proc/" + name)
        assert got.split(b"\n", 1)[0] + b"\n" == first, name
    # a snapshot per open: reading in small pieces gives one consistent text
    fid = c.open("proc/stat")
    parts, off = [], 0
    while True:
        d = c.read(fid, off, 100)
        if not d:
            break
        parts.append(d)
        off += len(d)
    c.clunk(fid)
    text = b"".join(parts).decode()
    assert text.startswith("cpu ") and "procs_running" in text


def test_synthetic_files_parse(c):
    for name in SYNTH:
        text = c.cat(name).decode()
        assert text.endswith("\n"), name
        if name == "hostname":
            d = parse(text)
            assert list(d) == ["hostname"] and len(d["hostname"]) == 1
            continue
        numbers(text)


def test_values_make_sense(c):
    ld = numbers(c.cat("load").decode())
    assert set(ld) == {"load1", "load5", "load15"}
    assert abs(ld["load15"] - os.getloadavg()[2]) < 1.0

    mem = numbers(c.cat("mem").decode())
    with open("/proc/meminfo") as f:
        memtotal = int(f.readline().split()[1]) * 1024
    assert mem["total"] == memtotal
    assert 0 < mem["available"] <= mem["total"] and mem["free"] <= mem["total"]

    cpu = numbers(c.cat("cpu").decode())
    n = int(cpu["ncpu"])
    assert n == os.cpu_count()
    assert all("cpu%d" % i in cpu for i in range(n)) and "cpu%d" % n not in cpu
    assert all(0.0 <= cpu[k] <= 100.0 for k in cpu if k.startswith("cpu") or k == "total")
    assert 0.2 <= cpu["interval"] <= 10.5
    # a second read soon after measures since the first one, without waiting
    time.sleep(0.25)
    t0 = time.time()
    cpu2 = numbers(c.cat("cpu").decode())
    assert time.time() - t0 < 0.2 and cpu2["interval"] < 1.0

    up = numbers(c.cat("uptime").decode())
    with open("/proc/uptime") as f:
        real = float(f.read().split()[0])
    assert abs(up["uptime"] - real) < 5 and up["boot_time"] > 1e9

    procs = numbers(c.cat("procs").decode())
    assert procs["count"] >= 1 and procs["threads"] >= procs["count"] * 0.5

    net = numbers(c.cat("net").decode())
    assert "lo.rx_bytes" in net or not os.path.exists("/sys/class/net/lo")
    for k in net:
        assert k.rsplit(".", 1)[1] in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets",
                                      "rx_errs", "tx_errs", "rx_drop", "tx_drop")

    disk = numbers(c.cat("disk").decode())
    assert disk["/.total"] > 0 and 0 <= disk["/.percent"] <= 100

    users = numbers(c.cat("users").decode())
    assert users["count"] >= users["unique"] >= 0


def _qid_version(c, path):
    fid = c.walk(path)
    try:
        return c.rpc(P.Tgetattr(fid=fid, request_mask=0x7FF, tag=0)).qid[1]
    finally:
        c.clunk(fid)


def test_qid_version_moves_with_content(c):
    c.cat("uptime")
    v0 = _qid_version(c, "uptime")
    time.sleep(0.05)
    c.cat("uptime")                 # /proc/uptime moves every 10 ms: new content
    assert _qid_version(c, "uptime") != v0
    c.cat("hostname")
    h0 = _qid_version(c, "hostname")
    c.cat("hostname")
    assert _qid_version(c, "hostname") == h0
