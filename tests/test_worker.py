"""The default worker loop: the compiled one does exactly what the pure one does.

Every test runs with nodes of each build (``node_build``): the compiled
build runs ``run_worker`` (src_ext/_worker.pxi), the pure one ``Node.go``.
Both take queued messages without awaiting and put results straight into
the next mailbox when a send would not wait; these tests pin down that the
shortcut changes nothing a user can see.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from conftest import record_sends, uses_compiled_loop

from spark.graphs import Graph, Task, TaskType
from spark.nodes import Node
from spark.nodes.channels import BaseChannel, ChannelMessage

pytestmark = pytest.mark.usefixtures("node_build")


def drain(channel: BaseChannel) -> list[ChannelMessage[Any]]:
    messages = []
    while not channel.empty():
        messages.append(channel.receive_nowait())
    return messages


def shutdown() -> ChannelMessage[Any]:
    return ChannelMessage(payload=None, is_shutdown=True)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_each_build_runs_its_own_loop(node_build: Any) -> None:
    node = Node()
    assert type(node.mailbox) is node_build.InMemoryChannel
    assert uses_compiled_loop(node) is (node_build.name == "cython")


def test_a_node_with_a_mailbox_of_another_kind_runs_the_pure_loop(node_build: Any) -> None:
    from spark.nodes import _channels_py

    assert not uses_compiled_loop(Node(mailbox=_channels_py.InMemoryChannel()))


EDGE = {"edge_id": "a->b", "from_node": "a", "to_node": "b"}


@pytest.mark.parametrize("observe", [False, True])
async def test_metadata_through_an_edge_is_one_dict_with_the_keys_in_order(
    node_build: Any, observe: bool
) -> None:
    a, b = Node(id="a"), Node(id="b")
    a.connect(b, channel=node_build.ForwardingChannel(b.mailbox, metadata_defaults=EDGE))
    seen = record_sends(b.mailbox) if observe else None  # with an observer: the plain send
    for message in [ChannelMessage(7), ChannelMessage(8), shutdown()]:
        await a.mailbox.send(message)
    await asyncio.wait_for(a.go(), 10)
    into_b = drain(b.mailbox)[:-1]
    assert [m.payload for m in into_b] == [7, 8]
    for message in into_b:
        assert list(message.metadata) == [*EDGE, "source_node", "trace_id", "timestamp"]
        assert {key: message.metadata[key] for key in EDGE} == EDGE
        assert message.metadata["source_node"] == "a"
        assert len(message.metadata["trace_id"]) == 32
        assert isinstance(message.metadata["timestamp"], float)
        assert message.ack is None and message.is_shutdown is False
    assert into_b[0].metadata is not into_b[1].metadata
    assert into_b[0].metadata["trace_id"] != into_b[1].metadata["trace_id"]
    if seen is not None:
        assert seen[:2] == into_b


async def test_a_graph_edge_adds_its_keys_before_the_nodes_keys() -> None:
    a, b = Node(id="a"), Node(id="b")
    a >> b
    into_b = record_sends(b.mailbox)
    result = await Graph(a).run(Task(inputs=[ChannelMessage(7, {"trace_id": "t"})]))
    assert result.outputs == [7]
    [message] = [m for m in into_b if not m.is_shutdown]
    assert list(message.metadata) == [*EDGE, "source_node", "trace_id", "timestamp"]
    assert message.metadata["trace_id"] == "t"


@pytest.mark.parametrize("observe", [False, True])
async def test_the_shortcut_and_the_plain_send_deliver_the_same_message(observe: bool) -> None:
    a, b = Node(id="a"), Node(id="b")
    edge = a.connect(b)
    seen = record_sends(b.mailbox) if observe else None
    await a.mailbox.send(ChannelMessage(1, {"trace_id": "t", "mine": "kept?"}))
    await a.mailbox.send(shutdown())
    await asyncio.wait_for(a.go(), 10)
    [message, end] = drain(b.mailbox)
    assert end.is_shutdown
    assert message.payload == 1
    assert list(message.metadata) == ["source_node", "trace_id", "timestamp"]
    assert (message.metadata["source_node"], message.metadata["trace_id"]) == ("a", "t")
    assert edge.channel is None
    if seen is not None:
        assert seen[0] is message


async def test_a_full_successor_makes_the_loop_wait_and_keeps_the_order_of_sends() -> None:
    a, b, c, d = Node(id="a"), Node(id="b"), Node(id="c", mailbox_maxsize=1), Node(id="d")
    a >> b
    a >> c
    a >> d
    c.mailbox.send_nowait(ChannelMessage("in the way"))
    await a.mailbox.send(ChannelMessage(1))
    worker = asyncio.create_task(a.go())
    await settle()
    # b has it, c is full, and d must not get it before c
    assert [m.payload for m in drain(b.mailbox)] == [1]
    assert d.mailbox.empty()
    assert a.stats().processed == 0
    assert c.mailbox.receive_nowait().payload == "in the way"
    await settle()
    assert [m.payload for m in drain(c.mailbox)] == [1]
    assert [m.payload for m in drain(d.mailbox)] == [1]
    assert a.stats().processed == 1
    a.stop()
    await asyncio.wait_for(worker, 10)


async def test_backpressure_through_a_bounded_pipeline_loses_and_reorders_nothing() -> None:
    nodes = [Node(id=name, mailbox_maxsize=2) for name in "abc"]
    nodes[0] >> nodes[1] >> nodes[2]
    count = 2_000
    inputs = [*(ChannelMessage(i) for i in range(count)), shutdown()]
    task = Task(inputs=inputs, type=TaskType.LONG_RUNNING)
    result = await Graph(nodes[0]).run(task)
    assert result.status == "completed"
    assert result.outputs == list(range(count))
    assert result.processed == {"a": count, "b": count, "c": count}


async def test_counters_are_exact_while_process_runs() -> None:
    seen: list[int] = []

    class Counting(Node):
        def process(self, payload: Any) -> Any:
            seen.append(self.stats().processed)
            if payload == "bad":
                raise ValueError(payload)
            return None

    node = Counting()
    for payload in [1, 2, "bad", 3]:
        await node.mailbox.send(ChannelMessage(payload))
    await node.mailbox.send(shutdown())
    await asyncio.wait_for(node.go(), 10)
    assert seen == [0, 1, 2, 2]
    assert (node.stats().processed, node.stats().failed) == (3, 1)


async def test_stop_from_process_ends_the_drain_after_that_message() -> None:
    class StopsAtTwo(Node):
        def process(self, payload: Any) -> Any:
            if payload == 2:
                self.stop()
            return payload

    a, b = StopsAtTwo(), Node()
    a >> b
    for n in range(5):
        a.mailbox.send_nowait(ChannelMessage(n))
    await asyncio.wait_for(a.go(), 10)
    assert [m.payload for m in drain(b.mailbox)] == [0, 1, 2]
    assert a.stats().processed == 3
    left = [m.payload for m in drain(a.mailbox) if not m.is_shutdown]
    assert left == [3, 4]


class Later:
    """An awaitable that is not a coroutine: its result arrives on the next loop turn."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        yield from asyncio.sleep(0).__await__()
        return self.value


