"""Encrypted links (nine.auth.tls on real servers): `nine serve` and `nine mux` processes
with --tls-cert/--tls-key/--tls-ca, read by nine's Client over TLS (a big file intact,
concurrent reads, a group read through a mux whose children are TLS too), and the
refusals: a plain client, a client whose certificate another CA signed, a client that
shows a good certificate but does not authenticate (TLS does not replace the key), a
mux that dials a plain child over TLS.  The client verbs take the certificate set from
the environment; a partial set is refused at start.  A topology's `tls = DIR` puts a
whole tree (leaves, inner muxes, root) on TLS; unix sockets stay plain at both ends.

Every process uses the test PKI's certificate for 127.0.0.1 (the host name the dialling
end checks), the test client the one named "client"."""

import os
import re
import subprocess
import sys

import gevent
import pytest

from conftest import ENV_ROOT, NineProc
from nine.auth import tls
from nine.client import Client, NineError
from nine.netwait import free_port, scaled, wait_port

BIG = 8 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca, certs = tls.make_test_pki(str(tmp_path_factory.mktemp("pki") / "site"),
                                  ["127.0.0.1", "client"])
    return ca, certs


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return tls.make_test_pki(str(tmp_path_factory.mktemp("other") / "site"), ["client"])


def tls_args(pki):
    ca, certs = pki
    cert, key = certs["127.0.0.1"]
    return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]


def client_ctx(pki):
    ca, certs = pki
    return tls.client_context(*certs["client"], ca)


@pytest.fixture(scope="module")
def data():
    return os.urandom(BIG)


@pytest.fixture(scope="module")
def leaf(pki, data, tmp_path_factory):
    d = tmp_path_factory.mktemp("leaf")
    (d / "big").write_bytes(data)
    (d / "v").write_bytes(b"value 0\n")
    p = NineProc(["--export", str(d)] + tls_args(pki), free_port())
    yield p
    p.stop()


class NineMux:
    """`python -m nine mux` in a subprocess."""

    def __init__(self, args):
        port = free_port()
        self.addr = "127.0.0.1:%d" % port
        self.proc = subprocess.Popen([sys.executable, "-m", "nine", "mux", "--listen",
                                      self.addr, "-q"] + list(args), env=ENV_ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, proc=self.proc)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_big_file_and_concurrent_reads_over_tls(leaf, pki, data):
    with gevent.Timeout(scaled(60)):
        c = Client(leaf.addr, tls=client_ctx(pki))
        assert c.conn.tls
        assert c.read_file("/big") == data
        c2 = Client(leaf.addr, tls=client_ctx(pki))
        gs = [gevent.spawn(cl.read_file, "/big") for cl in (c, c, c, c2, c2)]
        gevent.joinall(gs, raise_error=True)
        assert all(g.value == data for g in gs)
        # and the other way: a big write over TLS comes out intact
        with c.open("/copy", "w") as f:
            f.write(data)
        assert c2.read_file("/copy") == data
        c.remove("/copy")
        c.close()
        c2.close()


def test_plain_client_is_refused(leaf, pki):
    with gevent.Timeout(scaled(30)):
        with pytest.raises(NineError):
            Client(leaf.addr)
        # a client that shows no certificate
        ca, _ = pki
        with pytest.raises(NineError):
            Client(leaf.addr, tls=tls.client_context(None, None, ca))
    assert leaf.alive()


def test_client_certificate_from_another_ca_is_refused(leaf, pki, other_pki):
    ca, _ = pki
    foreign = tls.client_context(*other_pki[1]["client"], ca)
    with gevent.Timeout(scaled(30)):
        with pytest.raises(NineError):
            Client(leaf.addr, tls=foreign)
        # the leaf still serves the clients it trusts
        c = Client(leaf.addr, tls=client_ctx(pki))
        assert c.read_file("/v") == b"value 0\n"
        c.close()
    assert leaf.alive()


def test_server_is_checked_too(leaf, other_pki):
    """The client refuses a server whose certificate its CA did not sign."""
    ca, certs = other_pki
    with gevent.Timeout(scaled(30)):
        with pytest.raises(NineError, match="TLS handshake"):
            Client(leaf.addr, tls=tls.client_context(*certs["client"], ca))


def test_authentication_still_required_over_tls(leaf, pki):
    with gevent.Timeout(scaled(30)):
        with pytest.raises(PermissionError):
            Client(leaf.addr, tls=client_ctx(pki), auth=None)


@pytest.fixture(scope="module")
def tls_tree(pki, tmp_path_factory):
    """Four TLS leaves (file v: "value i%2") under a TLS mux, and a plain fifth leaf
    the mux cannot reach."""
    leaves = []
    for i in range(4):
        d = tmp_path_factory.mktemp("n%d" % i)
        (d / "v").write_bytes(b"value %d\n" % (i % 2))
        leaves.append(NineProc(["--export", str(d)] + tls_args(pki), free_port()))
    d = tmp_path_factory.mktemp("plain")
    plain = NineProc(["--export", str(d)], free_port())
    children = ["n%d=%s" % (i, p.addr) for i, p in enumerate(leaves)]
    children.append("plain=" + plain.addr)
    mux = NineMux(sum((["--child", c] for c in children), []) + tls_args(pki))
    yield mux
    mux.stop()
    for p in leaves + [plain]:
        p.stop()


