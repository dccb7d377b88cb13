"""Benchmark scenarios and the contenders they compare.

A *contender* is something that moves messages: the compiled channels, the
pure-Python ones, ``asyncio.Queue`` (the reference every ratio is taken
against), and, when installed, anyio's memory object streams, aiochannel
and janus. Each is seen through the same small surface (``send``,
``send_nowait``, ``receive``, and for the thread scenarios
``blocking_send``/``blocking_receive``, called from another thread) so that
every contender pays the same call costs.

A *scenario* moves ``n`` pre-built messages through a fresh contender and
checks that every message arrived, in order where order is promised. It
returns nothing; the caller times it. ``baseline`` names what its ratio is
taken against: ``asyncio.Queue`` for the messaging scenarios; for the
observer and forwarding scenarios, the plain channel of the same build (the
cost they *add*); for message construction, a slots dataclass.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from spark.nodes import Node, _channels_py, channels

from . import _fanout_py

__all__ = [
    "CONTENDERS",
    "SCENARIOS",
    "Contender",
    "Scenario",
    "available_contenders",
    "make_messages",
    "runs_in",
    "verify",
]


@dataclass(frozen=True)
class Contender:
    """A message mover under test."""

    name: str
    module: Any
    """The channel module (``ChannelMessage``, ``InMemoryChannel``, ...), or None."""
    make: Callable[[int], Any]
    """``make(maxsize)``: has ``send``, ``send_nowait`` and ``receive``; 0 means unbounded."""
    is_channel: bool = True
    """Whether it is one of our builds (observer and forwarding scenarios need one)."""
    threads: bool = True
    """Whether it has a thread side (``blocking_send``/``blocking_receive``)."""
    threads_only: bool = False
    """Whether it runs only in the thread scenarios."""


class _Bound:
    """Another library's sender and receiver under the channel method names, bound once."""

    __slots__ = (
        "blocking_receive",
        "blocking_send",
        "receive",
        "receive_nowait",
        "send",
        "send_nowait",
    )

    blocking_send: Callable[[Any], Any]
    blocking_receive: Callable[[], Any]

    def __init__(self, sender: Any, receiver: Any, put: str, get: str) -> None:
        self.send = getattr(sender, put)
        self.send_nowait = getattr(sender, f"{put}_nowait")
        self.receive = getattr(receiver, get)
        self.receive_nowait = getattr(receiver, f"{get}_nowait")


def _queue(maxsize: int) -> _Bound:
    """``asyncio.Queue``; from threads, the usual workarounds (it is not thread-safe).

    A thread sends with ``loop.call_soon_threadsafe(queue.put_nowait, item)``
    (unbounded only) and receives with
    ``asyncio.run_coroutine_threadsafe(queue.get(), loop).result()``.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
    bound = _Bound(queue, queue, "put", "get")
    loop = asyncio.get_running_loop()
    call_soon_threadsafe, put_nowait, get = loop.call_soon_threadsafe, queue.put_nowait, queue.get
    run_threadsafe = asyncio.run_coroutine_threadsafe
    bound.blocking_send = lambda item: call_soon_threadsafe(put_nowait, item)
    bound.blocking_receive = lambda: run_threadsafe(get(), loop).result()
    return bound


def _janus(maxsize: int) -> _Bound:
    """janus: a queue with an async face for tasks and a sync face for threads."""
    import janus

    queue: Any = janus.Queue(maxsize)
    bound = _Bound(queue.async_q, queue.async_q, "put", "get")
    bound.blocking_send = queue.sync_q.put
    bound.blocking_receive = queue.sync_q.get
    return bound


def _anyio(maxsize: int) -> _Bound:
    """anyio's memory object stream (``maxsize=0`` there means no buffer, so 0 maps to inf)."""
    import anyio

    sender, receiver = anyio.create_memory_object_stream[Any](maxsize or math.inf)
    return _Bound(sender, receiver, "send", "receive")


def _aiochannel(maxsize: int) -> _Bound:
    from aiochannel import Channel

    channel: Any = Channel(maxsize)
    return _Bound(channel, channel, "put", "get")


