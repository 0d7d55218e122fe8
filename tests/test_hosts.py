"""interop.hosts: hosts as network namespaces on this machine, each with its own
host name, files, /etc/hosts and sshd, reached through ssh; crashing and booting a
host; stop() and clean_stale() leave nothing behind.  Needs root."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from interop import hosts as H
from nine.netwait import load_factor, scaled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REASON = H.available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"interop.hosts: {REASON}")

#: a process in a host that outlives the ssh session which started it
DETACHED_SLEEP = "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"


@pytest.fixture(scope="module")
def cluster():
    with H.Cluster(4) as c:
        yield c


def alive(pids):
    """Those of pids that are processes (not zombies) now."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    out.append(pid)
        except OSError:
            pass
    return out


def output(*argv):
    return subprocess.run(argv, capture_output=True, text=True).stdout


def leftovers(cid, directory):
    """What of cluster cid (its directory: directory) is still on this machine."""
    found = [ns for ns in output("ip", "netns", "list").split()
             if ns == f"nine-{cid}" or ns.startswith(f"nine-{cid}-")]
    found += [line for line in output("ip", "-o", "link").splitlines() if f"n9-{cid}" in line]
    with open("/proc/mounts") as f:
        found += [m for m in f if f"nine-{cid}" in m or str(directory) in m]
    found += output("pgrep", "-f", str(directory)).split()
    found += [str(p) for p in (Path(directory), H.REGISTRY / f"{cid}.json") if p.exists()]
    return found


def test_each_host_has_its_name(cluster):
    names = [cluster.ssh(h, "hostname", check=True).stdout for h in cluster.hosts]
    assert names == [f"node{i}\n" for i in range(1, 5)]
    assert os.uname().nodename + "\n" not in names


def test_each_host_has_its_files(cluster):
    for h in cluster.hosts:
        (h.dir / "who").write_text(h.name + "\n")
    for h in cluster.hosts:
        assert cluster.ssh(h, "cat /srv/who", check=True).stdout == h.name + "\n"
    cluster.ssh("node2", "echo made here > /srv/made", check=True)
    assert (cluster.host("node2").dir / "made").read_text() == "made here\n"
    assert cluster.ssh("node1", "test -e /srv/made").returncode == 1


def test_hosts_reach_each_other_by_name(cluster):
    got = cluster.ssh("node1", "getent hosts node2", check=True).stdout.split()
    assert got == [cluster.host("node2").address, "node2"]
    banner = cluster.ssh("node1", "exec 3<>/dev/tcp/node3/22 && head -c 4 <&3", check=True).stdout
    assert banner == "SSH-"


def test_run_in_starts_a_process_in_the_host(cluster):
    h = cluster.host("node3")
    (h.dir / "run-in").write_text("mine\n")
    p = cluster.run_in(h, ["sh", "-c", "hostname; cat run-in; ip -4 -o addr show eth0"], cwd="/srv",
                       stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=30)
    name, mine, addr = out.splitlines()
    assert (name, mine) == ("node3", "mine")
    assert f" {h.address}/16 " in addr


def test_kill_host_ends_its_processes_and_boot_host_restarts_it(cluster):
    h = cluster.host("node4")
    detached = int(cluster.ssh(h, DETACHED_SLEEP, check=True).stdout)
    direct = cluster.run_in(h, ["sleep", "1000"])
    started = [detached, direct.pid, h.holder.pid, h.sshd.pid]
    assert set(started) <= set(cluster.pids(h))
    cluster.kill_host(h)
    assert alive(started) == []
    assert cluster.pids(h) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((h.address, 22), timeout=5).close()
    assert cluster.ssh(h, "true").returncode == 255
    assert cluster.ssh("node3", "hostname", check=True).stdout == "node3\n"

    (h.dir / "kept").write_text("kept\n")
    cluster.boot_host(h)
    assert cluster.ssh(h, "hostname; cat /srv/kept", check=True).stdout == "node4\nkept\n"


def test_unplugged_host_is_silent(cluster):
    h = cluster.host("node2")
    cluster.kill_host(h, unplug=True)
    with pytest.raises(TimeoutError):
        socket.create_connection((h.address, 22), timeout=1).close()
    cluster.boot_host(h)
    assert cluster.ssh(h, "hostname", check=True).stdout == "node2\n"


def test_a_subnet_in_use_is_refused(cluster):
    c = H.Cluster(1, base=str(cluster.subnet))
    with pytest.raises(H.HostsError, match="overlaps"):
        c.start()
    assert leftovers(c.cid, c.dir) == []


