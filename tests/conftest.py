"""Shared fixtures and helpers of the tests (servers in a subprocess or a thread, raw
9P connections), and the marker each test gets for what it needs (unit, loopback,
process, vm: declared in setup.cfg; tests/README.md has the commands).  MARKS gives
each module its marker and TEST_MARKS a test's own where it differs from its
module's; a module missing from MARKS stops the collection."""

import os
import socket
import struct
import subprocess
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import nine.protocol as P  # noqa: E402
from nine.netwait import free_port, wait_port  # noqa: E402


def _session_key():
    """Every server the tests start requires authentication by default, as on a real
    host (nine.assembly): the tests' servers and clients share one key made for this
    run ($NINE_KEY, inherited by every process the tests start), unless the caller set
    one; a test that needs another method says so itself."""
    if os.environ.get("NINE_KEY"):
        return
    import atexit
    import shutil
    import tempfile
    from nine.auth.key import make_key
    d = tempfile.mkdtemp(prefix="nine-test-key-")
    make_key(os.path.join(d, "key"))
    os.environ["NINE_KEY"] = os.path.join(d, "key")
    atexit.register(shutil.rmtree, d, True)


_session_key()


def _main_hub():
    """The main thread's gevent hub is made first, so that it holds libev's default
    loop (the only one with child watchers, which gevent.subprocess needs): a test
    module that starts a server in a thread of its own before any test of this thread
    touched gevent would otherwise take it."""
    import gevent
    gevent.get_hub()


_main_hub()

MARKS = {
    "test_aggregate": "unit",
    "test_auth_key": "unit",
    "test_codec": "unit",
    "test_final": "unit",
    "test_gather": "unit",
    "test_layout": "unit",
    "test_auth": "process",
    "test_realfs": "unit",
    "test_realfs_fds": "loopback",
    "test_host": "loopback",
    "test_bad_values": "loopback",
    "test_dialects": "loopback",
    "test_netwait": "loopback",
    "test_server_protocol": "loopback",
    "test_conn_hub": "loopback",
    "test_tls": "loopback",
    "test_auth_munge": "process",
    "test_bench_smoke": "process",
    "test_cli": "process",
    "test_client": "process",
    "test_confinement": "process",
    "test_exec": "process",
    "test_fuzz": "process",
    "test_group": "process",
    "test_relay": "loopback",
    "test_hosts": "process",
    "test_holes": "process",
    "test_limits": "process",
    "test_interop_diod": "process",
    "test_launch_slurm": "process",
    "test_systemd_units": "process",
    "test_launch_ssh": "process",
    "test_adopt": "process",
    "test_mux": "process",
    "test_mux_remote": "process",
    "test_mux_hang": "process",
    "test_monitor": "process",
    "test_pgrep": "process",
    "test_pcp": "process",
    "test_trust_groups": "process",
    "test_psync": "process",
    "test_proc": "process",
    "test_ptail": "process",
    "test_ptop": "process",
    "test_soak": "process",
    "test_tls_links": "process",
    "test_kernel_auth": "vm",
    "test_kernel_group": "vm",
    "test_kernel_mux": "vm",
    "test_kernel_pjd": "vm",
    "test_kernel_synth": "vm",
    "test_kernel_vm": "vm",
}

