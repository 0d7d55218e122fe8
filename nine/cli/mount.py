"""`nine mount`: mount a 9P server with the Linux kernel's 9P client (v9fs), authenticated.

The kernel cannot Tauth.  So, as diod's mount.diod does, this verb speaks the start of
the session in user space: it connects, negotiates (Tversion), authenticates (Tauth and
the method's conversation on the auth fid: the method nine.auth.client_method finds, or
--auth), attaches to check the aname, clunks the auth fid and the root fid (the kernel
must find no fid on the connection that it does not know), and then hands the connected
socket to the kernel through mount(8), which inherits it as descriptor N:

    mount -t 9p -o trans=fd,rfdno=N,wfdno=N,version=9p2000.L,msize=M[,OPTIONS] ADDR DIR

The kernel's own Tversion starts its session on that socket.  The server keeps the
connection's authentication across it, and since root or a key holder authenticated the
connection, the kernel's attaches (one per user with access=user) need no auth fid of
their own (nine.auth.gate, rules 2 and 4).

The user-space attach is made as the user running this (root, to mount): that is the
principal a munge credential proves; a key holder may act as anyone anyway.

Options are mount(8)'s for 9p (-o, comma-separated): aname=, access=user|client|any|UID,
uname=, msize=, cache=, version=9p2000.L|9p2000.u|9p2000 and any other v9fs option go to
the kernel (version, msize and aname are used by the handshake too: msize is what the
server granted); port= is the server's port when ADDR names none (default 564); trans,
rfdno and wfdno are this verb's to set.

The test VM of interop/ has no Python: it runs interop/nmount.c, a port of this handshake
to C (key method only), tests/test_kernel_auth.py.
"""

import errno
import logging
import os
import re
import shlex
import socket
import subprocess

from .common import _die, _errtext

log = logging.getLogger("nine.mount")

#: the kernel's version= values and the dialects they name on the wire
VERSIONS = {"9p2000.L": "9P2000.L", "9p2000.u": "9P2000.u", "9p2000": "9P2000"}
DEFAULT_VERSION = "9p2000.L"
DEFAULT_MSIZE = 131072
DEFAULT_PORT = 564
#: the smallest msize the kernel accepts
MIN_MSIZE = 4096
#: seconds each step of the handshake may take
TIMEOUT = 30.0
ACCESS = ("user", "client", "any")


class Options:
    """-o OPTIONS: what the handshake uses, and the options passed on to the kernel."""

    def __init__(self, text):
        self.port = DEFAULT_PORT
        self.version = DEFAULT_VERSION
        self.msize = DEFAULT_MSIZE
        self.aname = ""
        self.kernel = []            # passed through, in order
        for opt in filter(None, text.split(",")):
            name, eq, value = opt.partition("=")
            if name in ("trans", "rfdno", "wfdno"):
                raise ValueError("%s= is not an option here: nine mount sets trans=fd,rfdno=,"
                                 "wfdno= itself" % name)
            if name == "port":
                self.port = _number(name, value, 1, 65535)
            elif name == "version":
                if value not in VERSIONS:
                    raise ValueError("version=%s: want one of %s" % (value, ", ".join(VERSIONS)))
                self.version = value
            elif name == "msize":
                self.msize = _number(name, value, MIN_MSIZE, 0x7FFFFFFF)
            else:
                if not eq and name in ("aname", "uname", "access", "cache"):
                    raise ValueError("%s wants a value (%s=...)" % (name, name))
                if name == "aname":
                    self.aname = value
                elif name == "access" and not (value in ACCESS or value.isdigit()):
                    raise ValueError("access=%s: want user, client, any or a uid" % value)
                self.kernel.append(opt)

    def for_kernel(self, fd, msize):
        """The -o of mount(8) for the socket on descriptor fd."""
        return ",".join(["trans=fd", "rfdno=%d" % fd, "wfdno=%d" % fd,
                         "version=%s" % self.version, "msize=%d" % msize] + self.kernel)


def _number(name, value, low, high):
    if not value.isdigit() or not low <= int(value) <= high:
        raise ValueError("%s=%s: want a number from %d to %d" % (name, value, low, high))
    return int(value)