#: a TCP sink: prints "ready" once it listens on $1, reads to the end, answers "ok"
SINK = """
import socket, sys
s = socket.create_server((sys.argv[1], 5001))
print("ready", flush=True)
c, _ = s.accept()
while c.recv(1 << 20):
    pass
c.sendall(b"ok")
"""
#: a TCP source: sends $2 bytes to $1, waits for the answer, prints the seconds taken
SOURCE = """
import socket, sys, time
t = time.perf_counter()
c = socket.create_connection((sys.argv[1], 5001))
block, left = bytes(1 << 20), int(sys.argv[2])
while left > 0:
    left -= c.send(block[:left])
c.shutdown(socket.SHUT_WR)
assert c.recv(2) == b"ok"
print(time.perf_counter() - t)
"""
#: what a shaped-link test sends, and the rate it shapes to (5 MB/s: about 1.7 s)
SENT, RATE = 8 << 20, "40mbit"


def transfer_seconds(c, sender, receiver):
    """Seconds to send SENT bytes from sender to receiver (hosts of cluster c, or None:
    this machine, the head) over TCP."""
    address = c.head_address if receiver is None else c.host(receiver).address
    argv = [sys.executable, "-c", SINK, address]
    sink = (subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) if receiver is None
            else c.run_in(receiver, argv, stdout=subprocess.PIPE, text=True))
    try:
        assert sink.stdout.readline() == "ready\n"
        argv = [sys.executable, "-c", SOURCE, address, str(SENT)]
        source = (subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) if sender is None
                  else c.run_in(sender, argv, stdout=subprocess.PIPE, text=True))
        out, _ = source.communicate(timeout=scaled(60))
        assert source.returncode == 0
        assert sink.wait(timeout=scaled(10)) == 0
        return float(out)
    finally:
        sink.kill()
        sink.wait()


def qdiscs(c):
    """{(namespace or "", device): qdisc kind} of every link of cluster c."""
    out = {}
    for ns, devs in [("", [c._res.head]), (c.switch, ["head"] + [f"h{h.index}" for h in c.hosts])] + [
            (h.ns, ["eth0"]) for h in c.hosts]:
        for dev in devs:
            got = json.loads(output("tc", *(["-n", ns] if ns else []), "-j", "qdisc", "show",
                                    "dev", dev))
            out[(ns, dev)] = [q["kind"] for q in got if q.get("root")]
    return out


def test_a_shaped_link_limits_throughput_both_ways(cluster):
    """Every link of Cluster(rate=...) holds a tbf on both ends; a stream between two
    hosts, from the head to a host and back, runs at about the rate (TCP gets ~95% of
    it on the wire), against far faster on the unshaped cluster."""
    fast = transfer_seconds(cluster, "node1", "node2")
    assert all(kinds != ["tbf"] for kinds in qdiscs(cluster).values())
    expected = SENT * 8 / H.parse_rate(RATE)
    with H.Cluster(2, rate=RATE) as shaped:
        assert set(map(tuple, qdiscs(shaped).values())) == {("tbf",)}
        assert len(qdiscs(shaped)) == 2 + 2 * 2
        for sender, receiver in [("node1", "node2"), (None, "node1"), ("node2", None)]:
            took = transfer_seconds(shaped, sender, receiver)
            assert took >= 0.85 * expected, (sender, receiver, took, expected)
            assert took <= expected * 3 * load_factor(), (sender, receiver, took, expected)
            assert took > 2 * fast, (sender, receiver, took, fast)


def test_arguments():
    with pytest.raises(NotImplementedError, match="netem"):
        H.Cluster(2, delay_ms=1)
    for bad in ("fast", "200", "200 mbit", "1bit", "-5mbit"):
        with pytest.raises(ValueError, match="rate"):
            H.Cluster(2, rate=bad)
    assert H.parse_rate("200mbit") == 200e6 and H.parse_rate("12.5MBps") == 100e6
    assert H.tbf_args(200e6) == "rate 200000000bit burst 125000 latency 50ms"
    # a 64 KiB GSO segment (and its headers) fits the burst at any rate: never split
    assert H.tbf_args(10e6) == "rate 10000000bit burst 69632 latency 50ms"
    with pytest.raises(ValueError):
        H.Cluster(names=["a", "a"])
    with pytest.raises(ValueError):
        H.Cluster(names=["bad name"])


def test_stop_leaves_nothing():
    names = ["rack1-a-7", "rack2-b-3"]
    c = H.Cluster(names=names).start()
    directory = c.dir
    assert [c.ssh(n, "hostname", check=True).stdout for n in names] == ["rack1-a-7\n", "rack2-b-3\n"]
    detached = int(c.ssh(names[0], DETACHED_SLEEP, check=True).stdout)
    pids = c.pids()
    assert detached in pids and len(pids) >= 5
    c.stop()
    assert alive(pids) == []
    assert leftovers(c.cid, directory) == []
    c.stop()


def test_clean_stale_removes_the_hosts_of_a_killed_run():
    code = ("import sys; from interop import hosts as H; c = H.Cluster(2).start(); "
            "print(c.cid, c.dir, flush=True); sys.stdin.read()")
    owner = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    cid, directory = owner.stdout.readline().split()
    owner.kill()
    owner.wait()
    assert leftovers(cid, directory)
    assert cid in H.clean_stale()
    assert leftovers(cid, directory) == []
