"""What a graph run is asked to do: ``Task``, ``TaskType``, ``Budget``, ``NodeMessage``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeAlias

from spark.nodes import _channel_base
from spark.nodes.channels import ChannelMessage

__all__ = ["Budget", "NodeMessage", "Task", "TaskInput", "TaskType"]


class TaskType(str, Enum):
    """How a graph runs a task."""

    ONE_OFF = "one_off"
    """Run the inputs through the graph once; the run ends when every node is idle."""
    LONG_RUNNING = "long_running"
    """Keep every node working until shut down, stopped, idle too long, or out of budget."""

    def __str__(self) -> str:
        return self.value


@dataclass
class NodeMessage:
    """An input for a graph run: ``content`` becomes the payload the start node receives."""

    content: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_channel_message(self) -> ChannelMessage[Any]:
        """The envelope delivered to the start node's mailbox."""
        return ChannelMessage(payload=self.content, metadata=dict(self.metadata))


TaskInput: TypeAlias = NodeMessage | ChannelMessage[Any]
"""One input: a ``NodeMessage``, or a ``ChannelMessage`` delivered as it is (a shutdown, say)."""


def _input_types() -> tuple[type, ...]:
    # Envelopes of either build (pure or compiled) are accepted.
    return (NodeMessage, ChannelMessage, *_channel_base.message_types)


def _check_seconds(owner: str, value: object, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner} must be {bound}, got {value}")


@dataclass(frozen=True)
class Budget:
    """Limits on a run. ``max_seconds=None`` (the default) means no time limit.

    When the time is up the run stops gracefully: see ``Task.grace_seconds``.
    """

    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_seconds is not None:
            _check_seconds("Budget.max_seconds", self.max_seconds, allow_zero=False)


@dataclass
class Task:
    """A run's inputs, its type, its budget, and how it ends."""

    inputs: TaskInput | Sequence[TaskInput] | None = None
    """Delivered in order to the start node's mailbox when the run begins."""
    type: TaskType = TaskType.ONE_OFF
    budget: Budget = field(default_factory=Budget)
    idle_timeout: float | None = None
    """End the run once every node has been idle this long (seconds).

    ``None`` means: right away for ``ONE_OFF``, never for ``LONG_RUNNING``."""
    grace_seconds: float = 5.0
    """When stopping, how long in-flight work may take before workers are cancelled."""

    def __post_init__(self) -> None:
        if not isinstance(self.type, TaskType):
            try:
                self.type = TaskType(self.type)
            except ValueError:
                choices = ", ".join(f"TaskType.{kind.name}" for kind in TaskType)
                raise ValueError(f"Task.type must be one of {choices}, got {self.type!r}") from None
        if not isinstance(self.budget, Budget):
            raise TypeError(
                f"Task.budget must be a Budget, got {type(self.budget).__name__}; "
                "write budget=Budget(max_seconds=...)"
            )
        if self.idle_timeout is not None:
            _check_seconds("Task.idle_timeout", self.idle_timeout, allow_zero=True)
        _check_seconds("Task.grace_seconds", self.grace_seconds, allow_zero=True)
        self._input_items()  # fails early on a wrong input

    def messages(self) -> list[ChannelMessage[Any]]:
        """The inputs as the envelopes the start node will receive, in order."""
        return [
            item.to_channel_message() if isinstance(item, NodeMessage) else item
            for item in self._input_items()
        ]

    def _input_items(self) -> list[TaskInput]:
        inputs = self.inputs
        if inputs is None:
            return []
        if isinstance(inputs, _input_types()):
            return [inputs]  # type: ignore[list-item]
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
            raise TypeError(
                "Task.inputs must be a NodeMessage, a ChannelMessage, a list of them, or None; "
                f"got {type(inputs).__name__}"
            )
        accepted = _input_types()
        for item in inputs:
            if type(item) not in accepted and not isinstance(item, accepted):
                raise TypeError(
                    f"each input must be a NodeMessage or a ChannelMessage, got "
                    f"{type(item).__name__}; wrap values: NodeMessage(content=value)"
                )
        return list(inputs)