def test_group_read_through_a_tls_mux(tls_tree, pki):
    with gevent.Timeout(scaled(60)):
        c = Client(tls_tree.addr, tls=client_ctx(pki))
        assert c.read_file("/n3/v") == b"value 1\n"
        members = [("n%d" % i, "/n%d/v" % i) for i in range(4)]
        g = c.gopen(None, "r", members=members, aggregator="equiv")
        assert g.served
        assert g.classes() == {b"value 0\n": {"n0", "n2"}, b"value 1\n": {"n1", "n3"}}
        g.close()
        # a group of the mux's /groups, read by `nine gread` with the set from the
        # environment
        c.mkdir("/groups/v")
        for name, path in members:
            c.symlink(path, "/groups/v/" + name)
        ca, certs = pki
        env = dict(ENV_ROOT, NINE_TLS_CERT=certs["client"][0], NINE_TLS_KEY=certs["client"][1],
                   NINE_TLS_CA=ca)
        p = subprocess.run([sys.executable, "-m", "nine", "gread", "-a", tls_tree.addr,
                            "/groups/v", "--agg", "equiv"], env=env, capture_output=True,
                           text=True, timeout=scaled(60))
        assert p.returncode == 0, p.stderr
        assert "value 0" in p.stdout and "value 1" in p.stdout
        # the mux's links to its children are TLS; the plain child cannot be reached
        m = Client(tls_tree.addr, aname="mux", tls=client_ctx(pki))
        status = m.read_file("/status").decode()
        m.close()
        c.close()
    lines = {ln.split()[0]: ln for ln in status.splitlines()}
    for i in range(4):
        assert re.search(r" up .* tls ", lines["n%d" % i]), status
    assert " up " not in lines["plain"], status


def test_partial_certificate_set_is_refused(pki, tmp_path):
    ca, certs = pki
    p = subprocess.run([sys.executable, "-m", "nine", "serve", "--listen", "127.0.0.1:0",
                        "--export", str(tmp_path), "--tls-cert", certs["127.0.0.1"][0],
                        "--tls-ca", ca], env=ENV_ROOT, capture_output=True, text=True,
                       timeout=scaled(30))
    assert p.returncode != 0 and "no key given" in p.stderr, p.stderr
    env = dict(ENV_ROOT, NINE_TLS_CA=ca)
    p = subprocess.run([sys.executable, "-m", "nine", "ls", "-a", "127.0.0.1:1", "/"],
                       env=env, capture_output=True, text=True, timeout=scaled(30))
    assert p.returncode == 2 and "no certificate and no key given" in p.stderr, p.stderr


def test_tree_with_a_tls_directory(tmp_path):
    """A topology's `tls = DIR`: the launcher makes a test PKI there and every process
    of the tree (leaves, inner muxes, the root) listens and dials over TLS."""
    from nine.launch import Topology, Tree
    (tmp_path / "tree.ini").write_text("[tree]\nfanout = 2\nleaf-args = --host\ntls = pki\n"
                                       "[leaves]\na = local\nb = local\nc = local\n")
    topo = Topology.load(str(tmp_path / "tree.ini"))
    tree = Tree(topo)
    try:
        root = tree.start()
        srv = root.server.listen("127.0.0.1:0")
        pki = str(tmp_path / "pki")
        assert "TLS:" in tree.describe() and pki in tree.describe()
        ctx = tls.client_context(os.path.join(pki, "client.crt"),
                                 os.path.join(pki, "client.key"), os.path.join(pki, "ca.crt"))
        with gevent.Timeout(scaled(60)):
            c = Client("127.0.0.1:%d" % srv.address[1], tls=ctx)
            assert sorted(c.listdir("/nodes")) == ["a", "b", "c"]
            assert c.listdir("/host/load") and c.read_file("/host/load/c")
            c.close()
            with pytest.raises(NineError):
                Client("127.0.0.1:%d" % srv.address[1])
        assert all(" tls " in ch.status_line() for ch in root.children.values())
    finally:
        tree.stop()


def test_unix_sockets_stay_plain(pki, tmp_path):
    """A unix socket never leaves the host: a TLS server takes a plain client there, and a
    client given a TLS context dials it plain."""
    from nine.assembly import LeafConfig, build_leaf
    ca, certs = pki
    cert, key = certs["127.0.0.1"]
    (tmp_path / "f").write_bytes(b"local\n")
    server = build_leaf(LeafConfig(exports=[(None, str(tmp_path))], tls_cert=cert,
                                   tls_key=key, tls_ca=ca))
    path = str(tmp_path / "sock")
    server.listen("unix!" + path)
    try:
        with gevent.Timeout(scaled(30)):
            for ctx in (None, client_ctx(pki)):
                c = Client("unix!" + path, tls=ctx)
                assert not c.conn.tls
                assert c.read_file("/f") == b"local\n"
                c.close()
    finally:
        server.stop()