@pytest.mark.parametrize(
    "make", [lambda v: Later(v), lambda v: asyncio.ensure_future(asyncio.sleep(0, v))]
)
async def test_awaitable_results_are_awaited_like_coroutines(make: Any) -> None:
    class Deferred(Node):
        def process(self, payload: Any) -> Any:
            return make(payload * 10)

    a, b = Deferred(), Node()
    a >> b
    for n in range(3):
        await a.mailbox.send(ChannelMessage(n))
    await a.mailbox.send(shutdown())
    await asyncio.wait_for(a.go(), 10)
    assert [m.payload for m in drain(b.mailbox)] == [0, 10, 20, None]


async def test_a_result_that_looks_like_a_container_is_sent_as_it_is() -> None:
    class Subclass(dict[str, int]):
        pass

    a, b = Node(), Node()
    a >> b
    value = Subclass(x=1)
    await a.mailbox.send(ChannelMessage(value))
    await a.mailbox.send(shutdown())
    await asyncio.wait_for(a.go(), 10)
    assert drain(b.mailbox)[0].payload is value


async def test_an_overridden_emit_is_what_the_loop_calls() -> None:
    emitted: list[Any] = []

    class Custom(Node):
        async def emit(self, payload: Any, *, parent: ChannelMessage[Any] | None = None) -> None:
            emitted.append((payload, parent.payload if parent else None))
            await super().emit(payload, parent=parent)

    a, b = Custom(), Node()
    a >> b
    await a.mailbox.send(ChannelMessage(5))
    await a.mailbox.send(shutdown())
    await asyncio.wait_for(a.go(), 10)
    assert emitted == [(5, 5)]
    assert [m.payload for m in drain(b.mailbox)] == [5, None]


