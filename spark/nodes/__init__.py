"""Nodes: workers with mailboxes, connected by edges; channels live in ``spark.nodes.channels``."""

from ._edge import Edge
from ._node import Node, NodeStats
from ._shutdown import is_stop_request
from .config import NodeConfig

__all__ = ["Edge", "Node", "NodeConfig", "NodeStats", "is_stop_request"]
