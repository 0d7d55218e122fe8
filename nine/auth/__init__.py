"""Authentication: the methods a server requires and a client speaks on a Tauth's auth
fid (nine.auth.base has the interface), chosen by name or found on this host.

    server_method("munge" | "key" | "key=FILE" | "none")  -> Method or None
    client_method(None | "munge" | "key" | "key=FILE" | "none") -> ClientMethod or None

A client with no method named looks for one the way the `nine` verbs do: $NINE_AUTH
when set, else a key file in the usual places (nine.auth.key.key_paths) and a running
munged; with both, it asks the server which one it speaks (AutoClient).  A server's
default (`--auth` not given) is the same search: munge when munged runs here, else a key
file; none found is an error, never an open server.
"""

import errno
import os

from .base import ClientMethod, Principal  # noqa: F401


class NoMethod(OSError):
    """No authentication method could be set up (no munged, no key file)."""

    def __init__(self, msg):
        super().__init__(errno.ENOENT, msg)


def _key_path(spec):
    return spec.partition("=")[2] or None


def server_method(spec=None):
    """The server-side Method for a --auth value (None: find one); None for 'none'."""
    spec = spec if spec is not None else os.environ.get("NINE_AUTH") or "auto"
    if spec == "none":
        return None
    if spec == "munge":
        from .munge import MungeMethod
        return MungeMethod()
    if spec == "key" or spec.startswith("key="):
        from .key import KeyMethod, load_key
        return KeyMethod(load_key(_key_path(spec)))
    if spec != "auto":
        raise ValueError("unknown authentication method %r (munge, key[=FILE], none)" % spec)
    from . import munge
    if munge.available():
        return munge.MungeMethod()
    from .key import KeyMethod, key_paths, load_key
    try:
        return KeyMethod(load_key())
    except FileNotFoundError:
        raise NoMethod("no authentication method found: no munged running here and no "
                       "key file (%s); start munged, make a key with `nine key`, or "
                       "serve with --no-auth" % ", ".join(key_paths())) from None


def client_method(spec=None):
    """The ClientMethod for a spec (None: find one); None when there is none to use
    (then attaches go without an auth fid, as to a server run with --no-auth)."""
    spec = spec if spec is not None else os.environ.get("NINE_AUTH") or "auto"
    if spec == "none":
        return None
    if spec == "munge":
        from .munge import MungeClient
        return MungeClient()
    if spec == "key" or spec.startswith("key="):
        from .key import KeyClient, load_key
        return KeyClient(load_key(_key_path(spec)))
    if spec != "auto":
        raise ValueError("unknown authentication method %r (munge, key[=FILE], none)" % spec)
    from .key import KeyClient, load_key
    try:
        key = KeyClient(load_key())
    except FileNotFoundError:
        key = None
    from . import munge
    mclient = munge.MungeClient() if munge.available() else None
    if key and mclient:
        return AutoClient(key, mclient)
    return key or mclient


class AutoClient(ClientMethod):
    """Both a key and munge at hand: read the auth fid first; a server of the key method
    sends its challenge (nine.auth.key.TAG ...), any other (nine's munge, diod) sends
    nothing or refuses the read: then the munge credential is written."""
    name = "auto"

    def __init__(self, key_client, munge_client):
        self.key_client = key_client
        self.munge_client = munge_client

    def authenticate(self, rw, uname, n_uname, aname):
        from .key import CHALLENGE_BYTES, TAG
        try:
            first = rw.read(CHALLENGE_BYTES)
        except OSError:
            first = b""
        if first.startswith(TAG):
            return self.key_client.authenticate(_Replay(first, rw), uname, n_uname, aname)
        return self.munge_client.authenticate(rw, uname, n_uname, aname)


class _Replay:
    """rw whose first reads return bytes already read."""

    def __init__(self, head, rw):
        self.head = head
        self.rw = rw

    def read(self, count):
        if self.head:
            out, self.head = self.head[:count], self.head[count:]
            return out
        return self.rw.read(count)

    def write(self, data):
        return self.rw.write(data)
