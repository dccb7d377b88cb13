"""Nodes: workers with mailboxes, connected by edges; channels live in ``spark.nodes.channels``."""

from ._edge import Edge
from ._node import Node, NodeStats
from .config import NodeConfig

__all__ = ["Edge", "Node", "NodeConfig", "NodeStats"]
