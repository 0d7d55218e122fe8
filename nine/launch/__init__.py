"""Launchers: start a tree of leaves and muxes (a TBON) described by a Topology."""

from .local import Tree
from .ssh import SshTree
from .topology import Topology

__all__ = ["SshTree", "Topology", "Tree"]
