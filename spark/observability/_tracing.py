"""Spans around each node's ``process()``, parented by the context each message carries."""

from __future__ import annotations

import inspect
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

from spark.nodes import Node
from spark.nodes._channel_base import empty_or_unknown
from spark.nodes._node import _trace_id
from spark.nodes._shutdown import ShutdownCounter
from spark.nodes.channels import BaseChannel, ChannelClosed, ChannelMessage

from ._local import ProcessLocal
from ._metrics import SCOPE, ChannelMetrics
from ._propagation import parent_context, span_headers

if TYPE_CHECKING:
    from spark.graphs import Graph

__all__ = ["NodeInstrumentation", "instrument", "uninstrument"]


class NodeInstrumentation(ProcessLocal):
    """What ``instrument()`` switches on for a node; nodes share one per ``instrument()`` call.

    The node's default loop (``Node.go``) runs ``run_worker``, which hands
    each message to ``handle``: ``process()`` in a span, the result sent
    stamped with that span's context. ``Node.emit`` goes through ``emit``,
    which passes on the trace its ``parent`` belongs to. ``channel_metrics``,
    when set, observes each node's mailbox.
    """

    NOT_PICKLED = (
        "a node's instrumentation cannot be pickled (it reports to this process's "
        "providers); uninstrument the node first, and instrument it in the other process"
    )

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        channel_metrics: bool = True,
    ) -> None:
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "spark.node.process.duration",
            unit="s",
            description="Time a node spent on one message: process() and sending its result",
        )
        self.channel_metrics = ChannelMetrics(meter_provider) if channel_metrics else None
        """The observer added to each instrumented node's mailbox, or None."""
        self._mailboxes: weakref.WeakSet[BaseChannel[Any]] = weakref.WeakSet()

    # -- the loop --------------------------------------------------------

    async def run_worker(self, node: Node, shutdowns: ShutdownCounter, custom_emit: bool) -> bool:
        """``Node.go``'s steps, each message handled in a span (see ``handle``).

        Returns True, having taken nothing more, when the node's
        instrumentation changed (``instrument`` again, or ``uninstrument``):
        ``Node.go`` then goes on with the loop the node has now.
        """
        state = node._state
        mailbox = node.mailbox
        self.watch(mailbox)
        while not state.stop_requested:
            if node._instrumentation is not self:
                return True
            message = None  # hold nothing of the last message while waiting
            if node._unsettled_acks and empty_or_unknown(mailbox):  # a receive may wait
                await node._settle_acks()
            state.receiving = True
            try:
                message = await mailbox.receive()
            except ChannelClosed:
                if not state.stop_requested:
                    await node._send_shutdown(None)
                return False
            finally:
                state.receiving = False
            if message.is_shutdown:
                if await node._on_shutdown(message, shutdowns):
                    return False
                continue
            current = node._instrumentation  # changed while waiting: the new one takes it
            if current is not None:
                handled = await current.handle(node, message, custom_emit)
            else:
                handled = await _handle_untraced(node, message, custom_emit)
            if handled:
                state.processed += 1
                if message.ack is not None:
                    pending = node._start_ack(message)
                    if pending is not None:
                        await pending
            if current is not self:
                return True
        return False

    async def handle(self, node: Node, message: ChannelMessage[Any], custom_emit: bool) -> bool:
        """Process ``message`` in a span and send the result on; whether it succeeded.

        The span is named after the node; its parent is the context in the
        message's metadata, or the current one when it carries none. A
        failure is recorded on the span (exception event, status ERROR),
        counted and reported as ``Node.go`` does.
        """
        name = node.name
        span = self.tracer.start_span(
            name,
            context=parent_context(message),
            kind=SpanKind.CONSUMER,
            attributes={"spark.node.id": node.id, "messaging.destination.name": node.mailbox.name},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        started = time.perf_counter()
        try:
            result = node.process(message.payload)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                if custom_emit:
                    await node.emit(result, parent=message)
                else:
                    await self._send(node, result, span.get_span_context(), message)
        except Exception as error:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            self._duration.record(
                time.perf_counter() - started,
                {"spark.node.name": name, "error.type": type(error).__qualname__},
            )
            node._state.failed += 1
            await node._report_failure(message, error)
            return False
        finally:
            otel_context.detach(token)
            span.end()
        self._duration.record(time.perf_counter() - started, {"spark.node.name": name})
        return True

    async def emit(self, node: Node, payload: Any, parent: ChannelMessage[Any] | None) -> None:
        """``Node.emit``, stamped with the trace context the payload belongs to.

        That is the context ``parent`` carries, unless the current span is a
        child of it (a span started with ``context=extract(parent)``, as the
        default loop's are) or ``parent`` carries none: then the current
        span. So a node with its own ``go()`` passes its input's trace on
        whatever span its worker runs in. The metadata gains ``traceparent``
        (and ``tracestate``), and its ``trace_id`` is that trace's id (32 hex
        digits); with no context at all, ``emit`` is unchanged.
        """
        span = trace.get_current_span()
        current = span.get_span_context()
        carried = None if parent is None else parent_context(parent)
        if carried is not None:
            carried_span = trace.get_current_span(carried).get_span_context()
            span_parent = getattr(span, "parent", None)  # the SDK's spans know it
            if not (
                current.is_valid
                and isinstance(span_parent, trace.SpanContext)
                and span_parent.span_id == carried_span.span_id
                and span_parent.trace_id == carried_span.trace_id
            ):
                current = carried_span
        await self._send(node, payload, current, parent)

    async def _send(
        self,
        node: Node,
        payload: Any,
        span_context: trace.SpanContext,
        parent: ChannelMessage[Any] | None,
    ) -> None:
        """Send ``payload`` to the node's successors, stamped with ``span_context``."""
        channels = node._outgoing_channels()
        if not channels:
            node._output(payload)
            return
        if span_context.is_valid:
            trace_id = trace.format_trace_id(span_context.trace_id)
        else:
            trace_id = _trace_id(parent)
        metadata = {
            "source_node": node.id,
            "trace_id": trace_id,
            "timestamp": time.monotonic(),
            **span_headers(span_context),
        }
        for channel in channels:
            await channel.send(ChannelMessage(payload, dict(metadata)))

    def adopt(self, node: Node) -> None:
        """Instrument ``node`` (its own setting), taking over its mailbox's metrics."""
        old = node._instrumentation
        if old is not None and old is not self:
            old.unwatch(node.mailbox)
        node._instrumentation = self
        self.watch(node.mailbox)

    def watch(self, mailbox: BaseChannel[Any]) -> None:
        """Add the channel metrics observer to ``mailbox``, once."""
        if self.channel_metrics is not None and mailbox not in self._mailboxes:
            self.channel_metrics.attach(mailbox)
            self._mailboxes.add(mailbox)

    def unwatch(self, mailbox: BaseChannel[Any]) -> None:
        """Remove the channel metrics observer from ``mailbox`` (a copy's too)."""
        if self.channel_metrics is not None:
            self.channel_metrics.detach(mailbox)
            self._mailboxes.discard(mailbox)

    def unwatch_all(self) -> None:
        """Remove the channel metrics observer from every mailbox ``watch`` added it to."""
        for mailbox in list(self._mailboxes):
            self.unwatch(mailbox)


async def _handle_untraced(node: Node, message: ChannelMessage[Any], custom_emit: bool) -> bool:
    """What ``Node.go`` does with a message, for one taken just before instrumentation went off."""
    try:
        result = node.process(message.payload)
        if inspect.isawaitable(result):
            result = await result
        if result is not None:
            await node.emit(result, parent=message)
    except Exception as error:
        node._state.failed += 1
        await node._report_failure(message, error)
        return False
    return True


def _nodes_of(target: object) -> tuple[list[Node], Graph | None]:
    from spark.graphs import Graph

    if isinstance(target, Graph):
        return list(target.nodes), target
    if isinstance(target, Node):
        return [target], None
    if isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
        nodes = list(target)
        for node in nodes:
            if not isinstance(node, Node):
                raise TypeError(
                    f"instrument() takes a Graph, a Node or Nodes, got a {type(node).__name__} "
                    "among the nodes"
                )
        return nodes, None
    raise TypeError(
        "instrument() takes a Graph, a Node, an iterable of Nodes, or None for every node; "
        f"got {type(target).__name__}"
    )


def instrument(
    graph_or_nodes: Graph | Node | Iterable[Node] | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    channel_metrics: bool = True,
) -> NodeInstrumentation:
    """Trace the nodes' default loops; return the instrumentation, shared by them.

    ``graph_or_nodes``: a ``Graph`` (its nodes now, and the nodes it finds at
    each run), a ``Node``, an iterable of nodes, or ``None`` for every node
    in the process, made before or after. Each message a node's default
    loop takes is processed in a span named after the node (kind
    ``CONSUMER``), child of the context the message carries (see
    ``extract``) or, without one, of the context current in the node's
    worker; what the node sends carries that span's context, and its
    ``trace_id`` metadata is the OpenTelemetry trace id. A node with its own
    ``go()`` gets no spans, but its ``emit(payload, parent=message)`` passes
    ``message``'s context on (see ``NodeInstrumentation.emit``).

    A node's own setting (``instrument(node)``) wins over its graph's, which
    wins over the process-wide one; calling ``instrument`` again with the
    same target replaces the instrumentation. A running worker changes loop
    before its next message.

    The providers default to OpenTelemetry's global ones. Metrics:
    ``spark.node.process.duration`` (histogram, seconds, per
    ``spark.node.name``, with ``error.type`` for failures) and, unless
    ``channel_metrics=False``, a ``ChannelMetrics`` on every instrumented
    node's mailbox. ``uninstrument`` undoes it.
    """
    nodes, graph = ([], None) if graph_or_nodes is None else _nodes_of(graph_or_nodes)
    instrumentation = NodeInstrumentation(
        tracer_provider, meter_provider, channel_metrics=channel_metrics
    )
    if graph_or_nodes is None:
        old = Node.__dict__.get("_instrumentation")
        Node._instrumentation = instrumentation
        if old is not None:  # the mailboxes it watched are watched on, without a gap
            mailboxes = list(old._mailboxes)
            old.unwatch_all()
            for mailbox in mailboxes:
                instrumentation.watch(mailbox)
    previous = None
    if graph is not None:
        previous, graph._instrumentation = graph._instrumentation, instrumentation
    for node in nodes:
        own = node.__dict__.get("_instrumentation")
        if graph is not None and own is not None and own is not previous:
            continue  # a node's own setting wins over its graph's
        instrumentation.adopt(node)
    return instrumentation


def uninstrument(graph_or_nodes: Graph | Node | Iterable[Node] | None = None) -> None:
    """Switch instrumentation off where ``instrument`` (with the same argument) switched it on.

    ``None`` switches off the process-wide instrumentation and removes its
    metrics observers from the mailboxes it added them to; a ``Graph`` takes
    its instrumentation off its nodes (not one a node got otherwise); nodes
    lose theirs. A running worker changes loop before its next message.
    """
    if graph_or_nodes is None:
        old = Node.__dict__.get("_instrumentation")
        Node._instrumentation = None
        if old is not None:
            old.unwatch_all()
        return
    nodes, graph = _nodes_of(graph_or_nodes)
    graph_instrumentation = None
    if graph is not None:
        graph_instrumentation, graph._instrumentation = graph._instrumentation, None
    for node in nodes:
        own = node.__dict__.get("_instrumentation")
        if own is None or (graph is not None and own is not graph_instrumentation):
            continue  # a graph takes off only what it put on
        own.unwatch(node.mailbox)
        del node._instrumentation
        fallback = node._instrumentation  # the process-wide one, if any
        if fallback is not None:
            fallback.watch(node.mailbox)
