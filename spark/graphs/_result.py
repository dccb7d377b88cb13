"""``RunResult`` and ``RunStatus``: how a graph run ended and what it produced."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from spark.nodes import Node

__all__ = ["PerNode", "RunResult", "RunStatus"]

V = TypeVar("V")


class PerNode(dict[str, V]):
    """A per-node dict of a run result: keyed by node id, and also read by node or by name.

    ``result.processed[node]``, ``result.processed["parser"]`` and
    ``result.processed[node.id]`` are the same value. A name that two nodes
    of the run share is not a key: use the node or its id.
    """

    __slots__ = ("_ids", "_names")

    def __init__(self, items: Iterable[tuple[str, V]] = (), names: Mapping[str, str] = ()) -> None:  # type: ignore[assignment]
        super().__init__(items)
        self._names = dict(names)  # node id -> name
        self._ids: dict[str, str | None] = {}  # name -> node id, None when shared
        for node_id, name in self._names.items():
            self._ids[name] = None if name in self._ids else node_id

    def _id_of(self, key: object) -> object:
        if isinstance(key, Node):
            return key.id
        if isinstance(key, str) and not dict.__contains__(self, key) and key in self._ids:
            node_id = self._ids[key]
            if node_id is None:
                raise KeyError(
                    f"{key!r} names more than one node of the run; use the node or its id"
                )
            return node_id
        return key

    def __missing__(self, key: object) -> V:
        node_id = self._id_of(key)
        if node_id is key or not isinstance(node_id, str) or not dict.__contains__(self, node_id):
            raise KeyError(key)
        return super().__getitem__(node_id)

    def __contains__(self, key: object) -> bool:
        try:
            return dict.__contains__(self, self._id_of(key))
        except KeyError:
            return False

    def get(self, key: object, default: Any = None) -> Any:
        """The value for a node, a node's name or an id, or ``default``."""
        try:
            return self[key]  # type: ignore[index]
        except KeyError:
            return default

    def copy(self) -> PerNode[V]:
        """A shallow copy that is read by node or name too."""
        return type(self)(self.items(), self._names)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self.items()), self._names))


class RunStatus(str, Enum):
    """How a run ended; each member compares equal to its string value."""

    COMPLETED = "completed"
    """Every worker returned (shutdown propagated), or the graph went idle."""
    BUDGET_EXHAUSTED = "budget_exhausted"
    """The budget ran out and the graph was stopped gracefully."""
    STOPPED = "stopped"
    """``Graph.stop()`` was called and the graph was stopped gracefully."""
    FAILED = "failed"
    """A worker crashed (``error`` says why); the other nodes were stopped gracefully."""

    def __str__(self) -> str:
        return self.value


@dataclass
class RunResult:
    """The outcome of ``Graph.run``.

    Per-node dicts are keyed by node id and can be read by node or by node
    name too (see ``PerNode``).
    """

    status: RunStatus
    outputs: list[Any] = field(default_factory=list)
    """What the sink nodes emitted, in the order they emitted it."""
    outputs_by_node: PerNode[list[Any]] = field(default_factory=PerNode)
    """The same outputs, per sink node."""
    processed: PerNode[int] = field(default_factory=PerNode)
    """Messages each node processed in this run.

    For a node that overrides ``go()`` the graph cannot see processing, so
    this counts the messages its loop received from its mailbox."""
    failed: PerNode[int] = field(default_factory=PerNode)
    """Messages whose processing failed, per node (default ``go()`` only)."""
    pending: PerNode[int] = field(default_factory=PerNode)
    """Messages left in each mailbox when the run ended; they stay there for the next run."""
    cancelled: list[str] = field(default_factory=list)
    """Nodes whose worker was still busy after the grace period and was cancelled."""
    error: BaseException | None = None
    """Why the run failed, when ``status`` is ``FAILED``."""
    failed_node: str | None = None
    """The id of the node whose worker crashed, when it was a node."""
    elapsed: float = 0.0
    """Seconds from the start of the run to its end, the winding down included."""

    @property
    def ok(self) -> bool:
        """Whether the run did not fail."""
        return self.status is not RunStatus.FAILED
