"""Graphs: run connected nodes once or as long-running workers."""

from ._graph import Graph
from ._result import PerNode, RunResult, RunStatus
from ._run import ChannelFactory
from ._task import Budget, NodeMessage, Task, TaskInput, TaskType

__all__ = [
    "Budget",
    "ChannelFactory",
    "Graph",
    "NodeMessage",
    "PerNode",
    "RunResult",
    "RunStatus",
    "Task",
    "TaskInput",
    "TaskType",
]
