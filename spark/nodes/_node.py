"""``Node``: a worker with a mailbox, connected to other nodes by edges."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from types import CoroutineType
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import uuid4

from . import _channels_py
from ._channel_base import empty_or_unknown, is_patched
from ._edge import Edge
from ._shutdown import ShutdownCounter, is_stop_request, stop_request
from ._worker import Route, compiled_loop, new_state, routes
from .channels import BaseChannel, ChannelClosed, ChannelMessage, InMemoryChannel
from .config import NodeConfig

if TYPE_CHECKING:
    from spark.graphs.event_bus import EventSubscription, GraphEventBus
    from spark.observability import NodeInstrumentation

__all__ = ["Node", "NodeStats", "RunBinding"]

logger = logging.getLogger("spark.nodes")

_CONFIG_FIELDS = tuple(field.name for field in fields(NodeConfig))

# Trace ids: 128 random bits as 32 hex digits, like uuid4().hex, from a
# generator seeded by the OS (again in every forked child, so that worker
# processes never repeat each other's ids) rather than a system call each.
_trace_random = random.Random(os.urandom(32))
_trace_bits = _trace_random.getrandbits
_monotonic = time.monotonic
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _trace_random.seed(os.urandom(32)))

# Acks under way that make the worker wait for them before it goes on.
_MAX_UNSETTLED_ACKS = 1000


# What process() commonly returns; none of these can be awaited.
_PLAIN_RESULTS = frozenset({int, float, str, bytes, bool, dict, list, tuple, set})


def _is_awaitable(value: object) -> bool:
    kind = type(value)
    if kind is CoroutineType:
        return True
    return kind not in _PLAIN_RESULTS and inspect.isawaitable(value)


def _trace_id(parent: ChannelMessage[Any] | None) -> str:
    """``parent``'s trace id, or a new one: 128 random bits as 32 hex digits (like uuid4().hex)."""
    metadata = None if parent is None else parent.metadata
    trace_id = metadata.get("trace_id") if metadata else None
    if trace_id is None:
        return _trace_bits(128).to_bytes(16, "big").hex()
    return trace_id  # type: ignore[no-any-return]


N = TypeVar("N", bound="Node")

_PyInMemory = _channels_py.InMemoryChannel


@dataclass(frozen=True)
class NodeStats:
    """A snapshot of a node's counters, taken by ``Node.stats()``."""

    processed: int
    """Messages the default ``go()`` processed successfully, over the node's life."""
    failed: int
    """Messages whose processing failed in the default ``go()``, over the node's life."""


def _check_identity(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"a node's {what} must be a non-empty str, got {value!r}")


@dataclass(frozen=True, eq=False)
class RunBinding:
    """What a graph run tells each of its nodes while it lasts."""

    channels: Mapping[Edge, BaseChannel[Any]]
    """The channel to send through for each outgoing edge."""
    predecessors: frozenset[str]
    """The ids of the nodes in the run with an edge into this one."""
    on_output: Callable[[Any], None] | None
    """Receives what a sink node emits; ``None`` for a node with successors."""
    outgoing: Sequence[BaseChannel[Any]] = ()
    """``channels``' values in the order of the node's edges, looked up once per run."""


