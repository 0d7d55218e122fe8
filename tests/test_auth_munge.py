"""MUNGE authentication (nine.auth.munge) against a real munged of the test's own:
credentials round-trip, prove their encoder's uid and no other, and are refused when
replayed, expired, garbled or when munged cannot be reached; then diod's wire form,
both ways: nine's client side against diod, diod's clients against nine's server."""

import errno
import os
import pwd
import shutil
import socket
import subprocess
import time

import gevent
import pytest

import nine.protocol as P
from conftest import ThreadServer, free_port, wait_port
from munged import can_use_default, munged_fixture  # noqa: F401  (the fixture "munged")
from nine.auth import munge as M
from nine.auth.gate import Gate
from nine.client import Client
from nine.client.conn import Connection
from nine.client.errors import NineError
from nine.client.fid import Fid, attach
from nine.server.realfs import RealFS


def _libmunge_loads():
    try:
        M.default_socket()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _libmunge_loads(),
                                reason="libmunge.so.2 is not installed (apt-get install libmunge2)")

PEER = ("127.0.0.1", 5640)
NOBODY = 65534
ME = os.geteuid()


class Pipe:
    """The afid as ClientMethod.authenticate sees it, wired straight to a server-side
    Conversation; at most ``chunk`` bytes a write, as a small msize would cut them."""

    def __init__(self, conv, chunk=1 << 20):
        self.conv = conv
        self.chunk = chunk

    def write(self, data):
        return self.conv.write(data[:self.chunk])

    def read(self, count):
        return self.conv.read(count)


def as_nobody_cred(m):
    """A credential that munged made for uid NOBODY (the munge program run as it)."""
    if ME != 0:
        pytest.skip("needs root to run munge as another uid")
    if shutil.which("munge") is None:
        pytest.skip("the munge program is not installed (apt-get install munge)")
    p = subprocess.run(["munge", "--no-input", "--socket", m.socket], capture_output=True,
                       user=NOBODY, group=NOBODY, extra_groups=[], timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def start(m, n_uname=ME, uname=""):
    return M.MungeMethod(socket=m.socket).start(PEER, uname, n_uname, "/export")


# --- the module against munged ------------------------------------------------------

def test_available_and_default_socket(munged):
    assert M.available(munged.socket)
    assert not M.available(os.path.join(munged.dir, "no-such-socket"))
    assert not M.available(munged.key)         # a file, not a socket
    assert M.default_socket() == "/run/munge/munge.socket.2"


def test_round_trip_proves_this_uid(munged):
    cred = M.encode(munged.socket)
    assert cred.startswith("MUNGE:") and cred.endswith(":")
    assert M.decode(cred, munged.socket) == (ME, os.getegid())
    for chunk in (1 << 20, 7, 1):
        conv = start(munged)
        M.MungeClient(socket=munged.socket).authenticate(Pipe(conv, chunk), "", ME, "/export")
        p = conv.principal
        assert (p.uid, p.uname, p.method) == (ME, pwd.getpwuid(ME).pw_name, "munge")
        assert conv.read(64) == b""


def test_credential_of_another_uid_proves_that_uid_only(munged):
    cred = as_nobody_cred(munged)
    assert M.decode(cred, munged.socket) == (NOBODY, NOBODY)
    conv = start(munged, n_uname=NOBODY)
    assert conv.write(as_nobody_cred(munged)) > 0
    assert conv.principal.uid == NOBODY
    name = pwd.getpwuid(NOBODY).pw_name
    conv = start(munged, n_uname=P.NONUNAME, uname=name)    # 9P2000.u/9P2000: by name
    conv.write(as_nobody_cred(munged))
    assert conv.principal.uid == NOBODY
    conv = start(munged, n_uname=ME)
    with pytest.raises(PermissionError, match="uid %d does not authenticate uid %d"
                       % (NOBODY, ME)) as e:
        conv.write(as_nobody_cred(munged))
    assert e.value.errno == errno.EPERM and conv.principal is None
    # root's credential does not prove another user either (as diod's checkauth)
    conv = start(munged, n_uname=NOBODY)
    with pytest.raises(OSError) as e:
        conv.write(M.encode(munged.socket).encode())
    assert e.value.errno == errno.EPERM and conv.principal is None


def test_replayed_credential_is_refused(munged):
    cred = M.encode(munged.socket).encode()
    start(munged).write(cred)
    conv = start(munged)
    with pytest.raises(M.MungeError, match="Replayed credential") as e:
        conv.write(cred)
    assert (e.value.errno, e.value.status) == (errno.EPERM, M.EMUNGE_CRED_REPLAYED)
    assert conv.principal is None


def test_expired_credential_is_refused(munged):
    cred = M.encode(munged.socket, ttl=1).encode()
    time.sleep(3)                  # munged counts whole seconds past the ttl
    conv = start(munged)
    with pytest.raises(M.MungeError, match="Expired credential") as e:
        conv.write(cred)
    assert (e.value.errno, e.value.status) == (errno.EPERM, M.EMUNGE_CRED_EXPIRED)
    assert conv.principal is None


def test_garbled_credential_is_refused(munged):
    conv = start(munged)
    with pytest.raises(M.MungeError) as e:
        conv.write(b"MUNGE:garbage:")
    assert (e.value.errno, e.value.status) == (errno.EPERM, M.EMUNGE_BAD_CRED)
    cred = M.encode(munged.socket)
    i = len(cred) // 2
    bad = cred[:i] + ("A" if cred[i] != "A" else "B") + cred[i + 1:]
    with pytest.raises(M.MungeError) as e:
        start(munged).write(bad.encode())
    assert e.value.errno == errno.EPERM and e.value.status >= M.EMUNGE_BAD_CRED
    with pytest.raises(OSError, match="not a munge credential") as e:
        start(munged).write(b"let me in")
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError, match="bytes after the credential"):
        start(munged).write(M.encode(munged.socket).encode() + b"more")
    # one credential per afid: nothing more once it is presented
    conv = start(munged)
    conv.write(M.encode(munged.socket).encode())
    with pytest.raises(OSError) as e:
        conv.write(b"MUNGE:")
    assert e.value.errno == errno.EINVAL and conv.principal.uid == ME


