"""nine ptop against real leaf servers under a two-level tree (tests/test_ptail.py's
TreeUnderTest): batch mode checked against this host's /proc (every leaf runs here, so
each reports the same processes), --by cmd sums, a host down and a stopped (timed-out)
host, and the live view in a real terminal (tmux): sort keys, the filter, kill, q."""

import os
import pwd
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from conftest import ENV_ROOT, ROOT
from test_ptail import Tool, TreeUnderTest


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    t = TreeUnderTest(tmp_path_factory.mktemp("ptop"))
    yield t
    t.close()


@pytest.fixture
def sleepers(tmp_path):
    """Three processes named ptsleeper (a copy of sleep), started here."""
    exe = tmp_path / "ptsleeper"
    shutil.copy(shutil.which("sleep"), exe)
    procs = [subprocess.Popen([str(exe), "%d.5" % (7000 + i)]) for i in range(3)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def refreshes(out):
    """Batch output -> [(header {name: text}, [row {column: value}])]."""
    text = "\n".join(out)
    result = []
    for block in re.split(r"\n(?=nine ptop: )", text):
        head, _, table = block.partition("\n\n")
        header = {}
        for line in head.splitlines()[1:]:
            k, _, v = line.partition(": ")
            header[k] = v
        lines = table.strip("\n").splitlines()
        cols = lines[0].split()
        rows = [dict(zip(cols, ln.split(None, len(cols) - 1))) for ln in lines[1:]]
        result.append((header, rows))
    return result


def ptop(tree, *args):
    t = Tool(tree, "ptop", "-b", "--timeout", "3", *args)
    assert t.finish(60) == 0, "\n".join(t.err)
    return refreshes(t.out)


def loadavgs(stop, seen):
    while not stop.is_set():
        with open("/proc/loadavg") as f:
            seen.add(float(f.read().split()[0]))
        time.sleep(0.05)


def test_batch_against_proc(tree, sleepers):
    seen = set()
    stop = threading.Event()
    th = threading.Thread(target=loadavgs, args=(stop, seen))
    th.start()
    try:
        [(head, rows)] = ptop(tree, "-n", "1", "-k", "50", "--filter", "ptsleeper")
    finally:
        stop.set()
        th.join()
    assert head["hosts"] == "4, 4 up, 0 down, 0 late", head
    assert head["up"] == "node[1-4]"
    # each host (each leaf runs on this host) shows each sleeper with its pid and owner
    me = pwd.getpwuid(os.getuid()).pw_name
    for p in sleepers:
        mine = [r for r in rows if r["PID"] == str(p.pid)]
        assert sorted(r["HOST"] for r in mine) == tree.names, rows
        for r in mine:
            assert r["USER"] == me and r["S"] == "S" and r["THR"] == "1", r
            assert r["COMMAND"].endswith("ptsleeper %d.5" % (7000 + sleepers.index(p))), r
            assert float(r["CPU%"]) < 5, r
    # (ptop's own command line holds the filter's text too)
    assert len([r for r in rows if "ptsleeper 70" in r["COMMAND"]]) == 12, rows
    # the load sum: each leaf's /proc/loadavg, summed by the tree
    load = [float(x) for x in re.match(r"sum (\S+) (\S+) ([^,]+),", head["load"]).groups()]
    assert 4 * min(seen) - 0.05 <= load[0] <= 4 * max(seen) + 0.05, (load, seen)
    m = re.search(r"load1 min (\S+) max (\S+)", head["load"])
    assert min(seen) - 0.01 <= float(m.group(1)) <= float(m.group(2)) <= max(seen) + 0.01
    # memory: four times this host's
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    m = re.match(r"\S+ of (\S+)G used", head["mem"])
    assert abs(float(m.group(1)) - 4 * total / 2 ** 30) < 0.2, head["mem"]
    # the cpu histogram counts every host once
    bins = [int(b.split(":")[1]) for b in head["cpu"].split("hosts by cpu%: ")[1].split()]
    assert sum(bins) == 4, head["cpu"]


def test_by_cmd_sums_over_the_hosts(tree, sleepers):
    [(head, rows)] = ptop(tree, "-n", "1", "--by", "cmd", "--filter", "ptsleeper")
    mine = [r for r in rows if r["COMMAND"] == "ptsleeper"]
    assert mine == [dict(mine[0], PROCS="12", HOSTS="4")], rows
    [(head, rows)] = ptop(tree, "-n", "1", "--by", "host", "-k", "10")
    assert sorted(r["HOST"] for r in rows) == tree.names, rows
    [(head, rows)] = ptop(tree, "-n", "1", "--by", "user", "-U", str(os.getuid()))
    assert len(rows) == 1 and rows[0]["HOSTS"] == "4", rows
    # the sums are sums: ptsleeper's 12 processes among the user's
    assert int(rows[0]["PROCS"]) >= 12


def test_down_and_timed_out_hosts(tree, sleepers):
    tree.kill("node4")
    try:
        t = Tool(tree, "ptop", "-b", "-n", "3", "-d", "2.5", "--timeout", "2",
                 "--filter", "ptsleeper", "-k", "50")
        t.wait_for(lambda: any(ln.startswith("HOST") for ln in t.out), "a first refresh",
                   timeout=30)
        tree.stop("node3")
        try:
            assert t.finish(60) == 0, "\n".join(t.err)
        finally:
            tree.cont("node3")
        got = refreshes(t.out)
        assert len(got) == 3, t.out
        head, rows = got[0]
        assert head["hosts"] == "4, 3 up, 1 down, 0 late", head
        assert head["down"].startswith("node4: "), head
        assert sorted({r["HOST"] for r in rows if "ptsleeper 70" in r["COMMAND"]}) == \
            ["node1", "node2", "node3"]
        head, rows = got[2]
        assert head["hosts"] == "4, 2 up, 1 down, 1 late", head
        assert re.fullmatch(r"node3 \(\d+\.\ds ago\)", head["late"]), head
        assert sorted({r["HOST"] for r in rows if "ptsleeper 70" in r["COMMAND"]}) == \
            ["node1", "node2"]
        # the refresh was not held up by the stopped host
        took = [float(re.search(r", (\S+) s, ", ln).group(1)) for ln in t.out
                if ln.startswith("nine ptop: ")]
        assert took[2] < 3.5, took
    finally:
        tree.restart("node4")


def tmux(sock, *args):
    return subprocess.run(["tmux", "-L", sock] + list(args), capture_output=True,
                          text=True, timeout=10)


def test_live_view_in_tmux(tree, sleepers):
    if shutil.which("tmux") is None:
        pytest.skip("no tmux")
    sock = "nine-ptop-%d" % os.getpid()
    env = " ".join("%s=%s" % (k, ENV_ROOT[k]) for k in ("NINE_KEY", "PYTHONPATH")
                   if ENV_ROOT.get(k))
    # (pytest's COLUMNS=80 would reach ptop through tmux: the pane's size is wanted)
    cmd = "env -u COLUMNS -u LINES %s %s -m nine ptop -a %s -d 1 --timeout 3" % (
        env, sys.executable, tree.addr)
    assert tmux(sock, "new-session", "-d", "-s", "top", "-x", "180", "-y", "45",
                cmd).returncode == 0

    def screen():
        return tmux(sock, "capture-pane", "-p", "-t", "top").stdout

    def wait(pred, what, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = screen()
            if pred(s):
                return s
            time.sleep(0.2)
        raise AssertionError("%s not on the screen:\n%s" % (what, screen()))
    try:
        s = wait(lambda s: "COMMAND" in s and "sorted by CPU%" in s and
                 "hosts: 4, 4 up" in s, "the process table")
        assert "load: sum" in s and "cpu% of hosts" in s, s
        tmux(sock, "send-keys", "-t", "top", "M")
        wait(lambda s: "sorted by MEM%" in s, "the sort by memory")
        tmux(sock, "send-keys", "-t", "top", "P")
        wait(lambda s: "sorted by CPU%" in s, "the sort by cpu")
        tmux(sock, "send-keys", "-t", "top", "/")
        wait(lambda s: "filter: _" in s, "the filter prompt")
        tmux(sock, "send-keys", "-t", "top", "ptsleeper", "Enter")
        s = wait(lambda s: "filter 'ptsleeper'" in s and
                 s.count("ptsleeper 70") == 12, "the filtered rows")
        rows = [ln for ln in s.splitlines() if "ptsleeper 70" in ln]
        assert all(str(p.pid) in " ".join(rows) for p in sleepers), s
        # k on the first row: a group write of kill to that process's ctl
        first = int(rows[0].split()[1])
        tmux(sock, "send-keys", "-t", "top", "k")
        wait(lambda s: "kill process %d on node" % first in s, "the kill question")
        tmux(sock, "send-keys", "-t", "top", "y")
        wait(lambda s: "killed 1 process" in s, "the kill's outcome")
        victim = next(p for p in sleepers if p.pid == first)
        assert victim.wait(10) == -9
        tmux(sock, "send-keys", "-t", "top", "q")
        deadline = time.time() + 15
        while tmux(sock, "has-session", "-t", "top").returncode == 0:
            assert time.time() < deadline, "q did not end ptop:\n" + screen()
            time.sleep(0.2)
    finally:
        tmux(sock, "kill-server")
        path = os.path.join(os.environ.get("TMUX_TMPDIR", "/tmp"), "tmux-%d" % os.getuid(),
                            sock)
        if os.path.exists(path):
            os.unlink(path)


def test_the_script(tree):
    t = Tool(tree, None, argv=[os.path.join(ROOT, "cmd", "nine-ptop"), "-a", tree.addr,
                               "-b", "--by", "host", "--timeout", "3"])
    assert t.finish(60) == 0, "\n".join(t.err)
    [(head, rows)] = refreshes(t.out)
    assert len(rows) == 4, t.out


def test_kill_every_process_of_a_command(tree, sleepers):
    """What k does on a --by cmd row: the processes found by a group read (grep of
    host/ps), killed by a group write of `kill` to their proc/PID/ctl."""
    from nine.client import Client
    from nine.tools.ptop import Cluster
    c = Client(tree.addr)
    try:
        cluster = Cluster(c, tree.names, 3.0)
        found = cluster.find("cmd", "ptsleeper")
        assert sorted(found) == sorted(("%s-%d" % (h, p.pid),
                                        "/nodes/%s/proc/%d/ctl" % (h, p.pid))
                                       for h in tree.names for p in sleepers), found
        n, failed = cluster.kill(("cmd", "ptsleeper"))
        assert n == 12
        # every leaf runs on this host: one kill of each process works, the others
        # find it gone
        assert len(failed) <= 9, failed
        # SIGKILL (-9); 0 when a leaf's ptrace thread, tracing the process for its proc
        # files, reaped it first (Popen then finds no child to wait for)
        assert all(p.wait(10) in (-9, 0) for p in sleepers)
        for p in sleepers:
            with pytest.raises(ProcessLookupError):
                os.kill(p.pid, 0)
        # the leaves' process tables are sampled: wait for the next sample
        from nine.netwait import wait_for
        wait_for(lambda: cluster.find("cmd", "ptsleeper") == [], 10,
                 "the killed processes gone from every host's ps")
        cluster.close()
    finally:
        c.close()
