"""Launchers: start a tree of leaves and muxes (a TBON) described by a Topology.

The names below are imported on first use (PEP 562): a daemon that imports only
nine.launch.daemon does not pay for the launchers (their imports, dataclasses and
subprocess, are a tenth of a server's start)."""

__all__ = ["SshTree", "Topology", "Tree"]

_WHERE = {"SshTree": ".ssh", "Topology": ".topology", "Tree": ".local"}


def __getattr__(name):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    import importlib
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value