def test_unknown_user_is_refused_at_start(munged):
    with pytest.raises(OSError, match="unknown user") as e:
        start(munged, n_uname=P.NONUNAME, uname="no-such-user-of-nine")
    assert e.value.errno == errno.EPERM


def test_wrong_socket_is_a_clear_error(munged, tmp_path):
    bad = str(tmp_path / "no-munged-here")
    with pytest.raises(M.MungeError, match="Failed to access.*no-munged-here") as e:
        M.encode(bad)
    assert (e.value.errno, e.value.status) == (errno.ECONNREFUSED, M.EMUNGE_SOCKET)
    conv = M.MungeMethod(socket=bad).start(PEER, "", ME, "/export")
    with pytest.raises(M.MungeError, match="no-munged-here") as e:
        conv.write(M.encode(munged.socket).encode())
    assert e.value.errno == errno.ECONNREFUSED and conv.principal is None


def test_munged_calls_leave_the_hub_free(tmp_path):
    """libmunge retries a refused connection for about two seconds: in the thread pool,
    while the other greenlets go on."""
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()                       # a socket file nobody listens on
    ticks = []

    def tick():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.05)

    g = gevent.spawn(tick)
    try:
        t0 = time.monotonic()
        with pytest.raises(M.MungeError, match="Connection refused"):
            M.MungeClient(socket=stale).authenticate(Pipe(None), "", ME, "")
        took = time.monotonic() - t0
    finally:
        g.kill()
    assert took > 0.5 and len(ticks) >= took / 0.05 / 3


# --- diod's wire form ----------------------------------------------------------------

@pytest.fixture
def export(tmp_path):
    d = tmp_path / "exp"
    d.mkdir()
    (d / "hello.txt").write_bytes(b"hello through munge\n")
    (d / "sub").mkdir()
    return d