class Node:
    """A worker that receives messages in its ``mailbox`` and sends results to its successors.

    Subclasses override ``process(payload)`` and keep the default ``go()``
    loop, or override ``go()`` to write their own loop (checking
    ``self._stop_flag`` and ``message.is_shutdown``). ``a >> b`` connects
    ``a`` to ``b``.
    """

    event_bus: GraphEventBus | None = None
    """The event bus the node publishes to and subscribes on; a graph attaches its own."""

    _instrumentation: NodeInstrumentation | None = None
    """Set by ``spark.observability.instrument()``: traces the default loop and ``emit``."""

    def __init__(
        self,
        config: NodeConfig | None = None,
        mailbox: BaseChannel[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if config is None:
            config = NodeConfig()
        elif not isinstance(config, NodeConfig):
            raise TypeError(f"config must be a NodeConfig or None, got {type(config).__name__}")
        unknown = sorted(set(kwargs) - set(_CONFIG_FIELDS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s) {', '.join(unknown)}; "
                f"a node accepts config=, mailbox= and the NodeConfig fields: "
                f"{', '.join(_CONFIG_FIELDS)}"
            )
        if kwargs:
            config = replace(config, **kwargs)
        # A subclass may have set its id or name before calling this.
        node_id = config.id or getattr(self, "_id", None) or uuid4().hex
        name = config.name or getattr(self, "_name", None) or f"{type(self).__name__}-{node_id[:8]}"
        self._id = node_id
        self._name = name
        self.config = replace(config, id=node_id, name=name)
        if mailbox is None:
            mailbox = InMemoryChannel(name=f"node:{node_id}", maxsize=config.mailbox_maxsize)
        elif not isinstance(mailbox, BaseChannel):
            raise TypeError(
                f"mailbox must be a channel (a BaseChannel) or None, got {type(mailbox).__name__}"
            )
        self.mailbox: BaseChannel[Any] = mailbox
        """Where this node receives its messages."""
        self._state = new_state(mailbox)
        self._edges: list[Edge] = []
        self._incoming: list[Edge] = []
        # Acks under way (futures), awaited before the worker waits or ends.
        self._unsettled_acks: list[asyncio.Future[None]] = []

    # -- identity --------------------------------------------------------

    @property
    def id(self) -> str:
        """The node's unique id; it can be set while the node is in no graph run."""
        return self._id

    @id.setter
    def id(self, value: str) -> None:
        _check_identity("id", value)
        if getattr(self, "_state", None) is not None and self._state.binding is not None:
            raise RuntimeError(
                f"the id of node {self._name!r} cannot change during a graph run; "
                "set it before Graph.run() or after the run ends"
            )
        self._id = value
        if hasattr(self, "config"):
            self.config = replace(self.config, id=value)

    @property
    def name(self) -> str:
        """The node's readable name, used in logs and in run results.

        It can be set; setting ``None`` keeps the name the node has (a
        subclass may pass on a ``name=None`` argument).
        """
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        if value is None:
            return  # "no name given": the node keeps the one it has
        _check_identity("name", value)
        self._name = value
        if hasattr(self, "config"):
            self.config = replace(self.config, name=value)

    def stats(self) -> NodeStats:
        """A snapshot of the node's counters, over its life (run results count per run)."""
        return NodeStats(processed=int(self._state.processed), failed=int(self._state.failed))

    @property
    def _stop_flag(self) -> bool:
        """Whether the worker was asked to stop; a hand-written ``go()`` checks it."""
        return bool(self._state.stop_requested)

    @_stop_flag.setter
    def _stop_flag(self, value: bool) -> None:
        self._state.stop_requested = bool(value)

    @property
    def _binding(self) -> RunBinding | None:
        """The run this node is part of, if any."""
        return self._state.binding

    @_binding.setter
    def _binding(self, binding: RunBinding | None) -> None:
        self._state.binding = binding

    @property
    def _receiving(self) -> bool:
        """Whether the default ``go()`` is waiting on the mailbox."""
        return bool(self._state.receiving)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} id={self._id!r}>"

    # -- edges -----------------------------------------------------------

    def connect(self, target: Node, *, channel: BaseChannel[Any] | None = None) -> Edge:
        """Add an edge from this node to ``target`` and return it.

        ``channel``, if given, is what this node sends through to reach
        ``target``; it must deliver into ``target.mailbox``. A pair of nodes
        has at most one edge, and a node cannot be connected to itself.
        """
        if not isinstance(target, Node):
            raise TypeError(f"a node connects to another Node, got {type(target).__name__}")
        if target is self:
            raise ValueError(f"node {self._name!r} cannot be connected to itself")
        if channel is not None and not isinstance(channel, BaseChannel):
            raise TypeError(
                f"an edge's channel must be a BaseChannel or None, got {type(channel).__name__}"
            )
        if any(edge.target is target for edge in self._edges):
            raise ValueError(
                f"node {self._name!r} is already connected to {target.name!r}; "
                "a pair of nodes has one edge, find it in node.edges"
            )
        edge = Edge(self, target, channel)
        self._edges.append(edge)
        target._incoming.append(edge)
        return edge

    def __rshift__(self, other: N) -> N:
        """``a >> b`` connects ``a`` to ``b`` and returns ``b``, so ``a >> b >> c`` chains."""
        if not isinstance(other, Node):
            return NotImplemented
        self.connect(other)
        return other

    @property
    def edges(self) -> tuple[Edge, ...]:
        """The edges leaving this node, in connection order."""
        return tuple(self._edges)

    @property
    def incoming_edges(self) -> tuple[Edge, ...]:
        """The edges entering this node, in connection order."""
        return tuple(self._incoming)

    def get_next_nodes(self) -> list[Node]:
        """The successors of this node, in connection order."""
        return [edge.target for edge in self._edges]

    # -- work ------------------------------------------------------------

    def process(self, payload: Any) -> Any:
        """Handle one payload and return what to send to the successors.

        May be a coroutine function. Returning ``None`` sends nothing. The
        default passes the payload through unchanged.
        """
        return payload

    async def go(self) -> None:
        """Work through the mailbox until shut down or stopped.

        For each message: ``process`` its payload, send the result to every
        successor, then acknowledge it: its ``ack`` is awaited, or, when it
        returns a future (an ack already under way, as a Redis mailbox's),
        awaited later with the others, before the worker waits for a message
        or returns. A failure in ``process``
        or in sending is logged, counted and dead-lettered; the loop goes on
        and the message is not acknowledged.

        The loop ends when the node has received a shutdown from each of its
        predecessors (one is enough with no predecessor), or when its mailbox
        is closed and drained: it then sends one shutdown to every successor.
        After ``stop()`` it ends once the message in hand is done, without
        telling the successors.
        """
        shutdowns = ShutdownCounter(self._predecessor_ids())
        custom_emit = type(self).emit is not Node.emit
        compiled = compiled_loop(self)
        try:
            instrumentation = self._instrumentation
            while instrumentation is not None:  # the same steps, each message in a span
                if not await instrumentation.run_worker(self, shutdowns, custom_emit):
                    return
                instrumentation = self._instrumentation  # changed: go on with the new loop
            if compiled is not None:  # the same steps, in C
                await compiled(self, self._state, self.mailbox, shutdowns, custom_emit)
                return
            state = self._state
            mailbox = self.mailbox
            loop = asyncio.get_running_loop()  # this task's, for the shortcuts' check
            # A queued message is taken without an await from a pure in-memory
            # mailbox without observers (whose receive would not wait either).
            receive_now = (
                mailbox._receive_now
                if type(mailbox) is _PyInMemory and not is_patched(mailbox, "receive")
                else None
            )
            edges = self._edges
            source = self._id
            unsettled_acks = self._unsettled_acks
            binding: RunBinding | None = None
            outgoing: list[Route] = []
            while not state.stop_requested:
                message = None
                if receive_now is not None and not mailbox._observers:
                    message = receive_now(loop)  # None: the receive below
                if message is None:
                    result = None  # hold nothing of the last message while waiting
                    if unsettled_acks and empty_or_unknown(mailbox):  # a receive may wait
                        await self._settle_acks()
                    state.receiving = True
                    try:
                        message = await mailbox.receive()
                    except ChannelClosed:
                        if not state.stop_requested:
                            await self._send_shutdown(None)
                        return
                    finally:
                        state.receiving = False
                if message.is_shutdown:
                    if await self._on_shutdown(message, shutdowns):
                        return
                    continue
                try:
                    result = self.process(message.payload)
                    # The type test first spares a call for the common plain results.
                    if type(result) not in _PLAIN_RESULTS and _is_awaitable(result):
                        result = await result
                    if result is not None:
                        if custom_emit:
                            await self.emit(result, parent=message)
                        else:  # emit(), with the routes of the run looked up once
                            if state.binding is not binding:  # a run began or ended
                                binding = state.binding
                                outgoing = [] if binding is None else routes(binding.outgoing)
                            if binding is not None and len(outgoing) == len(edges):
                                here = outgoing
                            else:
                                here = routes(self._outgoing_channels())
                            if not here:
                                self._output(result)
                            else:
                                trace_id = _trace_id(message)
                                timestamp = _monotonic()
                                sent = 0
                                for route in here:  # _send_along(), until a send must wait
                                    if not route.deliver_now(
                                        result, source, trace_id, timestamp, loop
                                    ):
                                        await self._send_along(
                                            here[sent:], result, trace_id, timestamp
                                        )
                                        break
                                    sent += 1
                except Exception as error:
                    state.failed += 1
                    await self._report_failure(message, error)
                    continue
                state.processed += 1
                if message.ack is not None:
                    pending = self._start_ack(message)
                    if pending is not None:
                        await pending
        finally:
            if self._unsettled_acks:  # acks under way: the worker ends once they are done
                await self._settle_acks()

    def stop(self) -> None:
        """Ask the worker to return once the message in hand is done.

        Successors are not told; to wind down a whole pipeline, send a
        shutdown message to its first node or call ``Graph.stop()``. A worker
        waiting on an empty mailbox is woken by a stop request put there.
        """
        self._state.stop_requested = True
        try:
            self.mailbox.send_nowait(stop_request(self._id))
        except (asyncio.QueueFull, ChannelClosed, NotImplementedError):
            pass  # the worker is busy, or cannot receive anyway; it sees the flag

    async def emit(self, payload: Any, *, parent: ChannelMessage[Any] | None = None) -> None:
        """Send ``payload`` to every successor, with tracing metadata.

        The metadata holds ``source_node``, a ``trace_id`` (``parent``'s, or
        a new one) and ``timestamp`` (``time.monotonic()``). In a graph run,
        what a sink node emits becomes an output of the run. With
        ``spark.observability`` instrumentation on, it also holds the trace
        context the payload continues (``traceparent``: see
        ``NodeInstrumentation.emit``), and ``trace_id`` is that trace's id.
        """
        if self._instrumentation is not None:
            await self._instrumentation.emit(self, payload, parent)
            return
        outgoing = routes(self._outgoing_channels())
        if not outgoing:
            self._output(payload)
        else:
            await self._send_along(outgoing, payload, _trace_id(parent), _monotonic())

    # -- events ----------------------------------------------------------

    def attach_event_bus(self, event_bus: GraphEventBus | None) -> None:
        """Use ``event_bus`` for ``publish_event`` and ``subscribe_event``; ``None`` detaches.

        A graph calls it for each of its nodes when it is made and when a
        run starts, with ``graph.event_bus``.
        """
        from spark.graphs.event_bus import GraphEventBus

        if event_bus is not None and not isinstance(event_bus, GraphEventBus):
            raise TypeError(
                f"attach_event_bus takes a GraphEventBus or None, got {type(event_bus).__name__}"
            )
        self.event_bus = event_bus

    async def publish_event(
        self, topic: str, payload: Any, *, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Publish ``payload`` on ``topic`` of the node's event bus; without a bus, do nothing.

        The event's metadata holds ``topic``, ``node_id`` and ``node_name``
        (this node's), and ``metadata``, whose keys win. See
        ``GraphEventBus.publish``.
        """
        bus = self.event_bus
        if bus is None:
            return
        merged: dict[str, Any] = {"node_id": self._id, "node_name": self._name}
        if isinstance(metadata, Mapping):
            merged.update(metadata)
        elif metadata is not None:
            raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")
        await bus.publish(topic, payload, metadata=merged)

    async def subscribe_event(self, topic: str) -> EventSubscription:
        """Subscribe to ``topic`` (``"*"`` for every topic) on the node's event bus.

        Raises ``RuntimeError`` when the node has no bus.
        """
        bus = self.event_bus
        if bus is None:
            raise RuntimeError(
                f"node {self._name!r} has no event bus: run it in a Graph, or call "
                "node.attach_event_bus(GraphEventBus()) first"
            )
        return await bus.subscribe(topic)

    # -- internals -------------------------------------------------------

    async def _on_shutdown(self, message: ChannelMessage[Any], shutdowns: ShutdownCounter) -> bool:
        """Handle a shutdown message taken from the mailbox; whether the loop must end."""
        # A shutdown is handled once it is counted (and passed on): acknowledge
        # it, so a durable mailbox does not deliver it again.
        if self._state.stop_requested:
            await self._acknowledge(message)
            return True
        if is_stop_request(message):
            return False  # left over from an earlier stop(); this run was not stopped
        if shutdowns.add(message):
            await self._send_shutdown(message)
            await self._acknowledge(message)
            return True
        await self._acknowledge(message)
        return False

    def _output(self, payload: Any) -> None:
        """What a sink emits: an output of the run it is part of, if any."""
        binding = self._state.binding
        if binding is not None and binding.on_output is not None:
            binding.on_output(payload)

    async def _send_along(
        self, outgoing: Sequence[Route], payload: Any, trace_id: str, timestamp: float
    ) -> None:
        """Send ``payload`` along each route in order, with this node's tracing keys."""
        source = self._id
        loop = asyncio.get_running_loop()
        for route in outgoing:
            if not route.deliver_now(payload, source, trace_id, timestamp, loop):
                metadata = {"source_node": source, "trace_id": trace_id, "timestamp": timestamp}
                await route.channel.send(route.message_type(payload, metadata))

    def _start_ack(self, message: ChannelMessage[Any]) -> Awaitable[None] | None:
        """Start the ack of a handled message; what to await now, if anything.

        An ack that returns a future is under way already (a Redis
        mailbox's XACK, which travels with the others of the batch): it is
        kept, and awaited with the others before the worker waits for a
        message or ends. Any other ack is awaited now. Failures are logged.
        """
        try:
            outcome = message.ack()  # type: ignore[misc]
        except Exception:
            logger.exception("node %r: the ack of a handled message failed", self._name)
            return None
        if isinstance(outcome, asyncio.Future):
            if outcome.done():
                self._report_ack_outcome(outcome)
                return None
            self._unsettled_acks.append(outcome)
            if len(self._unsettled_acks) >= _MAX_UNSETTLED_ACKS:
                return self._settle_acks()
            return None
        return self._await_ack(outcome)

    async def _await_ack(self, outcome: Awaitable[None]) -> None:
        try:
            await outcome
        except Exception:
            logger.exception("node %r: the ack of a handled message failed", self._name)

    async def _settle_acks(self) -> None:
        """Wait for the acks under way; log those that failed."""
        acks = self._unsettled_acks[:]
        self._unsettled_acks.clear()  # the same list: the loops hold on to it
        await asyncio.wait(acks)
        for ack in acks:
            self._report_ack_outcome(ack)

    def _report_ack_outcome(self, ack: asyncio.Future[None]) -> None:
        if not ack.cancelled() and ack.exception() is not None:
            logger.error(
                "node %r: the ack of a handled message failed",
                self._name,
                exc_info=ack.exception(),
            )

    async def _acknowledge(self, message: ChannelMessage[Any]) -> None:
        if message.ack is not None:
            try:
                await message.ack()
            except Exception:
                logger.exception("node %r: the ack of a handled message failed", self._name)

    async def _report_failure(self, message: ChannelMessage[Any], error: Exception) -> None:
        dead_letter = self.config.dead_letter
        logger.error(
            "node %r failed to process a message; the worker goes on%s",
            self._name,
            "" if dead_letter else " (set NodeConfig.dead_letter to keep failed messages)",
            exc_info=error,
        )
        if dead_letter is None:
            return
        metadata = {
            "error": f"{type(error).__name__}: {error}",
            "error_type": type(error).__qualname__,
            "failed_node": self._id,
        }
        if self._instrumentation is not None:  # points at the failed span
            from spark.observability._propagation import trace_headers

            metadata.update(trace_headers())
        failed = message.clone(metadata=metadata)
        try:
            await dead_letter.send(failed)
        except ChannelClosed:
            logger.error(
                "node %r: dead-letter channel %r is closed; the failed message is dropped",
                self._name,
                dead_letter.name,
            )

    async def _send_shutdown(self, parent: ChannelMessage[Any] | None) -> None:
        metadata = self._tracing_metadata(parent)
        for channel in self._outgoing_channels():
            try:
                await channel.send(
                    ChannelMessage(payload=None, metadata=dict(metadata), is_shutdown=True)
                )
            except ChannelClosed:
                logger.debug("node %r: %r is closed; shutdown not sent", self._name, channel.name)

    def _tracing_metadata(self, parent: ChannelMessage[Any] | None) -> dict[str, Any]:
        return {"source_node": self._id, "trace_id": _trace_id(parent), "timestamp": _monotonic()}

    def _outgoing_channels(self) -> Sequence[BaseChannel[Any]]:
        binding = self._state.binding
        if binding is not None and len(binding.outgoing) == len(self._edges):
            return binding.outgoing  # no edge was added since the run began
        routes = binding.channels if binding is not None else {}
        channels = []
        for edge in self._edges:
            channel = routes.get(edge)
            if channel is None:
                channel = edge.target.mailbox if edge.channel is None else edge.channel
            channels.append(channel)
        return channels

    def _predecessor_ids(self) -> frozenset[str]:
        binding = self._state.binding
        if binding is not None:
            return binding.predecessors
        return frozenset(edge.source.id for edge in self._incoming)