def _channel_maker(module: Any) -> Callable[[int], Any]:
    in_memory = module.InMemoryChannel
    return lambda maxsize: in_memory(maxsize=maxsize)


def _compiled_module() -> Any:
    try:
        return importlib.import_module("spark.nodes._channels_c")
    except ImportError:
        return None


def _installed(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def available_contenders() -> list[Contender]:
    """Every contender that can run here, compiled core first."""
    contenders = []
    compiled = _compiled_module()
    if compiled is not None:
        contenders.append(Contender("cython", compiled, _channel_maker(compiled)))
    contenders.append(Contender("python", _channels_py, _channel_maker(_channels_py)))
    contenders.append(Contender("asyncio.Queue", None, _queue, is_channel=False))
    if _installed("anyio"):
        contenders.append(Contender("anyio", None, _anyio, is_channel=False, threads=False))
    if _installed("aiochannel"):
        contenders.append(
            Contender("aiochannel", None, _aiochannel, is_channel=False, threads=False)
        )
    if _installed("janus"):
        contenders.append(Contender("janus", None, _janus, is_channel=False, threads_only=True))
    return contenders


def runs_in(scenario: Scenario, contender: Contender) -> bool:
    """Whether ``contender`` takes part in ``scenario``."""
    if scenario.channels_only and not contender.is_channel:
        return False
    if scenario.requires is not None and not _installed(scenario.requires):
        return False
    if scenario.threads:
        return contender.threads
    return not contender.threads_only


CONTENDERS = [contender.name for contender in available_contenders()]


def make_messages(contender: Contender, n: int) -> list[Any]:
    """``n`` pre-built messages: the contender's own envelope class, or the pure one."""
    message_type = (contender.module or _channels_py).ChannelMessage
    return [message_type(i) for i in range(n)]


ScenarioRun = Callable[[Contender, Sequence[Any]], Awaitable[Any]]
"""Moves the messages; may return what it received, for ``verify`` to check untimed."""


@dataclass(frozen=True)
class Scenario:
    """One way of moving messages."""

    name: str
    run: ScenarioRun = field(repr=False)
    description: str
    baseline: str = "asyncio.Queue"
    """The contender (or ``"plain channel"``/``"dataclass"``) the ratio is taken against."""
    channels_only: bool = False
    """Only our builds can run it (observers, forwarding, envelopes)."""
    threads: bool = False
    """It moves messages between a thread and the loop (contenders with a thread side)."""
    requires: str | None = None
    """A module it needs (an optional dependency); without it, the scenario runs for no one."""
    nodes: int = 0
    """For a graph against its own baseline: the nodes the added cost is reported per."""


def _lost(received: Any, expected: Any) -> AssertionError:
    # Checks are inline (`if ... is not message: raise _lost(...)`) so that the
    # loop around the channel costs as little as possible: every contender pays
    # for it alike, and it only dilutes the ratios.
    return AssertionError(f"message lost or out of order: got {received!r}, not {expected!r}")


async def batch(contender: Contender, messages: Sequence[Any]) -> None:
    channel = contender.make(0)
    send_nowait, receive = channel.send_nowait, channel.receive
    for message in messages:
        send_nowait(message)
    for message in messages:
        if (received := await receive()) is not message:
            raise _lost(received, message)


async def alternating(contender: Contender, messages: Sequence[Any]) -> None:
    channel = contender.make(0)
    send, receive = channel.send, channel.receive
    for message in messages:
        await send(message)
        if (received := await receive()) is not message:
            raise _lost(received, message)


async def _pipeline(contender: Contender, messages: Sequence[Any], maxsize: int) -> None:
    channel = contender.make(maxsize)

    async def produce() -> None:
        send = channel.send
        for message in messages:
            await send(message)

    producer = asyncio.ensure_future(produce())
    receive = channel.receive
    for message in messages:
        if (received := await receive()) is not message:
            raise _lost(received, message)
    await producer


async def pipeline_100(contender: Contender, messages: Sequence[Any]) -> None:
    await _pipeline(contender, messages, 100)


async def pipeline_1(contender: Contender, messages: Sequence[Any]) -> None:
    await _pipeline(contender, messages, 1)


async def ping_pong(contender: Contender, messages: Sequence[Any]) -> None:
    requests, replies = contender.make(1), contender.make(1)

    async def echo() -> None:
        receive, send = requests.receive, replies.send
        for _ in messages:
            await send(await receive())

    echoer = asyncio.ensure_future(echo())
    send, receive = requests.send, replies.receive
    for message in messages:
        await send(message)
        if (received := await receive()) is not message:
            raise _lost(received, message)
    await echoer


async def fan_in_4(contender: Contender, messages: Sequence[Any]) -> list[Any]:
    channel = contender.make(1000)
    shares = [messages[i::4] for i in range(4)]

    async def produce(share: Sequence[Any]) -> None:
        send = channel.send
        for message in share:
            await send(message)

    producers = [asyncio.ensure_future(produce(share)) for share in shares]
    receive = channel.receive
    received = [await receive() for _ in messages]
    await asyncio.gather(*producers)
    return received  # interleaved: checked by verify(), after the timing


def verify(received: Any, messages: Sequence[Any]) -> None:
    """Check, outside the timing, that a scenario returning what it received lost nothing."""
    if received is None:
        return
    if len(received) != len(messages) or {id(m) for m in received} != {id(m) for m in messages}:
        raise AssertionError(f"{len(messages)} messages sent, a different set received")


def _observed(count: int, asynchronous: bool) -> ScenarioRun:
    """Alternating send/receive with ``count`` observers that do nothing.

    The observers are empty so that the time measured is what the channel
    adds to call them, not what they do.
    """

    async def run(contender: Contender, messages: Sequence[Any]) -> None:
        if asynchronous:

            async def observer(message: Any, channel: Any, phase: str) -> None:
                return None

        else:

            def observer(message: Any, channel: Any, phase: str) -> None:  # type: ignore[misc]
                return None

        channel = contender.module.InMemoryChannel(observers=[observer] * count)
        send, receive = channel.send, channel.receive
        for message in messages:
            await send(message)
            if (received := await receive()) is not message:
                raise _lost(received, message)

    return run


async def plain_alternating(contender: Contender, messages: Sequence[Any]) -> None:
    """The observer scenarios' baseline: the same loop with no observer."""
    channel = contender.module.InMemoryChannel()
    send, receive = channel.send, channel.receive
    for message in messages:
        await send(message)
        if (received := await receive()) is not message:
            raise _lost(received, message)


_EDGE = {"edge_id": "a->b", "from_node": "a"}


async def _alternate_payloads(send: Any, receive: Any, messages: Sequence[Any]) -> Any:
    """Send, then receive, each message, checking payloads (copies may arrive); the last one."""
    received = None
    for message in messages:
        await send(message)
        received = await receive()
        if received.payload is not message.payload:
            raise _lost(received.payload, message.payload)
    return received


async def _batch_payloads(send_nowait: Any, receive: Any, messages: Sequence[Any]) -> None:
    """send_nowait every message, then receive each, checking payloads (copies may arrive)."""
    for message in messages:
        send_nowait(message)
    for message in messages:
        received = await receive()
        if received.payload is not message.payload:
            raise _lost(received.payload, message.payload)


async def forwarding(contender: Contender, messages: Sequence[Any]) -> None:
    """Alternating send/receive through a ForwardingChannel, as on a graph edge."""
    module = contender.module
    downstream = module.InMemoryChannel()
    forwarder = module.ForwardingChannel(downstream, metadata_defaults=_EDGE)
    received = await _alternate_payloads(forwarder.send, downstream.receive, messages)
    if received is not None and received.metadata != _EDGE:
        raise AssertionError(f"forwarded message not enriched: {received.metadata!r}")


async def plain_payloads(contender: Contender, messages: Sequence[Any]) -> None:
    """The forwarding baseline: the same loop through a plain channel."""
    channel = contender.module.InMemoryChannel()
    await _alternate_payloads(channel.send, channel.receive, messages)


async def forwarding_batch(contender: Contender, messages: Sequence[Any]) -> None:
    """send_nowait x N through a ForwardingChannel, then receive x N: N copies alive at once."""
    module = contender.module
    downstream = module.InMemoryChannel()
    forwarder = module.ForwardingChannel(downstream, metadata_defaults=_EDGE)
    await _batch_payloads(forwarder.send_nowait, downstream.receive, messages)


async def plain_batch(contender: Contender, messages: Sequence[Any]) -> None:
    """The batch baseline: send_nowait x N, then receive x N through a plain channel."""
    channel = contender.module.InMemoryChannel()
    await _batch_payloads(channel.send_nowait, channel.receive, messages)


async def receive_many(contender: Contender, messages: Sequence[Any]) -> None:
    channel = contender.module.InMemoryChannel()
    send_nowait = channel.send_nowait
    for message in messages:
        send_nowait(message)
    received: list[Any] = []
    while len(received) < len(messages):
        received += await channel.receive_many(64)
    if received != list(messages):
        raise AssertionError("receive_many lost or reordered messages")


async def create_message(contender: Contender, messages: Sequence[Any]) -> None:
    message_type = contender.module.ChannelMessage
    for i in range(len(messages)):
        message_type(payload=i)


async def clone_message(contender: Contender, messages: Sequence[Any]) -> None:
    extra = {"hop": 1}
    for message in messages:
        message.clone(metadata=extra)


@dataclass(slots=True)
class FourFields:
    """The construction baseline: a slots dataclass with four fields, like the envelope."""

    payload: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    ack: Any = None
    is_shutdown: bool = False


async def create_dataclass(contender: Contender, messages: Sequence[Any]) -> None:
    for i in range(len(messages)):
        FourFields(payload=i)


async def bridge(contender: Contender, messages: Sequence[Any]) -> None:
    """QueueBridge over our builds; the other contenders through their own API."""
    from spark.nodes._bridge import QueueBridge

    if contender.module is None:  # the queue itself (or another library's own API)
        native = contender.make(0)
        put_nowait, get = native.send_nowait, native.receive
    else:
        queue = QueueBridge(
            contender.module.InMemoryChannel(), message_type=contender.module.ChannelMessage
        )
        put_nowait, get = queue.put_nowait, queue.get
    for message in messages:
        put_nowait(message)
    for message in messages:
        if (received := await get()) is not message:
            raise _lost(received, message)


async def graph_3(contender: Contender, messages: Sequence[Any]) -> None:
    """A three-node long-running graph; other contenders run the same three stages by hand."""
    if not contender.is_channel:
        await _queue_stages(contender, messages, 3)
        return
    from spark.graphs import Graph, Task, TaskType
    from spark.nodes import Node

    module = contender.module
    nodes = [Node(name=f"stage-{i}", mailbox=module.InMemoryChannel(maxsize=100)) for i in range(3)]
    nodes[0] >> nodes[1] >> nodes[2]

    def edge_channel(edge: Any) -> Any:
        return module.ForwardingChannel(edge.target.mailbox, metadata_defaults=edge.metadata)

    inputs = [module.ChannelMessage(message.payload) for message in messages]
    inputs.append(module.ChannelMessage(None, is_shutdown=True))
    task = Task(inputs=inputs, type=TaskType.LONG_RUNNING)
    result = await Graph(start=nodes[0], channel_factory=edge_channel).run(task)
    if result.status != "completed" or len(result.outputs) != len(messages):
        raise AssertionError(f"graph ended {result.status} with {len(result.outputs)} outputs")


async def _queue_stages(contender: Contender, messages: Sequence[Any], stages: int) -> None:
    """``stages`` worker tasks passing messages along channels of maxsize 100, then a sink."""
    channels = [contender.make(100) for _ in range(stages)]
    end = object()

    async def stage(inbox: Any, outbox: Any | None) -> int:
        receive, count = inbox.receive, 0
        while (message := await receive()) is not end:
            count += 1
            if outbox is not None:
                await outbox.send(message)
        if outbox is not None:
            await outbox.send(end)
        return count

    workers = [
        asyncio.ensure_future(stage(channels[i], channels[i + 1] if i + 1 < stages else None))
        for i in range(stages)
    ]
    send = channels[0].send
    for message in messages:
        await send(message)
    await send(end)
    counts = await asyncio.gather(*workers)
    if counts[-1] != len(messages):
        raise AssertionError(f"the last stage got {counts[-1]} of {len(messages)} messages")


# graph-user: what each of the three stages does to a payload (nothing, so
# that the figure is the framework's cost). The Node subclasses do it in
# process(), the hand-written stages call these functions: one call each.


def parse(payload: Any) -> Any:
    return payload


def enrich(payload: Any) -> Any:
    return payload


def store(payload: Any) -> Any:
    return payload


class Parse(Node):
    def process(self, payload: Any) -> Any:
        return payload


class Enrich(Node):
    def process(self, payload: Any) -> Any:
        return payload


class Store(Node):
    def process(self, payload: Any) -> Any:
        return payload


async def graph_user(contender: Contender, messages: Sequence[Any]) -> None:
    """Three Node subclasses, ``a >> b >> c``, default edges, ``mailbox_maxsize=100``.

    Run long-running to the shutdown that ends the inputs. Other contenders
    run the same three stage functions as hand-written tasks between three
    queues of maxsize 100.
    """
    if not contender.is_channel:
        await _hand_written_stages(contender, messages)
        return
    await _three_nodes(contender, messages, instrumented=False)


_otel: dict[str, Any] = {}


def _otel_providers() -> tuple[Any, Any]:
    """An SDK tracer provider exporting in batches to nowhere, and a meter provider nobody reads.

    What production pays: every span is recorded and queued for export (a
    thread hands the batches to an exporter that drops them), every metric
    point aggregated. Made once, shared by every run.
    """
    if not _otel:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Discard(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        tracer_provider = TracerProvider()
        # A queue that holds a whole run's spans: none is dropped unexported.
        tracer_provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=1 << 16))
        _otel["tracer_provider"] = tracer_provider
        _otel["meter_provider"] = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return _otel["tracer_provider"], _otel["meter_provider"]


