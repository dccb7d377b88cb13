"""``Edge``: a connection from one node to another."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .channels import BaseChannel

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["Edge"]


@dataclass(frozen=True, eq=False)
class Edge:
    """A connection from ``source`` to ``target``, made by ``source >> target``.

    ``channel``, when set, is the channel ``source`` sends through to reach
    ``target``; it must deliver into ``target.mailbox``. When it is ``None``,
    a graph run gives the edge a ``ForwardingChannel`` into the target's
    mailbox, and outside a graph ``source`` sends to the mailbox directly.
    """

    source: Node
    target: Node
    channel: BaseChannel[Any] | None = None

    @property
    def id(self) -> str:
        """``"<source id>-><target id>"``, unique since a pair has at most one edge."""
        return f"{self.source.id}->{self.target.id}"

    @property
    def metadata(self) -> dict[str, str]:
        """The metadata a graph run adds to each message sent along this edge."""
        return {"edge_id": self.id, "from_node": self.source.id, "to_node": self.target.id}

    def __repr__(self) -> str:
        return f"<Edge {self.source.name!r} -> {self.target.name!r}>"
