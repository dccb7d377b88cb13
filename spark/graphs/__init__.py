"""Graphs: run connected nodes once or as long-running workers."""

from ._graph import Graph
from ._result import PerNode, RunResult, RunStatus
from ._run import ChannelFactory
from ._task import Budget, NodeMessage, Task, TaskInput, TaskType
from .event_bus import EventSubscription, GraphEventBus, SubscriptionClosed

__all__ = [
    "Budget",
    "ChannelFactory",
    "EventSubscription",
    "Graph",
    "GraphEventBus",
    "NodeMessage",
    "PerNode",
    "RunResult",
    "RunStatus",
    "SubscriptionClosed",
    "Task",
    "TaskInput",
    "TaskType",
]
