"""MUNGE authentication, in diod's wire form.

The handshake (diod: src/libdiod/diod_auth.c, diod_auth() on the client side and
startauth/writeafid/checkauth on the server side):

    C: Tauth afid uname aname n_uname      S: Rauth aqid (QTAUTH, version 0, path 0)
    C: Twrite afid 0 "MUNGE:...:"          S: Rwrite count
    C: Tattach fid afid uname aname n_uname
    C: Tclunk afid

The client writes the credential string that munge_encode() made with no payload, as
ASCII without a terminating NUL (possibly in several Twrites at growing offsets); it
reads nothing.  The credential proves the uid of the process that encoded it, and the
server accepts it only for that same uid: the user of the Tauth (n_uname, or uname
where n_uname is NONUNAME).  munged refuses a credential it decoded before (replayed),
one past its time-to-live (expired), one made with another key or altered; every
refusal is an EPERM, as in diod.  diod decodes at the Tattach; here the Twrite that
completes the credential decodes it (the client learns of a refusal one message
earlier; the bytes on the wire are the same).

libmunge (libmunge.so.2) is called through ctypes.  encode() and decode() block on
munged's Unix socket; MungeMethod and MungeClient call them in the hub's thread pool,
never on the hub.  ``socket`` options name munged's socket; None is libmunge's default
(/run/munge/munge.socket.2).

    available(socket=None) -> bool              libmunge loads, a socket is at the path
    default_socket() -> str                     libmunge's built-in socket path
    encode(socket=None, ttl=None) -> str        a credential for this process's uid
    decode(cred, socket=None) -> (uid, gid)     raises MungeError (an OSError)
    MungeMethod(socket=None)                    the server's Method ("munge")
    MungeClient(socket=None, ttl=None)          the client's ClientMethod ("munge")
"""

import ctypes
import errno
import functools
import os
import pwd
import stat
import sys

from .base import ClientMethod, Conversation, Method, Principal, refused

__all__ = ["MungeError", "MungeMethod", "MungeClient", "available", "default_socket",
           "encode", "decode", "EMUNGE_SOCKET", "EMUNGE_BAD_CRED", "EMUNGE_CRED_INVALID",
           "EMUNGE_CRED_EXPIRED", "EMUNGE_CRED_REWOUND", "EMUNGE_CRED_REPLAYED"]

# munge.h: munge_opt_t and munge_err_t
MUNGE_OPT_TTL = 4
MUNGE_OPT_SOCKET = 8
EMUNGE_SUCCESS = 0
EMUNGE_NO_MEMORY = 5
EMUNGE_SOCKET = 6
EMUNGE_BAD_CRED = 8             # this and every status above it: the credential is refused
EMUNGE_CRED_INVALID = 14
EMUNGE_CRED_EXPIRED = 15
EMUNGE_CRED_REWOUND = 16
EMUNGE_CRED_REPLAYED = 17

PREFIX = b"MUNGE:"
MAX_CRED = 64 << 10             # far above a credential without payload (~150 bytes)
NONUNAME = 0xFFFFFFFF


class MungeError(OSError):
    """A munge call failed: ``errno`` EPERM for a refused credential, ECONNREFUSED when
    munged cannot be reached, ENOSYS without libmunge; ``status`` is munge's own error
    number (munge_err_t), None when libmunge did not answer."""

    def __init__(self, code, msg, status=None):
        super().__init__(code, msg)
        self.status = status


