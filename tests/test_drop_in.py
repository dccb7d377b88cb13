"""Issue #12, "drop-in": what code written for plain asyncio objects may do with spark's.

Each decision is pinned on both builds (``impl``/``node_build``) and, for the
async tests, on both loops (see conftest.py):

* D1: node subclasses may use ``processed``, ``failed``, ``name`` (and ``id``)
  themselves; counters are read with ``node.stats()``; run results are
  ``PerNode`` dicts, read by node, name or id.
* D2: channels, bridges and nodes can be deep-copied and pickled.
* D3: channels take instance attributes and ``mock.patch.object``, and no
  shortcut of the worker loops or the graph bypasses what was patched.
* D4: ``ChannelMessage.__slots__`` is the four fields; no instance dict.
* D5: the classes are generic at run time and for mypy.
* D6: ``ChannelMessage`` checks its fields.
* D7: sending a non-message names its type.
* D8: a ``BaseChannel`` subclass needs only ``send`` and ``receive``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import importlib.util
import pickle
import re
import subprocess
import sys
import types
from collections import deque
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from spark.graphs import Graph, NodeMessage, PerNode, RunStatus, Task, TaskType
from spark.nodes import Node, NodeStats
from spark.nodes.channels import BaseChannel, ChannelClosed, QueueBridge

REPO = Path(__file__).resolve().parent.parent

# -- helpers ---------------------------------------------------------------


class Double(Node):
    def process(self, payload: Any) -> Any:
        return payload * 2


class Gate(Node):
    """Passes payloads on; ``seen`` is set once it has processed one."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen = asyncio.Event()

    def process(self, payload: Any) -> Any:
        self.seen.set()
        return payload


class OwnCountersFirst(Node):
    """Sets the attributes the issue is about before ``super().__init__()``."""

    def __init__(self, **kwargs: Any) -> None:
        self.processed: list[Any] = []
        self.failed = 0
        self.name = "worker"
        super().__init__(**kwargs)

    def process(self, payload: Any) -> Any:
        self.processed.append(payload)
        if payload == "bad":
            self.failed += 10  # its own bookkeeping, unrelated to the node's counters
            raise ValueError("bad payload")
        return payload


