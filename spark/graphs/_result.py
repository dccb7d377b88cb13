"""``RunResult`` and ``RunStatus``: how a graph run ended and what it produced."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["RunResult", "RunStatus"]


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
    """The outcome of ``Graph.run``; per-node dicts are keyed by node id."""

    status: RunStatus
    outputs: list[Any] = field(default_factory=list)
    """What the sink nodes emitted, in the order they emitted it."""
    outputs_by_node: dict[str, list[Any]] = field(default_factory=dict)
    """The same outputs, per sink node."""
    processed: dict[str, int] = field(default_factory=dict)
    """Messages each node processed in this run.

    For a node that overrides ``go()`` the graph cannot see processing, so
    this counts the messages its loop received from its mailbox."""
    failed: dict[str, int] = field(default_factory=dict)
    """Messages whose processing failed, per node (default ``go()`` only)."""
    pending: dict[str, int] = field(default_factory=dict)
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