async def graph_user_otel(contender: Contender, messages: Sequence[Any]) -> None:
    """``graph_user`` with ``spark.observability.instrument()`` on its three nodes."""
    await _three_nodes(contender, messages, instrumented=True)


async def _three_nodes(contender: Contender, messages: Sequence[Any], instrumented: bool) -> None:
    from spark.graphs import Graph, Task, TaskType

    module = contender.module
    if module.InMemoryChannel is channels.InMemoryChannel:  # the build users get by default
        nodes = [kind(mailbox_maxsize=100) for kind in (Parse, Enrich, Store)]
    else:
        nodes = [
            kind(mailbox=module.InMemoryChannel(maxsize=100)) for kind in (Parse, Enrich, Store)
        ]
    nodes[0] >> nodes[1] >> nodes[2]
    if instrumented:
        from spark.observability import instrument

        tracer_provider, meter_provider = _otel_providers()
        instrument(nodes, tracer_provider=tracer_provider, meter_provider=meter_provider)
    inputs = [*messages, module.ChannelMessage(None, is_shutdown=True)]
    result = await Graph(start=nodes[0]).run(Task(inputs=inputs, type=TaskType.LONG_RUNNING))
    outputs = result.outputs
    if result.status != "completed" or len(outputs) != len(messages):
        raise AssertionError(f"graph ended {result.status} with {len(outputs)} outputs")
    if outputs[-1] is not messages[-1].payload:
        raise _lost(outputs[-1], messages[-1].payload)