class OwnCountersAfter(Node):
    """Sets the same attributes after ``super().__init__()``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.processed: list[Any] = []
        self.failed = "not a number"
        self.name = "collector"

    def process(self, payload: Any) -> Any:
        self.processed.append(payload)
        return payload


def record(message: Any, channel: Any, phase: str) -> None:
    """A picklable observer (module level)."""


def other_record(message: Any, channel: Any, phase: str) -> None:
    """Another picklable observer."""


def drain(channel: Any) -> list[Any]:
    """Every message queued in ``channel``, in order."""
    messages = []
    while not channel.empty():
        messages.append(channel.receive_nowait())
    return messages


def payloads(messages: Any) -> list[Any]:
    return [message.payload for message in messages]


def sent_through(spy: mock.Mock) -> list[Any]:
    """The messages a patched send (or send_nowait) was called with, in order."""
    return [call.args[0] for call in spy.call_args_list]


def data(messages: list[Any]) -> list[Any]:
    return [message for message in messages if not message.is_shutdown]


def spy_on_send(channel: Any) -> Any:
    """Patch ``channel.send`` with an AsyncMock that passes each message on to the real send.

    The real send is awaited by an ``async def`` wrapper: the mock does not
    await what a side effect that is not a coroutine function returns (see
    ``test_mock_wrappers_of_the_real_send_deliver``).
    """
    real_send = channel.send

    async def through(message: Any) -> None:
        await real_send(message)

    return mock.patch.object(channel, "send", mock.AsyncMock(side_effect=through))


def copy_by(how: str, value: Any) -> Any:
    if how == "deepcopy":
        return copy.deepcopy(value)
    return pickle.loads(pickle.dumps(value))


def expect_failure_on(request: pytest.FixtureRequest, impl: Any, build: str, reason: str) -> None:
    if impl.name == build:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# == D1: processed, failed, name and id are the subclass's to use ===========


def test_processed_and_failed_are_no_longer_node_attributes(node_build: Any) -> None:
    node = Node()
    assert not hasattr(node, "processed")
    assert not hasattr(node, "failed")
    assert node.stats() == NodeStats(processed=0, failed=0)


@pytest.mark.parametrize("kind", [OwnCountersFirst, OwnCountersAfter])
def test_a_subclass_may_set_processed_failed_and_name_in_init(node_build: Any, kind: type) -> None:
    node = kind()
    name, failed = ("worker", 0) if kind is OwnCountersFirst else ("collector", "not a number")
    assert node.processed == [] and node.failed == failed
    assert node.name == name
    assert node.config.name == node.name
    assert node.stats() == NodeStats(processed=0, failed=0)
    assert type(node.mailbox) is node_build.InMemoryChannel


def test_an_id_set_before_super_init_is_the_nodes_id(node_build: Any) -> None:
    class Named(Node):
        def __init__(self) -> None:
            self.id = "fixed-id"
            self.name = "fixed-name"
            super().__init__()

    node = Named()
    assert (node.id, node.name) == ("fixed-id", "fixed-name")
    assert (node.config.id, node.config.name) == ("fixed-id", "fixed-name")
    assert node.mailbox.name == "node:fixed-id"


def test_name_and_id_are_settable_and_update_the_config(node_build: Any) -> None:
    node = Node(id="first", name="first-name")
    node.name = "second-name"
    node.id = "second"
    assert (node.name, node.id) == ("second-name", "second")
    assert (node.config.name, node.config.id) == ("second-name", "second")


@pytest.mark.parametrize(
    ("attribute", "bad"),
    [(attribute, bad) for attribute in ("name", "id") for bad in ("", 5, b"bytes")]
    + [("id", None)],
)
def test_name_and_id_must_be_non_empty_strings(
    node_build: Any, attribute: str, bad: object
) -> None:
    node = Node(id="kept", name="kept")
    with pytest.raises(TypeError, match=attribute):
        setattr(node, attribute, bad)
    assert (node.id, node.name) == ("kept", "kept")
    assert (node.config.id, node.config.name) == ("kept", "kept")


def test_setting_no_name_keeps_the_nodes_name(node_build: Any) -> None:
    class Named(Node):
        def __init__(self, name: str | None = None) -> None:
            super().__init__(id="n1")
            self.name = name  # a subclass passing its argument on

    assert Named().name == "Named-n1" and Named("given").name == "given"


async def test_the_id_cannot_change_during_a_run_but_the_name_can(node_build: Any) -> None:
    node = Gate(id="running", name="before")
    graph = Graph(node)
    run = asyncio.ensure_future(graph.run(Task(inputs=NodeMessage(1), type=TaskType.LONG_RUNNING)))
    await asyncio.wait_for(node.seen.wait(), 10)
    with pytest.raises(RuntimeError, match="cannot change during a graph run"):
        node.id = "other"
    assert node.id == "running" and node.config.id == "running"
    node.name = "during"
    assert node.config.name == "during"
    graph.stop()
    result = await asyncio.wait_for(run, 10)
    assert result.status is RunStatus.STOPPED
    node.id = "after"  # allowed once the run ended
    assert node.config.id == "after"


async def test_a_subclass_with_its_own_counters_runs_in_a_graph(node_build: Any) -> None:
    first = OwnCountersFirst()
    second = OwnCountersAfter()
    first >> second
    inputs = [NodeMessage(value) for value in (1, "bad", 2, 3)]
    result = await Graph(first).run(Task(inputs=inputs))
    assert result.status is RunStatus.COMPLETED
    assert result.outputs == [1, 2, 3]
    # The run counts with the node's own counters, not the subclass's attributes.
    assert result.processed == {first.id: 3, second.id: 3}
    assert result.failed == {first.id: 1, second.id: 0}
    assert first.stats() == NodeStats(processed=3, failed=1)
    assert second.stats() == NodeStats(processed=3, failed=0)
    # ...and the subclass's attributes are left as it made them.
    assert first.processed == [1, "bad", 2, 3] and first.failed == 10
    assert second.processed == [1, 2, 3] and second.failed == "not a number"
    assert (first.name, second.name) == ("worker", "collector")


async def test_the_default_loop_counts_in_stats_outside_a_graph(node_build: Any) -> None:
    node = OwnCountersFirst()
    for value in (1, "bad", 2):
        node.mailbox.send_nowait(node_build.ChannelMessage(value))
    node.mailbox.send_nowait(node_build.ChannelMessage(None, is_shutdown=True))
    await asyncio.wait_for(node.go(), 10)
    assert node.stats() == NodeStats(processed=2, failed=1)
    assert node.processed == [1, "bad", 2] and node.failed == 10


# -- run results: PerNode ---------------------------------------------------


async def test_per_node_results_are_read_by_node_by_name_and_by_id(node_build: Any) -> None:
    parser = Double(name="parser")
    sink = Node(name="sink")
    parser >> sink
    result = await Graph(parser).run(Task(inputs=[NodeMessage(1), NodeMessage(2)]))
    assert result.status is RunStatus.COMPLETED
    for per_node in (result.processed, result.failed, result.pending, result.outputs_by_node):
        assert isinstance(per_node, PerNode)
    assert result.processed[parser] == result.processed["parser"] == result.processed[parser.id]
    assert result.processed["parser"] == 2 and result.processed[sink] == 2
    assert result.failed["sink"] == 0 and result.pending["parser"] == 0
    assert result.outputs_by_node["sink"] == [2, 4] and result.outputs_by_node[sink] == [2, 4]
    assert result.processed.get("sink") == 2 and result.processed.get(sink) == 2
    assert result.processed.get("nobody", -1) == -1
    assert "parser" in result.processed and parser in result.processed
    assert parser.id in result.processed and "nobody" not in result.processed
    assert Node(name="outsider") not in result.processed
    with pytest.raises(KeyError):
        result.processed["nobody"]
    # Still a dict keyed by node id.
    assert result.processed == {parser.id: 2, sink.id: 2}
    assert set(result.processed) == {parser.id, sink.id}
    assert result.outputs_by_node == {sink.id: [2, 4]}


async def test_an_ambiguous_name_is_a_helpful_key_error(node_build: Any) -> None:
    first = Node(name="twin")
    second = Node(name="twin")
    first >> second
    result = await Graph(first).run(Task(inputs=NodeMessage(1)))
    with pytest.raises(KeyError, match="more than one node"):
        result.processed["twin"]
    assert result.processed.get("twin") is None
    assert result.processed.get("twin", "default") == "default"
    assert "twin" not in result.processed
    assert result.processed[first] == 1 and result.processed[second.id] == 1


async def test_a_pickled_per_node_keeps_name_lookup(node_build: Any) -> None:
    parser = Double(name="parser")
    sink = Node(name="sink")
    parser >> sink
    result = await Graph(parser).run(Task(inputs=[NodeMessage(1), NodeMessage(2)]))
    for per_node in (pickle.loads(pickle.dumps(result.processed)), copy.deepcopy(result.processed)):
        assert type(per_node) is PerNode
        assert per_node == {parser.id: 2, sink.id: 2}
        assert per_node["parser"] == 2 and per_node[sink] == 2
        assert per_node.get("sink") == 2 and "parser" in per_node


async def test_a_pickled_per_node_still_explains_an_ambiguous_name(node_build: Any) -> None:
    first = Node(name="twin")
    second = Node(name="twin")
    first >> second
    result = await Graph(first).run(Task(inputs=NodeMessage(1)))
    restored = pickle.loads(pickle.dumps(result.processed))
    assert "twin" not in restored
    with pytest.raises(KeyError, match="more than one node"):
        restored["twin"]


# == D2: deepcopy and pickle ================================================


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_an_in_memory_channel_copies_with_its_queued_messages(impl: Any, how: str) -> None:
    channel = impl.InMemoryChannel(name="orders", maxsize=5, observers=[record])
    channel.owner = {"team": ["a"]}
    sent = [impl.ChannelMessage({"n": n}, {"trace_id": f"t{n}"}) for n in range(3)]
    for message in sent:
        channel.send_nowait(message)
    before = channel.stats()

    twin = copy_by(how, channel)

    assert type(twin) is type(channel) and twin is not channel
    assert (twin.name, twin.maxsize, twin.closed) == ("orders", 5, False)
    assert twin.observers == (record,)
    assert twin.owner == {"team": ["a"]} and twin.owner is not channel.owner
    stats = twin.stats()
    assert (stats.sent, stats.received, stats.size) == (3, 0, 3)
    assert channel.stats() == before  # the original is untouched
    sent[0].payload["n"] = "changed"  # the copy holds copies of the messages
    copies = drain(twin)
    assert payloads(copies) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [m.metadata for m in copies] == [{"trace_id": f"t{n}"} for n in range(3)]
    assert all(a is not b for a, b in zip(copies, sent, strict=True))
    assert payloads(drain(channel)) == [{"n": "changed"}, {"n": 1}, {"n": 2}]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_of_a_closed_channel_is_closed_and_drains(impl: Any, how: str) -> None:
    channel = impl.InMemoryChannel()
    channel.send_nowait(impl.ChannelMessage(1))
    channel.close()
    twin = copy_by(how, channel)
    assert twin.closed and twin.stats().closed
    with pytest.raises(ChannelClosed):
        twin.send_nowait(impl.ChannelMessage(2))
    assert twin.receive_nowait().payload == 1
    with pytest.raises(ChannelClosed):
        twin.receive_nowait()
    assert channel.qsize() == 1


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_of_a_full_channel_is_full(impl: Any, how: str) -> None:
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage(1))
    twin = copy_by(how, channel)
    assert twin.full()
    with pytest.raises(asyncio.QueueFull):
        twin.send_nowait(impl.ChannelMessage(2))


async def test_messages_promised_to_a_woken_receiver_are_not_copied(impl: Any) -> None:
    channel = impl.InMemoryChannel()
    receiver = asyncio.ensure_future(channel.receive())
    await asyncio.sleep(0)  # the receiver blocks
    channel.send_nowait(impl.ChannelMessage("promised"))  # wakes it; it has not run yet
    channel.send_nowait(impl.ChannelMessage("queued"))
    twin = copy.deepcopy(channel)
    assert payloads(drain(twin)) == ["queued"]
    assert twin.stats().sent == 1
    assert (await receiver).payload == "promised"
    assert payloads(drain(channel)) == ["queued"]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_forwarding_channel_copies_with_a_copy_of_its_downstream(impl: Any, how: str) -> None:
    downstream = impl.InMemoryChannel(name="mailbox")
    forwarder = impl.ForwardingChannel(
        downstream, name="edge", metadata_defaults={"edge": "e1"}, observers=[other_record]
    )
    forwarder.route = ["r"]
    forwarder.send_nowait(impl.ChannelMessage({"k": 1}))
    forwarder.close()

    twin = copy_by(how, forwarder)

    assert type(twin) is type(forwarder)
    assert (twin.name, twin.closed, twin.metadata_defaults) == ("edge", True, {"edge": "e1"})
    assert twin.observers == (other_record,)
    assert twin.route == ["r"] and twin.route is not forwarder.route
    assert type(twin.downstream) is type(downstream) and twin.downstream is not downstream
    assert twin.downstream.name == "mailbox" and not twin.downstream.closed
    with pytest.raises(ChannelClosed):
        twin.send_nowait(impl.ChannelMessage(2))
    [copied] = drain(twin.downstream)
    assert copied.payload == {"k": 1} and copied.metadata == {"edge": "e1"}
    assert payloads(drain(downstream)) == [{"k": 1}]  # the original is untouched


@pytest.mark.parametrize("order", ["forwarder first", "downstream first"])
def test_deepcopy_keeps_a_forwarder_pointing_at_the_copied_downstream(
    impl: Any, order: str
) -> None:
    downstream = impl.InMemoryChannel(name="mailbox")
    forwarder = impl.ForwardingChannel(downstream)
    forwarder.send_nowait(impl.ChannelMessage(1))
    if order == "forwarder first":
        both = {"forwarder": forwarder, "downstream": downstream}
    else:
        both = {"downstream": downstream, "forwarder": forwarder}
    copied = copy.deepcopy(both)
    assert copied["forwarder"].downstream is copied["downstream"]
    assert copied["downstream"] is not downstream
    copied["forwarder"].send_nowait(impl.ChannelMessage(2))
    assert payloads(drain(copied["downstream"])) == [1, 2]
    assert payloads(drain(downstream)) == [1]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_queue_bridge_copies_with_its_channel_and_unfinished_count(impl: Any, how: str) -> None:
    bridge = impl.QueueBridge(impl.InMemoryChannel(name="q", maxsize=3))
    bridge.put_nowait({"item": 1})
    bridge.put_nowait({"item": 2})
    twin = copy_by(how, bridge)
    assert type(twin) is QueueBridge and twin.channel is not bridge.channel
    assert (twin.channel.name, twin.maxsize, twin.qsize()) == ("q", 3, 2)
    assert type(twin.channel) is impl.InMemoryChannel
    twin.put_nowait({"item": 3})
    assert [twin.get_nowait() for _ in range(3)] == [{"item": 1}, {"item": 2}, {"item": 3}]
    for _ in range(3):  # two copied unfinished items and the one put into the copy
        twin.task_done()
    with pytest.raises(ValueError):
        twin.task_done()
    assert bridge.qsize() == 2 and bridge.get_nowait() == {"item": 1}


@pytest.mark.parametrize("kind", ["InMemoryChannel", "ForwardingChannel"])
def test_pickling_a_channel_with_a_lambda_observer_fails(impl: Any, kind: str) -> None:
    observers = [lambda message, channel, phase: None]
    if kind == "InMemoryChannel":
        channel = impl.InMemoryChannel(observers=observers)
    else:
        channel = impl.ForwardingChannel(impl.InMemoryChannel(), observers=observers)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(channel)


async def test_a_node_deep_copies_with_its_mailbox(node_build: Any) -> None:
    node = Double(id="n1", name="doubler")
    node.mailbox.send_nowait(node_build.ChannelMessage({"x": 1}))  # fails: dict * 2
    node.mailbox.send_nowait(node_build.ChannelMessage(5))
    node.mailbox.send_nowait(node_build.ChannelMessage(None, is_shutdown=True))
    await asyncio.wait_for(node.go(), 10)
    assert node.stats() == NodeStats(processed=1, failed=1)
    queued = node_build.ChannelMessage({"later": [1]})
    node.mailbox.send_nowait(queued)

    twin = copy.deepcopy(node)

    assert type(twin) is Double and (twin.id, twin.name) == ("n1", "doubler")
    assert twin.config == node.config
    assert twin.mailbox is not node.mailbox
    assert type(twin.mailbox) is node_build.InMemoryChannel
    assert twin.stats() == NodeStats(processed=1, failed=1)
    queued.payload["later"].append(2)
    assert payloads(drain(twin.mailbox)) == [{"later": [1]}]
    assert payloads(drain(node.mailbox)) == [{"later": [1, 2]}]


async def test_a_copy_of_a_running_node_is_in_no_run(node_build: Any) -> None:
    started = asyncio.Event()  # not an attribute of the node: all of those are copied

    class Signalling(Node):
        def process(self, payload: Any) -> Any:
            started.set()
            return payload

    node = Signalling(id="node", name="node")
    graph = Graph(node)
    run = asyncio.ensure_future(graph.run(Task(inputs=NodeMessage(1), type=TaskType.LONG_RUNNING)))
    await asyncio.wait_for(started.wait(), 10)
    twin = copy.deepcopy(node)
    twin.id = "node-copy"  # would raise if the copy were bound to the run
    with pytest.raises(RuntimeError):
        node.id = "changed"
    result = await Graph(twin).run(Task(inputs=[NodeMessage(7)]))
    assert result.status is RunStatus.COMPLETED and result.outputs == [7]
    assert twin.stats().processed == node.stats().processed + 1
    graph.stop()
    assert (await asyncio.wait_for(run, 10)).status is RunStatus.STOPPED


class ListChannel(BaseChannel[Any]):
    """A user's own channel: only send and receive, and attributes of its own."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name, observers=[record])
        self.items: deque[Any] = deque()
        self.settings = {"retries": [1, 2]}

    async def send(self, message: Any) -> None:
        self.items.append(message)

    async def receive(self) -> Any:
        if not self.items:
            raise ChannelClosed("nothing left")
        return self.items.popleft()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_users_base_channel_subclass_copies(impl: Any, how: str) -> None:
    channel = ListChannel(name="mine")
    channel.items.append(impl.ChannelMessage({"p": 1}))
    channel.close()
    twin = copy_by(how, channel)
    assert type(twin) is ListChannel
    assert (twin.name, twin.closed, twin.observers) == ("mine", True, (record,))
    assert twin.settings == {"retries": [1, 2]} and twin.settings is not channel.settings
    channel.items[0].payload["p"] = 2
    assert payloads(twin.items) == [{"p": 1}]


