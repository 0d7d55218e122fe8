"""Free loopback ports and waits for a condition, with deadlines stretched by the
machine's load: what the tests, the benchmarks and the interop harness use to start
servers and wait for them (and for whatever else they wait on).

A deadline given here is the one for an idle machine; load_factor() says how many
times longer to allow now: the NINE_TIMEOUT_SCALE environment variable when it is
set, else the load average per CPU (one- or five-minute, the larger), at least 1.
"""

import os
import socket
import time

SCALE_ENV = "NINE_TIMEOUT_SCALE"


def load_factor() -> float:
    """How many times longer than on an idle machine a wait may take now."""
    env = os.environ.get(SCALE_ENV)
    if env:
        scale = float(env)
        if scale <= 0:
            raise ValueError(f"{SCALE_ENV}={env}: not a positive number")
        return scale
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    load1, load5, _ = os.getloadavg()
    return max(1.0, max(load1, load5) / cpus)


def scaled(seconds: float) -> float:
    """seconds (a deadline for an idle machine) stretched by load_factor()."""
    return seconds * load_factor()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of host that nothing listens on now (the kernel's pick; another
    process may take it before the caller binds it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str, interval: float = 0.05, sleep=time.sleep):
    """Call pred() every `interval` seconds until it returns a true value, and return
    that value; after scaled(timeout) seconds, TimeoutError naming `what` (what was
    awaited).  sleep: the function that waits between calls (gevent.sleep in a
    greenlet whose hub must go on running)."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not after {limit:.1f} s")
        sleep(interval)


class ServerExited(RuntimeError):
    """The server process that wait_port waited for exited instead of listening."""


def wait_port(addr, timeout: float = 20, proc=None, sleep=time.sleep) -> None:
    """Wait until something accepts TCP connections at addr (a loopback port number,
    "HOST:PORT" or (host, port)).  proc: the server's Popen; if it exits first,
    ServerExited with its exit status (and its stderr, where that is a pipe)."""
    if isinstance(addr, int):
        addr = ("127.0.0.1", addr)
    elif isinstance(addr, str):
        host, _, port = addr.rpartition(":")
        addr = (host, int(port))

    def listening():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            if isinstance(err, bytes):
                err = err.decode(errors="replace")
            raise ServerExited(f"server exited with {proc.returncode}" + (f": {err}" if err else ""))
        try:
            socket.create_connection(addr, timeout=0.5).close()
            return True
        except OSError:
            return False
    wait_for(listening, timeout, "a server listening on %s:%d" % addr, sleep=sleep)
