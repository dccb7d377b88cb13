"""One run of a graph: start the workers, feed the inputs, watch, wind down, clean up."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from spark.nodes import Edge, Node, _channels_py
from spark.nodes._channel_base import (
    empty_or_unknown,
    is_patched,
    report_observer_error,
    schedule_observer_awaitable,
)
from spark.nodes._node import RunBinding
from spark.nodes._shutdown import stop_request
from spark.nodes.channels import (
    BaseChannel,
    ChannelClosed,
    ChannelMessage,
    ForwardingChannel,
    InMemoryChannel,
    ObserverCallable,
)

from ._result import PerNode, RunResult, RunStatus
from ._task import Task, TaskType
from .event_bus import GraphEventBus

__all__ = ["ChannelFactory", "GraphRun"]

logger = logging.getLogger("spark.graphs")

ChannelFactory = Callable[[Edge], BaseChannel[Any]]
"""Makes the channel an edge uses during a run; it must deliver into ``edge.target.mailbox``."""

GRAPH_SOURCE = "graph"
"""The ``source_node`` of the stop requests a graph sends to its nodes."""
CANCEL_WAIT = 0.5
"""Seconds to wait for cancelled tasks to finish before giving up on them."""
IDLE_POLL = (0.01, 0.1)
"""The shortest and longest time in seconds between two checks of whether a graph is idle."""


_IN_MEMORY = (InMemoryChannel, _channels_py.InMemoryChannel)


class _Outcome(NamedTuple):
    status: RunStatus
    error: BaseException | None = None
    node: str | None = None


class GraphRun:
    """Runs ``task`` on ``nodes`` once; ``execute()`` returns the ``RunResult``."""

    def __init__(
        self,
        nodes: Sequence[Node],
        start: Node,
        task: Task,
        channel_factory: ChannelFactory | None,
        event_bus: GraphEventBus | None = None,
    ) -> None:
        self._nodes = nodes
        self._start = start
        self._task = task
        self._channel_factory = channel_factory
        self._event_bus = event_bus
        self._loop = asyncio.get_running_loop()
        self._stop_requested: asyncio.Future[None] = self._loop.create_future()
        self._workers: dict[Node, asyncio.Task[None]] = {}
        self._feeder: asyncio.Task[None] | None = None
        self._senders: set[asyncio.Task[None]] = set()
        self._outputs: list[Any] = []
        self._outputs_by_node: dict[str, list[Any]] = {}
        self._received: dict[str, int] = {}
        self._observers: list[tuple[BaseChannel[Any], ObserverCallable]] = []
        self._bound: list[Node] = []
        self._counts_before: dict[str, tuple[int, int]] = {}
        self._pending: dict[str, int] = {}
        self._cancelled: list[str] = []

    def request_stop(self) -> None:
        """Make the run stop gracefully, with status ``STOPPED``."""
        if not self._stop_requested.done():
            self._stop_requested.set_result(None)

    async def execute(self) -> RunResult:
        """Run the task to its end and report; never leaves a task of its own behind."""
        started = self._loop.time()
        max_seconds = self._task.budget.max_seconds
        deadline = None if max_seconds is None else started + max_seconds
        try:
            self._bind()
            self._start_workers()
            outcome = await self._watch(deadline)
            if not all(worker.done() for worker in self._workers.values()):
                await self._wind_down()
            outcome = self._check_crashes(outcome)
        finally:
            await self._finish()
        return self._result(outcome, self._loop.time() - started)

    # -- setting up ------------------------------------------------------

    def _bind(self) -> None:
        for node in self._nodes:
            if node._binding is not None:
                raise RuntimeError(
                    f"node {node.name!r} is already running in a graph; "
                    "a node runs in one graph at a time"
                )
            if not inspect.iscoroutinefunction(node.go):
                raise TypeError(
                    f"{type(node).__name__}.go must be a coroutine function: "
                    "define it with 'async def go(self)'"
                )
        if self._event_bus is not None:  # nodes connected since the graph was made get it too
            for node in self._nodes:
                node.attach_event_bus(self._event_bus)
        predecessors: dict[str, set[str]] = {node.id: set() for node in self._nodes}
        for node in self._nodes:
            for edge in node.edges:
                predecessors[edge.target.id].add(node.id)
        bindings = {}
        for node in self._nodes:
            channels = {edge: self._edge_channel(edge) for edge in node.edges}
            bindings[node] = RunBinding(
                channels=channels,
                predecessors=frozenset(predecessors[node.id]),
                on_output=None if node.edges else self._output_sink(node.id),
                outgoing=tuple(channels.values()),
            )
        for node, binding in bindings.items():
            node._binding = binding
            self._bound.append(node)
            node._stop_flag = False
            self._counts_before[node.id] = (node._state.processed, node._state.failed)
            if type(node).go is not Node.go:
                observer = self._receipt_counter(node.id)
                node.mailbox.add_observer(observer)
                self._observers.append((node.mailbox, observer))

    def _edge_channel(self, edge: Edge) -> BaseChannel[Any]:
        if edge.channel is not None:
            return edge.channel
        if self._channel_factory is None:
            mailbox = edge.target.mailbox
            # The forwarder is of the mailbox's build, so that it can hand
            # messages over without leaving that build.
            forwarding = (
                _channels_py.ForwardingChannel
                if type(mailbox) is _channels_py.InMemoryChannel
                else ForwardingChannel
            )
            return forwarding(mailbox, name=f"edge:{edge.id}", metadata_defaults=edge.metadata)
        channel = self._channel_factory(edge)
        if not isinstance(channel, BaseChannel):
            raise TypeError(
                f"channel_factory must return a channel (a BaseChannel) for {edge!r}, "
                f"got {type(channel).__name__}"
            )
        return channel

    def _output_sink(self, node_id: str) -> Callable[[Any], None]:
        outputs = self._outputs
        own = self._outputs_by_node.setdefault(node_id, [])

        def record(payload: Any) -> None:
            outputs.append(payload)
            own.append(payload)

        return record

    def _receipt_counter(self, node_id: str) -> ObserverCallable:
        counts = self._received
        counts[node_id] = 0

        def count(message: ChannelMessage[Any], channel: BaseChannel[Any], phase: str) -> None:
            if phase == "receive" and not message.is_shutdown:
                counts[node_id] += 1

        return count

    def _start_workers(self) -> None:
        for node in self._nodes:
            self._workers[node] = asyncio.create_task(node.go(), name=f"spark-node:{node.name}")
        messages = self._task.messages()
        if messages:
            self._feeder = asyncio.create_task(self._feed(messages), name="spark-graph-inputs")

    async def _feed(self, messages: list[ChannelMessage[Any]]) -> None:
        mailbox = self._start.mailbox
        # What fits into a pure in-memory mailbox without observers goes in
        # without an await (its send would not wait either); the rest waits.
        quick: Any = None
        if type(mailbox) is _channels_py.InMemoryChannel and not is_patched(mailbox, "send"):
            quick = mailbox
        for message in messages:
            if quick is not None and not quick._observers:
                try:
                    quick.send_nowait(message)
                    continue
                except asyncio.QueueFull:
                    pass
            await mailbox.send(message)

    # -- watching --------------------------------------------------------

    async def _watch(self, deadline: float | None) -> _Outcome:
        """Wait for the first reason to end the run."""
        task = self._task
        idle_timeout = task.idle_timeout
        if idle_timeout is None and task.type is TaskType.ONE_OFF:
            idle_timeout = 0.0
        poll = None
        if idle_timeout is not None:
            poll = min(max(idle_timeout / 10, IDLE_POLL[0]), IDLE_POLL[1])
        idle_since: float | None = None
        last_activity: tuple[int, ...] | None = None
        while True:
            crash = self._first_crash()
            if crash is not None:
                return crash
            if all(worker.done() for worker in self._workers.values()):
                return _Outcome(RunStatus.COMPLETED)
            if self._stop_requested.done():
                return _Outcome(RunStatus.STOPPED)
            now = self._loop.time()
            if deadline is not None and now >= deadline:
                return _Outcome(RunStatus.BUDGET_EXHAUSTED)
            self._drop_undeliverable_inputs()
            if idle_timeout is not None:
                # Idle means: found idle at two checks in a row, with no activity
                # in between, the first of them at least idle_timeout ago.
                activity = self._activity() if self._idle() else None
                if activity is None or activity != last_activity or idle_since is None:
                    idle_since = None if activity is None else now
                elif now - idle_since >= idle_timeout:
                    return _Outcome(RunStatus.COMPLETED)
                last_activity = activity
            await self._wait(poll, deadline, now)

    async def _wait(self, poll: float | None, deadline: float | None, now: float) -> None:
        timeout = math.inf if poll is None else poll
        if deadline is not None:
            timeout = min(timeout, max(deadline - now, 0.0))
        waits: set[asyncio.Future[Any]] = {self._stop_requested}
        waits.update(worker for worker in self._workers.values() if not worker.done())
        if self._feeder is not None and not self._feeder.done():
            waits.add(self._feeder)
        await asyncio.wait(
            waits,
            timeout=None if timeout == math.inf else timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )

    def _first_crash(self) -> _Outcome | None:
        for node, worker in self._workers.items():
            error = _crash(worker)
            if error is not None:
                logger.error("node %r crashed; stopping the graph", node.name, exc_info=error)
                return _Outcome(RunStatus.FAILED, error, node.id)
        feeder = self._feeder
        error = None if feeder is None else _crash(feeder)
        if error is not None:
            logger.error(
                "delivering the inputs to %r failed; stopping the graph",
                self._start.name,
                exc_info=error,
            )
            return _Outcome(RunStatus.FAILED, error)
        return None

    def _drop_undeliverable_inputs(self) -> None:
        feeder = self._feeder
        if feeder is not None and not feeder.done() and self._workers[self._start].done():
            logger.warning(
                "start node %r returned before all inputs were delivered; the rest are dropped",
                self._start.name,
            )
            feeder.cancel()

    def _idle(self) -> bool:
        """Whether no node has work: each waits on an empty mailbox, or has returned."""
        if self._feeder is not None and not self._feeder.done():
            return False
        return all(_node_idle(node, worker) for node, worker in self._workers.items())

    def _activity(self) -> tuple[int, ...]:
        """Counters that change whenever any node does something."""
        counters: list[int] = []
        for node in self._nodes:
            counters += (node._state.processed, node._state.failed, self._received.get(node.id, 0))
            try:
                stats = node.mailbox.stats()
            except NotImplementedError:
                continue
            counters += (stats.sent, stats.received)
        return tuple(counters)

    # -- winding down ----------------------------------------------------

    async def _wind_down(self) -> None:
        """Stop every running node; cancel those still busy after the grace period."""
        if self._feeder is not None:
            self._feeder.cancel()
        running = {node: worker for node, worker in self._workers.items() if not worker.done()}
        for node in running:
            node._stop_flag = True
        for node in running:
            self._send_stop_request(node)
        grace = self._task.grace_seconds
        if running and grace > 0:
            await asyncio.wait(running.values(), timeout=grace)
        busy = {node: worker for node, worker in running.items() if not worker.done()}
        for node, worker in busy.items():
            logger.warning(
                "node %r was still busy %ss after being asked to stop; cancelling it",
                node.name,
                grace,
            )
            worker.cancel()
            self._cancelled.append(node.id)
        if busy:
            await asyncio.wait(busy.values(), timeout=CANCEL_WAIT)

    def _send_stop_request(self, node: Node) -> None:
        message = stop_request(GRAPH_SOURCE)
        try:
            node.mailbox.send_nowait(message)
        except ChannelClosed:
            pass
        except (asyncio.QueueFull, NotImplementedError):
            sender = asyncio.create_task(
                _send_quietly(node.mailbox, message), name=f"spark-stop:{node.name}"
            )
            self._senders.add(sender)

    def _check_crashes(self, outcome: _Outcome) -> _Outcome:
        """The outcome, or a failure if a worker crashed while the graph was winding down."""
        if outcome.status is RunStatus.FAILED:
            return outcome
        return self._first_crash() or outcome

    async def _finish(self) -> None:
        """Cancel what is left, detach from the nodes, tidy their mailboxes."""
        tasks = [*self._workers.values(), *self._senders]
        if self._feeder is not None:
            tasks.append(self._feeder)
        leftovers = [task for task in tasks if not task.done()]
        for task in leftovers:
            task.cancel()
        try:
            if leftovers:
                await asyncio.wait(leftovers, timeout=CANCEL_WAIT)
        finally:
            for task in tasks:
                if task.done():
                    _crash(task)  # retrieves the exception, so asyncio does not log it
                else:
                    logger.error("task %r ignored cancellation and is left running", task)
            for mailbox, observer in self._observers:
                try:
                    mailbox.remove_observer(observer)
                except ValueError:
                    pass
            for node in self._bound:
                node._binding = None
                self._pending[node.id] = _remove_stale_shutdowns(node.mailbox)

    def _result(self, outcome: _Outcome, elapsed: float) -> RunResult:
        processed: dict[str, int] = {}
        failed: dict[str, int] = {}
        for node in self._nodes:
            processed_before, failed_before = self._counts_before[node.id]
            if node.id in self._received:
                processed[node.id] = self._received[node.id]
            else:
                processed[node.id] = node._state.processed - processed_before
            failed[node.id] = node._state.failed - failed_before
        outputs_by_node: dict[str, list[Any]] = {
            node.id: [] for node in self._nodes if not node.edges
        }
        outputs_by_node.update(self._outputs_by_node)
        names = {node.id: node.name for node in self._nodes}
        return RunResult(
            status=outcome.status,
            outputs=self._outputs,
            outputs_by_node=PerNode(outputs_by_node.items(), names),
            processed=PerNode(processed.items(), names),
            failed=PerNode(failed.items(), names),
            pending=PerNode(
                ((key, count) for key, count in self._pending.items() if count >= 0), names
            ),
            cancelled=list(self._cancelled),
            error=outcome.error,
            failed_node=outcome.node,
            elapsed=elapsed,
        )


def _crash(task: asyncio.Task[Any]) -> BaseException | None:
    """The exception a finished task raised, if it was not cancelled."""
    if not task.done() or task.cancelled():
        return None
    return task.exception()


def _node_idle(node: Node, worker: asyncio.Task[None]) -> bool:
    if worker.done():
        return True
    mailbox = node.mailbox
    try:
        stats = mailbox.stats()
    except NotImplementedError:
        waiting = node._receiving or type(node).go is not Node.go
        # A channel with only send and receive cannot say: a default go()
        # waiting on it found nothing; for a custom go() the run goes by activity.
        return waiting and empty_or_unknown(mailbox)
    return stats.size == 0 and stats.receivers_waiting > 0


async def _send_quietly(mailbox: BaseChannel[Any], message: ChannelMessage[Any]) -> None:
    try:
        await mailbox.send(message)
    except ChannelClosed:
        pass


def _remove_stale_shutdowns(mailbox: BaseChannel[Any]) -> int:
    """Take leftover shutdown messages out of ``mailbox``; return how many messages remain.

    Data messages keep their order. Nothing is touched while a task outside
    the run waits on the mailbox, or when it is closed; -1 means unknown.
    """
    try:
        stats = mailbox.stats()
    except NotImplementedError:
        return -1
    if not isinstance(mailbox, _IN_MEMORY):
        # Draining and re-sending would duplicate entries of a shared or
        # remote backend (and re-deliver them): only in-memory mailboxes.
        return stats.size
    if stats.size == 0 or stats.closed or stats.senders_waiting or stats.receivers_waiting:
        return stats.size
    kept: list[ChannelMessage[Any]] = []
    removed: list[ChannelMessage[Any]] = []
    # The observers see the shutdowns taken out, not the others go round.
    observers = mailbox.observers
    for observer in observers:
        mailbox.remove_observer(observer)
    try:
        while True:
            message = mailbox.receive_nowait()
            (removed if message.is_shutdown else kept).append(message)
    except (asyncio.QueueEmpty, ChannelClosed, NotImplementedError):
        pass
    finally:
        for message in kept:  # room for each: they were queued a moment ago
            mailbox.send_nowait(message)
        for observer in observers:
            mailbox.add_observer(observer)
    for message in removed:
        for observer in observers:
            try:
                outcome = observer(message, mailbox, "receive")
            except Exception:
                report_observer_error(mailbox, "receive", observer)
                continue
            if outcome is not None and inspect.isawaitable(outcome):
                schedule_observer_awaitable(mailbox, "receive", observer, outcome)
    return len(kept)