# == D3: instance attributes and mock.patch.object ==========================


@pytest.mark.parametrize("kind", ["InMemoryChannel", "ForwardingChannel"])
def test_channels_take_instance_attributes(impl: Any, kind: str) -> None:
    channel = (
        impl.InMemoryChannel()
        if kind == "InMemoryChannel"
        else impl.ForwardingChannel(impl.InMemoryChannel())
    )
    owner = object()
    channel.owner = owner
    assert channel.owner is owner
    assert vars(channel) == {"owner": owner}
    del channel.owner
    with pytest.raises(AttributeError):
        channel.owner  # noqa: B018
    channel.send_nowait(impl.ChannelMessage(1))
    assert channel.receive_nowait().payload == 1


@pytest.mark.parametrize("kind", ["InMemoryChannel", "ForwardingChannel"])
async def test_patch_object_replaces_send_until_the_patch_ends(impl: Any, kind: str) -> None:
    mailbox = impl.InMemoryChannel()
    channel = mailbox if kind == "InMemoryChannel" else impl.ForwardingChannel(mailbox)
    message = impl.ChannelMessage("to the mock")
    with mock.patch.object(channel, "send", mock.AsyncMock()) as fake:
        await channel.send(message)
        fake.assert_awaited_once_with(message)
        assert mailbox.qsize() == 0
    assert "send" not in vars(channel)
    await channel.send(impl.ChannelMessage("real"))
    assert payloads(drain(mailbox)) == ["real"]


