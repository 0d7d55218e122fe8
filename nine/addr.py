"""Dial strings: HOST:PORT, tcp!HOST!PORT, unix!PATH (and a bare path to a socket)."""


def parse_addr(addr):
    """Return ("tcp", (host, port)) or ("unix", path).  Raises ValueError."""
    if not isinstance(addr, str) or not addr:
        raise ValueError("empty address")
    if addr.startswith("unix!"):
        path = addr[5:]
        if not path:
            raise ValueError("unix address without a path: %r" % addr)
        return "unix", path
    if addr.startswith("tcp!"):
        parts = addr.split("!")
        if len(parts) != 3:
            raise ValueError("bad address %r (want tcp!HOST!PORT)" % addr)
        host, port = parts[1], parts[2]
    elif "!" in addr:
        raise ValueError("bad address %r (want HOST:PORT, tcp!HOST!PORT or unix!PATH)" % addr)
    elif addr.startswith("/") or addr.startswith("./"):
        return "unix", addr
    else:
        if addr.startswith("["):  # [v6]:port
            host, _, port = addr[1:].partition("]:")
        else:
            host, sep, port = addr.rpartition(":")
            if not sep:
                raise ValueError("bad address %r (want HOST:PORT)" % addr)
    if host in ("", "*"):
        host = "0.0.0.0"
    try:
        p = int(port)
    except ValueError:
        raise ValueError("bad port %r in address %r" % (port, addr)) from None
    if not 0 <= p <= 65535:
        raise ValueError("port %d out of range in %r" % (p, addr))
    return "tcp", (host, p)
