"""Dialling a 9P server: the address forms the client takes, and the default port and
message size (no I/O framework here: nine.client.conn and nine.client.blocking share it)."""

import socket as _socket

from ..protocol.const import IOHDRSZ

__all__ = ["parse_addr", "DEFAULT_MSIZE", "DEFAULT_PORT"]

DEFAULT_PORT = 564
DEFAULT_MSIZE = 131072 + IOHDRSZ


def parse_addr(addr, default_port=DEFAULT_PORT):
    """Parse a 9P address into (family, sockaddr).

    Accepted forms: ``HOST:PORT``, ``[V6ADDR]:PORT``, ``tcp!HOST!PORT``, ``tcp!HOST``,
    ``unix!PATH``, ``unix:PATH``, a bare absolute path (unix socket), or a
    ``(host, port)`` tuple.  ``net!`` is taken as ``tcp!``.
    """
    if isinstance(addr, tuple):
        host, port = addr
        return _socket.AF_INET6 if ":" in host else _socket.AF_INET, (host, int(port))
    if not isinstance(addr, str) or not addr:
        raise ValueError("bad 9P address %r" % (addr,))
    if "!" in addr:
        parts = addr.split("!")
        proto = parts[0]
        if proto == "unix":
            path = "!".join(parts[1:])
            if not path:
                raise ValueError("bad 9P address %r: no path" % addr)
            return _socket.AF_UNIX, path
        if proto not in ("tcp", "net", "tcp4", "tcp6") or len(parts) not in (2, 3):
            raise ValueError("bad 9P address %r" % addr)
        host = parts[1]
        port = _port(parts[2], addr) if len(parts) == 3 else default_port
    elif addr.startswith("unix:"):
        return _socket.AF_UNIX, addr[5:]
    elif addr.startswith("/") or addr.startswith("./"):
        return _socket.AF_UNIX, addr
    elif addr.startswith("["):
        i = addr.find("]")
        if i < 0:
            raise ValueError("bad 9P address %r" % addr)
        host = addr[1:i]
        rest = addr[i + 1:]
        port = _port(rest[1:], addr) if rest.startswith(":") else default_port
        return _socket.AF_INET6, (host, port)
    elif addr.count(":") == 1:
        host, p = addr.split(":")
        port = _port(p, addr)
    elif ":" in addr:  # bare IPv6 address
        return _socket.AF_INET6, (addr, default_port)
    else:
        host, port = addr, default_port
    if host in ("*", ""):
        host = "127.0.0.1"
    fam = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    return fam, (host, port)


_SERVICES = {"9fs": 564, "9pfs": 564, "9p": 564, "styx": 6666}


def _port(p, addr):
    try:
        port = int(p)
    except ValueError:
        if p in _SERVICES:
            return _SERVICES[p]
        try:
            port = _socket.getservbyname(p, "tcp")
        except OSError:
            raise ValueError("bad port in 9P address %r" % addr) from None
    if not 0 < port < 65536:
        raise ValueError("bad port in 9P address %r" % addr)
    return port