@pytest.mark.parametrize("kind", ["InMemoryChannel", "ForwardingChannel"])
def test_patch_object_replaces_send_nowait_until_the_patch_ends(impl: Any, kind: str) -> None:
    mailbox = impl.InMemoryChannel()
    channel = mailbox if kind == "InMemoryChannel" else impl.ForwardingChannel(mailbox)
    message = impl.ChannelMessage("to the mock")
    with mock.patch.object(channel, "send_nowait") as fake:
        channel.send_nowait(message)
        fake.assert_called_once_with(message)
        assert mailbox.qsize() == 0
    channel.send_nowait(impl.ChannelMessage("real"))
    assert payloads(drain(mailbox)) == ["real"]


@pytest.mark.parametrize("how", ["side_effect", "wraps", "patch's own mock"])
async def test_mock_wrappers_of_the_real_send_deliver(
    impl: Any, how: str, request: pytest.FixtureRequest
) -> None:
    """The usual ways of spying on ``send`` work as on an ``async def`` method."""
    expect_failure_on(
        request,
        impl,
        "cython",
        "known limit (README): the compiled send is a C method, which mock cannot tell "
        "is async; making it a Python-visible coroutine function costs ~150 "
        "instructions per call",
    )
    channel = impl.InMemoryChannel()
    if how == "patch's own mock":
        with mock.patch.object(channel, "send") as fake:
            await channel.send(impl.ChannelMessage(1))  # patch must make an AsyncMock
        assert fake.await_count == 1
        return
    real_send = channel.send
    spy = (
        mock.AsyncMock(side_effect=real_send)
        if how == "side_effect"
        else mock.AsyncMock(wraps=real_send)
    )
    with mock.patch.object(channel, "send", spy):
        await channel.send(impl.ChannelMessage(1))
    assert spy.await_count == 1
    assert payloads(drain(channel)) == [1]


