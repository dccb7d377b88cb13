"""Nodes on their own: construction, edges, and the default worker loop outside a graph."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from typing import Any
from uuid import uuid4

import pytest

from spark.nodes import Edge, Node, NodeConfig
from spark.nodes.channels import (
    BaseChannel,
    ChannelMessage,
    ForwardingChannel,
    InMemoryChannel,
)

# Every test runs each build's worker loop (see conftest.node_build).
pytestmark = pytest.mark.usefixtures("node_build")

# -- helpers ---------------------------------------------------------------


class Double(Node):
    def process(self, payload: Any) -> Any:
        return payload * 2


class AsyncDouble(Node):
    async def process(self, payload: Any) -> Any:
        await asyncio.sleep(0)
        return payload * 2


class FailOn(Node):
    """Raises for the payloads in ``bad``; passes the others through."""

    def __init__(self, bad: set[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bad = bad

    def process(self, payload: Any) -> Any:
        if payload in self.bad:
            raise ValueError(f"cannot take {payload!r}")
        return payload


def drain(channel: BaseChannel) -> list[ChannelMessage[Any]]:
    """Everything buffered in ``channel``, in order."""
    messages = []
    while not channel.empty():
        messages.append(channel.receive_nowait())
    return messages


def shutdown(source: str | None = None) -> ChannelMessage[Any]:
    metadata = {} if source is None else {"source_node": source}
    return ChannelMessage(payload=None, metadata=metadata, is_shutdown=True)


async def run_until_done(node: Node, *messages: ChannelMessage[Any]) -> None:
    """Send ``messages`` to ``node`` and run its worker until it returns."""
    for message in messages:
        await node.mailbox.send(message)
    await asyncio.wait_for(node.go(), 10)


async def settle() -> None:
    """Let every ready task run until none is left to make progress."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- construction ----------------------------------------------------------


def test_each_node_gets_a_unique_id_and_its_own_unbounded_mailbox(node_build: Any) -> None:
    first, second = Node(), Node()
    assert first.id != second.id
    assert len(first.id) == 32 and int(first.id, 16) >= 0
    assert type(first.mailbox) is node_build.InMemoryChannel
    assert first.mailbox.name == f"node:{first.id}"
    assert first.mailbox.maxsize == 0
    assert first.mailbox is not second.mailbox
    assert first.name != second.name


def test_keyword_arguments_fill_the_config() -> None:
    node = Node(id="parser", name="Parser", live=True, mailbox_maxsize=3)
    assert (node.id, node.name) == ("parser", "Parser")
    assert node.config == NodeConfig(id="parser", name="Parser", live=True, mailbox_maxsize=3)
    assert node.mailbox.name == "node:parser"
    assert node.mailbox.maxsize == 3


def test_keyword_arguments_override_a_given_config() -> None:
    node = Node(config=NodeConfig(live=True, name="old"), name="new")
    assert node.config.live is True
    assert node.name == "new"


def test_reference_subclass_passing_its_own_config() -> None:
    class ContinuousWorker(Node):
        def __init__(self, **kwargs: Any) -> None:
            config = NodeConfig(live=True)
            super().__init__(config=config, **kwargs)

    worker = ContinuousWorker(id="w1")
    assert worker.config.live and worker.id == "w1"
    assert worker.mailbox.name == "node:w1"