async def _hand_written_stages(contender: Contender, messages: Sequence[Any]) -> None:
    """The three stage functions as tasks between three channels of maxsize 100."""
    inbox, middle, last = (contender.make(100) for _ in range(3))
    end = object()
    outputs: list[Any] = []

    async def stage(function: Any, receive: Any, send: Any) -> None:
        while (item := await receive()) is not end:
            await send(function(item))
        await send(end)

    async def sink(function: Any, receive: Any) -> None:
        append = outputs.append
        while (item := await receive()) is not end:
            append(function(item))

    workers = [
        asyncio.ensure_future(stage(parse, inbox.receive, middle.send)),
        asyncio.ensure_future(stage(enrich, middle.receive, last.send)),
        asyncio.ensure_future(sink(store, last.receive)),
    ]
    send = inbox.send
    for message in messages:
        await send(message.payload)
    await send(end)
    await asyncio.gather(*workers)
    if len(outputs) != len(messages) or outputs[-1] is not messages[-1].payload:
        raise AssertionError(f"the sink got {len(outputs)} of {len(messages)} payloads")


def _fanout_api(contender: Contender) -> Any:
    """Where the contender's build keeps BroadcastChannel and select (the pure one: two modules)."""
    if contender.module is _channels_py:
        return _fanout_py
    return contender.module


