"""nine serve --trust-client-groups (docs/security.md, "Groups a client names"): a user
the server's passwd does not know attaches over 9P2000.L (a uid, no groups); with the
option the gid a chown or a create names is taken as one of that user's groups, without
it the host's kernel refuses the chown (EPERM) and the create gets the user's own gid.
Real `nine serve` processes, nine's Python client, ownership read back with os.stat.
The server switches identities only as root: these tests need root."""

import errno
import grp
import os
import pwd
import stat
import subprocess
import sys

import pytest

from conftest import ENV_ROOT, NineProc, free_port
from nine.client import Client

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the server acts as each user only when root")


def _unknown(start, known):
    """An id from start up that known (getpwuid / getgrgid) does not find."""
    i = start
    while True:
        try:
            known(i)
        except KeyError:
            return i
        i += 1


UID = _unknown(54321, pwd.getpwuid)             # a user the server does not know
G = _unknown(54399, grp.getgrgid)               # a group that user is not in
assert G != UID


@pytest.fixture
def exp(tmp_path):
    d = tmp_path / "exp"
    d.mkdir()
    os.chmod(d, 0o777)                          # the user may search it and make files
    f = d / "mine"
    f.write_bytes(b"x")
    os.chown(f, UID, UID)                       # a file the user owns
    return d


def _serve(exp, *opts):
    return NineProc(["--export", str(exp), "--no-auth"] + list(opts), free_port())


def _client(srv):
    """Attached as UID (9P2000.L: the attach names a uid only), asking for group G in
    its creates."""
    return Client(srv.addr, uname="u%d" % UID, n_uname=UID, gid=G, auth=None,
                  version="9P2000.L", blocking=True)


@pytest.fixture(params=[True, False], ids=["trust", "no-trust"])
def served(request, exp):
    srv = _serve(exp, *(["--trust-client-groups"] if request.param else []))
    c = _client(srv)
    yield request.param, exp, c
    c.close()
    assert srv.alive()
    srv.stop()


def test_chown_to_a_group_the_client_names(served):
    trust, exp, c = served
    if trust:
        c.chown("mine", None, G)
        assert os.stat(exp / "mine").st_gid == G
    else:
        with pytest.raises(OSError) as ei:
            c.chown("mine", None, G)
        assert ei.value.errno == errno.EPERM
        assert os.stat(exp / "mine").st_gid == UID
    st = os.stat(exp / "mine")
    assert st.st_uid == UID
    # a chown to another uid still needs root, whatever the groups
    with pytest.raises(OSError) as ei:
        c.chown("mine", UID + 1, None)
    assert ei.value.errno == errno.EPERM
    assert os.stat(exp / "mine").st_uid == UID
    # and the group stays the user's only for the one call: a chmod +s of a file in
    # group G by the user without G is cleared of setgid by the host's kernel
    if trust:
        c.chmod("mine", 0o2755)
        assert stat.S_IMODE(os.stat(exp / "mine").st_mode) == 0o755


def test_creates_in_a_group_the_client_names(served):
    trust, exp, c = served
    want = G if trust else UID
    c.mkdir("d", 0o755)
    c.create("f", "w", 0o644).close()
    c.root.mknod("p", stat.S_IFIFO | 0o644, gid=G)
    c.symlink("f", "l")
    for name in ("d", "f", "p", "l"):
        st = os.lstat(exp / name)
        assert (name, st.st_uid, st.st_gid) == (name, UID, want)
    assert stat.S_ISDIR(os.stat(exp / "d").st_mode)
    assert stat.S_ISFIFO(os.stat(exp / "p").st_mode)


def test_a_chown_in_the_users_own_group_is_unchanged(exp):
    """The option adds the named group; the user's own gid works with or without it."""
    other = exp / "other"
    other.write_bytes(b"")
    os.chown(other, UID, G)
    srv = _serve(exp, "--trust-client-groups")
    try:
        c = _client(srv)
        c.chown("other", None, UID)
        assert os.stat(other).st_gid == UID
        c.close()
    finally:
        srv.stop()


def _serve_status(*args):
    return subprocess.run([sys.executable, "-m", "nine", "serve", "--listen",
                           "127.0.0.1:0", "-q"] + list(args), env=ENV_ROOT,
                          capture_output=True, text=True, timeout=60)


_UNPROVEN = "only as safe as believing the uid"


@pytest.mark.parametrize("opts,why", [
    ([], ("needs --no-auth (not --auth auto)", _UNPROVEN)),
    (["--auth", "key"], ("needs --no-auth (not --auth key)", _UNPROVEN)),
    (["--auth", "munge"], ("needs --no-auth (not --auth munge)", _UNPROVEN)),
    (["--no-auth", "--squash", "nobody"], ("cannot go with --squash", "acts as one user")),
])
def test_refused_with_authentication_or_squash(tmp_path, opts, why):
    r = _serve_status("--export", str(tmp_path), "--trust-client-groups", *opts)
    assert r.returncode == 2, r.stderr
    for text in why:
        assert text in r.stderr


def test_assembly_refuses_it_too(tmp_path):
    from nine.assembly import ConfigError, LeafConfig, build_leaf
    for cfg in (LeafConfig(exports=[(None, str(tmp_path))], trust_client_groups=True),
                LeafConfig(exports=[(None, str(tmp_path))], trust_client_groups=True,
                           auth="none", squash="nobody")):
        with pytest.raises(ConfigError):
            build_leaf(cfg)


def test_through_a_topologys_leaf_args(tmp_path):
    """leaf-args = --trust-client-groups in a local tree: with auth = none its leaves
    take the client's groups; with authentication the leaves refuse to start."""
    from nine.launch import Topology, Tree
    data = tmp_path / "data"
    topo = Topology.local(1, fanout=2, listen="127.0.0.1:0", leaf_export=str(data),
                          leaf_args="--trust-client-groups", auth="none")
    tree = Tree(topo)
    try:
        tree.start()
        leaf = tree.levels[0][0][1]
        d = data / "node1"
        os.chmod(d, 0o777)
        (d / "mine").write_bytes(b"")
        os.chown(d / "mine", UID, UID)
        c = Client(leaf, uname="u%d" % UID, n_uname=UID, gid=G, auth=None,
                   version="9P2000.L", blocking=True)
        c.chown("mine", None, G)
        c.mkdir("d")
        c.close()
        assert os.stat(d / "mine").st_gid == G
        assert (os.stat(d / "d").st_uid, os.stat(d / "d").st_gid) == (UID, G)
    finally:
        tree.stop()
    topo = Topology.local(1, fanout=2, listen="127.0.0.1:0", leaf_export=str(data),
                          leaf_args="--trust-client-groups", auth="key")
    tree = Tree(topo)
    try:
        with pytest.raises(RuntimeError, match="exited with 2"):
            tree.start()
    finally:
        tree.stop()


def test_a_server_that_is_not_root_says_it_has_no_effect(tmp_path, monkeypatch, caplog):
    """Not root: the server never switches identities (every request acts as the
    server's user), so there are no groups to add: a warning says so."""
    from nine.assembly import LeafConfig, build_leaf
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    cfg = LeafConfig(exports=[(None, str(tmp_path))], trust_client_groups=True, auth="none")
    with caplog.at_level("WARNING", logger="nine"):
        build_leaf(cfg)
    assert "--trust-client-groups has no effect" in caplog.text
    caplog.clear()
    cfg.trust_client_groups = False
    with caplog.at_level("WARNING", logger="nine"):
        build_leaf(cfg)
    assert "--trust-client-groups" not in caplog.text
