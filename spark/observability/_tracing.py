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

from ._metrics import ChannelMetrics
from ._propagation import parent_context, span_headers

if TYPE_CHECKING:
    from spark.graphs import Graph

__all__ = ["NodeInstrumentation", "instrument", "uninstrument"]

_SCOPE = "spark.observability"


class NodeInstrumentation:
    """What ``instrument()`` switches on for a node; nodes share one per ``instrument()`` call.

    The node's default loop (``Node.go``) hands each message to ``handle``,
    which runs ``process()`` in a span and sends the result stamped with
    that span's context; ``Node.emit`` stamps what it sends with the
    current context. ``channel_metrics``, when set, observes each node's
    mailbox.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        channel_metrics: bool = True,
    ) -> None:
        self.tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "spark.node.process.duration",
            unit="s",
            description="Time a node spent on one message: process() and sending its result",
        )
        self.channel_metrics = ChannelMetrics(meter_provider) if channel_metrics else None
        """The observer added to each instrumented node's mailbox, or None."""
        self._mailboxes: weakref.WeakSet[BaseChannel[Any]] = weakref.WeakSet()

    # -- the loop --------------------------------------------------------

    async def run_worker(self, node: Node, shutdowns: ShutdownCounter, custom_emit: bool) -> None:
        """``Node.go``'s steps, each message handled in a span (see ``handle``)."""
        state = node._state
        mailbox = node.mailbox
        self.watch(mailbox)
        while not state.stop_requested:
            if node._unsettled_acks and empty_or_unknown(mailbox):  # a receive may wait
                await node._settle_acks()
            state.receiving = True
            try:
                message = await mailbox.receive()
            except ChannelClosed:
                if not state.stop_requested:
                    await node._send_shutdown(None)
                return
            finally:
                state.receiving = False
            if message.is_shutdown:
                if await node._on_shutdown(message, shutdowns):
                    return
                continue
            if not await self.handle(node, message, custom_emit):
                continue
            state.processed += 1
            if message.ack is not None:
                pending = node._start_ack(message)
                if pending is not None:
                    await pending

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
                    await self.emit(node, result, message)
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
        """``Node.emit``, stamped with the current trace context.

        The metadata gains ``traceparent`` (and ``tracestate``), and its
        ``trace_id`` is the current span's trace id (32 hex digits); without
        a valid current span, ``emit`` is unchanged.
        """
        channels = node._outgoing_channels()
        if not channels:
            node._output(payload)
            return
        metadata = self.tracing_metadata(node, parent)
        for channel in channels:
            await channel.send(ChannelMessage(payload, dict(metadata)))

    def tracing_metadata(self, node: Node, parent: ChannelMessage[Any] | None) -> dict[str, Any]:
        """A node's tracing keys with the current trace context."""
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            trace_id = trace.format_trace_id(span_context.trace_id)
        else:
            trace_id = _trace_id(parent)
        return {
            "source_node": node.id,
            "trace_id": trace_id,
            "timestamp": time.monotonic(),
            **span_headers(span_context),
        }

    def watch(self, mailbox: BaseChannel[Any]) -> None:
        """Add the channel metrics observer to ``mailbox``, once."""
        if self.channel_metrics is not None and mailbox not in self._mailboxes:
            self.channel_metrics.attach(mailbox)
            self._mailboxes.add(mailbox)

    def unwatch(self, mailbox: BaseChannel[Any]) -> None:
        """Remove the channel metrics observer from ``mailbox``, if ``watch`` added it."""
        if self.channel_metrics is not None and mailbox in self._mailboxes:
            self.channel_metrics.detach(mailbox)
            self._mailboxes.discard(mailbox)

    def unwatch_all(self) -> None:
        """Remove the channel metrics observer from every mailbox ``watch`` added it to."""
        for mailbox in list(self._mailboxes):
            self.unwatch(mailbox)


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
    ``go()`` gets no spans, but its ``emit()`` stamps the current context.

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
        _replace(Node.__dict__.get("_instrumentation"), None)
        Node._instrumentation = instrumentation
    if graph is not None:
        graph._instrumentation = instrumentation
    for node in nodes:
        _replace(node.__dict__.get("_instrumentation"), node)
        node._instrumentation = instrumentation
        instrumentation.watch(node.mailbox)
    return instrumentation


def _replace(old: NodeInstrumentation | None, node: Node | None) -> None:
    """Take ``old``'s metrics observer off ``node``'s mailbox (every one, for None)."""
    if old is not None:
        if node is None:
            old.unwatch_all()
        else:
            old.unwatch(node.mailbox)


def uninstrument(graph_or_nodes: Graph | Node | Iterable[Node] | None = None) -> None:
    """Switch instrumentation off where ``instrument`` (with the same argument) switched it on.

    ``None`` switches off the process-wide instrumentation, and removes its
    metrics observers from the mailboxes it added them to. A worker already
    running keeps its loop until it returns.
    """
    if graph_or_nodes is None:
        _replace(Node.__dict__.get("_instrumentation"), None)
        Node._instrumentation = None
        return
    nodes, graph = _nodes_of(graph_or_nodes)
    if graph is not None:
        graph._instrumentation = None
    for node in nodes:
        if "_instrumentation" in node.__dict__:
            _replace(node.__dict__["_instrumentation"], node)
            del node._instrumentation