async def test_a_patched_mailbox_receive_feeds_the_worker(node_build: Any) -> None:
    node = Double()
    sink = Node()
    node >> sink
    node.mailbox.send_nowait(node_build.ChannelMessage(100))  # never taken: receive is patched
    messages = [
        node_build.ChannelMessage(3),
        node_build.ChannelMessage(4),
        node_build.ChannelMessage(None, is_shutdown=True),
    ]
    with mock.patch.object(node.mailbox, "receive", mock.AsyncMock(side_effect=messages)) as fake:
        await asyncio.wait_for(node.go(), 10)
    assert fake.await_count == 3
    assert node.stats() == NodeStats(processed=2, failed=0)
    received = drain(sink.mailbox)
    assert payloads(received) == [6, 8, None] and received[-1].is_shutdown
    assert payloads(drain(node.mailbox)) == [100]


@pytest.mark.parametrize("edge", ["to the mailbox", "through a forwarder"])
async def test_go_awaits_a_successors_patched_send(node_build: Any, edge: str) -> None:
    source = Double()
    target = Node()
    if edge == "to the mailbox":
        source >> target
    else:
        source.connect(target, channel=node_build.ForwardingChannel(target.mailbox, name="fw"))
    for value in (1, 2):
        source.mailbox.send_nowait(node_build.ChannelMessage(value))
    source.mailbox.send_nowait(node_build.ChannelMessage(None, is_shutdown=True))
    with spy_on_send(target.mailbox) as spy:
        await asyncio.wait_for(source.go(), 10)
    assert payloads(sent_through(spy)) == [2, 4, None]
    assert all(m.metadata["source_node"] == source.id for m in sent_through(spy))
    assert payloads(drain(target.mailbox)) == [2, 4, None]


@pytest.mark.parametrize("edge", ["graph's forwarder", "plain mailbox", "own forwarder"])
async def test_a_graph_run_awaits_a_successors_patched_send(node_build: Any, edge: str) -> None:
    source = Double(name="source")
    target = Node(name="target")
    if edge == "graph's forwarder":
        source >> target
        made = source.edges[0]
    elif edge == "plain mailbox":
        made = source.connect(target, channel=target.mailbox)
    else:
        own = node_build.ForwardingChannel(target.mailbox, metadata_defaults={"own": True})
        made = source.connect(target, channel=own)
    with spy_on_send(target.mailbox) as spy:
        result = await Graph(source).run(Task(inputs=[NodeMessage(1), NodeMessage(2)]))
    assert result.status is RunStatus.COMPLETED
    assert result.outputs == [2, 4]  # the patched send passed them on
    sent = data(sent_through(spy))
    assert payloads(sent) == [2, 4]
    assert all(m.metadata["source_node"] == source.id for m in sent)
    if edge == "graph's forwarder":
        assert all(m.metadata["edge_id"] == made.id for m in sent)
    elif edge == "own forwarder":
        assert all(m.metadata["own"] is True for m in sent)


async def test_a_graph_run_awaits_a_patched_edge_channel(node_build: Any) -> None:
    source = Double(name="source")
    target = Node(name="target")
    forwarder = node_build.ForwardingChannel(target.mailbox, name="edge")
    source.connect(target, channel=forwarder)
    with spy_on_send(forwarder) as spy:
        result = await Graph(source).run(Task(inputs=[NodeMessage(1), NodeMessage(2)]))
    assert result.outputs == [2, 4]
    assert payloads(data(sent_through(spy))) == [2, 4]


