"""TLS links (nine.auth.tls) over loopback with gevent sockets and no monkey patching: a
mutually verified echo (1 MiB both ways at once), and the refusals: a client without a
certificate, a client or server signed by another CA, a wrong host name, a handshake
that never comes; the test PKI from either backend."""

import os
import shutil
import socket
import ssl
import stat
import sys

import gevent
import pytest
from gevent import socket as gsocket
from gevent.server import StreamServer

from nine.auth import tls


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return tls.make_test_pki(str(tmp_path_factory.mktemp("pki") / "site"),
                             ["server", "client", "127.0.0.1"])


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    return tls.make_test_pki(str(tmp_path_factory.mktemp("other") / "site"),
                             ["server", "client"])


class EchoServer:
    """A gevent StreamServer that runs tls.accept on each connection and echoes; it
    keeps the client names it verified and the handshakes it refused."""

    def __init__(self, ctx, timeout=tls.HANDSHAKE_TIMEOUT):
        self.ctx = ctx
        self.timeout = timeout
        self.peers = []
        self.errors = []
        self.srv = StreamServer(("127.0.0.1", 0), self.handle)
        self.srv.start()
        self.port = self.srv.address[1]

    def handle(self, sock, address):
        try:
            s = tls.accept(sock, self.ctx, self.timeout)
        except OSError as e:
            self.errors.append(e)
            return
        self.peers.append(tls.peer_names(s))
        with s:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                s.sendall(data)

    def wait_error(self):
        with gevent.Timeout(10):
            while not self.errors:
                gevent.sleep(0.01)
        return self.errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.srv.stop()


def connect(port, ctx, name):
    return tls.dial(gsocket.create_connection(("127.0.0.1", port)), ctx, name)


def exchange(port, ctx, name, payload=b"ping"):
    """Dial, send payload, and return what comes back, or the OSError that ended it."""
    try:
        s = connect(port, ctx, name)
        with s:
            s.sendall(payload)
            return s.recv(len(payload))
    except OSError as e:
        return e


def test_echo_with_mutual_verification(pki):
    ca, certs = pki
    with EchoServer(tls.server_context(*certs["server"], ca)) as srv, gevent.Timeout(30):
        s = connect(srv.port, tls.client_context(*certs["client"], ca), "server")
        assert s.version() == "TLSv1.3"
        assert tls.peer_names(s) == ("server",)
        payload = os.urandom(1 << 20)
        got = bytearray()

        def reader():
            while len(got) < len(payload):
                data = s.recv(65536)
                if not data:
                    break
                got.extend(data)
        r = gevent.spawn(reader)
        s.sendall(payload)       # the echo comes back while this is still sending
        r.get()
        s.close()
        assert got == payload
        assert srv.peers == [("client",)] and srv.errors == []


def test_an_address_as_the_name(pki):
    ca, certs = pki
    with EchoServer(tls.server_context(*certs["127.0.0.1"], ca)) as srv, gevent.Timeout(30):
        ctx = tls.client_context(*certs["client"], ca)
        assert exchange(srv.port, ctx, "127.0.0.1") == b"ping"


def test_client_without_certificate_is_refused(pki):
    ca, certs = pki
    with EchoServer(tls.server_context(*certs["server"], ca)) as srv, gevent.Timeout(30):
        got = exchange(srv.port, tls.client_context(None, None, ca), "server")
        assert isinstance(got, OSError) or got == b""
        assert "certificate" in str(srv.wait_error())
        assert srv.peers == []


def test_client_certificate_from_another_ca_is_refused(pki, other):
    ca, certs = pki
    with EchoServer(tls.server_context(*certs["server"], ca)) as srv, gevent.Timeout(30):
        got = exchange(srv.port, tls.client_context(*other[1]["client"], ca), "server")
        assert isinstance(got, OSError) or got == b""
        assert isinstance(srv.wait_error(), ssl.SSLError)
        assert srv.peers == []


def test_server_from_another_ca_or_with_another_name_is_refused(pki, other):
    ca, certs = pki
    ctx = tls.client_context(*certs["client"], ca)
    with EchoServer(tls.server_context(*other[1]["server"], other[0])) as srv, \
            gevent.Timeout(30):
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(srv.port, ctx, "server")
    with EchoServer(tls.server_context(*certs["client"], ca)) as srv, gevent.Timeout(30):
        with pytest.raises(ssl.SSLCertVerificationError, match="server"):
            connect(srv.port, ctx, "server")
        lax = tls.client_context(*certs["client"], ca, check_hostname=False)
        assert exchange(srv.port, lax, None) == b"ping"


def test_handshake_that_never_comes_times_out(pki):
    ca, certs = pki
    with EchoServer(tls.server_context(*certs["server"], ca), timeout=0.3) as srv, \
            gevent.Timeout(30):
        s = gsocket.create_connection(("127.0.0.1", srv.port))
        try:
            assert "timed out" in str(srv.wait_error())
        finally:
            s.close()


def test_a_standard_context_is_refused(pki):
    ca, certs = pki
    a, b = socket.socketpair()
    with pytest.raises(TypeError, match="block the hub"):
        tls.accept(gsocket.socket(fileno=a.detach()), ssl.create_default_context())
    b.close()


def test_test_pki_files(tmp_path):
    ca, certs = tls.make_test_pki(str(tmp_path / "p"), ["h1", "10.0.0.7"])
    assert stat.S_IMODE(os.stat(tmp_path / "p").st_mode) == 0o700
    for path in (str(tmp_path / "p" / "ca.key"),) + certs["h1"][1:] + certs["10.0.0.7"][1:]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        tls.make_test_pki(str(tmp_path / "p"), ["h2"])
    with pytest.raises(ValueError):
        tls.make_test_pki(str(tmp_path / "q"), ["../evil"])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
def test_test_pki_from_the_openssl_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)   # import fails: openssl it is
    ca, certs = tls.make_test_pki(str(tmp_path / "p"), ["server", "client", "127.0.0.1"])
    with EchoServer(tls.server_context(*certs["server"], ca)) as srv, gevent.Timeout(30):
        s = connect(srv.port, tls.client_context(*certs["client"], ca), "server")
        with s:
            assert tls.peer_names(s) == ("server",)
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        srv_ip = EchoServer(tls.server_context(*certs["127.0.0.1"], ca))
        with srv_ip:
            assert exchange(srv_ip.port, tls.client_context(*certs["client"], ca),
                            "127.0.0.1") == b"ping"
    assert srv.peers == [("client",)]