#: tests that need more or less than their module: "module::function" -> marker
TEST_MARKS = {
    "test_exec::test_shell_through_linux_kernel_client": "vm",
    "test_final::test_over_the_wire_9p2000L": "loopback",
    "test_final::test_over_the_wire_9p2000": "loopback",
    "test_final::test_over_the_wire_creates_and_renames": "loopback",
    "test_kernel_mux::test_tree_banner_check": "unit",
    "test_kernel_auth::test_nmount_hmac": "process",
    "test_kernel_auth::test_nmount_handshake": "process",
    "test_kernel_auth::test_nmount_refusals": "process",
    "test_kernel_auth::test_handshake_leaves_a_trusted_connection": "process",
    "test_kernel_auth::test_nine_mount_fake": "process",
    "test_kernel_auth::test_nine_mount_usage": "process",
    "test_kernel_auth::test_nine_mount_without_kernel_9p": "process",
    "test_kernel_vm::test_parse_console": "unit",
    "test_kernel_pjd::test_parse_prove_output": "unit",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    """Each test gets the marker of TEST_MARKS, else of its module in MARKS."""
    missing = set()
    for item in items:
        module = item.module.__name__ if item.module is not None else item.nodeid
        name = getattr(item, "originalname", item.name)
        mark = TEST_MARKS.get(f"{module}::{name}", MARKS.get(module))
        if mark is None:
            missing.add(module)
        else:
            item.add_marker(mark)
    if missing:
        raise pytest.UsageError("tests/conftest.py: add the modules %s to MARKS (unit, loopback, "
                                "process or vm)" % ", ".join(sorted(missing)))


#: the environment of the nine processes the tests start (this checkout first on the
#: path; $NINE_KEY: the session's key)
ENV_ROOT = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


class NineProc:
    """`python -m nine serve` in a subprocess."""

    def __init__(self, args, port):
        self.port = port
        self.addr = "127.0.0.1:%d" % port
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "nine", "serve", "--listen",
                                      self.addr, "-q"] + list(args),
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_port(port, proc=self.proc)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def export_dir(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    (d / "hello.txt").write_bytes(b"hello, world\n")
    (d / "sub").mkdir()
    (d / "sub" / "inner").write_bytes(b"inner\n")
    return d


@pytest.fixture
def nine_server(export_dir):
    s = NineProc(["--export", str(export_dir), "--ctl"], free_port())
    s.export = export_dir
    yield s
    s.stop()


class ThreadServer:
    """A nine Server running in its own thread (with its own gevent hub), so a test can
    define synthetic trees in Python and talk to it with plain blocking sockets."""

    def __init__(self, exports, **kw):
        self.exports = exports
        self.kw = kw
        self.port = None
        self._ready = threading.Event()
        self._stop = None
        self.server = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        self._ready.wait(10)
        self.addr = "127.0.0.1:%d" % self.port

    def _run(self):
        import gevent
        import gevent.event
        from nine.server.core import Server
        exports = self.exports() if callable(self.exports) else self.exports
        self.server = Server(exports, **self.kw)
        srv = self.server.listen("127.0.0.1:0")
        self.port = srv.address[1]
        self._stop = gevent.event.Event()
        self._async = gevent.get_hub().loop.async_()
        self._async.start(self._stop.set)
        self._ready.set()
        self._stop.wait()
        self.server.stop()

    def stop(self):
        if self._async is not None:
            self._async.send()
        self.t.join(5)


class RawConn:
    """9P over a plain blocking socket, frame by frame, for protocol-level tests.

    A Tattach sent with afid NOFID is first authenticated the way nine's client does
    (Tauth, the shared-key conversation with the session's key, then the Tattach names
    that afid, clunked after) when the server asks for it (it answers the Tauth with
    Rauth); auto_auth=False sends the frames exactly as given."""

    AFID = 0xFFFFFF00          # the auth fids it uses (never a test's fid)

    def __init__(self, port, dialect=P.V9P2000L, timeout=10, auto_auth=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.dialect = dialect
        self.buf = b""
        self.auto_auth = auto_auth

    def send(self, msg):
        self.sock.sendall(P.encode(msg, self.dialect))

    def send_raw(self, data):
        self.sock.sendall(data)

    def recv(self):
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack("<I", self.buf[:4])[0]
                if len(self.buf) >= n:
                    frame, self.buf = self.buf[:n], self.buf[n:]
                    return P.decode(frame, self.dialect)
            d = self.sock.recv(1 << 20)
            if not d:
                raise EOFError("connection closed")
            self.buf += d

    def rpc(self, msg):
        if isinstance(msg, P.Tattach) and msg.afid == P.NOFID and self.auto_auth:
            return self._auth_attach(msg)
        self.send(msg)
        return self.recv()

    def _auth_attach(self, msg):
        import secrets
        from nine.auth import key as K
        n_uname = msg.n_uname if self.dialect != P.V9P2000 else P.NONUNAME
        afid = self.AFID
        r = self._rpc(P.Tauth(afid=afid, uname=msg.uname, aname=msg.aname,
                              n_uname=n_uname, tag=msg.tag))
        if not isinstance(r, P.Rauth):
            return self._rpc(msg)                  # no authentication asked for
        ch = self._rpc(P.Tread(fid=afid, offset=0, count=K.CHALLENGE_BYTES, tag=msg.tag)).data
        nc = secrets.token_bytes(K.NONCE_BYTES)
        t = K._transcript(ch[len(K.TAG):], nc, msg.uname, n_uname, msg.aname)
        self._rpc(P.Twrite(fid=afid, offset=0, data=nc + K._mac(K.load_key(), K.CLIENT_LABEL, t),
                           tag=msg.tag))
        msg.afid = afid
        r = self._rpc(msg)
        msg.afid = P.NOFID
        self._rpc(P.Tclunk(fid=afid, tag=msg.tag))
        return r

    def _rpc(self, msg):
        self.send(msg)
        return self.recv()

    def version(self, msize=65536, version=None):
        r = self.rpc(P.Tversion(msize=msize, version=version or self.dialect, tag=P.NOTAG))
        return r

    def attach(self, fid=0, aname="", uname="root", n_uname=0):
        return self.rpc(P.Tattach(fid=fid, afid=P.NOFID, uname=uname, aname=aname,
                                  n_uname=n_uname, tag=1))

    def close(self):
        self.sock.close()

    def closed_by_peer(self, timeout=5):
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