SUBSCRIBERS = 8


async def broadcast_8(contender: Contender, messages: Sequence[Any]) -> None:
    """One producer, 8 consumers each receiving every message; backlogs bounded at 100.

    Our builds: a ``BroadcastChannel(maxsize=100)`` with 8 subscriptions.
    Others: the same fan-out by hand, the producer putting each message
    into 8 queues of maxsize 100.
    """
    if contender.is_channel:
        broadcast = _fanout_api(contender).BroadcastChannel(maxsize=100)
        inboxes = [broadcast.subscribe() for _ in range(SUBSCRIBERS)]

        async def produce() -> None:
            send = broadcast.send
            for message in messages:
                await send(message)

    else:
        inboxes = [contender.make(100) for _ in range(SUBSCRIBERS)]
        sends = [inbox.send for inbox in inboxes]

        async def produce() -> None:
            for message in messages:
                for send in sends:
                    await send(message)

    async def consume(inbox: Any) -> None:
        receive = inbox.receive
        for message in messages:
            if (received := await receive()) is not message:
                raise _lost(received, message)

    consumers = [asyncio.ensure_future(consume(inbox)) for inbox in inboxes]
    await produce()
    await asyncio.gather(*consumers)


SOURCES = 4


async def select_4(contender: Contender, messages: Sequence[Any]) -> list[Any]:
    """4 producers, each into its own channel (maxsize 100); one consumer waiting on all 4.

    Our builds: ``await select(*channels)`` per message. Others: the usual
    hand-written way, ``asyncio.wait`` over one ``receive()`` task per
    queue, taking what finished and cancelling the rest.
    """
    sources = [contender.make(100) for _ in range(SOURCES)]

    async def produce(source: Any, share: Sequence[Any]) -> None:
        send = source.send
        for message in share:
            await send(message)

    producers = [
        asyncio.ensure_future(produce(source, messages[i::SOURCES]))
        for i, source in enumerate(sources)
    ]
    received: list[Any] = []
    append, total = received.append, len(messages)
    if contender.is_channel:
        select = _fanout_api(contender).select
        for _ in range(total):
            append((await select(*sources))[1])
    else:
        receives = [source.receive for source in sources]
        wait, first, ensure_future = asyncio.wait, asyncio.FIRST_COMPLETED, asyncio.ensure_future
        while len(received) < total:
            tasks = [ensure_future(receive()) for receive in receives]
            done, pending = await wait(tasks, return_when=first)
            for task in pending:
                task.cancel()
            for task in done:
                append(task.result())
    await asyncio.gather(*producers)
    return received  # interleaved: checked by verify(), after the timing


