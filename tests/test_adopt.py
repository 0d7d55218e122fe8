"""Losing a mux is not losing a subtree (nine.launch.watch, mux/ctl `retarget`): the
watch of `nine tree --hosts` starts a lost mux again on another host and points its
parent at it; the name space is whole again, open groups heal, the parent's status says
what happened, and `nine tree down` stops the replacement too.  A lost leaf stays named,
down, until its host returns, when the watch starts it again.  The tree tests run on
namespace hosts (interop.hosts) and skip where those cannot be made."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import ENV_ROOT, NineProc, free_port
from nine.client import Client
from nine.launch.watch import parse_status
from nine.netwait import scaled, wait_port
from test_launch_ssh import nine, read_until, tree_args


# -- the mux's ctl file --------------------------------------------------------------


def test_a_child_whose_address_comes_later(tmp_path):
    """`nine mux --child a` (no address: how nine.launch.ssh starts a mux in the same
    ssh round as its children): until its first `retarget`, the child is down and
    says why, and a request to it fails at once with EHOSTDOWN; then it is served,
    and its status line records no move."""
    import errno
    d = tmp_path / "a"
    d.mkdir()
    (d / "which").write_text("a\n")
    leaf = NineProc(["--export", str(d)], free_port())
    port = free_port()
    mux = subprocess.Popen([sys.executable, "-m", "nine", "mux", "-q", "--listen",
                            "127.0.0.1:%d" % port, "--child", "a"], env=ENV_ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc=mux)
        addr = "127.0.0.1:%d" % port
        with Client(addr) as c, Client(addr, aname="mux") as ctl:
            status = ctl.read_file("status").decode()
            view = parse_status(status)["a"]
            assert (view.addr, view.state) == ("-", "down")
            assert "no address yet" in status
            t0 = time.monotonic()
            with pytest.raises(OSError) as ei:
                c.read_file("/a/which")
            assert ei.value.errno == errno.EHOSTDOWN       # (.L carries no text)
            assert time.monotonic() - t0 < scaled(2)       # no connect attempt
            ctl.write_file("ctl", b"retarget a %s\n" % leaf.addr.encode())
            assert c.read_file("/a/which") == b"a\n"
            status = ctl.read_file("status").decode()
            assert (parse_status(status)["a"].addr, parse_status(status)["a"].state) == (
                leaf.addr, "up")
            assert "retargeted" not in status and "no address" not in status
    finally:
        mux.terminate()
        mux.wait(scaled(10))
        leaf.stop()
    r = subprocess.run([sys.executable, "-m", "nine", "mux", "--child", "a="], env=ENV_ROOT,
                       capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode != 0 and "bad --child 'a='" in r.stderr


def test_retarget_through_ctl(tmp_path):
    """`retarget a ADDR` moves child a of a mux to another server (status says where it
    was); bad commands, unknown children and other users are refused."""
    exports = []
    for name in ("old", "new"):
        d = tmp_path / name
        d.mkdir()
        (d / "which").write_text("the %s server\n" % name)
        exports.append(d)
    old, new = (NineProc(["--export", str(d)], free_port()) for d in exports)
    port = free_port()
    mux = subprocess.Popen([sys.executable, "-m", "nine", "mux", "-q", "--listen",
                            "127.0.0.1:%d" % port, "--child", "a=" + old.addr], env=ENV_ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc=mux)
        addr = "127.0.0.1:%d" % port
        with Client(addr) as c, Client(addr, aname="mux") as ctl:
            assert c.read_file("/a/which") == b"the old server\n"
            ctl.write_file("ctl", b"retarget a %s moved by hand\n" % new.addr.encode())
            deadline = time.monotonic() + scaled(10)
            while True:                 # the old connection's nodes are stale: walk again
                try:
                    if c.read_file("/a/which") == b"the new server\n":
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.05)
            status = ctl.read_file("status").decode()
            view = parse_status(status)["a"]
            assert (view.addr, view.state) == (new.addr, "up")
            assert "was %s (moved by hand)" % old.addr in status
            ctl.write_file("ctl", b"retry a\n")
            for bad, why in ((b"retarget b %s\n" % new.addr.encode(), FileNotFoundError),
                             (b"retarget a nowhere\n", OSError), (b"retarget a\n", OSError),
                             (b"adopt a\n", OSError)):
                with pytest.raises(why):
                    ctl.write_file("ctl", bad)
            assert c.read_file("/a/which") == b"the new server\n"
        if os.geteuid() == 0:           # written by the mux's own user only
            with Client(addr, aname="mux", uname="nobody") as other:
                with pytest.raises(PermissionError):
                    other.write_file("ctl", b"retry a\n")
    finally:
        mux.terminate()
        mux.wait(scaled(10))
        old.stop()
        new.stop()


def test_status_lines_parsed():
    text = ("node1 10.0.0.1:5640 aname=nine up since=2026-01-01T10:00:00 (12.5s) msize=8216 "
            "users=1 requests=3 inflight=0 connects=1 failures=0\n"
            "node2 10.0.0.2:5640 aname=nine down since=2026-01-01T10:00:09 (3.0s) "
            "error='connection refused' retry_in=0.8s connects=1 failures=4\n"
            "mux1 10.0.0.9:4000 connecting since=2026-01-01T10:00:00 (1.0s) connects=0 "
            "failures=0 retargeted at 2026-01-01T10:00:05: was 10.0.0.8:3999 (x)\n"
            "node2\tfailed\tEHOSTDOWN\tchild node2 is down\n")
    st = parse_status(text)
    assert sorted(st) == ["mux1", "node1", "node2"]
    assert (st["node1"].state, st["node1"].tried) == ("up", True)
    n2 = st["node2"]
    assert (n2.addr, n2.state, n2.down_for, n2.tried, n2.error) == (
        "10.0.0.2:5640", "down", 3.0, True, "connection refused")
    assert (st["mux1"].state, st["mux1"].tried) == ("connecting", False)


# -- trees on namespace hosts --------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """node1 .. node8 for the leaves, node9 and node10 for the muxes."""
    from interop.hosts import Cluster, available
    reason = available()
    if reason:
        pytest.skip("namespace hosts (interop/hosts.py) cannot be made here: %s" % reason)
    with Cluster(10) as c:
        for h in c.hosts:
            (h.dir / "id").write_text("i am %s\n" % h.name)
        yield c


def wait(what, pred, timeout=60):
    """pred() until it is true (errors count as false); its value."""
    deadline = time.monotonic() + scaled(timeout)
    last = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except (OSError, ValueError) as ex:
            last = ex
        time.sleep(0.1)
    raise AssertionError("%s: not after %g s (last error: %s)" % (what, scaled(timeout), last))


def status_of(addr):
    with Client(addr, aname="mux") as c:
        return c.read_file("status").decode()


LEAVES = ["node%d" % i for i in range(1, 9)]


def served(c, group, hosts=LEAVES):
    """The root lists every leaf, node2's file reads through it, and the open group
    reads the members in `hosts`, the other leaves failed."""
    if sorted(c.listdir("/nodes")) != LEAVES:
        return False
    if c.read_file("/nodes/node2/files/id") != b"i am node2\n":
        return False
    got = {m for ms in group.classes().values() for m in ms}
    return got == set(hosts) and set(group.failed) == set(LEAVES) - set(hosts)


def test_lost_mux_adopted_and_lost_leaf_named_down(cluster, tmp_path):
    """A foreground tree whose muxes run on hosts of their own (node9, node10): node9 is
    lost, mux1 is adopted on node10, and the open group reads all 8 members again; then
    leaf host node6 is lost (named, down, 7 served) and comes back (the watch starts its
    leaf again)."""
    topo = tmp_path / "tree.ini"
    topo.write_text("[tree]\nleaf-export = /srv\n"
                    "[muxes]\nmux1 = node9: node[1-4]\nmux2 = node10: node[5-8]\n")
    state_file = tmp_path / "state.json"
    proc = subprocess.Popen([sys.executable, "-m", "nine"] + tree_args(
        cluster, tmp_path, "--topology", str(topo), "--listen", "127.0.0.1:0",
        "--adopt-grace", "2"), env=ENV_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = []
    try:
        out = read_until(proc, "watch:")
        addr = out.split("root on ")[1].split()[0]
        state = json.loads(state_file.read_text())
        assert state["watcher"] == proc.pid
        with Client(addr) as c:
            c.mkdir("/groups/id")
            for h in LEAVES:
                c.symlink("../../nodes/%s/files/id" % h, "/groups/id/%s" % h)
            g = c.gopen("/groups/id", aggregator="equiv")
            assert served(c, g)

            # the host of mux1 is lost: mux1 is started on node10 (its sibling's host)
            cluster.kill_host("node9")
            killed.append("node9")
            t0 = time.monotonic()
            wait("the tree whole again", lambda: served(c, g))
            took = time.monotonic() - t0
            sys.stderr.write("recovery after the loss of a mid-level mux: %.1f s\n" % took)
            status = parse_status(status_of(addr))
            state = json.loads(state_file.read_text())
            mux1 = {m["name"]: m for m in state["members"]}["mux1"]
            assert mux1["host"] == "node10" and status["mux1"].addr == mux1["address"]
            was = mux1["adopted"][-1]
            assert (was["host"], was["on"], was["now"]) == ("node9", "node10",
                                                            mux1["address"])
            lines = {ln.split()[0]: ln for ln in status_of(addr).splitlines()}
            assert "was %s (adopted on node10: node9 lost at" % was["address"] in lines["mux1"]
            assert "retargeted" not in lines["mux2"]

            # a leaf host is lost: named, down, the others served; back when it is
            cluster.kill_host("node6")
            killed.append("node6")
            mux2 = {m["name"]: m for m in state["members"]}["mux2"]["address"]
            wait("node6 down in mux2's status",
                 lambda: parse_status(status_of(mux2))["node6"].state != "up")
            assert sorted(c.listdir("/nodes")) == LEAVES
            wait("7 members served, node6 failed",
                 lambda: served(c, g, [h for h in LEAVES if h != "node6"]))
            cluster.boot_host("node6")
            killed.remove("node6")
            wait("node6 started again by the watch", lambda: served(c, g))
            g.close()
        cluster.boot_host("node9")          # the lost host back: nothing of it runs
        killed.remove("node9")
        r = nine("tree", "down", "--state", str(state_file))
        assert r.returncode == 0, r.stderr
        assert proc.wait(scaled(30)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for h in killed:
            cluster.boot_host(h)
    err = proc.stderr.read().decode()
    assert "mux1 adopted: was" in err and "leaf node6 lost" in err, err
    assert not state_file.exists()
    members = state["members"][:-1] + [{"address": was["address"]}]
    check_nothing_left(cluster, members, tmp_path / "run", lost=["node9"])


def check_nothing_left(cluster, members, run_dir, lost=()):
    """No process of the tree on any host, none of its ports open; no pid file left but
    those of the lost hosts, which name no running process (the daemons there were
    killed with their host: SIGKILL leaves the file)."""
    deadline = time.monotonic() + scaled(20)
    while True:
        extra = {h.name: sorted(set(cluster.pids(h)) - {h.holder.pid, h.sshd.pid})
                 for h in cluster.hosts}
        if not any(extra.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not any(extra.values()), extra
    for m in members:
        host, _, port = m["address"].rpartition(":")
        with socket.socket() as s:
            s.settimeout(5)
            assert s.connect_ex((host, int(port))) != 0, m
    for d, _, fs in os.walk(run_dir):
        for f in (os.path.join(d, f) for f in fs if f.endswith(".pid")):
            assert os.path.basename(d) in lost, f
            try:
                with open("/proc/%s/cmdline" % open(f).read().strip(), "rb") as cmd:
                    assert f.encode() not in cmd.read(), f
            except FileNotFoundError:
                pass


def test_daemon_tree_watched_apart(cluster, tmp_path):
    """A --daemon tree whose topology file puts two levels of muxes on node1 (leaf
    node1, mux1-0 over node1-2 and mux2-0 over mux1-0 and mux1-1; fanout 2 elsewhere)
    and `nine tree watch`: node1 is lost with its leaf and both muxes; mux1-0 is started
    again on node2, then mux2-0 over it on node5 (mux2-1's host); node1 stays named,
    down; `nine tree down` stops the watch first, then every server, the replacements
    too."""
    state_file = tmp_path / "state.json"
    topo = tmp_path / "tree.ini"
    topo.write_text("[tree]\nleaf-export = /srv\n[muxes]\n" + "".join(
        "mux1-%d = node%d: node[%d-%d]\n" % (i, 2 * i + 1, 2 * i + 1, 2 * i + 2)
        for i in range(4)) + "mux2-0 = node1: mux1-0 mux1-1\nmux2-1 = node5: mux1-2 mux1-3\n")
    r = nine(*tree_args(cluster, tmp_path, "--listen", "127.0.0.1:0", "--daemon",
                        "--topology", str(topo)))
    assert r.returncode == 0, r.stderr
    assert "nine tree watch --state" in r.stdout
    watch = subprocess.Popen([sys.executable, "-m", "nine", "tree", "watch", "--state",
                              str(state_file), "--adopt-grace", "1"], env=ENV_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lost = False
    try:
        read_until(watch, "adopted on another host")
        state = json.loads(state_file.read_text())
        assert state["watcher"] == watch.pid
        r = nine("tree", "watch", "--state", str(state_file))
        assert r.returncode == 1 and "watched by pid %d" % watch.pid in r.stderr
        addr = state["address"]
        with Client(addr) as c:
            assert c.read_file("/nodes/node2/files/id") == b"i am node2\n"
            cluster.kill_host("node1")
            lost = True
            wait("node2 through the replacements of mux2-0 and mux1-0",
                 lambda: sorted(c.listdir("/nodes")) == LEAVES and
                 c.read_file("/nodes/node2/files/id") == b"i am node2\n")
        state = json.loads(state_file.read_text())
        ms = {m["name"]: m for m in state["members"]}
        assert [(ms[n]["host"], ms[n]["adopted"][-1]["host"]) for n in ("mux1-0", "mux2-0")
                ] == [("node2", "node1"), ("node5", "node1")]
        assert "adopted on node5: node1 lost at" in status_of(addr)
        wait("node1 down under mux1-0", lambda: parse_status(status_of(
            ms["mux1-0"]["address"]))["node1"].state != "up")
        cluster.boot_host("node1")
        lost = False
        r = nine("tree", "down", "--state", str(state_file))
        assert r.returncode == 0, r.stderr
        assert "the watch (pid %d) stopped" % watch.pid in r.stdout
        assert "mux mux1-0 on node2: stopped" in r.stdout
        assert "mux mux2-0 on node5: stopped" in r.stdout
        assert watch.wait(scaled(30)) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
        if lost:
            cluster.boot_host("node1")
        if state_file.exists():
            nine("tree", "down", "--state", str(state_file))
    assert not state_file.exists()
    members = state["members"] + [{"address": ms[n]["adopted"][-1]["address"]}
                                  for n in ("mux1-0", "mux2-0")]
    check_nothing_left(cluster, members, tmp_path / "run", lost=["node1"])