def test_unknown_keyword_argument_is_a_clear_type_error() -> None:
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument\(s\) colour.*mailbox_maxsize"
    ):
        Node(colour="red")


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"config": {"live": True}}, TypeError),
        ({"mailbox": "inbox"}, TypeError),
        ({"id": ""}, TypeError),
        ({"name": 3}, TypeError),
        ({"live": "yes"}, TypeError),
        ({"mailbox_maxsize": -1}, ValueError),
        ({"mailbox_maxsize": 1.5}, TypeError),
        ({"dead_letter": []}, TypeError),
    ],
)
def test_bad_arguments_are_rejected(arguments: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Node(**arguments)


def test_a_given_mailbox_replaces_the_default() -> None:
    class CustomMailboxNode(Node):
        def __init__(self, **kwargs: Any) -> None:
            custom_mailbox = InMemoryChannel(name=f"custom-{uuid4().hex}", maxsize=50)
            super().__init__(mailbox=custom_mailbox, **kwargs)

    node = CustomMailboxNode(mailbox_maxsize=7)
    assert node.mailbox.name.startswith("custom-")
    assert node.mailbox.maxsize == 50


def test_channels_import_on_their_own() -> None:
    code = (
        "import sys, spark.nodes.channels as c; "
        "assert c.InMemoryChannel; "
        "from spark.nodes import Node; from spark.graphs import Graph; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- edges -----------------------------------------------------------------


def test_rshift_connects_and_returns_the_target_so_it_chains() -> None:
    a, b, c = Node(), Node(), Node()
    assert (a >> b) is b
    b >> c
    assert a.get_next_nodes() == [b]
    assert b.get_next_nodes() == [c]
    assert c.get_next_nodes() == []
    x, y, z = Node(), Node(), Node()
    assert (x >> y >> z) is z
    assert y.get_next_nodes() == [z]


def test_successors_come_in_connection_order() -> None:
    hub, *spokes = [Node() for _ in range(5)]
    for spoke in reversed(spokes):
        hub >> spoke
    assert hub.get_next_nodes() == list(reversed(spokes))


def test_edges_are_objects_known_to_both_ends() -> None:
    a, b = Node(id="a"), Node(id="b")
    channel = ForwardingChannel(b.mailbox)
    edge = a.connect(b, channel=channel)
    assert isinstance(edge, Edge)
    assert (edge.source, edge.target, edge.channel) == (a, b, channel)
    assert a.edges == (edge,) and b.incoming_edges == (edge,)
    assert edge.id == "a->b"
    assert edge.metadata == {"edge_id": "a->b", "from_node": "a", "to_node": "b"}


def test_a_pair_is_connected_once() -> None:
    a, b = Node(name="a"), Node(name="b")
    a >> b
    with pytest.raises(ValueError, match="'a' is already connected to 'b'"):
        a >> b
    assert a.get_next_nodes() == [b]
    b >> a  # the other direction is another pair


def test_bad_connections_are_rejected() -> None:
    a = Node(name="a")
    with pytest.raises(ValueError, match="itself"):
        a >> a
    with pytest.raises(TypeError):
        a >> 3  # type: ignore[type-var]
    with pytest.raises(TypeError, match="connects to another Node"):
        a.connect("b")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BaseChannel"):
        a.connect(Node(), channel="queue")  # type: ignore[arg-type]
    assert a.edges == ()


# -- the default worker loop -------------------------------------------------


async def test_default_go_processes_sends_then_acknowledges() -> None:
    a, b = AsyncDouble(), Node()
    a >> b
    acked_with: list[int] = []

    async def ack() -> None:
        acked_with.append(b.mailbox.qsize())

    await run_until_done(a, ChannelMessage(payload=21, ack=ack), shutdown())
    assert acked_with == [1]  # the result was sent before the ack
    received = drain(b.mailbox)
    assert [m.payload for m in received] == [42, None]
    assert [m.is_shutdown for m in received] == [False, True]
    assert a.stats().processed == 1 and a.stats().failed == 0


async def test_sync_and_async_process_both_work() -> None:
    for node_class in (Double, AsyncDouble):
        a, b = node_class(), Node()
        a >> b
        await run_until_done(a, *(ChannelMessage(payload=n) for n in range(3)), shutdown())
        assert [m.payload for m in drain(b.mailbox)] == [0, 2, 4, None]


async def test_default_process_passes_payloads_through_and_none_sends_nothing() -> None:
    class Filter(Node):
        def process(self, payload: Any) -> Any:
            return payload if payload % 2 else None

    relay, keep_odd, sink = Node(), Filter(), Node()
    relay >> keep_odd >> sink
    await run_until_done(relay, *(ChannelMessage(payload=n) for n in range(4)), shutdown())
    assert [m.payload for m in drain(keep_odd.mailbox)] == [0, 1, 2, 3, None]
    await run_until_done(keep_odd, *(ChannelMessage(payload=n) for n in range(4)), shutdown())
    assert [m.payload for m in drain(sink.mailbox)] == [1, 3, None]
    assert keep_odd.stats().processed == 4


async def test_process_error_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node, sink = FailOn({2}, name="picky"), Node()
    node >> sink
    acks: list[int] = []

    def message(n: int) -> ChannelMessage[Any]:
        async def ack() -> None:
            acks.append(n)

        return ChannelMessage(payload=n, ack=ack)

    with caplog.at_level(logging.ERROR, logger="spark.nodes"):
        await run_until_done(node, *(message(n) for n in range(4)), shutdown())
    assert [m.payload for m in drain(sink.mailbox)] == [0, 1, 3, None]
    assert acks == [0, 1, 3]  # the failed message is not acknowledged
    assert (node.stats().processed, node.stats().failed) == (3, 1)
    [record] = [r for r in caplog.records if r.name == "spark.nodes"]
    assert "'picky'" in record.getMessage() and "dead_letter" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


async def test_failed_messages_go_to_the_dead_letter_channel_with_the_error() -> None:
    dead = InMemoryChannel(name="dead")
    node = FailOn({"bad"}, id="checker", dead_letter=dead)
    original = ChannelMessage(payload="bad", metadata={"trace_id": "t-1"})
    await run_until_done(node, ChannelMessage(payload="good"), original, shutdown())
    [failed] = drain(dead)
    assert failed.payload == "bad"
    assert failed.metadata["trace_id"] == "t-1"
    assert failed.metadata["error"] == "ValueError: cannot take 'bad'"
    assert failed.metadata["error_type"] == "ValueError"
    assert failed.metadata["failed_node"] == "checker"
    assert original.metadata == {"trace_id": "t-1"}  # the incoming message is untouched
    assert node.stats().failed == 1


async def test_a_failing_send_counts_as_a_failure_not_a_crash() -> None:
    dead = InMemoryChannel()
    a, b = Node(dead_letter=dead), Node()
    a >> b
    b.mailbox.close()
    await run_until_done(a, ChannelMessage(payload=1), shutdown())
    assert (a.stats().processed, a.stats().failed) == (0, 1)
    assert drain(dead)[0].metadata["error_type"] == "ChannelClosed"


async def test_a_failing_ack_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def ack() -> None:
        raise RuntimeError("ack lost")

    node = Node(name="acker")
    with caplog.at_level(logging.ERROR, logger="spark.nodes"):
        await run_until_done(node, ChannelMessage(payload=1, ack=ack), shutdown())
    assert node.stats().processed == 1
    assert any("'acker'" in r.getMessage() and "ack" in r.getMessage() for r in caplog.records)


async def test_sent_messages_carry_tracing_metadata() -> None:
    a, b = Node(id="a"), Node(id="b")
    a >> b
    before = time.monotonic()
    await run_until_done(
        a,
        ChannelMessage(payload=1, metadata={"trace_id": "trace-7", "other": "dropped"}),
        ChannelMessage(payload=2),
        shutdown(),
    )
    after = time.monotonic()
    first, second, stop = drain(b.mailbox)
    assert first.metadata["trace_id"] == "trace-7"
    assert "other" not in first.metadata
    for message in (first, second, stop):
        assert message.metadata["source_node"] == "a"
        assert before <= message.metadata["timestamp"] <= after
    created = second.metadata["trace_id"]
    assert isinstance(created, str) and len(created) == 32 and created != "trace-7"


async def test_a_created_trace_id_is_kept_downstream() -> None:
    a, b, c = Node(), Node(), Node(id="c")
    a >> b >> c
    into_b: list[ChannelMessage[Any]] = []
    b.mailbox.add_observer(lambda message, channel, phase: into_b.append(message))
    await a.mailbox.send(ChannelMessage(payload="x"))
    await a.mailbox.send(shutdown())
    await asyncio.wait_for(asyncio.gather(a.go(), b.go()), 10)
    created = into_b[0].metadata["trace_id"]
    assert len(created) == 32
    [to_c, stop] = drain(c.mailbox)
    assert stop.is_shutdown
    assert to_c.metadata["trace_id"] == created
    assert to_c.metadata["source_node"] == b.id


async def test_created_trace_ids_are_distinct_and_each_successor_gets_its_own_metadata() -> None:
    a, b, c = Node(id="a"), Node(id="b"), Node(id="c")
    a >> b
    a >> c
    await run_until_done(a, *(ChannelMessage(payload=i) for i in range(200)), shutdown())
    into_b, into_c = drain(b.mailbox)[:-1], drain(c.mailbox)[:-1]
    ids = [message.metadata["trace_id"] for message in into_b]
    assert len(set(ids)) == 200
    assert all(len(trace) == 32 and int(trace, 16) >= 0 for trace in ids)
    assert [message.metadata["trace_id"] for message in into_c] == ids
    assert all(x.metadata is not y.metadata for x, y in zip(into_b, into_c, strict=True))


def new_trace_ids(impl: Any) -> Any:
    """The trace id generator of ``impl``'s worker loop."""
    from spark.nodes import _node

    if impl.name == "cython":
        return impl.new_trace_id
    return lambda: _node._trace_id(None)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_does_not_repeat_the_parents_trace_ids(node_build: Any) -> None:
    new_trace_id = new_trace_ids(node_build)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, new_trace_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = new_trace_id()
    assert len(child) == 32 and int(child, 16) >= 0
    assert child != parent


async def test_emit_sends_with_tracing_from_a_custom_loop() -> None:
    class Custom(Node):
        async def go(self) -> None:
            message = await self.mailbox.receive()
            await self.emit(message.payload + 1, parent=message)

    node, sink = Custom(id="custom"), Node()
    node >> sink
    await run_until_done(node, ChannelMessage(payload=1, metadata={"trace_id": "t"}))
    [message] = drain(sink.mailbox)
    assert message.payload == 2
    assert (message.metadata["trace_id"], message.metadata["source_node"]) == ("t", "custom")


# -- shutdown ----------------------------------------------------------------


async def test_shutdown_goes_once_to_every_successor() -> None:
    a, b, c = Node(id="a"), Node(), Node()
    a >> b
    a >> c
    await run_until_done(a, ChannelMessage(payload=1), shutdown())
    for successor in (b, c):
        messages = drain(successor.mailbox)
        assert [m.is_shutdown for m in messages] == [False, True]
        assert messages[1].metadata["source_node"] == "a"


async def test_a_node_with_two_predecessors_waits_for_a_shutdown_from_each() -> None:
    left, right, merge, sink = Node(id="left"), Node(id="right"), Node(id="merge"), Node()
    left >> merge
    right >> merge
    merge >> sink
    worker = asyncio.create_task(merge.go())
    await merge.mailbox.send(shutdown("left"))
    await merge.mailbox.send(shutdown("left"))  # a repeat does not count twice
    await merge.mailbox.send(ChannelMessage(payload="late"))
    await settle()
    assert not worker.done()
    await merge.mailbox.send(shutdown("right"))
    await asyncio.wait_for(worker, 10)
    messages = drain(sink.mailbox)
    assert [m.payload for m in messages] == ["late", None]
    assert [m.is_shutdown for m in messages] == [False, True]


async def test_unnamed_shutdowns_count_for_one_predecessor_each() -> None:
    left, right, merge = Node(), Node(), Node()
    left >> merge
    right >> merge
    worker = asyncio.create_task(merge.go())
    await merge.mailbox.send(shutdown())
    await settle()
    assert not worker.done()
    await merge.mailbox.send(shutdown())
    await asyncio.wait_for(worker, 10)


async def test_every_shutdown_received_is_acknowledged() -> None:
    acked: list[str] = []

    def acking(source: str) -> ChannelMessage[Any]:
        async def ack() -> None:
            acked.append(source)

        message = shutdown(source)
        message.ack = ack
        return message

    left, right, merge = Node(id="left"), Node(id="right"), Node(id="merge")
    left >> merge
    right >> merge
    worker = asyncio.create_task(merge.go())
    await merge.mailbox.send(acking("left"))
    await merge.mailbox.send(acking("left"))  # a repeat is not counted, but handled
    await settle()
    assert acked == ["left", "left"]
    await merge.mailbox.send(acking("right"))
    await asyncio.wait_for(worker, 10)
    assert acked == ["left", "left", "right"]


async def test_without_predecessors_any_shutdown_stops_the_node() -> None:
    node = Node()
    await run_until_done(node, shutdown("someone"))
    assert node.mailbox.empty()


async def test_a_closed_mailbox_ends_the_worker_and_passes_the_shutdown_on() -> None:
    a, b = Node(id="a"), Node()
    a >> b
    await a.mailbox.send(ChannelMessage(payload=1))
    a.mailbox.close()
    await asyncio.wait_for(a.go(), 10)
    assert [(m.payload, m.is_shutdown) for m in drain(b.mailbox)] == [(1, False), (None, True)]


async def test_stop_wakes_a_waiting_worker_without_telling_successors() -> None:
    a, b = Node(), Node()
    a >> b
    worker = asyncio.create_task(a.go())
    await settle()
    a.stop()
    await asyncio.wait_for(worker, 10)
    assert a._stop_flag is True
    assert b.mailbox.empty()


async def test_stop_lets_the_message_in_hand_finish_and_leaves_the_rest() -> None:
    started = asyncio.Event()

    class Slow(Node):
        async def process(self, payload: Any) -> Any:
            started.set()
            await asyncio.sleep(0.05)
            return payload

    a, b = Slow(), Node()
    a >> b
    for n in range(3):
        await a.mailbox.send(ChannelMessage(payload=n))
    worker = asyncio.create_task(a.go())
    await started.wait()
    a.stop()
    await asyncio.wait_for(worker, 10)
    assert [m.payload for m in drain(b.mailbox)] == [0]
    assert a.stats().processed == 1
    assert [m.payload for m in drain(a.mailbox) if not m.is_shutdown] == [1, 2]


def test_stop_on_a_full_mailbox_still_sets_the_flag() -> None:
    node = Node(mailbox_maxsize=1)
    node.mailbox.send_nowait(ChannelMessage(payload=1))
    node.stop()
    assert node._stop_flag is True
    assert node.mailbox.qsize() == 1


async def test_an_edge_channel_is_used_outside_a_graph(node_build: Any) -> None:
    a, b = Node(), Node()
    a.connect(b, channel=node_build.ForwardingChannel(b.mailbox, metadata_defaults={"via": "edge"}))
    await run_until_done(a, ChannelMessage(payload=1), shutdown())
    assert all(m.metadata["via"] == "edge" for m in drain(b.mailbox))


async def test_reference_mailbox_worker_runs_as_written() -> None:
    handled: list[Any] = []

    class WorkerNode(Node):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)

        async def go(self) -> None:
            while not self._stop_flag:
                message = await self.mailbox.receive()
                if message.is_shutdown:
                    break
                await self.process_message(message)

        async def process_message(self, message: ChannelMessage[Any]) -> None:
            handled.append(message.payload)

    node_b = WorkerNode()
    data = [1, 2]
    await node_b.mailbox.send(ChannelMessage(payload={"task": "process", "data": data}))
    await run_until_done(node_b, shutdown())
    assert handled == [{"task": "process", "data": [1, 2]}]


async def test_a_custom_channel_wakes_its_worker_on_a_stop_request(node_build: Any) -> None:
    """spark.nodes.is_stop_request lets a channel over a shared backend keep
    Node.stop()'s request local instead of writing it to the backend."""
    from spark.nodes import is_stop_request

    class Remote(BaseChannel):
        def __init__(self) -> None:
            super().__init__(name="remote")
            self.written: list[Any] = []  # what went to the "backend"
            self.local: asyncio.Queue[Any] = asyncio.Queue()

        async def send(self, message: Any) -> None:
            self.send_nowait(message)

        def send_nowait(self, message: Any) -> None:
            if is_stop_request(message):
                self.local.put_nowait(message)  # for the workers reading this object
            else:
                self.written.append(message)

        async def receive(self) -> Any:
            return await self.local.get()

    mailbox = Remote()
    node = Node(mailbox=mailbox)
    worker = asyncio.ensure_future(node.go())
    await asyncio.sleep(0)
    node.stop()
    await asyncio.wait_for(worker, 5)
    assert mailbox.written == []
    assert not is_stop_request(ChannelMessage(None, is_shutdown=True))
