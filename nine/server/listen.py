"""Unix-domain listening sockets: what may be at the path, and the socket's mode.

    sock = unix_socket("/run/nine.sock", socket_mode(authenticated=True))

A server listening on unix!PATH replaces only a *stale* socket at PATH (a socket file
that nobody listens on any more, left by a server that ended).  Anything else there is
refused with a message, and left as it is: a regular file, a directory, a symlink, any
other file (FileExistsError), or a socket that a live server answers on (EADDRINUSE),
or one whose state cannot be told (its own errno: a socket we may not connect to).

The socket's mode is set at bind (through the umask, so there is no moment with another
mode), never left to the umask of whoever started the server:
  - 0666 for a server that requires authentication: every local user may connect, as
    every local user may reach a TCP port on loopback, and the attach proves who they
    are (docs/security.md);
  - 0600 for a server without authentication (--no-auth): the server believes every
    claim, so only its own user (and root) may connect.
--socket-mode MODE overrides (e.g. 0660 for a group).  A directory that only some users
may search restricts the socket further.
"""

import errno
import os
import stat

from gevent import socket as gsocket

#: how long a probe waits for a server at a socket path to accept (seconds)
PROBE_TIMEOUT = 2.0


def socket_mode(authenticated):
    """The default mode of a unix socket: 0666 with authentication, else 0600."""
    return 0o666 if authenticated else 0o600


def _kind(mode):
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a socket"


def clear_stale(path):
    """Make way for a socket at path: nothing there, or a stale socket (removed).
    Raises OSError with a message for anything else, which stays untouched."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "%s exists and is %s: not replacing it with a "
                              "socket (remove it, or listen elsewhere)"
                              % (path, _kind(st.st_mode)))
    probe = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)             # nobody listens: a stale socket of an ended server
        return
    except FileNotFoundError:
        return
    except OSError as ex:
        raise OSError(ex.errno or errno.EADDRINUSE, "%s: cannot tell whether a server "
                      "listens on this socket (%s): not replacing it"
                      % (path, ex.strerror or ex)) from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "%s: a server is listening on this socket already"
                  % path)


def unix_socket(path, mode, backlog=1024):
    """A listening unix socket at path with exactly this mode (after clear_stale)."""
    if not 0 <= mode <= 0o777:
        raise ValueError("socket mode %o: want permission bits (0 to 0777)" % mode)
    clear_stale(path)
    sock = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
    try:
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