async def test_a_forwarder_calls_its_downstreams_patched_methods(impl: Any) -> None:
    downstream = impl.InMemoryChannel()
    forwarder = impl.ForwardingChannel(downstream, metadata_defaults={"edge": "e"})
    with (
        mock.patch.object(downstream, "send", mock.AsyncMock()) as fake_send,
        mock.patch.object(downstream, "send_nowait") as fake_send_nowait,
    ):
        await forwarder.send(impl.ChannelMessage(1))
        forwarder.send_nowait(impl.ChannelMessage(2))
    [sent] = sent_through(fake_send)
    [sent_nowait] = sent_through(fake_send_nowait)
    assert (sent.payload, sent.metadata) == (1, {"edge": "e"})
    assert (sent_nowait.payload, sent_nowait.metadata) == (2, {"edge": "e"})
    assert downstream.qsize() == 0
    # Once the patches end, the forwarder delivers into the downstream again.
    await forwarder.send(impl.ChannelMessage(3))
    forwarder.send_nowait(impl.ChannelMessage(4))
    assert payloads(drain(downstream)) == [3, 4]


async def test_the_graph_feeder_sends_through_a_patched_send(node_build: Any) -> None:
    start = Double(name="start")
    with spy_on_send(start.mailbox) as spy:
        result = await Graph(start).run(Task(inputs=[NodeMessage(1), NodeMessage(2)]))
    assert result.outputs == [2, 4]
    assert payloads(data(sent_through(spy))) == [1, 2]


# == D4: ChannelMessage slots ===============================================


def test_channel_message_slots_are_its_four_fields(impl: Any) -> None:
    assert impl.ChannelMessage.__slots__ == ("payload", "metadata", "ack", "is_shutdown")
    message = impl.ChannelMessage(1)
    assert not hasattr(message, "__dict__")
    with pytest.raises(AttributeError):
        message.extra = 1
    for name in impl.ChannelMessage.__slots__:
        setattr(message, name, getattr(message, name))  # the fields stay writable


# == D5: generics ===========================================================


def test_channel_classes_are_subscriptable(impl: Any) -> None:
    for generic in (
        impl.InMemoryChannel,
        impl.ForwardingChannel,
        impl.ChannelMessage,
        QueueBridge,
        BaseChannel,
    ):
        alias = generic[int]
        assert alias.__origin__ is generic and alias.__args__ == (int,)


async def test_a_subscripted_class_makes_working_objects(impl: Any) -> None:
    channel = impl.InMemoryChannel[int](name="ints", maxsize=2)
    assert type(channel) is impl.InMemoryChannel and channel.maxsize == 2
    forwarder = impl.ForwardingChannel[int](channel)
    await forwarder.send(impl.ChannelMessage[int](5))
    bridge = QueueBridge[int](channel, message_type=impl.ChannelMessage)
    await bridge.put(6)
    assert (await channel.receive()).payload == 5
    assert await bridge.get() == 6


MYPY_CASES = {
    "InMemoryChannel[int].receive()": "(await channel.receive()).payload",
    "InMemoryChannel[int].receive_nowait()": "channel.receive_nowait().payload",
    "ForwardingChannel[int].receive()": "(await forwarder.receive()).payload",
    "async for over InMemoryChannel[int]": "[message.payload async for message in channel][0]",
    "QueueBridge[int].get()": "await bridge.get()",
    "QueueBridge[int].get_nowait()": "bridge.get_nowait()",
    "ChannelMessage[int]": "ChannelMessage[int](1).payload",
}


@pytest.fixture(scope="module")
def mypy_revealed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What ``mypy --strict`` reveals for each of MYPY_CASES, from one run."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    folder = tmp_path_factory.mktemp("mypy")
    lines = [
        "from spark.nodes.channels import (",
        "    ChannelMessage, ForwardingChannel, InMemoryChannel, QueueBridge",
        ")",
        "",
        "",
        "async def check(",
        "    channel: InMemoryChannel[int],",
        "    forwarder: ForwardingChannel[int],",
        "    bridge: QueueBridge[int],",
        ") -> None:",
    ]
    labels: dict[int, str] = {}
    for label, expression in MYPY_CASES.items():
        lines.append(f"    reveal_type({expression})")
        labels[len(lines)] = label
    snippet = folder / "snippet.py"
    snippet.write_text("\n".join(lines) + "\n")
    completed = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(folder / "cache"), snippet],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = completed.stdout + completed.stderr
    errors = [line for line in output.splitlines() if "snippet.py" in line and "error:" in line]
    assert not errors, output
    revealed: dict[str, str] = {}
    for match in re.finditer(r"snippet\.py:(\d+): note: Revealed type is \"(.*)\"", output):
        revealed[labels[int(match.group(1))]] = match.group(2)
    assert set(revealed) == set(MYPY_CASES), output
    return revealed


@pytest.mark.parametrize("case", MYPY_CASES)
def test_mypy_sees_the_payload_type(mypy_revealed: dict[str, str], case: str) -> None:
    assert re.fullmatch(r"(builtins\.)?int", mypy_revealed[case]), mypy_revealed[case]


# == D6: ChannelMessage checks its fields ===================================

BAD_FIELDS = [
    pytest.param({"ack": 5}, "int", id="ack=5"),
    pytest.param({"metadata": [1, 2]}, "list", id="metadata=list"),
    pytest.param({"metadata": "x"}, "str", id="metadata=str"),
    pytest.param({"is_shutdown": "no"}, "str", id="is_shutdown=str"),
    pytest.param({"is_shutdown": 1}, "int", id="is_shutdown=1"),
]


@pytest.mark.parametrize(("fields", "type_name"), BAD_FIELDS)
def test_bad_fields_are_type_errors(impl: Any, fields: dict[str, Any], type_name: str) -> None:
    with pytest.raises(TypeError, match=next(iter(fields))):
        impl.ChannelMessage(1, **fields)
    message = impl.ChannelMessage(1, {"kept": True})
    with pytest.raises(TypeError, match=next(iter(fields))):
        message.clone(**fields)
    assert message == impl.ChannelMessage(1, {"kept": True})


