"""Authentication and authorization against real `nine serve` / `nine mux` processes:
nobody is root by saying so (docs/security.md).

The servers require authentication by default (the session's shared key: $NINE_KEY,
tests/conftest.py); RawConn(auto_auth=False) sends attaches exactly as a client that
does not authenticate would."""

import errno
import os
import subprocess
import sys
import time

import pytest

import nine.protocol as P
from conftest import ENV_ROOT, NineProc, RawConn, free_port, wait_port
from nine.auth.key import KeyClient
from nine.client import Client, NineError

DIALECTS = [P.V9P2000, P.V9P2000U, P.V9P2000L]


def _attach_unauthenticated(port, dialect, uname="root", n_uname=0, aname=""):
    c = RawConn(port, dialect=dialect, auto_auth=False)
    try:
        assert c.version(msize=65536).version == dialect
        return c.rpc(P.Tattach(fid=0, afid=P.NOFID, uname=uname, aname=aname, n_uname=n_uname,
                               tag=1))
    finally:
        c.close()


def _refused(r, codes=(errno.EACCES,)):
    if isinstance(r, P.Rlerror):
        return r.ecode in codes
    return isinstance(r, P.Rerror) and "authentication required" in r.ename


@pytest.fixture
def exported(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    (d / "hello.txt").write_bytes(b"hello\n")
    secret = d / "secret"
    secret.write_bytes(b"root only\n")
    os.chmod(secret, 0o600)
    return d


@pytest.fixture
def leaf(exported):
    p = NineProc(["--exec", "--proc", "--export", str(exported)], free_port())
    yield p
    p.stop()


class MuxProc:
    def __init__(self, children, args=()):
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        argv = [sys.executable, "-m", "nine", "mux", "--listen", self.addr, "-q",
                "--child-aname", "nine"] + list(args)
        for name, addr in children:
            argv += ["--child", "%s=%s" % (name, addr)]
        self.proc = subprocess.Popen(argv, env=ENV_ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        wait_port(self.port, proc=self.proc)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def mux(leaf):
    m = MuxProc([("n1", leaf.addr)])
    yield m
    m.stop()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_claiming_root_without_credentials_is_refused_on_a_leaf(leaf, dialect):
    """The reproduction of the issue: attach as root (uname root, n_uname 0), no auth
    fid, to `nine serve --exec --proc --export DIR`: refused, for every aname."""
    for aname in ("", "exec", "proc", "nine"):
        r = _attach_unauthenticated(leaf.port, dialect, aname=aname)
        assert _refused(r), (aname, r)
    assert leaf.alive()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_claiming_root_without_credentials_is_refused_through_a_mux(mux, dialect):
    for aname in ("", "n1/exec", "mux"):
        r = _attach_unauthenticated(mux.port, dialect, aname=aname)
        assert _refused(r), (aname, r)
    # an authenticated client of the same mux is served, and reaches the leaf
    c = Client(mux.addr, uname="root", n_uname=0)
    try:
        assert c.read_file("n1/files/hello.txt") == b"hello\n"
    finally:
        c.close()


def test_exec_id_runs_only_when_authenticated(leaf):
    """`exec id` through an authenticated attach runs as the proven user; the same
    request without credentials never gets as far as the clone file."""
    c = Client(leaf.addr, aname="exec", uname="root", n_uname=0)
    try:
        with c.open("clone", "r") as clone:
            sid = clone.read(64).decode().strip()
            with c.open("%s/ctl" % sid, "r+") as ctl:
                ctl.write(b"exec id\n")
            out = c.read_file("%s/stdout" % sid)
        assert out.startswith(b"uid=0("), out
    finally:
        c.close()
    with pytest.raises(NineError) as ei:
        Client(leaf.addr, aname="exec", uname="root", n_uname=0, auth=None)
    assert ei.value.errno == errno.EACCES


def test_identity_is_kept_down_the_tree(mux, exported):
    """The mux authenticates to its leaf as its own principal and attaches per user:
    nobody (proven by the key holder's attach as nobody) reads what nobody may read,
    and is refused the root-only file at the leaf."""
    c = Client(mux.addr, uname="nobody", n_uname=65534)
    try:
        assert c.read_file("n1/files/hello.txt") == b"hello\n"
        with pytest.raises(NineError) as ei:
            c.read_file("n1/files/secret")
        assert ei.value.errno == errno.EACCES
    finally:
        c.close()
    root = Client(mux.addr, uname="root", n_uname=0)
    try:
        assert root.read_file("n1/files/secret") == b"root only\n"
    finally:
        root.close()


def test_wrong_key_is_refused_logged_and_others_unaffected(leaf, tmp_path):
    bad = KeyClient(os.urandom(32))
    with pytest.raises(OSError) as ei:
        Client(leaf.addr, uname="root", n_uname=0, auth=bad)
    assert ei.value.errno in (errno.EACCES, errno.EPERM)
    good = Client(leaf.addr, uname="root", n_uname=0)
    try:
        assert good.read_file("hello.txt") == b"hello\n"
    finally:
        good.close()
    leaf.stop()
    err = leaf.proc.stderr.read().decode()
    assert "refused 127.0.0.1" in err and "shared key" in err, err


def test_auth_fid_for_another_user_is_refused(leaf):
    """An auth fid proved for root does not carry an attach as another user (the
    attach must name the user, n_uname and aname that the Tauth named)."""
    from nine.auth import client_method
    from nine.client.auth import authenticate
    from nine.client.conn import Connection
    from nine.client.fid import attach
    conn = Connection(leaf.addr)
    try:
        afid = authenticate(conn, client_method(), "root", "", 0)
        with pytest.raises(NineError) as ei:
            attach(conn, "nobody", "", 65534, afid=afid)
        assert ei.value.errno == errno.EACCES
        with pytest.raises(NineError):
            attach(conn, "root", "exec", 0, afid=afid)          # another aname
        assert attach(conn, "root", "", 0, afid=afid).qid is not None
    finally:
        conn.close()


def test_a_tauth_flood_is_bounded(leaf):
    c = RawConn(leaf.port, auto_auth=False)
    try:
        c.version()
        codes = []
        for i in range(20):
            r = c.rpc(P.Tauth(afid=100 + i, uname="root", aname="", n_uname=0, tag=1))
            codes.append(r.ecode if isinstance(r, P.Rlerror) else 0)
        assert codes[:16] == [0] * 16 and set(codes[16:]) == {errno.EMFILE}, codes
        # clunking one frees its place
        assert isinstance(c.rpc(P.Tclunk(fid=100, tag=1)), P.Rclunk)
        assert isinstance(c.rpc(P.Tauth(afid=200, uname="root", aname="", n_uname=0, tag=1)),
                          P.Rauth)
    finally:
        c.close()
    assert leaf.alive()


def test_repeated_failures_are_slowed_down(leaf):
    """Refusals from one address are answered later and later."""
    times = []
    for _ in range(6):
        t0 = time.monotonic()
        r = _attach_unauthenticated(leaf.port, P.V9P2000L)
        times.append(time.monotonic() - t0)
        assert _refused(r)
    assert times[-1] >= 0.4, times          # 0.05 * 2**4 s held back at the 6th
    # a success resets the count
    Client(leaf.addr, uname="root", n_uname=0).close()
    t0 = time.monotonic()
    _attach_unauthenticated(leaf.port, P.V9P2000L)
    assert time.monotonic() - t0 < times[-1]


def test_no_auth_is_explicit_and_limits_proc_and_exec(exported):
    """--no-auth logs a warning at start; proc and exec then serve the server's own user
    only (root here), unless --squash; files follow the claimed user as before."""
    p = NineProc(["--no-auth", "--exec", "--proc", "--export", str(exported)], free_port())
    try:
        own = Client(p.addr, aname="exec", uname="root", n_uname=0, auth=None)
        own.close()
        with pytest.raises(NineError) as ei:
            Client(p.addr, aname="exec", uname="nobody", n_uname=65534, auth=None)
        assert ei.value.errno == errno.EACCES
        with pytest.raises(NineError):
            Client(p.addr, aname="proc", uname="nobody", n_uname=65534, auth=None)
        c = Client(p.addr, uname="nobody", n_uname=65534, auth=None)
        try:
            assert c.read_file("hello.txt") == b"hello\n"
        finally:
            c.close()
    finally:
        p.stop()
    assert "without authentication" in p.proc.stderr.read().decode()
    q = NineProc(["--no-auth", "--squash", "nobody", "--exec", "--export", str(exported)],
                 free_port())
    try:
        Client(q.addr, aname="exec", uname="daemon", n_uname=1, auth=None).close()
    finally:
        q.stop()


def test_serve_without_any_method_refuses_to_start(tmp_path, exported):
    """No munged, no key file: `nine serve` says what to do instead of serving openly."""
    env = dict(ENV_ROOT, NINE_KEY=str(tmp_path / "absent"), HOME=str(tmp_path))
    if os.path.exists("/run/munge/munge.socket.2"):
        pytest.skip("a munged runs on this host: it would be used")
    r = subprocess.run([sys.executable, "-m", "nine", "serve", "--listen", "127.0.0.1:0",
                        "--export", str(exported)], env=env, capture_output=True, timeout=60)
    assert r.returncode != 0
    assert b"no authentication method" in r.stderr and b"--no-auth" in r.stderr


def test_nine_key_makes_a_private_key_once(tmp_path):
    path = tmp_path / "k" / "key"
    env = dict(ENV_ROOT, NINE_KEY=str(path))
    r = subprocess.run([sys.executable, "-m", "nine", "key"], env=env, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert os.stat(path).st_mode & 0o777 == 0o600
    first = path.read_bytes()
    r = subprocess.run([sys.executable, "-m", "nine", "key"], env=env, capture_output=True,
                       timeout=60)
    assert r.returncode != 0 and b"exists already" in r.stderr
    assert path.read_bytes() == first
