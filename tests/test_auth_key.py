"""The shared-key method (nine.auth.key): both sides of the protocol in one process
(success, wrong key, replay, reflection, impostor server, names bound, one response per
conversation), the wire format of the module docstring computed independently, and the
rules for key files."""

import errno
import hashlib
import hmac
import os
import stat
import struct

import pytest

from nine.auth import key as K

PEER = ("127.0.0.1", 40000)


class Afid:
    """The client's side of an auth fid whose Treads and Twrites reach a server
    conversation directly; it keeps what the client wrote, and hands out at most
    `chunk` bytes per read."""

    def __init__(self, conv, chunk=8192):
        self.conv = conv
        self.chunk = chunk
        self.written = []

    def read(self, count):
        return self.conv.read(min(count, self.chunk))

    def write(self, data):
        self.written.append(bytes(data))
        return self.conv.write(data)


def spec_mac(key, label, ns, nc, uname, n_uname, aname):
    """The MAC as the module docstring defines it, computed without nine's code."""
    def s(x):
        b = x.encode()
        return struct.pack("<H", len(b)) + b
    t = ns + nc + s(uname) + struct.pack("<I", n_uname) + s(aname)
    return hmac.new(key, label + t, hashlib.sha256).digest()


def read_challenge(conv):
    challenge = conv.read(44)
    assert len(challenge) == 44 and challenge.startswith(b"nine-key-v1\n")
    return challenge[12:]


def login(key, server_key=None, names=("alice", 1000, "/srv"), client_names=None, chunk=8192):
    conv = K.KeyMethod(server_key or key).start(PEER, *names)
    afid = Afid(conv, chunk)
    K.KeyClient(key).authenticate(afid, *(client_names or names))
    return conv, afid


