"""``Graph``: the nodes reachable from a start node, run together."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from spark.nodes import Edge, Node

from ._result import RunResult
from ._run import ChannelFactory, GraphRun
from ._task import Task
from .event_bus import GraphEventBus

if TYPE_CHECKING:
    from spark.observability import NodeInstrumentation

__all__ = ["Graph"]


class Graph:
    """Every node reachable from ``start`` through edges, run as one.

    Nodes and edges are discovered when the graph is made and again at each
    run, so nodes connected in between take part. ``channel_factory(edge)``
    makes the channel each edge uses during a run (it must deliver into
    ``edge.target.mailbox``); by default an edge gets a ``ForwardingChannel``
    into the target's mailbox that adds ``edge_id``, ``from_node`` and
    ``to_node`` to the metadata. An edge made with its own ``channel`` keeps it.

    ``event_bus`` (a new ``GraphEventBus`` by default) is attached to every
    node when the graph is made and again when each run starts, so nodes
    can ``publish_event`` and ``subscribe_event``. It outlives the runs:
    a run neither closes it nor empties its replay buffer.
    """

    _instrumentation: NodeInstrumentation | None = None
    """Set by ``spark.observability.instrument(graph)``: applied to the nodes of each run."""

    def __init__(
        self,
        start: Node,
        *,
        channel_factory: ChannelFactory | None = None,
        event_bus: GraphEventBus | None = None,
    ) -> None:
        if not isinstance(start, Node):
            raise TypeError(f"a graph starts at a Node, got {type(start).__name__}")
        if channel_factory is not None and not callable(channel_factory):
            raise TypeError("channel_factory must be callable as channel_factory(edge) or None")
        self._start = start
        self._channel_factory = channel_factory
        self._run: GraphRun | None = None
        self.event_bus = GraphEventBus() if event_bus is None else event_bus

    @property
    def event_bus(self) -> GraphEventBus:
        """The bus attached to the graph's nodes; setting one attaches it to them."""
        return self._event_bus

    @event_bus.setter
    def event_bus(self, event_bus: GraphEventBus) -> None:
        if not isinstance(event_bus, GraphEventBus):
            raise TypeError(
                f"a graph's event_bus must be a GraphEventBus, got {type(event_bus).__name__}"
            )
        self._event_bus = event_bus
        for node in self._discover():
            node.attach_event_bus(event_bus)

    @property
    def start(self) -> Node:
        """The node that receives the inputs of each run."""
        return self._start

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every node reachable from ``start``, breadth first, ``start`` first."""
        return tuple(self._discover())

    @property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge between the graph's nodes, in discovery order."""
        return tuple(edge for node in self._discover() for edge in node.edges)

    @property
    def running(self) -> bool:
        """Whether ``run`` is in progress."""
        return self._run is not None

    async def run(self, task: Task | None = None) -> RunResult:
        """Run ``task`` (a ``ONE_OFF`` task without inputs by default) and report how it went.

        Returns when every worker has returned, when the graph has been idle
        long enough (at once for ``ONE_OFF``), when the budget runs out, or
        when ``stop()`` is called; in all but the first case the nodes are
        stopped gracefully first. A worker that crashes ends the run with
        status ``FAILED`` once the others are stopped. No task of the run
        survives it, even when ``run`` itself is cancelled.
        """
        if task is None:
            task = Task()
        elif not isinstance(task, Task):
            raise TypeError(f"run() takes a Task, got {type(task).__name__}")
        if self._run is not None:
            raise RuntimeError("this graph is already running; await that run or call stop()")
        nodes = self._discover()
        instrumentation = self._instrumentation
        if instrumentation is not None:  # nodes connected since instrument(graph) join in
            for node in nodes:
                if "_instrumentation" not in node.__dict__:
                    instrumentation.adopt(node)
        self._run = GraphRun(nodes, self._start, task, self._channel_factory, self._event_bus)
        try:
            return await self._run.execute()
        finally:
            self._run = None

    def stop(self) -> bool:
        """Ask the current run to stop gracefully; it then returns with status ``STOPPED``.

        Returns ``False``, doing nothing, when no run is in progress.
        """
        if self._run is None:
            return False
        self._run.request_stop()
        return True

    def _discover(self) -> list[Node]:
        found = [self._start]
        seen = {id(self._start)}
        queue = deque(found)
        while queue:
            for successor in queue.popleft().get_next_nodes():
                if id(successor) not in seen:
                    seen.add(id(successor))
                    found.append(successor)
                    queue.append(successor)
        ids: dict[str, Node] = {}
        for node in found:
            other = ids.setdefault(node.id, node)
            if other is not node:
                raise ValueError(
                    f"nodes {other.name!r} and {node.name!r} share the id {node.id!r}; "
                    "give each node of a graph its own id"
                )
        return found

    def __repr__(self) -> str:
        return f"<Graph start={self._start.name!r} nodes={len(self._discover())}>"
