"""A tree on hosts over ssh (nine.launch.ssh) and the daemons it is made of
(nine.launch.daemon): `nine tree --hosts` run as a user would, on 8 namespace hosts
(interop.hosts.Cluster: own address, host name, /srv and sshd each), fanout 4 (two
muxes and the root), used through its root and stopped with `nine tree down` or
Ctrl-C; afterwards no server of the tree runs on any host, and its ports are closed.
The tree tests skip where namespaces cannot be made (not root, no sshd)."""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ENV_ROOT, ROOT
from nine.client import Client
from nine.launch.ssh import place
from nine.netwait import scaled

FIRST_LEAF_PORT = 5640


def nine(*args, timeout=120, **kw):
    """`python -m nine ARGS` in a subprocess, as a user runs it; its output as text."""
    return subprocess.run([sys.executable, "-m", "nine"] + list(args), env=ENV_ROOT,
                          capture_output=True, text=True, timeout=scaled(timeout), **kw)


# -- the daemons -------------------------------------------------------------------

def test_daemon_detaches_and_refuses_a_live_pid_file(tmp_path):
    pid_file, log, addr = (str(tmp_path / n) for n in ("leaf.pid", "leaf.log", "leaf.addr"))
    args = ("serve", "--daemon", "--pid-file", pid_file, "--log-file", log, "--address-file",
            addr, "--listen", "127.0.0.1:0", "--export", str(tmp_path))
    r = nine(*args, timeout=30)
    assert r.returncode == 0, r.stderr
    pid = int(open(pid_file).read())
    try:
        # listening before the starter returned; a session, stdin and fds of its own
        with Client(open(addr).read().strip()) as c:
            assert "leaf.log" in c.listdir("/")
        assert os.getsid(pid) != os.getsid(0)
        assert os.readlink("/proc/%d/fd/0" % pid) == "/dev/null"
        assert os.readlink("/proc/%d/fd/2" % pid) == log
        fds = []
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                fds.append(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
            except FileNotFoundError:       # closed since the listing (a passing socket)
                pass
        assert not [f for f in fds if f.startswith("pipe:")], fds
        assert "serving" in open(log).read()
        r = nine(*args, timeout=30)
        assert r.returncode == 1 and "names process %d" % pid in r.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + scaled(10)
    while os.path.exists(pid_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(pid_file)     # removed at exit


def test_daemon_that_fails_says_why(tmp_path):
    r = nine("serve", "--daemon", "--pid-file", str(tmp_path / "p"), "--log-file",
             str(tmp_path / "log"), "--listen", "127.0.0.1:0", "--export",
             str(tmp_path / "missing"), timeout=30)
    assert r.returncode == 1
    assert "exited before serving" in r.stderr and "missing" in r.stderr
    assert not (tmp_path / "p").exists()
    r = nine("mux", "--pid-file", str(tmp_path / "p"), "--child", "a=127.0.0.1:9", timeout=30)
    assert r.returncode == 2 and "go with --daemon" in r.stderr


# -- placement ---------------------------------------------------------------------

def test_automatic_placement():
    hosts = ["node%d" % i for i in range(1, 9)]
    ms = place(hosts, 4)
    assert [(m.name, m.host, m.level) for m in ms if m.kind != "leaf"] == [
        ("mux1-0", "node1", 1), ("mux1-1", "node5", 1), ("root", None, 2)]
    assert ms[-2].children == hosts[4:]
    ms = place(["n%d" % i for i in range(64)], 4, root_host="n7")
    levels = {}
    for m in ms:
        levels.setdefault(m.level, []).append(m)
    assert [len(levels[k]) for k in sorted(levels)] == [64, 16, 4, 1]
    # each mux on its own host: the first under it that runs no mux yet
    assert [m.host for m in levels[1]] == ["n%d" % i for i in range(0, 64, 4)]
    assert [m.host for m in levels[2]] == ["n1", "n17", "n33", "n49"]
    assert len({m.host for m in ms if m.kind == "mux"}) == 20
    assert ms[-1].host == "n7" and ms[-1].children == [m.name for m in levels[2]]
    assert [m.kind for m in place(hosts[:3], 4)] == ["leaf"] * 3 + ["root"]


def test_placement_from_muxes():
    hosts = ["node%d" % i for i in range(1, 9)]
    ms = place(hosts, 4, [("edge1", "node2", "node[1-4]"), ("edge2", "svc", "node[5-8]"),
                          ("root", "node3", "edge1 edge2")])
    assert [(m.name, m.host, m.level, m.children) for m in ms if m.kind != "leaf"] == [
        ("edge1", "node2", 1, hosts[:4]), ("edge2", "svc", 1, hosts[4:]),
        ("root", "node3", 2, ["edge1", "edge2"])]
    ms = place(hosts, 4, [("a", "node1", "node[1-4]"), ("b", "node5", "node[5-8]")])
    assert (ms[-1].name, ms[-1].host, ms[-1].children) == ("root", None, ["a", "b"])
    for muxes, why in [
            ([("a", "node1", "node[1-4]")], "root: its children are all hosts or all"),
            ([("a", "node1", "node[1-4]"), ("b", "node1", "node[4-8]")], "child of a and of b"),
            ([("a", "node1", "node[1-8] x")], "no host or mux x"),
            ([("node1", "node1", "node[1-8]")], "name of a host"),
            ([("a", "node1", "node[1-4] b"), ("b", "node2", "node[5-8]")],
             "all hosts or all muxes"),
            ([("a", "node1", "b"), ("b", "node2", "a"), ("c", "node3", "node[1-8]")],
             "its own descendant"),
            ([("a", "node1", "node[1-8]"), ("root", "node1", "node[1-8]")], "child of a and"),
            ([("a", "node1", "node[1-4]"), ("b", "node1", "node[5-8]"), ("root", "node1", "a")],
             "not under the root: b")]:
        with pytest.raises(ValueError, match=why):
            place(hosts, 4, muxes)


# -- trees on namespace hosts --------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    from interop.hosts import Cluster, available
    reason = available()
    if reason:
        pytest.skip("namespace hosts (interop/hosts.py) cannot be made here: %s" % reason)
    with Cluster(8) as c:
        for h in c.hosts:
            (h.dir / "id").write_text("i am %s\n" % h.name)
        yield c


def tree_args(cluster, tmp_path, *more):
    return ["tree", "--hosts", "node[1-8]", "--ssh-options", "-F %s" % cluster.ssh_config,
            "--remote-python", sys.executable, "--leaf-export", "/srv",
            "--remote-workdir", str(tmp_path / "run"), "--state", str(tmp_path / "state.json")
            ] + list(more)


def read_until(proc, text, timeout=120):
    """proc's stdout (a binary pipe) up to text."""
    out = b""
    deadline = time.monotonic() + scaled(timeout)
    while text.encode() not in out:
        left = deadline - time.monotonic()
        poll = select.poll()                 # select() cannot watch fds >= 1024
        poll.register(proc.stdout, select.POLLIN)
        if left <= 0 or not poll.poll(left * 1000):
            raise AssertionError("no %r in %s s: %r" % (text, timeout, out))
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise AssertionError("exited with %s: %s%s" % (proc.wait(), out, proc.stderr.read()))
        out += chunk
    return out.decode()


def check_tree(cluster, addr):
    """Through the root: the 8 hosts, host 3's own file, a group read over all."""
    (cluster.host("node3").dir / "hello.txt").write_text("from node3's own disk\n")
    with Client(addr) as c:
        assert sorted(c.listdir("/nodes")) == ["node%d" % i for i in range(1, 9)]
        assert c.read_file("/nodes/node3/files/hello.txt") == b"from node3's own disk\n"
        c.mkdir("/groups/id")
        for i in range(1, 9):
            c.symlink("../../nodes/node%d/files/id" % i, "/groups/id/node%d" % i)
        got = c.gopen("/groups/id").read()
    for i in range(1, 9):
        assert b"i am node%d\n" % i in got


def check_nothing_left(cluster, members, run_dir):
    """No process of the tree on any host (only each host's holder and sshd remain),
    none of its ports open, no pid file left."""
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
    assert not [f for _, _, fs in os.walk(run_dir) for f in fs if f.endswith(".pid")]


def test_foreground_tree_then_down_from_another_shell(cluster, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "nine"] + tree_args(
        cluster, tmp_path, "--listen", "127.0.0.1:0"), env=ENV_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = read_until(proc, "state:")
        addr = out.split("root on ")[1].split()[0]
        state = json.loads((tmp_path / "state.json").read_text())
        assert state["launcher"] == proc.pid
        members = state["members"]
        assert [(m["name"], m["host"]) for m in members if m["kind"] != "leaf"] == [
            ("mux1-0", "node1"), ("mux1-1", "node5"), ("root", None)]
        leaves = [m for m in members if m["kind"] == "leaf"]
        assert [m["address"] for m in leaves] == [
            "%s:%d" % (h.address, FIRST_LEAF_PORT) for h in cluster.hosts]
        check_tree(cluster, addr)
        r = nine("tree", "down", "--state", str(tmp_path / "state.json"))
        assert r.returncode == 0, r.stderr
        assert proc.wait(scaled(30)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "state.json").exists()
    check_nothing_left(cluster, members[:-1], tmp_path / "run")


def test_ctrl_c_stops_a_foreground_tree(cluster, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "nine"] + tree_args(
        cluster, tmp_path, "--listen", "127.0.0.1:0", "--fanout", "3", "--port", "0"),
        env=ENV_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(proc, "state:")
        members = json.loads((tmp_path / "state.json").read_text())["members"]
        assert len([m for m in members if m["kind"] == "mux"]) == 3     # 3 + 3 + 2 leaves
        assert all(not m["address"].endswith(":%d" % FIRST_LEAF_PORT) for m in members)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(scaled(60)) in (0, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "state.json").exists()
    check_nothing_left(cluster, members[:-1], tmp_path / "run")


def test_ctrl_c_while_starting_leaves_nothing(cluster, tmp_path):
    """Ctrl-C (SIGINT to the launcher's process group) in the middle of the ssh round
    that starts every server: node8's Python starts 3 s late (a wrapper), and the
    interrupt comes once the other hosts' leaves run.  Its server still starts (the
    round's scripts end) and is stopped with the others."""
    state = tmp_path / "state.json"
    slow = tmp_path / "slow-python"
    slow.write_text('#!/bin/sh\n[ "$(hostname)" = node8 ] && sleep 3\nexec %s "$@"\n'
                    % sys.executable)
    slow.chmod(0o755)
    args = tree_args(cluster, tmp_path, "--listen", "127.0.0.1:0")
    args[args.index("--remote-python") + 1] = str(slow)
    proc = subprocess.Popen([sys.executable, "-m", "nine"] + args, env=ENV_ROOT,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    members = []
    try:
        pids = [tmp_path / "run" / ("node%d" % i) / "leaf.pid" for i in range(1, 8)]
        deadline = time.monotonic() + scaled(120)
        while not all(p.exists() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(p.exists() for p in pids)
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(scaled(60))
        except subprocess.TimeoutExpired:
            rc = None
        out, err = proc.communicate() if rc is not None else (b"", b"")
        assert rc == 130, err.decode()
        assert b"interrupted: stopping what started" in err
        assert b"root on" not in out            # stopped while starting
        assert not state.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if state.exists():      # (failed: what it left must not break the next tests)
            members = json.loads(state.read_text())["members"]
            nine("tree", "down", "--state", str(state))
    assert not state.exists()
    check_nothing_left(cluster, [m for m in members if m["address"]], tmp_path / "run")


def test_daemon_tree_placed_by_a_topology_file(cluster, tmp_path):
    topo = tmp_path / "tree.ini"
    topo.write_text("[tree]\nleaf-args = --proc --host\nleaf-export = /srv\n"
                    "[muxes]\nedge1 = node2: node[1-4]\nedge2 = node7: node[5-8]\n"
                    "root = node3: edge1 edge2\n")
    r = nine(*tree_args(cluster, tmp_path, "--topology", str(topo), "--daemon"))
    try:
        assert r.returncode == 0, r.stderr
        state = json.loads((tmp_path / "state.json").read_text())
        members = state["members"]
        assert state["launcher"] is None
        assert [(m["name"], m["host"], m["children"]) for m in members
                if m["kind"] != "leaf"] == [
            ("edge1", "node2", ["node1", "node2", "node3", "node4"]),
            ("edge2", "node7", ["node5", "node6", "node7", "node8"]),
            ("root", "node3", ["edge1", "edge2"])]
        assert state["address"].startswith(cluster.host("node3").address + ":")
        check_tree(cluster, state["address"])
        r = nine(*tree_args(cluster, tmp_path, "--topology", str(topo), "--daemon"))
        assert r.returncode == 1 and "records a tree already" in r.stderr
    finally:
        r = nine("tree", "down", "--state", str(tmp_path / "state.json"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("stopped") == 8 + 3
    check_nothing_left(cluster, members, tmp_path / "run")