@functools.cache
def _lib():
    try:
        lib = ctypes.CDLL("libmunge.so.2")
    except OSError as e:
        raise MungeError(errno.ENOSYS, "munge: libmunge.so.2 cannot be loaded (%s)" % e)
    lib.munge_ctx_create.restype = ctypes.c_void_p
    lib.munge_ctx_create.argtypes = []
    lib.munge_ctx_destroy.restype = None
    lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
    lib.munge_ctx_strerror.restype = ctypes.c_char_p
    lib.munge_ctx_strerror.argtypes = [ctypes.c_void_p]
    lib.munge_strerror.restype = ctypes.c_char_p
    lib.munge_strerror.argtypes = [ctypes.c_int]
    lib.munge_ctx_set.restype = ctypes.c_int      # variadic: arguments passed typed
    lib.munge_ctx_get.restype = ctypes.c_int
    lib.munge_encode.restype = ctypes.c_int
    lib.munge_encode.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_int]
    lib.munge_decode.restype = ctypes.c_int
    lib.munge_decode.argtypes = [ctypes.c_char_p, ctypes.c_void_p,
                                 ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int),
                                 ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32)]
    libc = ctypes.CDLL(None)
    libc.free.restype = None
    libc.free.argtypes = [ctypes.c_void_p]
    lib.free = libc.free                          # for the credential munge_encode allocates
    return lib


def _error(lib, ctx, status, what):
    text = lib.munge_ctx_strerror(ctx) or lib.munge_strerror(status)
    text = text.decode(errors="replace")
    if status == EMUNGE_SOCKET:
        code = errno.ECONNREFUSED
    elif status == EMUNGE_NO_MEMORY:
        code = errno.ENOMEM
    elif status >= EMUNGE_BAD_CRED:
        code = errno.EPERM
    else:
        code = errno.EIO
    return MungeError(code, "munge %s: %s" % (what, text), status)


class _Context:
    """A munge_ctx_t for one call, with its socket (and ttl) set."""

    def __init__(self, socket=None, ttl=None):
        self.lib = _lib()
        self.ctx = self.lib.munge_ctx_create()
        if not self.ctx:
            raise MungeError(errno.ENOMEM, "munge: cannot create a context")
        if socket is not None:
            self._set(MUNGE_OPT_SOCKET, ctypes.c_char_p(os.fsencode(socket)))
        if ttl is not None:
            self._set(MUNGE_OPT_TTL, ctypes.c_int(int(ttl)))

    def _set(self, opt, value):
        status = self.lib.munge_ctx_set(ctypes.c_void_p(self.ctx), ctypes.c_int(opt), value)
        if status != EMUNGE_SUCCESS:
            raise _error(self.lib, self.ctx, status, "option %d" % opt)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lib.munge_ctx_destroy(self.ctx)


def default_socket():
    """libmunge's built-in socket path (munged's default --socket)."""
    with _Context() as c:
        path = ctypes.c_char_p()
        status = c.lib.munge_ctx_get(ctypes.c_void_p(c.ctx), ctypes.c_int(MUNGE_OPT_SOCKET),
                                     ctypes.byref(path))
        if status != EMUNGE_SUCCESS:
            raise _error(c.lib, c.ctx, status, "socket option")
        return os.fsdecode(path.value)


def available(socket=None):
    """True when libmunge loads and a Unix socket is at munged's socket path."""
    try:
        _lib()
        path = socket if socket is not None else default_socket()
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def encode(socket=None, ttl=None):
    """A credential (str) for this process's uid and gid, without payload; ``ttl`` in
    seconds (None: munged's default).  Blocks on munged: call it off the hub."""
    with _Context(socket, ttl) as c:
        cred = ctypes.c_void_p()
        status = c.lib.munge_encode(ctypes.byref(cred), c.ctx, None, 0)
        try:
            if status != EMUNGE_SUCCESS:
                raise _error(c.lib, c.ctx, status, "encode")
            return ctypes.string_at(cred).decode("ascii")
        finally:
            if cred.value:
                c.lib.free(cred)


def decode(cred, socket=None):
    """(uid, gid) that a credential (str or bytes) proves; raises MungeError (EPERM for
    an invalid, expired, rewound or replayed credential).  Blocks on munged: call it off
    the hub."""
    if isinstance(cred, str):
        cred = cred.encode("ascii", errors="replace")
    with _Context(socket) as c:
        uid = ctypes.c_uint32()
        gid = ctypes.c_uint32()
        status = c.lib.munge_decode(cred, c.ctx, None, None, ctypes.byref(uid),
                                    ctypes.byref(gid))
        if status != EMUNGE_SUCCESS:
            raise _error(c.lib, c.ctx, status, "decode")
        return uid.value, gid.value


