"""The monitor's listeners: each client in its own greenlet, under a deadline.

A client that connects and then reads (or sends) nothing holds one greenlet and one
socket until its deadline, then is cut off; at most `max_clients` are served at once
(more wait in the listen backlog).  What a client is sent is a snapshot made before it
came (bytes shared by every client), so neither a slow client nor a stuck one stalls
the collection or any other client (gmetad issue 223), and memory stays bounded.
"""

import logging

import gevent
import gevent.pool
import gevent.server
import gevent.socket

from ..addr import parse_addr

log = logging.getLogger("nine.monitor")


def listen_addr(text, default_port):
    """(host, port) of "HOST:PORT", ":PORT" or "PORT" (all interfaces), or "HOST"."""
    text = text.strip()
    if text.isdigit():
        text = ":" + text
    elif ":" not in text.rpartition("]")[2]:
        text = "%s:%d" % (text, default_port)
    kind, addr = parse_addr(text)
    if kind != "tcp":
        raise ValueError("%s: want a TCP address" % text)
    return addr


class Listener:
    """Serve `handle(sock, address)` on (host, port), each client within `timeout`
    seconds from its connection, `max_clients` at once."""

    def __init__(self, addr, handle, timeout=10.0, max_clients=64, name="client"):
        self.handle = handle
        self.timeout = timeout
        self.name = name
        self.server = gevent.server.StreamServer(addr, self._serve,
                                                 spawn=gevent.pool.Pool(max_clients))

    def start(self):
        self.server.start()
        return self

    @property
    def address(self):
        return self.server.address

    def _serve(self, sock, address):
        sock.settimeout(self.timeout)
        try:
            with gevent.Timeout(self.timeout):
                self.handle(sock, address)
        except (gevent.Timeout, OSError) as e:
            log.info("nine monitor: %s %s cut off: %s", self.name, address[0],
                     "deadline passed" if isinstance(e, gevent.Timeout) else e)
        finally:
            sock.close()

    def stop(self):
        self.server.stop(timeout=1)
