"""The `nine` command, run as a user would: real processes, real sockets."""

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import NineProc, free_port, ROOT
from nine.netwait import wait_for

ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def nine(*args, input=None):
    return subprocess.run([sys.executable, "-m", "nine"] + list(args), input=input,
                          capture_output=True, env=ENV, timeout=60)


@pytest.mark.parametrize("dialect", ["9P2000", "9P2000.u", "9P2000.L"])
def test_client_verbs(nine_server, dialect):
    a = nine_server.addr
    p = nine("ls", "-V", dialect, "-a", a, "/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().split() == ["hello.txt", "sub"]
    p = nine("ls", "-l", "-V", dialect, "-a", a, "/sub")
    assert p.returncode == 0 and p.stdout.decode().startswith("-rw") and \
        p.stdout.decode().rstrip().endswith(" inner")
    p = nine("read", "-V", dialect, "-a", "tcp!127.0.0.1!%d" % nine_server.port, "/hello.txt")
    assert p.stdout == b"hello, world\n"
    data = os.urandom(300000)
    p = nine("write", "-V", dialect, "-a", a, "/w-%s" % dialect, input=data)
    assert p.returncode == 0, p.stderr
    assert (nine_server.export / ("w-%s" % dialect)).read_bytes() == data
    p = nine("write", "--append", "-V", dialect, "-a", a, "/w-%s" % dialect, input=b"more")
    assert (nine_server.export / ("w-%s" % dialect)).read_bytes() == data + b"more"
    p = nine("stat", "-V", dialect, "-a", a, "/hello.txt")
    out = p.stdout.decode()
    assert "size 13" in out and "name hello.txt" in out and "mode -rw" in out


def test_errors_are_one_line_and_nonzero(nine_server):
    a = nine_server.addr
    p = nine("read", "-a", a, "/missing")
    assert p.returncode != 0
    assert p.stderr.decode() == "nine: /missing: No such file or directory\n"
    p = nine("ls", "-a", "127.0.0.1:%d" % free_port(), "/")
    assert p.returncode != 0 and p.stderr.decode().count("\n") == 1
    assert "Connection refused" in p.stderr.decode()
    p = nine("ls", "-a", "bad!addr", "/")
    assert p.returncode != 0 and p.stderr.decode().startswith("nine: ")
    p = nine("write", "-a", a, "/sub", input=b"x")
    assert p.returncode != 0 and p.stderr.decode().count("\n") == 1


def test_ctl_aname_and_unix_socket(tmp_path, export_dir):
    sock = str(tmp_path / "n.sock")
    env = ENV
    proc = subprocess.Popen([sys.executable, "-m", "nine", "serve", "--listen", "unix!" + sock,
                             "--export", "data=%s" % export_dir, "--ctl", "-q"], env=env)
    try:
        wait_for(lambda: os.path.exists(sock), 10, "the server's unix socket")
        p = nine("ls", "-a", "unix!" + sock, "-A", "ctl", "/")
        assert {"null", "zero", "date", "version"} <= set(p.stdout.decode().split()), p.stderr
        p = nine("read", "-a", "unix!" + sock, "-A", "data", "/hello.txt")
        assert p.stdout == b"hello, world\n"
        # a named export does not answer other anames
        p = nine("read", "-a", "unix!" + sock, "-A", "other", "/hello.txt")
        assert p.returncode != 0
    finally:
        proc.terminate()
        proc.wait(5)


def test_read_only_export(export_dir):
    s = NineProc(["--export", str(export_dir), "--read-only"], free_port())
    try:
        p = nine("write", "-a", s.addr, "/new", input=b"x")
        assert p.returncode != 0 and "Read-only file system" in p.stderr.decode()
        assert not (export_dir / "new").exists()
        p = nine("read", "-a", s.addr, "/hello.txt")
        assert p.stdout == b"hello, world\n"
    finally:
        s.stop()


def test_serve_bad_options(tmp_path):
    p = nine("serve", "--export", str(tmp_path / "nope"), "--listen", "127.0.0.1:0")
    assert p.returncode != 0 and "not a directory" in p.stderr.decode()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    p = nine("serve", "--export", str(tmp_path), "--listen", "127.0.0.1:%d" % port)
    assert p.returncode != 0 and "cannot listen" in p.stderr.decode()
    s.close()


def test_demo_once():
    """The README's first command: a local tree of 8 leaves and two levels of muxes."""
    p = nine("demo", "--once", "--listen", "127.0.0.1:0")
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr
    assert "8 leaf servers, 2 levels of muxes" in out
    assert "node1 node2 node3 node4 node5 node6 node7 node8" in out  # /nodes, /proc/1 ...
    assert "hello from node1" in out and "load1 " in out and "nine mount " in out
    assert out.count(" up since=") == 2                              # both muxes up
    # its temporary directory of leaf files is gone at exit
    d = out.split("leaf files under ", 1)[1].split()[0]
    assert d.startswith(tempfile.gettempdir()) and "nine-demo-" in d, d
    assert not os.path.exists(d), d


def test_demo_ctrl_c_twice_still_cleans_up():
    """Ctrl-C ends `nine demo`; a second one during its clean-up (an impatient user, or
    `timeout`, which signals the process and its group) does not cut the clean-up short:
    its processes are gone and its temporary directory too."""
    import signal
    p = subprocess.Popen([sys.executable, "-m", "nine", "demo", "--listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                         start_new_session=True)
    try:
        d = None
        for line in p.stdout:
            line = line.decode()
            if line.startswith("leaf files under "):
                d = line.split()[3]
            if line.startswith("Serving until Ctrl-C"):
                break
        assert d and os.path.isdir(d), d
        os.killpg(p.pid, signal.SIGINT)         # Ctrl-C: the whole process group
        time.sleep(0.05)
        os.kill(p.pid, signal.SIGINT)           # and once more
        assert p.wait(30) == 0, p.stderr.read().decode()[-2000:]
        assert not os.path.exists(d), d
        assert b"Traceback" not in p.stderr.read()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_gread_gwrite_over_a_tree(tmp_path):
    """nine gread / gwrite against `nine tree` (processes): equivalence classes of a
    group given as a directory of symlinks, a write to every member, a dead member."""
    from gevent import subprocess as sp     # the root mux runs in this process's hub
    from nine.launch import Topology, Tree
    exp = tmp_path / "exp"
    topo = Topology.local(4, fanout=2, listen="127.0.0.1:0", leaf_export=str(exp),
                          leaf_args="--host")
    tree = Tree(topo)
    try:
        root = tree.start()
        srv = root.server.listen("127.0.0.1:0")
        addr = "127.0.0.1:%d" % srv.address[1]
        for i in range(1, 5):
            (exp / ("node%d" % i) / "conf").write_text("mode=%s\n" % ("a" if i < 4 else "b"))
        env = dict(os.environ, PYTHONPATH=ROOT)

        def nine(*a, data=None):
            return sp.run([sys.executable, "-m", "nine"] + list(a), env=env, input=data,
                          capture_output=True, timeout=60)
        from nine.client import Client
        c = Client(addr)
        c.mkdir("/groups/conf")
        for i in range(1, 5):
            c.symlink("../../nodes/node%d/files/conf" % i, "/groups/conf/node%d" % i)
        r = nine("gread", "-a", addr, "/groups/conf", "--agg", "equiv")
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode() == ("---------------\nnode[1-3] (3)\n---------------\nmode=a\n"
                                     "---------------\nnode4 (1)\n---------------\nmode=b\n")
        r = nine("gwrite", "-a", addr, "/groups/conf", "--data", "mode=c\n")
        assert r.returncode == 0, r.stderr
        assert all((exp / ("node%d" % i) / "conf").read_text() == "mode=c\n" for i in range(1, 5))
        r = nine("gread", "-a", addr, "--member", "x=/nodes/node1/files/conf",
                 "--member", "y=/nodes/node9/files/conf", "--agg", "count")
        assert r.returncode == 1
        assert r.stdout.decode() == "1\nerrors: y: open: No such file or directory: /nodes/node9\n"
        r = nine("gread", "-a", addr, "/groups/conf", "--agg", "nosuch")
        assert r.returncode == 2 and b"unknown aggregator" in r.stderr
        c.close()
    finally:
        tree.stop()


def test_one_verb_parser_is_the_whole_parsers():
    """main() builds only the parser of the verb its command line starts with: each
    verb's help and parsing are the same as under the whole parser, and a name that is
    no verb gets the whole parser (whose error lists the verbs)."""
    from nine.cli.main import make_parser
    full = make_parser()
    verbs = full._subparsers._group_actions[0].choices
    assert {"serve", "mux", "read", "group", "pgrep"} <= set(verbs)
    for name, whole in verbs.items():
        one = make_parser(name)
        assert list(one._subparsers._group_actions[0].choices) == [name]
        assert one._subparsers._group_actions[0].choices[name].format_help() == \
            whole.format_help(), name
    argv = ["serve", "--proc", "--max-fids", "7", "--listen", "127.0.0.1:0"]
    a, b = make_parser("serve").parse_args(argv), full.parse_args(argv)
    assert {k: v for k, v in vars(a).items() if k != "func"} == \
        {k: v for k, v in vars(b).items() if k != "func"}
    assert make_parser("nosuch") is None
    p = nine("nosuch")
    assert p.returncode == 2 and b"invalid choice: 'nosuch' (choose from 'serve'" in p.stderr


def test_a_leaf_starts_without_what_it_does_not_use(tmp_path):
    """A leaf's start (proc, host, exec; no TLS) loads neither ssl, nor psutil (host/
    loads it when read), subprocess (exec: when a command runs), dataclasses and
    inspect, nor pprint (gevent's hub: when it reports an error): together a third of
    what the start cost.  Its garbage collector, off while it started, is on again
    once it serves, and what it serves works (host/mem, exec's clone)."""
    from nine.netwait import scaled
    code = r"""
import gc, os, signal, sys, threading, time
from nine.cli.main import main
seen = []
def check(deadline=time.monotonic() + %r):
    while not (gc.get_freeze_count() and gc.isenabled()) and time.monotonic() < deadline:
        time.sleep(0.01)                    # (settle(): serving)
    seen.append(sorted(m for m in ("ssl", "psutil", "subprocess", "dataclasses", "inspect",
                                   "pprint") if m in sys.modules))
    seen.append(gc.isenabled())
    with open(%r, "w") as f:
        f.write(repr(seen))
threading.Thread(target=check, daemon=True).start()
sys.exit(main(["serve", "--proc", "--host", "--exec", "--no-auth", "-q",
               "--address-file", %r, "--listen", "127.0.0.1:0"]))
""" % (scaled(30), str(tmp_path / "seen"), str(tmp_path / "addr"))
    p = subprocess.Popen([sys.executable, "-c", code], env=ENV, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (tmp_path / "seen").exists() or p.poll() is not None, 60,
                 "the leaf serving")
        assert (tmp_path / "seen").exists(), p.stderr.read()
        wait_for(lambda: (tmp_path / "seen").read_text(), 10, "its modules written")
        assert (tmp_path / "seen").read_text() == "[[], True]"
        addr = (tmp_path / "addr").read_text().strip()
        r = nine("read", "-A", "host", "-a", addr, "/mem")
        assert r.returncode == 0 and r.stdout.startswith(b"total "), r.stderr
        r = nine("read", "-A", "exec", "-a", addr, "/clone")
        assert r.returncode == 0 and r.stdout.strip().isdigit(), r.stderr
    finally:
        p.terminate()
        p.wait(30)