@pytest.mark.parametrize(("fields", "type_name"), BAD_FIELDS)
def test_field_errors_name_the_bad_type(impl: Any, fields: dict[str, Any], type_name: str) -> None:
    for make in (
        lambda: impl.ChannelMessage(1, **fields),
        lambda: impl.ChannelMessage(1).clone(**fields),
    ):
        with pytest.raises(TypeError) as error:
            make()
        assert re.search(rf"\b{type_name}\b", str(error.value)), str(error.value)


def test_none_metadata_is_a_fresh_empty_dict(impl: Any) -> None:
    first = impl.ChannelMessage(1, None)
    second = impl.ChannelMessage(2, metadata=None)
    assert first.metadata == {} and type(first.metadata) is dict
    assert first.metadata is not second.metadata
    first.metadata["a"] = 1
    assert second.metadata == {} and impl.ChannelMessage(3).metadata == {}


def test_a_mapping_is_copied_into_a_dict(impl: Any) -> None:
    source = {"a": 1}
    message = impl.ChannelMessage(1, types.MappingProxyType(source))
    assert type(message.metadata) is dict and message.metadata == {"a": 1}
    source["a"] = 2
    assert message.metadata == {"a": 1}
    clone = message.clone(metadata=types.MappingProxyType({"b": 2}))
    assert type(clone.metadata) is dict and clone.metadata == {"a": 1, "b": 2}


def test_a_callable_ack_is_accepted(impl: Any) -> None:
    async def ack() -> None: ...

    fake = mock.AsyncMock()
    assert impl.ChannelMessage(1, ack=ack).ack is ack
    assert impl.ChannelMessage(1, ack=fake).ack is fake
    assert impl.ChannelMessage(1).clone(ack=fake).ack is fake
    assert impl.ChannelMessage(1, ack=ack).clone(ack=None).ack is None
    assert impl.ChannelMessage(1, is_shutdown=True).clone(is_shutdown=False).is_shutdown is False


# == D7: sending something that is not a message ============================


@pytest.mark.parametrize("kind", ["InMemoryChannel", "ForwardingChannel"])
async def test_sending_a_dict_names_dict(impl: Any, kind: str) -> None:
    mailbox = impl.InMemoryChannel()
    channel = mailbox if kind == "InMemoryChannel" else impl.ForwardingChannel(mailbox)
    with pytest.raises(TypeError) as error:
        await channel.send({"a": 1})
    assert "dict" in str(error.value) and "NoneType" not in str(error.value)
    with pytest.raises(TypeError) as error:
        channel.send_nowait({"a": 1})
    assert "dict" in str(error.value) and "NoneType" not in str(error.value)
    assert mailbox.qsize() == 0


# == D8: a BaseChannel subclass needs only send and receive ================


def test_a_subclass_with_only_send_and_receive_can_be_made(impl: Any) -> None:
    channel = ListChannel()
    for method, arguments in [
        ("empty", ()),
        ("qsize", ()),
        ("stats", ()),
        ("send_nowait", (impl.ChannelMessage(1),)),
        ("receive_nowait", ()),
    ]:
        with pytest.raises(NotImplementedError):
            getattr(channel, method)(*arguments)


async def test_the_defaults_of_a_minimal_subclass_work_on_receive(impl: Any) -> None:
    channel = ListChannel()
    await channel.send_many([impl.ChannelMessage(n) for n in range(4)])
    assert payloads(await channel.receive_many(3)) == [0]  # receive_nowait is not there
    assert payloads([message async for message in channel]) == [1, 2, 3]


def test_a_subclass_without_receive_cannot_be_made() -> None:
    class SendOnly(BaseChannel[Any]):
        async def send(self, message: Any) -> None: ...

    with pytest.raises(TypeError, match="receive"):
        SendOnly()  # type: ignore[abstract]


def test_custom_channels_check_their_input_as_the_built_in_ones_do(impl: Any) -> None:
    from spark.nodes.channels import check_max_items, check_message

    @dataclasses.dataclass
    class Traced(impl.ChannelMessage):  # type: ignore[name-defined]
        trace: str = ""

    for message in (impl.ChannelMessage(1), Traced(2, trace="t")):
        check_message(message)  # either build's envelope, and subclasses, pass
    built_in = impl.InMemoryChannel()
    for raw in (42, {"payload": 1}, None):
        with pytest.raises(TypeError) as custom:
            check_message(raw)
        with pytest.raises(TypeError) as expected:
            built_in.send_nowait(raw)
        assert str(custom.value) == str(expected.value)
        assert "ChannelMessage(payload=value)" in str(custom.value)
    assert check_max_items(5) == 5
    for wrong, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="max_items"):
            check_max_items(wrong)


# == also: maxsize must be an int ===========================================


@pytest.mark.parametrize("maxsize", [1.5, "3", None])
def test_a_maxsize_that_is_not_an_int_is_a_clear_type_error(impl: Any, maxsize: object) -> None:
    with pytest.raises(TypeError, match=f"maxsize must be an int, got {type(maxsize).__name__}"):
        impl.InMemoryChannel(maxsize=maxsize)


# == found by review: more ways users meet the drop-in =====================


def picklable(cls: type, build: Any) -> Any:
    """``cls`` made findable by pickle: a module-level name, one per build."""
    name = f"{cls.__name__}_{build.name}"
    cls.__name__ = cls.__qualname__ = name
    cls.__module__ = __name__
    globals()[name] = cls
    return cls