async def test_an_observer_added_to_the_mailbox_during_the_run_sees_the_next_messages() -> None:
    seen: list[Any] = []
    node = Node()

    class Watching(Node):
        def process(self, payload: Any) -> Any:
            if payload == 1:
                node.mailbox.add_observer(watch)
            return None

    def watch(message: ChannelMessage[Any], channel: BaseChannel, phase: str) -> None:
        if phase == "receive":
            seen.append((message.payload, phase))

    node = Watching()
    for n in range(3):
        node.mailbox.send_nowait(ChannelMessage(n))
    node.mailbox.send_nowait(shutdown())
    await asyncio.wait_for(node.go(), 10)
    assert seen == [(2, "receive"), (None, "receive")]


async def test_an_async_observer_on_the_target_is_awaited_in_order() -> None:
    events: list[Any] = []
    a, b = Node(), Node()
    a >> b

    async def observer(message: Any, channel: Any, phase: str) -> None:
        if phase == "send":
            events.append(("observed", message.payload))

    b.mailbox.add_observer(observer)
    for n in range(3):
        a.mailbox.send_nowait(ChannelMessage(n))
    a.mailbox.send_nowait(shutdown())
    await asyncio.wait_for(a.go(), 10)
    assert events == [("observed", 0), ("observed", 1), ("observed", 2), ("observed", None)]


async def test_mixed_builds_along_an_edge_deliver_the_same_metadata() -> None:
    from spark.nodes import _channels_py
    from spark.nodes.channels import InMemoryChannel

    for source_box, target_box in [
        (_channels_py.InMemoryChannel(), InMemoryChannel()),
        (InMemoryChannel(), _channels_py.InMemoryChannel()),
    ]:
        a, b = Node(id="a", mailbox=source_box), Node(id="b", mailbox=target_box)
        a >> b
        result = await Graph(a).run(Task(inputs=[ChannelMessage(1, {"trace_id": "t"})]))
        assert result.outputs == [1]
        assert result.processed == {"a": 1, "b": 1}


async def test_two_sinks_report_outputs_in_the_order_they_emitted() -> None:
    a, left, right = Node(id="a"), Node(id="left"), Node(id="right")
    a >> left
    a >> right
    result = await Graph(a).run(Task(inputs=[ChannelMessage(n) for n in range(3)]))
    assert sorted(result.outputs) == [0, 0, 1, 1, 2, 2]
    assert result.outputs_by_node == {"left": [0, 1, 2], "right": [0, 1, 2]}


async def test_long_running_graph_of_user_nodes_end_to_end() -> None:
    class Parse(Node):
        def process(self, payload: Any) -> Any:
            return {"n": payload}

    class Enrich(Node):
        async def process(self, payload: Any) -> Any:
            return {**payload, "double": payload["n"] * 2}

    class Store(Node):
        def process(self, payload: Any) -> Any:
            return payload["double"]

    a, b, c = Parse(mailbox_maxsize=100), Enrich(mailbox_maxsize=100), Store(mailbox_maxsize=100)
    a >> b >> c
    count = 1_000
    inputs = [*(ChannelMessage(i) for i in range(count)), shutdown()]
    result = await Graph(a).run(Task(inputs=inputs, type=TaskType.LONG_RUNNING))
    assert result.status == "completed"
    assert result.outputs == [2 * i for i in range(count)]


