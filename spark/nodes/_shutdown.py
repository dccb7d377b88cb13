"""Shutdown messages: stop requests, and counting shutdowns from predecessors."""

from __future__ import annotations

from typing import Any

from .channels import ChannelMessage

__all__ = ["STOP_REQUEST", "ShutdownCounter", "is_stop_request", "stop_request"]

STOP_REQUEST = "stop_request"
"""Metadata key marking a shutdown sent by ``Node.stop()`` or by a graph stopping its nodes."""


def stop_request(source: str) -> ChannelMessage[Any]:
    """A shutdown that stops the receiving node at once, without propagation."""
    return ChannelMessage(
        payload=None, metadata={"source_node": source, STOP_REQUEST: True}, is_shutdown=True
    )


def is_stop_request(message: ChannelMessage[Any]) -> bool:
    """Whether ``message`` is a stop request rather than a shutdown to propagate.

    ``Node.stop()`` and a stopping graph put one into a node's mailbox to
    wake its worker. It is for the workers reading that channel object: a
    channel over a backend shared with other processes (as the Redis one)
    hands it to its own receivers directly instead of writing it there.
    """
    return bool(message.metadata and message.metadata.get(STOP_REQUEST))


class ShutdownCounter:
    """Counts shutdown messages until one has come from every predecessor.

    A shutdown whose ``source_node`` names a predecessor counts for that
    predecessor, once however often it repeats. A shutdown that names no
    predecessor (one sent by hand, or by a worker that does not set
    ``source_node``) counts for one predecessor not heard from yet.
    """

    __slots__ = ("_expected", "_seen", "_unnamed")

    def __init__(self, predecessors: frozenset[str]) -> None:
        self._expected = predecessors
        self._seen: set[str] = set()
        self._unnamed = 0

    def add(self, message: ChannelMessage[Any]) -> bool:
        """Count ``message``; return whether every predecessor has now shut down."""
        source = message.metadata.get("source_node") if message.metadata else None
        if isinstance(source, str) and source in self._expected:
            self._seen.add(source)
        else:
            self._unnamed += 1
        return len(self._seen) + self._unnamed >= len(self._expected)
