"""A diod-compatible `ctl` tree: null, zero, date, version and friends.

diod's C clients (diodls, diodcat, diodload, dioddate) use aname `ctl`.
"""

import os
import time

import nine
from .files import Dir, File

_ZEROS = bytes(4 << 20)


def _zero_pread(ctx, off, count):
    return memoryview(_ZEROS)[:count] if count <= len(_ZEROS) else bytes(count)


def _zero100_pread(ctx, off, count):
    if off >= 100 << 20:
        return b""
    return _zero_pread(ctx, off, min(count, (100 << 20) - off))


def _null_pread(ctx, off, count):
    return b""


def _null_write(ctx, off, data):
    return len(data)


def _date(ctx):
    # the format dioddate parses: seconds and microseconds since the epoch
    t = time.time()
    return "%d.%06d 0.0\n" % (int(t), int((t - int(t)) * 1e6))


def _connections(server):
    def read(ctx):
        if server is None:
            return ""
        return "".join("%s\n" % (c.address,) for c in list(server.conns))
    return read


def _exports(server):
    def read(ctx):
        if server is None:
            return ""
        return "".join("%s\n" % (a if a is not None else "*") for a in server.exports)
    return read


def ctl_tree(server=None):
    return Dir("", [
        File("null", pread=_null_pread, write=_null_write, mode=0o666, blocking=False),
        File("zero", pread=_zero_pread, write=_null_write, mode=0o666, blocking=False),
        File("null100", pread=_null_pread, write=_null_write, mode=0o666, blocking=False),
        File("zero100", pread=_zero100_pread, size=100 << 20, mode=0o444, blocking=False),
        File("date", read=_date),
        File("version", read=lambda ctx: "nine-%s\n" % nine.__version__),
        File("connections", read=_connections(server)),
        File("exports", read=_exports(server)),
        File("meminfo", read=lambda ctx: open("/proc/meminfo").read()),
        File("pid", read=lambda ctx: "%d\n" % os.getpid()),
    ])