def refused(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == errno.EACCES
    return str(e.value)


# --- the protocol ----------------------------------------------------------------------

def test_success_gives_the_principal_the_mac_covers():
    conv, afid = login(os.urandom(32))
    p = conv.principal
    assert (p.uname, p.uid, p.method) == ("alice", 1000, "key")
    assert [len(w) for w in afid.written] == [64]


def test_short_reads_and_9p2000_without_n_uname():
    key = os.urandom(32)
    conv, _ = login(key, names=("bob", None, ""), chunk=5)
    assert (conv.principal.uname, conv.principal.uid) == ("bob", None)
    conv, _ = login(key, names=("bob", 0xFFFFFFFF, ""))
    assert conv.principal.uid is None


def test_wire_format_is_the_documented_one():
    key = os.urandom(32)
    conv = K.KeyMethod(key).start(PEER, "alice", 1000, "/srv")
    ns = read_challenge(conv)
    assert conv.read(100) == b""             # nothing more before the response
    nc = os.urandom(32)
    assert conv.write(nc + spec_mac(key, b"nine-key-v1 client", ns, nc, "alice", 1000,
                                    "/srv")) == 64
    assert conv.read(100) == spec_mac(key, b"nine-key-v1 server", ns, nc, "alice", 1000,
                                      "/srv")
    assert conv.principal.uname == "alice"


def test_wrong_key_is_refused_and_ends_the_conversation():
    conv = K.KeyMethod(os.urandom(32)).start(PEER, "alice", 1000, "/srv")
    msg = refused(K.KeyClient(os.urandom(32)).authenticate, Afid(conv), "alice", 1000, "/srv")
    assert "does not hold" in msg
    assert conv.principal is None
    refused(conv.read, 32)
    refused(conv.write, b"x" * 64)


def test_replayed_response_is_refused_on_a_new_conversation():
    key = os.urandom(32)
    _, afid = login(key)
    conv = K.KeyMethod(key).start(PEER, "alice", 1000, "/srv")
    read_challenge(conv)                     # a fresh nonce, so the old MAC is worthless
    refused(conv.write, afid.written[0])
    assert conv.principal is None


def test_reflection_is_refused_both_ways():
    key = os.urandom(32)
    # a server-labelled MAC over this very conversation does not pass for a client's
    conv = K.KeyMethod(key).start(PEER, "alice", 1000, "/srv")
    ns = read_challenge(conv)
    nc = os.urandom(32)
    refused(conv.write, nc + spec_mac(key, b"nine-key-v1 server", ns, nc, "alice", 1000,
                                      "/srv"))
    assert conv.principal is None

    # and a server that hands the client's own MAC back as its proof is not believed
    class Mirror:
        out = b"nine-key-v1\n" + os.urandom(32)

        def read(self, count):
            data, self.out = self.out[:count], self.out[count:]
            return data

        def write(self, data):
            self.out = bytes(data[32:])
            return len(data)
    msg = refused(K.KeyClient(key).authenticate, Mirror(), "alice", 1000, "/srv")
    assert "did not prove" in msg


def test_a_server_without_the_key_is_refused_by_the_client():
    class Impostor:
        out = b"nine-key-v1\n" + os.urandom(32)

        def read(self, count):
            data, self.out = self.out[:count], self.out[count:]
            return data

        def write(self, data):
            self.out = os.urandom(32)
            return len(data)
    refused(K.KeyClient(os.urandom(32)).authenticate, Impostor(), "alice", 1000, "/srv")


def test_the_mac_binds_the_names_of_the_tauth():
    key = os.urandom(32)
    for claimed in (("root", 1000, "/srv"), ("alice", 0, "/srv"), ("alice", 1000, "/")):
        conv = K.KeyMethod(key).start(PEER, *claimed)
        refused(K.KeyClient(key).authenticate, Afid(conv), "alice", 1000, "/srv")
        assert conv.principal is None


def test_one_response_per_conversation():
    key = os.urandom(32)
    conv, afid = login(key)
    assert "already" in refused(conv.write, afid.written[0])
    assert conv.principal.uname == "alice"   # the proved principal stays

    conv = K.KeyMethod(key).start(PEER, "alice", 1000, "/srv")
    read_challenge(conv)
    assert "64 bytes" in refused(conv.write, b"x" * 63)
    refused(conv.write, b"x" * 64)


def test_not_a_challenge_and_bad_keys():
    class Other:
        def read(self, count):
            return b"something else entirely, and long enough to fill"[:count]
    with pytest.raises(OSError) as e:
        K.KeyClient(os.urandom(32)).authenticate(Other(), "alice", 1000, "/srv")
    assert e.value.errno == errno.EPROTO
    for bad in (b"short", "x" * 32, os.urandom(33)):
        with pytest.raises(ValueError):
            K.KeyMethod(bad)
        with pytest.raises(ValueError):
            K.KeyClient(bad)


# --- key files ---------------------------------------------------------------------------

def test_make_key_then_load_key(tmp_path):
    path = tmp_path / "a" / "b" / "key"
    key = K.make_key(path)
    assert len(key) == 32 and K.load_key(path) == key
    assert path.read_text() == key.hex() + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_make_key_refuses_to_overwrite(tmp_path):
    path = tmp_path / "key"
    key = K.make_key(path)
    with pytest.raises(FileExistsError):
        K.make_key(path)
    assert K.load_key(path) == key
    assert os.listdir(tmp_path) == ["key"]   # no scratch file left behind


def test_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "key"
    K.make_key(path)
    path.chmod(0o644)
    with pytest.raises(PermissionError) as e:
        K.load_key(path)
    assert e.value.errno == errno.EACCES
    assert "mode 0644" in str(e.value) and "chmod 600" in str(e.value)
    path.chmod(0o400)
    assert len(K.load_key(path)) == 32


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_key_owned_by_another_user_is_refused(tmp_path):
    path = tmp_path / "key"
    K.make_key(path)
    os.chown(path, 65534, -1)
    with pytest.raises(PermissionError, match="owned by uid 65534"):
        K.load_key(path)


def test_key_must_be_a_regular_file_of_64_hex_digits(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(PermissionError, match="regular file"):
        K.load_key(fifo)
    bad = tmp_path / "bad"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    with pytest.raises(OSError) as e:
        K.load_key(bad)
    assert e.value.errno == errno.EINVAL and "64 hex digits" in str(e.value)


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.delenv("NINE_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    user = tmp_path / ".config" / "nine" / "key"
    assert K.key_paths() == [str(user), "/etc/nine/key"]
    key = K.make_key(user)
    assert K.load_key() == key

    monkeypatch.setenv("NINE_KEY", str(tmp_path / "elsewhere"))
    assert K.key_paths() == [str(tmp_path / "elsewhere")]
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        K.load_key()                         # no falling back past $NINE_KEY
    other = K.make_key(tmp_path / "elsewhere")
    assert K.load_key() == other