class OnlySendReceive(BaseChannel):
    """A custom channel as D8 allows: no empty(), no stats()."""

    def __init__(self) -> None:
        super().__init__(name="minimal")
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def send(self, message: Any) -> None:
        await self.queue.put(message)

    async def receive(self) -> Any:
        return await self.queue.get()


async def test_a_graph_runs_with_a_mailbox_that_has_only_send_and_receive(
    node_build: Any,
) -> None:
    first, second = Double(), Double(mailbox=OnlySendReceive())
    first >> second
    result = await Graph(first).run(Task(inputs=[NodeMessage(1), NodeMessage(2)]))
    assert result.status is RunStatus.COMPLETED and sorted(result.outputs) == [4, 8]


async def test_async_for_uses_a_patched_receive(impl: Any) -> None:
    inner = impl.InMemoryChannel()
    forwarder = impl.ForwardingChannel(inner)
    for channel in (inner, forwarder):
        inner.send_nowait(impl.ChannelMessage("real"))
        fake = mock.AsyncMock(return_value=impl.ChannelMessage("patched"))
        with mock.patch.object(channel, "receive", fake):
            async for message in channel:
                assert message.payload == "patched"
                break
        assert fake.await_count == 1
        assert inner.receive_nowait().payload == "real"  # left where it was


async def test_async_for_uses_a_subclass_receive(impl: Any) -> None:
    seen: list[Any] = []

    class Logged(impl.InMemoryChannel):  # type: ignore[name-defined]
        async def receive(self) -> Any:
            message = await super().receive()
            seen.append(message.payload)
            return message

    channel = Logged()
    channel.send_nowait(impl.ChannelMessage(1))
    channel.close()
    assert [message.payload async for message in channel] == [1]
    assert seen == [1]


def test_putting_the_class_method_back_is_no_patch(impl: Any) -> None:
    from spark.nodes._channel_base import is_patched

    channel = impl.InMemoryChannel()
    original = channel.send
    with pytest.MonkeyPatch.context() as patcher:
        patcher.setattr(channel, "send", mock.AsyncMock())
        assert is_patched(channel)
    # monkeypatch's undo sets the bound method it saved on the instance
    assert channel.send == original and not is_patched(channel)


def test_a_typed_channel_keeps_no_instance_dict(impl: Any) -> None:
    from spark.nodes._copying import instance_attributes

    channel = impl.InMemoryChannel[int]()
    assert instance_attributes(channel) is None
    assert getattr(channel, "__orig_class__", None) is None


def test_a_dataclass_subclass_of_channel_message(impl: Any) -> None:
    @dataclasses.dataclass
    class Job(impl.ChannelMessage):  # type: ignore[name-defined]
        priority: int = 0

    Job = picklable(Job, impl)

    job = Job(1, {"k": 1}, priority=9)
    assert Job(2).metadata == {} and Job(3, None).metadata == {}
    for copied in (pickle.loads(pickle.dumps(job)), copy.deepcopy(job)):
        assert type(copied) is Job and copied == job and copied.priority == 9
    with pytest.raises(TypeError, match="ack"):
        Job(1, ack=5)
    with pytest.raises(TypeError, match="metadata"):
        Job(1, metadata=[1])


def test_channel_message_subclasses_pickle_with_their_own_attributes(impl: Any) -> None:
    class Tagged(impl.ChannelMessage):  # type: ignore[name-defined]
        def __init__(self, payload: Any, tag: str) -> None:
            super().__init__(payload)
            self.tag = tag

    class Ranked(impl.ChannelMessage):  # type: ignore[name-defined]
        __slots__ = ("rank",)

        def __init__(self, payload: Any, rank: int) -> None:
            super().__init__(payload)
            self.rank = rank

    Tagged, Ranked = picklable(Tagged, impl), picklable(Ranked, impl)

    for copied in (pickle.loads(pickle.dumps(Tagged(1, "x"))), copy.deepcopy(Tagged(1, "x"))):
        assert (type(copied), copied.payload, copied.tag) == (Tagged, 1, "x")
    for copied in (pickle.loads(pickle.dumps(Ranked(2, 7))), copy.copy(Ranked(2, 7))):
        assert (type(copied), copied.payload, copied.rank) == (Ranked, 2, 7)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_channel_subclass_copies_its_own_slots(impl: Any, how: str) -> None:
    class Tagged(impl.InMemoryChannel):  # type: ignore[name-defined]
        __slots__ = ("__secret", "tag")

        def __init__(self, tag: str) -> None:
            super().__init__(name="t")
            self.tag = tag
            self.__secret = 42

        def secret(self) -> int:
            return self.__secret

    Tagged = picklable(Tagged, impl)
    copied = copy_by(how, Tagged("mine"))
    assert (copied.tag, copied.secret(), copied.name) == ("mine", 42, "t")


def test_fields_assigned_badly_are_caught_by_clone_not_by_forwarders(impl: Any) -> None:
    message = impl.ChannelMessage(1)
    message.ack = 5  # assignment is not checked; clone() checks what it copies
    with pytest.raises(TypeError, match="ack"):
        message.clone()
    downstream = impl.InMemoryChannel()
    impl.ForwardingChannel(downstream, metadata_defaults={"a": 1}).send_nowait(message)
    forwarded = downstream.receive_nowait()  # forwarders copy fields as they are
    assert (forwarded.ack, forwarded.metadata) == (5, {"a": 1})


async def test_per_node_copies_stay_readable_by_name(node_build: Any) -> None:
    worker = Double(name="worker")
    result = await Graph(worker).run(Task(inputs=NodeMessage(1)))
    copied = result.processed.copy()
    assert type(copied) is PerNode and copied["worker"] == copied[worker] == 1
