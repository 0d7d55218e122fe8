"""The shared-key authentication method ("key"): a cluster secret and an HMAC
challenge/response, for sites without MUNGE.

The key
-------
32 random bytes, stored as 64 hex digits on one line.  load_key() with no path uses the
first of these that exists:

    1. $NINE_KEY, when set (then it is the only place looked at);
    2. ~/.config/nine/key        a user's key;
    3. /etc/nine/key             the system-wide key (root daemons: leaves, muxes).

The file must be a regular file owned by the reading user (effective uid) and its mode
must give nothing to group or others (0600 or stricter); otherwise it is refused, as ssh
refuses a private key others can read.  make_key(path) creates one: 0600, in
directories it creates 0700, never overwriting an existing file.

The protocol, on the auth fid of a Tauth
----------------------------------------
Integers are little-endian; s(x) is a 9P string (length[2], then UTF-8 bytes); n_uname is
the Tauth's numeric user, 0xFFFFFFFF (NONUNAME) when it has none (9P2000).

    1. The client reads the challenge, 44 bytes: TAG = b"nine-key-v1\\n" followed by Ns,
       32 random bytes the server drew for this conversation alone.
    2. The client writes 64 bytes in one Twrite: Nc (32 random bytes of its own) then
           Mc = HMAC-SHA256(key, b"nine-key-v1 client" | T)
           T  = Ns | Nc | s(uname) | n_uname[4] | s(aname)
       with the uname, n_uname and aname of the Tauth.  The server compares Mc with
       hmac.compare_digest.  A write of another length or a wrong Mc is refused (EACCES)
       and ends the conversation: every later read and write on it is refused.  Only one
       write is accepted: a second one is refused too.
    3. The client reads 32 bytes, the server's proof
           Ms = HMAC-SHA256(key, b"nine-key-v1 server" | T)
       and checks it: the server holds the key as well (mutual authentication).  Before
       step 2 succeeded, reads past the challenge return nothing.

What this gives:
    - no replay: Ns is fresh for each conversation and each conversation takes one
      response, so a recorded Mc is worth nothing elsewhere;
    - no reflection: each direction has its own label, so the server's Ms can never pass
      for a client's Mc (nor a client's Mc for a server's proof);
    - binding: Mc covers uname, n_uname and aname: the proof counts for those only
      (the attach that names the afid must carry the same three);
    - the server's proof lets the client tell a real cluster member from an impostor
      before it trusts the files it serves; an impostor that does not hold the key
      collects only an Mc bound to its own Ns, which no real server will ever issue.
    - the key is never sent; 256 random bits make guessing it hopeless.
What it does not give: the 9P traffic after the attach is neither encrypted nor
protected, and a man in the middle that relays both directions of a conversation ends
up with an authenticated connection.  Run it over TLS (nine.auth.tls) or on a network
where nobody can sit in the middle.

Who is trusted for what
-----------------------
The key proves membership of the cluster, not the identity of a person: whoever holds it
may claim any uname/n_uname at every server that accepts the key, like a service
principal's keytab (munge's key is the same kind of secret).  The principal of a
successful conversation is exactly the uname/n_uname the client's MAC covers; which of
those users a key principal may act as (root, say) is the server's authorization rule,
not this module's.  So put a key only where every account that can read it may act as
any user on the servers that accept it: root-owned /etc/nine/key on the cluster's hosts,
or a key of one's own in ~/.config/nine/key for servers run by and for that one user.
The client trusts the server's proof only as far as "this server holds the key".
"""

import errno
import os
import stat
import struct

from ..protocol.const import NONUNAME
from .base import ClientMethod, Conversation, Method, Principal, refused

KEY_BYTES = 32
NONCE_BYTES = 32
MAC_BYTES = 32
TAG = b"nine-key-v1\n"
CHALLENGE_BYTES = len(TAG) + NONCE_BYTES
RESPONSE_BYTES = NONCE_BYTES + MAC_BYTES
CLIENT_LABEL = b"nine-key-v1 client"
SERVER_LABEL = b"nine-key-v1 server"
SYSTEM_KEY = "/etc/nine/key"

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


# --- key files ----------------------------------------------------------------------

def key_paths():
    """The key files load_key() looks for, in order."""
    env = os.environ.get("NINE_KEY")
    if env:
        return [env]
    return [os.path.join(os.path.expanduser("~"), ".config", "nine", "key"), SYSTEM_KEY]


def load_key(path=None):
    """The shared key (32 bytes) from path, or from the first of key_paths() that exists.
    Raises FileNotFoundError when there is none, PermissionError (EACCES) for a file that
    is not a regular file owned by this user with mode 0600 or stricter, and
    OSError(EINVAL) for a file that does not hold 64 hex digits."""
    if path is None:
        paths = key_paths()
        path = next((p for p in paths if os.path.lexists(p)), None)
        if path is None:
            raise FileNotFoundError(errno.ENOENT, "no nine shared key: looked for %s "
                                    "(nine.auth.key.make_key creates one)" % ", ".join(paths))
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(errno.EACCES, "%s: the shared key must be a regular file"
                                  % path)
        if st.st_uid != os.geteuid():
            raise PermissionError(errno.EACCES, "%s: owned by uid %d, not by this user (uid "
                                  "%d): refusing a key another user controls" % (
                                      path, st.st_uid, os.geteuid()))
        if st.st_mode & 0o077:
            raise PermissionError(errno.EACCES, "%s: mode %04o lets other users at the "
                                  "shared key: it must be 0600 or stricter (chmod 600 %s)" % (
                                      path, stat.S_IMODE(st.st_mode), path))
        data = os.read(fd, 4 * KEY_BYTES)
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise OSError(errno.EINVAL, "%s: not a nine shared key (want %d hex digits on one "
                      "line)" % (path, 2 * KEY_BYTES))
    return key