@pytest.fixture
def diod(munged, export, tmp_path):
    """diod WITHOUT -n (MUNGE authentication required), seeing the test's munged at
    libmunge's default socket path in a mount namespace of its own."""
    if shutil.which("diod") is None:
        pytest.skip("diod is not installed (apt-get install diod)")
    if not can_use_default():
        pytest.skip("diod reaches munged only at /run/munge/munge.socket.2: needs a mount "
                    "namespace (root) to put the test's munged there")
    addr = "127.0.0.1:%d" % free_port()
    log = tmp_path / "diod.log"
    proc = subprocess.Popen(munged.at_default(["diod", "-f", "-l", addr, "-e", str(export),
                                               "-L", str(log)]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(addr, proc=proc)
    proc.addr = addr
    proc.log = log
    yield proc
    proc.terminate()
    proc.wait(10)


class Afid:
    """An auth fid as ClientMethod.authenticate sees it: reads and writes at its offset."""

    def __init__(self, conn, fid):
        self.fid = Fid(conn, fid)
        self.offset = 0

    def write(self, data):
        n = self.fid.write(self.offset, data)
        self.offset += n
        return n

    def read(self, count):
        data = self.fid.read(self.offset, count)
        self.offset += len(data)
        return data


def tauth(conn, n_uname, aname, method):
    """Tauth, then the method's conversation on the afid; the afid number."""
    afid = conn.alloc_fid()
    r = conn.rpc(P.Tauth(afid=afid, uname="", aname=aname, n_uname=n_uname))
    assert r.aqid.type & P.QTAUTH
    if method is not None:
        method.authenticate(Afid(conn, afid), "", n_uname, aname)
    return afid


def read_file(root, name):
    f = root.walk([name])
    f.lopen(0)
    data = f.read(0, 8192)
    f.clunk()
    return data


def test_nine_munge_client_attaches_to_diod(diod, munged, export):
    """nine's MungeClient writes what diod's checkauth accepts; diod's rules: the
    attach's user is the afid's, and once root authenticated on a connection, attaches
    without an afid may name any user there."""
    aname = str(export)
    client = M.MungeClient(socket=munged.socket)
    with Connection(diod.addr) as conn:
        with pytest.raises(NineError) as e:                  # no afid: refused
            attach(conn, "", aname, ME)
        assert e.value.errno == errno.EPERM
        afid = tauth(conn, ME, aname, client)
        with pytest.raises(NineError) as e:                  # another user than the afid's
            attach(conn, "", aname, NOBODY, afid=afid)
        assert e.value.errno == errno.EPERM
        root = attach(conn, "", aname, ME, afid=afid)
        Fid(conn, afid).clunk()
        assert read_file(root, "hello.txt") == b"hello through munge\n"
        if ME == 0:
            attach(conn, "", aname, NOBODY)                  # diod's SRV_FLAGS_AUTHCONN
    with Connection(diod.addr) as conn:                      # a replayed credential
        cred = M.encode(munged.socket).encode()
        for expect_ok in (True, False):
            afid = tauth(conn, ME, aname, None)
            Afid(conn, afid).write(cred)
            if expect_ok:
                attach(conn, "", aname, ME, afid=afid)
            else:
                with pytest.raises(NineError) as e:
                    attach(conn, "", aname, ME, afid=afid)
                assert e.value.errno == errno.EPERM
    assert "Replayed credential" in diod.log.read_text()
    assert diod.poll() is None


def test_nine_client_reads_from_diod(diod, munged, export):
    c = Client(diod.addr, aname=str(export), n_uname=ME, auth=M.MungeClient(socket=munged.socket))
    try:
        assert c.read_file("hello.txt") == b"hello through munge\n"
    finally:
        c.close()


@pytest.fixture
def nine_munge(munged, export):
    s = ThreadServer({None: RealFS(str(export)).attach},
                     gate=Gate(M.MungeMethod(socket=munged.socket)))
    yield s
    s.stop()


def test_diod_clients_read_from_nine(nine_munge, munged, export):
    if shutil.which("diodcat") is None:
        pytest.skip("diod's clients are not installed (apt-get install diod)")
    if not can_use_default():
        pytest.skip("diod's clients reach munged only at /run/munge/munge.socket.2: needs "
                    "a mount namespace (root) to put the test's munged there")
    p = subprocess.run(munged.at_default(["diodcat", "-s", nine_munge.addr, "-a", str(export),
                                          "hello.txt"]), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"hello through munge\n"
    p = subprocess.run(munged.at_default(["diodls", "-s", nine_munge.addr, "-a", str(export),
                                          "/"]), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert {"hello.txt", "sub"} <= set(p.stdout.decode().split())
    # without munged at the default socket, diodcat has no credential to give
    p = subprocess.run(["diodcat", "-s", nine_munge.addr, "-a", str(export), "hello.txt"],
                       capture_output=True, timeout=60)
    if not M.available():
        assert p.returncode != 0 and b"authenticat" in p.stderr


def test_nine_client_against_nine_munge(nine_munge, munged, export):
    auth = M.MungeClient(socket=munged.socket)
    c = Client(nine_munge.addr, aname=str(export), n_uname=ME, auth=auth)
    try:
        assert c.read_file("hello.txt") == b"hello through munge\n"
    finally:
        c.close()
    with pytest.raises(OSError) as e:                        # no credential
        Client(nine_munge.addr, aname=str(export), n_uname=ME, auth=None).close()
    assert e.value.errno in (errno.EPERM, errno.EACCES)
    with pytest.raises(OSError) as e:                        # this uid's credential, another user
        Client(nine_munge.addr, aname=str(export), n_uname=NOBODY if ME != NOBODY else 0,
               auth=auth).close()
    assert e.value.errno in (errno.EPERM, errno.EACCES)
