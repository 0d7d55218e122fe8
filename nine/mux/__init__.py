"""The multiplexer: one server core whose nodes live on child servers.

  QidMap      one collision-free, stable qid space for everything a mux serves
  Child       one shared 9P2000.L connection to a child server (lazy, per-user attach,
              up/down status, background reconnect)
  RemoteNode  the Node backend that forwards every operation to a child
"""

from ..server.qidmap import QidMap  # noqa: F401
from .child import Child, ChildDown, StaleNode, DEFAULT_QIDMAP  # noqa: F401
from .remote import RemoteNode  # noqa: F401

__all__ = ["QidMap", "Child", "RemoteNode", "ChildDown", "StaleNode", "DEFAULT_QIDMAP"]