def make_key(path):
    """Create a new shared key file at path (mode 0600; missing directories are made
    0700) and return the key.  The file appears whole or not at all, and an existing
    file is never replaced (FileExistsError)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "%s exists: refusing to replace a shared key"
                              % path)
    directory = os.path.dirname(path)
    _make_private_dirs(directory)
    import secrets
    import tempfile                     # (here: every client verb loads this module)
    key = secrets.token_bytes(KEY_BYTES)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".key-")     # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)          # atomic, and fails if path appeared meanwhile
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "%s exists: refusing to replace a shared "
                                  "key" % path) from None
    finally:
        os.unlink(tmp)
    return key


def _make_private_dirs(directory):
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent != directory:
        _make_private_dirs(parent)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass


# --- the protocol ---------------------------------------------------------------------

def _check_key(key):
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError("a nine shared key is %d bytes" % KEY_BYTES)
    return key


def _string(s):
    b = s.encode("utf-8", "surrogateescape")
    return _U16.pack(len(b)) + b


def _transcript(ns, nc, uname, n_uname, aname):
    """T of the module docstring: what both MACs cover besides their label."""
    if n_uname is None:
        n_uname = NONUNAME
    return b"".join((ns, nc, _string(uname or ""), _U32.pack(n_uname), _string(aname or "")))


def _mac(key, label, t):
    # (hashlib, hmac and secrets are imported where a conversation needs them: a leaf
    # that loads its key at start does not pay for them until its first attach)
    import hashlib
    import hmac
    return hmac.new(key, label + t, hashlib.sha256).digest()


class KeyMethod(Method):
    """Server side: KeyMethod(key).start(...) -> a KeyConversation."""
    name = "key"

    def __init__(self, key):
        self._key = _check_key(key)

    def start(self, peer, uname, n_uname, aname):
        return KeyConversation(self._key, uname, n_uname, aname)


class KeyConversation(Conversation):
    """One afid's conversation: challenge, one checked response, then the server's proof."""

    def __init__(self, key, uname, n_uname, aname):
        self._key = key
        self._names = (uname, n_uname, aname)
        import secrets
        self._ns = secrets.token_bytes(NONCE_BYTES)
        self._out = TAG + self._ns      # what reads return next
        self._answered = False
        self._failed = None

    def read(self, count):
        if self._failed:
            raise refused(self._failed)
        data = self._out[:count]
        self._out = self._out[len(data):]
        return data

    def write(self, data):
        if self._failed:
            raise refused(self._failed)
        if self._answered:
            raise refused("nine-key-v1: this conversation already took its response")
        self._answered = True
        if len(data) != RESPONSE_BYTES:
            self._failed = "nine-key-v1: the response must be %d bytes, not %d" % (
                RESPONSE_BYTES, len(data))
            raise refused(self._failed)
        data = bytes(data)
        nc, mc = data[:NONCE_BYTES], data[NONCE_BYTES:]
        t = _transcript(self._ns, nc, *self._names)
        import hmac
        if not hmac.compare_digest(mc, _mac(self._key, CLIENT_LABEL, t)):
            self._failed = "nine-key-v1: the client does not hold this server's shared key"
            raise refused(self._failed)
        uname, n_uname, _ = self._names
        self.principal = Principal(uname=uname or None,
                                   uid=None if n_uname in (None, NONUNAME) else n_uname,
                                   method=KeyMethod.name)
        self._out = _mac(self._key, SERVER_LABEL, t)
        return len(data)


class KeyClient(ClientMethod):
    """Client side: KeyClient(key).authenticate(rw, uname, n_uname, aname) runs steps 1-3
    over rw.read/rw.write; a server that refuses the response makes rw.write raise, a
    server that cannot prove it holds the key raises OSError(EACCES) here."""
    name = "key"

    def __init__(self, key):
        self._key = _check_key(key)

    def authenticate(self, rw, uname, n_uname, aname):
        challenge = _read_exactly(rw, CHALLENGE_BYTES)
        if len(challenge) != CHALLENGE_BYTES or not challenge.startswith(TAG):
            raise OSError(errno.EPROTO, "the server did not send a nine-key-v1 challenge")
        import hmac
        import secrets
        nc = secrets.token_bytes(NONCE_BYTES)
        t = _transcript(challenge[len(TAG):], nc, uname, n_uname, aname)
        response = nc + _mac(self._key, CLIENT_LABEL, t)
        if rw.write(response) != len(response):
            raise OSError(errno.EPROTO, "nine-key-v1: the server took part of the response")
        proof = _read_exactly(rw, MAC_BYTES)
        if not hmac.compare_digest(proof, _mac(self._key, SERVER_LABEL, t)):
            raise refused("nine-key-v1: the server did not prove it holds the shared key "
                          "(an impostor, or another cluster's server)")


def _read_exactly(rw, n):
    data = b""
    while len(data) < n:
        chunk = rw.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data