def kernel_9p():
    """None when this kernel can mount 9p (the file system is registered, or a module
    for it is there to be loaded), else a sentence saying why not."""
    try:
        with open("/proc/filesystems") as f:
            if any(line.split()[-1:] == ["9p"] for line in f):
                return None
    except OSError:
        pass
    release = os.uname().release
    moddir = os.path.join("/lib/modules", release)
    module = re.compile(r"(^|/)9p\.ko(\.\w+)?(:|$)")
    for name in ("modules.dep", "modules.builtin"):
        try:
            with open(os.path.join(moddir, name)) as f:
                if any(module.search(line) for line in f):
                    return None
        except OSError:
            pass
    return ("this kernel (%s) has no 9p file system: it is not in /proc/filesystems and "
            "%s has no 9p module.  nine mount hands an authenticated connection to the "
            "kernel's 9P client (CONFIG_9P_FS and CONFIG_NET_9P_FD); use a host whose "
            "kernel has it (the nine client verbs and library need none)" % (release, moddir))


def _me():
    """(uname, n_uname) of the user running this: the principal of the handshake."""
    import pwd
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name, uid
    except KeyError:
        return str(uid), uid


def handshake(addr, opts, auth_spec):
    """Connect to addr and authenticate the connection: Tversion, Tauth and its
    conversation, Tattach to opts.aname, then Tclunk of the auth fid and of the root.
    Returns (the connected socket, the msize the server granted).  Raises OSError or
    ValueError with the failed step named."""
    from ..auth import client_method
    from ..client.auth import authenticate
    from ..client.conn import Connection, parse_addr
    from ..client.fid import Fid, attach
    from ..protocol.const import NOFID

    try:
        method = client_method(auth_spec)
    except OSError as ex:
        where = "%s: " % ex.filename if ex.filename else ""
        raise OSError(ex.errno, "authentication method %s: %s%s" % (
            auth_spec or "(found here)", where, _errtext(ex))) from None
    fam, sockaddr = parse_addr(addr, opts.port)
    sock = socket.socket(fam, socket.SOCK_STREAM)
    step = "connect to %s" % addr
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(sockaddr)
        step = "version %s" % VERSIONS[opts.version]
        # the client library drives a duplicate of the socket (and closes it); the
        # kernel gets the original descriptor, on the same connection
        conn = Connection(sock=sock.dup(), msize=opts.msize, version=VERSIONS[opts.version],
                          timeout=TIMEOUT, connect_timeout=TIMEOUT)
        try:
            uname, n_uname = _me()
            afid = NOFID
            if method is not None:
                step = "authenticate as %s (%s)" % (uname, method.name)
                afid = authenticate(conn, method, uname, opts.aname, n_uname, TIMEOUT)
            step = "attach to aname %r as %s" % (opts.aname, uname)
            try:
                root = attach(conn, uname, opts.aname, n_uname, afid, TIMEOUT)
            finally:
                if afid != NOFID:
                    Fid(conn, afid).clunk(TIMEOUT)
            step = "clunk the root fid"
            root.clunk(TIMEOUT)
            log.info("%s: %s, msize %d, %s as %s, aname %r: auth and root fids clunked",
                     addr, conn.dialect, conn.msize,
                     "authenticated (%s)" % method.name if afid != NOFID else "no auth fid",
                     uname, opts.aname)
            return sock, conn.msize
        finally:
            conn.close()
    except BaseException as ex:
        sock.close()
        if isinstance(ex, OSError):
            text = _errtext(ex)
            if method is None and auth_spec is None and ex.errno in (errno.EACCES,
                                                                     errno.EPERM):
                text += " (no authentication method was found here: --auth, $NINE_KEY, " \
                        "a key file or munged)"
            elif step.startswith("authenticate") and ex.errno == errno.EACCES:
                text += " (the server does not take this %s)" % (
                    "key" if method.name == "key" else "proof")
            raise OSError(ex.errno, "%s: %s" % (step, text)) from None
        raise


def cmd_mount(args):
    try:
        opts = Options(args.options)
    except ValueError as ex:
        _die("mount: %s" % ex, 2)
    if not os.path.isdir(args.dir):
        _die("mount: %s: not a directory" % args.dir, 2)
    if not args.fake:
        why = kernel_9p()
        if why:
            _die("mount: " + why)
    try:
        sock, msize = handshake(args.addr, opts, args.auth)
    except (OSError, ValueError) as ex:
        _die("mount: %s" % _errtext(ex))
    with sock:
        fd = sock.fileno()
        cmd = ["mount", "-t", "9p", "-o", opts.for_kernel(fd, msize), args.addr, args.dir]
        if args.fake:
            print(shlex.join(cmd))
            return 0
        log.info("%s", shlex.join(cmd))
        os.set_blocking(fd, False)      # the kernel reads it non-blocking (as mount.diod)
        try:
            rc = subprocess.run(cmd, pass_fds=(fd,)).returncode
        except OSError as ex:
            _die("mount: cannot run mount(8): %s" % _errtext(ex))
    if rc:
        _die("mount: mount(8) failed (exit %d)" % rc, rc)
    return 0