def _off_hub(fn, *args):
    """fn(*args) in gevent's thread pool, the hub running meanwhile; called directly in
    a program without gevent (a blocking client: no hub to keep running)."""
    gevent = sys.modules.get("gevent")
    if gevent is None:
        return fn(*args)
    return gevent.get_hub().threadpool.apply(fn, args)


def _claimed_uid(uname, n_uname):
    """The uid the Tauth names: n_uname, else the uid of uname (a name or a number)."""
    if n_uname is not None and n_uname != NONUNAME:
        return n_uname
    try:
        return pwd.getpwnam(uname).pw_uid
    except KeyError:
        if uname.isdigit():
            return int(uname)
    raise refused("munge: unknown user %r" % uname, errno.EPERM)


def _name_of(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class MungeConversation(Conversation):
    """One afid: gathers the credential the client writes and, once it is whole (the
    ':' that closes it has arrived), has munged decode it.  The credential must prove
    the Tauth's uid; then ``principal`` is that uid."""

    def __init__(self, socket, uid, who):
        self.socket = socket
        self.uid = uid
        self.who = who
        self.buf = b""

    def write(self, data):
        if self.buf is None:
            raise refused("munge: %s: the credential was already presented" % self.who,
                          errno.EINVAL)
        buf = self.buf + bytes(data)
        if len(buf) > MAX_CRED:
            raise refused("munge: %s: credential too long" % self.who, errno.EPERM)
        if not PREFIX.startswith(buf[:len(PREFIX)]):
            raise refused("munge: %s: not a munge credential" % self.who, errno.EPERM)
        cred = buf.rstrip(b"\0\r\n\t ")
        end = cred.find(b":", len(PREFIX))
        if end < 0:
            self.buf = buf
            return len(data)      # more to come
        self.buf = None           # one credential per afid, whatever munged says of it
        if end != len(cred) - 1:
            raise refused("munge: %s: bytes after the credential" % self.who, errno.EPERM)
        try:
            uid, _gid = _off_hub(decode, cred, self.socket)
        except MungeError as e:
            raise MungeError(e.errno, "%s: %s" % (self.who, e.strerror), e.status) from None
        if uid != self.uid:
            raise refused("munge: %s: the credential of uid %d does not authenticate uid %d"
                          % (self.who, uid, self.uid), errno.EPERM)
        self.principal = Principal(uname=_name_of(uid), uid=uid, method="munge")
        return len(data)


class MungeMethod(Method):
    """Server side: each Tauth starts a MungeConversation; the credential is checked by
    the munged at ``socket`` (None: libmunge's default)."""
    name = "munge"

    def __init__(self, socket=None):
        self.socket = socket

    def start(self, peer, uname, n_uname, aname):
        uid = _claimed_uid(uname, n_uname)
        if isinstance(peer, tuple):
            peer = "%s:%s" % peer[:2]
        who = "uid %d@%s:%s" % (uid, peer, aname)
        return MungeConversation(self.socket, uid, who)


class MungeClient(ClientMethod):
    """Client side: encodes a credential for this process's uid with the munged at
    ``socket`` and writes it to the afid (diod's diod_auth()).  The Tauth's user must be
    this process's uid for the server to accept it."""
    name = "munge"

    def __init__(self, socket=None, ttl=None):
        self.socket = socket
        self.ttl = ttl

    def authenticate(self, rw, uname, n_uname, aname):
        data = _off_hub(encode, self.socket, self.ttl).encode("ascii")
        done = 0
        while done < len(data):
            n = rw.write(data[done:])
            if n <= 0:
                raise refused("munge: the server took no bytes of the credential", errno.EIO)
            done += n
