"""A mux notices a child that stops answering (nine.mux.child's watchdog): real leaf
processes (`nine serve --exec`) under a `nine mux --hang-timeout 1` process; a leaf is
stopped with SIGSTOP (its TCP connections stay open, nothing answers) and continued with
SIGCONT.  A stopped child's requests fail with EHOSTDOWN and "is hung" within about
twice the hang timeout and `status` says `hung`; the other children go on; the child is
`up` again once it answers; a read that blocks for longer than the timeout on a live
child (an exec session's `wait`) is not taken for a hang."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ENV_ROOT, NineProc, free_port
from nine.client import Client, NineError
from nine.netwait import load_factor, wait_port

HANG = 1.0          # the mux's --hang-timeout in these tests
LEAVES = ("a", "b", "c")


class MuxProc:
    """`nine mux --hang-timeout HANG` over children [(name, address)] (their aname
    nine: /NAME/files/..., /NAME/exec/...)."""

    def __init__(self, children, log):
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        argv = [sys.executable, "-m", "nine", "mux", "--listen", self.addr, "-q",
                "--child-aname", "nine", "--hang-timeout", str(HANG)]
        for name, addr in children:
            argv += ["--child", "%s=%s" % (name, addr)]
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(argv, env=ENV_ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def tree(tmp_path):
    """Leaves a, b, c (file files/v = 'value of NAME') under one mux."""
    leaves = {}
    mux = None
    try:
        for name in LEAVES:
            d = tmp_path / name
            d.mkdir()
            (d / "v").write_bytes(b"value of %s\n" % name.encode())
            leaves[name] = NineProc(["--exec", "--export", str(d)], free_port())
        mux = MuxProc([(n, p.addr) for n, p in leaves.items()], tmp_path / "mux.log")
        yield leaves, mux
    finally:
        for p in leaves.values():
            if p.alive():
                os.kill(p.proc.pid, signal.SIGCONT)     # a stopped process takes no TERM
            p.stop()
        if mux is not None:
            mux.stop()


def status_lines(mux):
    """{child name: its line of the mux's status file}."""
    with Client(mux.addr, aname="mux") as c:
        text = c.read_file("status").decode()
    return {line.split()[0]: line for line in text.splitlines() if line.split()}


def state_of(line):
    """The state in a status line: NAME ADDR [aname=A] STATE since=..."""
    words = line.split()
    return words[3] if words[2].startswith("aname=") else words[2]


def wait_state(mux, name, state, seconds):
    deadline = time.monotonic() + seconds * load_factor()
    while True:
        line = status_lines(mux)[name]
        if state_of(line) == state:
            return line
        assert time.monotonic() < deadline, "child %s not %s: %s" % (name, state, line)
        time.sleep(0.1)


def test_stopped_child_is_hung_then_back(tree):
    leaves, mux = tree
    c = Client(mux.addr)
    cu = Client(mux.addr, version="9P2000.u")      # .u errors carry the text
    try:
        for n in LEAVES:
            assert c.read_file("%s/files/v" % n) == b"value of %s\n" % n.encode()
        f = cu.open("a/files/v")
        assert f.pread(64, 0) == b"value of a\n"
        os.kill(leaves["a"].proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(NineError) as ei:
            f.pread(64, 0)
        took = time.monotonic() - t0
        assert ei.value.errno == errno.EHOSTDOWN, ei.value
        assert "child a (%s) is hung: no answer for " % leaves["a"].addr in str(ei.value)
        assert HANG <= took < (2 * HANG + 1.5) * load_factor(), took
        line = status_lines(mux)["a"]
        assert state_of(line) == "hung" and "since=" in line and "no answer for" in line, line
        # while it is hung: new requests fail at once, the others answer
        t0 = time.monotonic()
        with pytest.raises(NineError) as ei:
            c.read_file("a/files/v")
        assert ei.value.errno == errno.EHOSTDOWN
        for n in ("b", "c"):
            assert c.read_file("%s/files/v" % n) == b"value of %s\n" % n.encode()
            assert state_of(status_lines(mux)[n]) == "up"
        assert time.monotonic() - t0 < HANG * load_factor()
        # still stopped: still hung once a reconnection has timed out (the stopped
        # process's kernel takes the connection; nothing answers its Tversion)
        deadline = time.monotonic() + 15 * load_factor()
        while "failures=0" in status_lines(mux)["a"]:
            assert time.monotonic() < deadline, status_lines(mux)["a"]
            time.sleep(0.2)
        assert state_of(status_lines(mux)["a"]) == "hung", status_lines(mux)["a"]
        os.kill(leaves["a"].proc.pid, signal.SIGCONT)
        wait_state(mux, "a", "up", 15)
        assert c.read_file("a/files/v") == b"value of a\n"
        f.close()
    finally:
        c.close()
        cu.close()


def test_blocking_wait_read_is_not_a_hang(tree):
    leaves, mux = tree
    c = Client(mux.addr, uname="root", n_uname=0)
    try:
        with c.open("a/exec/clone", "r") as clone:
            sid = clone.read(64).decode().strip()
            with c.open("a/exec/%s/ctl" % sid, "r+") as ctl:
                ctl.write(b"exec sleep 5\n")
            t0 = time.monotonic()
            assert c.read_file("a/exec/%s/wait" % sid) == b"exited 0\n"
            took = time.monotonic() - t0
        assert 4 < took < 5 + 5 * load_factor(), took
        line = status_lines(mux)["a"]
        assert state_of(line) == "up" and "connects=1 " in line, line
    finally:
        c.close()


def test_group_read_names_the_hung_member(tree):
    leaves, mux = tree
    c = Client(mux.addr)
    try:
        g = c.gopen(None, "r", members=[(n, "/%s/files/v" % n) for n in LEAVES])
        assert g.served
        out = g.read()
        assert g.failed == {}
        for n in LEAVES:
            assert b"value of %s" % n.encode() in out, out
        os.kill(leaves["b"].proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        out = g.read()
        took = time.monotonic() - t0
        assert set(g.failed) == {"b"}, g.failed
        assert "child b (%s) is hung" % leaves["b"].addr in g.failed["b"], g.failed
        assert b"value of a" in out and b"value of c" in out and b"value of b" not in out, out
        assert took < (2 * HANG + 1.5) * load_factor(), took
        os.kill(leaves["b"].proc.pid, signal.SIGCONT)
        wait_state(mux, "b", "up", 15)
        g.close()
    finally:
        c.close()