@pytest.mark.parametrize("returns", ["nothing", "the payload"])
async def test_an_idle_worker_holds_nothing_of_its_last_message(returns: str) -> None:
    class Payload:
        pass

    async def ack() -> None:
        return None

    class Sink(Node):
        def process(self, payload: Any) -> Any:
            return None if returns == "nothing" else payload

    node = Sink()
    payload = Payload()
    watch = weakref.ref(payload)
    node.mailbox.send_nowait(ChannelMessage(payload, ack=ack))
    del payload
    worker = asyncio.create_task(node.go())
    await settle()
    assert node.stats().processed == 1 and node._receiving
    gc.collect()
    assert watch() is None
    node.mailbox.close()
    await worker


async def test_a_result_that_declares_itself_not_awaitable_is_sent() -> None:
    class NotAwaitable:
        __await__ = None  # inspect.isawaitable says no

    value = NotAwaitable()

    class Returns(Node):
        def process(self, payload: Any) -> Any:
            return value

    a, b = Returns(), Node()
    a >> b
    await a.mailbox.send(ChannelMessage(1))
    await a.mailbox.send(shutdown())
    await asyncio.wait_for(a.go(), 10)
    assert drain(b.mailbox)[0].payload is value
    assert (a.stats().processed, a.stats().failed) == (1, 0)


async def test_source_node_is_the_id_the_node_was_made_with() -> None:
    class Renamed(Node):
        @property
        def id(self) -> str:
            return f"public-{self._id}"

    a, b = Renamed(id="a"), Node()
    a >> b
    await a.mailbox.send(ChannelMessage(1))
    await a.mailbox.send(shutdown())
    await asyncio.wait_for(a.go(), 10)
    assert [m.metadata["source_node"] for m in drain(b.mailbox)] == ["a", "a"]


# -- acks under way (futures) are settled before the worker waits or ends ------


async def test_future_acks_are_awaited_together_before_the_worker_waits(
    node_build: Any,
) -> None:
    loop = asyncio.get_running_loop()
    acks = [loop.create_future() for _ in range(3)]
    calls: list[int] = []

    def ack_of(index: int) -> Any:
        def ack() -> asyncio.Future[None]:
            calls.append(index)
            return acks[index]  # under way already, as a Redis mailbox's XACK

        return ack

    node = Node()
    for index in range(3):
        node.mailbox.send_nowait(node_build.ChannelMessage(index, ack=ack_of(index)))
    worker = asyncio.ensure_future(node.go())
    await settle()
    assert calls == [0, 1, 2]  # each started once its message was handled
    assert node.stats().processed == 3 and not node._receiving  # waiting on the acks
    acks[0].set_result(None)
    acks[1].set_exception(RuntimeError("XACK failed"))  # logged, the worker goes on
    await settle()
    assert not node._receiving
    acks[2].set_result(None)
    await settle()
    assert node._receiving  # now waiting for a message
    node.mailbox.send_nowait(shutdown())
    await asyncio.wait_for(worker, 5)


async def test_a_worker_ends_only_once_its_acks_under_way_are_done(node_build: Any) -> None:
    loop = asyncio.get_running_loop()
    ack = loop.create_future()
    node = Node()
    node.mailbox.send_nowait(node_build.ChannelMessage(1, ack=lambda: ack))
    node.mailbox.send_nowait(shutdown())
    worker = asyncio.ensure_future(node.go())
    await settle()
    assert not worker.done()
    ack.set_result(None)
    await asyncio.wait_for(worker, 5)


async def test_coroutine_acks_are_awaited_before_the_next_message(node_build: Any) -> None:
    events: list[str] = []

    class Record(Node):
        def process(self, payload: Any) -> None:
            events.append(f"process {payload}")

    def ack_of(index: int) -> Any:
        async def ack() -> None:
            await asyncio.sleep(0)
            events.append(f"ack {index}")

        return ack

    node = Record()
    for index in range(2):
        node.mailbox.send_nowait(node_build.ChannelMessage(index, ack=ack_of(index)))
    node.mailbox.send_nowait(shutdown())
    await asyncio.wait_for(node.go(), 5)
    assert events == ["process 0", "ack 0", "process 1", "ack 1"]