async def thread_to_async(contender: Contender, messages: Sequence[Any]) -> None:
    channel = contender.make(0)

    def produce() -> None:
        blocking_send = channel.blocking_send
        for message in messages:
            blocking_send(message)

    producer = threading.Thread(target=produce)
    producer.start()
    receive = channel.receive
    try:
        for message in messages:
            if (received := await receive()) is not message:
                raise _lost(received, message)
    finally:
        producer.join()


async def async_to_thread(contender: Contender, messages: Sequence[Any]) -> None:
    channel = contender.make(1000)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[BaseException | None] = loop.create_future()

    def consume() -> None:
        error: BaseException | None = None
        try:
            blocking_receive = channel.blocking_receive
            for message in messages:
                if (received := blocking_receive()) is not message:
                    raise _lost(received, message)
        except BaseException as exc:  # reported to the loop below
            error = exc
        loop.call_soon_threadsafe(finished.set_result, error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    send = channel.send
    for message in messages:
        await send(message)
    error = await finished
    consumer.join()
    if error is not None:
        raise error


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("batch", batch, "send_nowait x N, then await receive() x N"),
        Scenario("alternating", alternating, "await send(m); await receive(), never blocking"),
        Scenario("pipeline-100", pipeline_100, "one producer task, one consumer task, maxsize=100"),
        Scenario("pipeline-1", pipeline_1, "producer and consumer, maxsize=1: a task switch each"),
        Scenario("ping-pong", ping_pong, "request and reply over two maxsize=1 channels"),
        Scenario("fan-in-4", fan_in_4, "4 producers, 1 consumer, maxsize=1000"),
        Scenario(
            "broadcast-8",
            broadcast_8,
            "1 producer, 8 subscribers each receiving every message, maxsize=100 "
            "(others: the fan-out by hand over 8 queues)",
        ),
        Scenario(
            "select-4",
            select_4,
            "4 producers into 4 channels (maxsize=100), 1 consumer: await select(*channels) "
            "(others: asyncio.wait over a get() task per queue, cancelling the losers)",
        ),
        Scenario(
            "observer-1",
            _observed(1, asynchronous=False),
            "alternating with 1 sync observer",
            baseline="plain channel",
            channels_only=True,
        ),
        Scenario(
            "observers-5",
            _observed(5, asynchronous=False),
            "alternating with 5 sync observers",
            baseline="plain channel",
            channels_only=True,
        ),
        Scenario(
            "async-observer-1",
            _observed(1, asynchronous=True),
            "alternating with 1 async observer",
            baseline="plain channel",
            channels_only=True,
        ),
        Scenario(
            "async-observers-5",
            _observed(5, asynchronous=True),
            "alternating with 5 async observers",
            baseline="plain channel",
            channels_only=True,
        ),
        Scenario(
            "forwarding",
            forwarding,
            "alternating through a ForwardingChannel adding two metadata keys",
            baseline="plain payloads",
            channels_only=True,
        ),
        Scenario(
            "forwarding-batch",
            forwarding_batch,
            "batch through a ForwardingChannel adding two metadata keys",
            baseline="plain batch",
            channels_only=True,
        ),
        Scenario(
            "receive-many",
            receive_many,
            "send_nowait x N, then receive_many(64)",
            baseline="plain batch",
            channels_only=True,
        ),
        Scenario(
            "create-message",
            create_message,
            "ChannelMessage(payload=i)",
            baseline="dataclass",
            channels_only=True,
        ),
        Scenario(
            "clone",
            clone_message,
            "message.clone(metadata={...})",
            baseline="dataclass",
            channels_only=True,
        ),
        Scenario(
            "thread-to-async",
            thread_to_async,
            "a thread's blocking_send x N, a task's await receive() (asyncio.Queue: "
            "loop.call_soon_threadsafe(queue.put_nowait, m); janus: sync_q.put)",
            threads=True,
        ),
        Scenario(
            "async-to-thread",
            async_to_thread,
            "a task's await send(m), maxsize=1000, a thread's blocking_receive() "
            "(asyncio.Queue: run_coroutine_threadsafe(queue.get(), loop).result(); "
            "janus: sync_q.get)",
            threads=True,
        ),
        Scenario("bridge", bridge, "QueueBridge put_nowait x N, then await get() x N"),
        Scenario(
            "graph-user",
            graph_user,
            "3 Node subclasses, sync process, a >> b >> c, default edges, mailbox_maxsize=100 "
            "(others: the same 3 stages written by hand)",
        ),
        Scenario(
            "graph-user-otel",
            graph_user_otel,
            "graph-user with spark.observability.instrument() on its 3 nodes: a span per node "
            "and message (SDK, batch export), node and channel metrics",
            baseline="uninstrumented graph",
            channels_only=True,
            requires="opentelemetry.sdk",
            nodes=3,
        ),
        Scenario(
            "graph-3",
            graph_3,
            "a three-node long-running graph (others: three hand-written stages)",
        ),
    ]
}
"""Every scenario by name, in report order."""

BASELINE_RUNS: dict[str, ScenarioRun] = {
    "plain channel": plain_alternating,
    "plain payloads": plain_payloads,
    "plain batch": plain_batch,
    "dataclass": create_dataclass,
    "uninstrumented graph": graph_user,
}
"""How to measure the baselines that are not a contender."""
