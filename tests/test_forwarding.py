"""ForwardingChannel: metadata enrichment, delegation, observers, close."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from spark.nodes.channels import ChannelClosed


async def test_downstream_receives_defaults_overlaid_by_message_metadata(impl):
    downstream = impl.InMemoryChannel(name="downstream")
    forwarder = impl.ForwardingChannel(
        downstream=downstream,
        name="forwarder",
        metadata_defaults={"source": "node_a", "priority": "high", "trace_id": "default"},
    )

    async def ack() -> None: ...

    message = impl.ChannelMessage({"data": "value"}, {"trace_id": "abc"}, ack, True)
    await forwarder.send(message)
    received = await downstream.receive()
    assert received.metadata == {"trace_id": "abc", "source": "node_a", "priority": "high"}
    assert received.payload is message.payload
    assert received.ack is ack and received.is_shutdown is True
    assert message.metadata == {"trace_id": "abc"}  # the sender's message is untouched


async def test_defaults_are_copied_per_message(impl):
    downstream = impl.InMemoryChannel()
    defaults = {"edge": "a->b"}
    forwarder = impl.ForwardingChannel(downstream, metadata_defaults=defaults)
    defaults["edge"] = "changed later"
    forwarder.send_nowait(impl.ChannelMessage(1))
    forwarder.send_nowait(impl.ChannelMessage(2))
    first, second = downstream.receive_nowait(), downstream.receive_nowait()
    assert first.metadata == {"edge": "a->b"}
    first.metadata["mutated"] = True
    assert second.metadata == {"edge": "a->b"}
    assert forwarder.metadata_defaults == {"edge": "a->b"}


@pytest.mark.parametrize("defaults", [None, {}])
async def test_without_defaults_the_message_passes_unchanged(impl, defaults):
    downstream = impl.InMemoryChannel()
    forwarder = impl.ForwardingChannel(downstream, metadata_defaults=defaults)
    message = impl.ChannelMessage(1, {"k": "v"})
    await forwarder.send(message)
    assert await downstream.receive() is message


async def test_observers_see_the_enriched_message_on_send_and_receive(impl):
    seen = []
    downstream = impl.InMemoryChannel()
    forwarder = impl.ForwardingChannel(
        downstream,
        name="edge",
        metadata_defaults={"edge": "a->b"},
        observers=[lambda m, c, p: seen.append((c.name, p, dict(m.metadata)))],
    )
    await forwarder.send(impl.ChannelMessage(1, {"trace_id": "t"}))
    await forwarder.receive()
    forwarder.send_nowait(impl.ChannelMessage(2))
    forwarder.receive_nowait()
    enriched = {"edge": "a->b", "trace_id": "t"}
    assert seen[:2] == [("edge", "send", enriched), ("edge", "receive", enriched)]
    assert [phase for _, phase, _ in seen[2:]] == ["send", "receive"]


async def test_failed_send_nowait_reports_nothing(impl):
    seen = []
    downstream = impl.InMemoryChannel(maxsize=1)
    forwarder = impl.ForwardingChannel(
        downstream, metadata_defaults={"a": 1}, observers=[lambda m, c, p: seen.append(p)]
    )
    forwarder.send_nowait(impl.ChannelMessage(1))
    with pytest.raises(asyncio.QueueFull):
        forwarder.send_nowait(impl.ChannelMessage(2))
    assert seen == ["send"]
    assert downstream.qsize() == 1


async def test_send_waits_on_a_full_downstream(impl):
    downstream = impl.InMemoryChannel(maxsize=1)
    forwarder = impl.ForwardingChannel(downstream)
    await forwarder.send(impl.ChannelMessage(1))
    sender = asyncio.ensure_future(forwarder.send(impl.ChannelMessage(2)))
    await asyncio.sleep(0)
    assert not sender.done() and forwarder.full()
    assert (await forwarder.receive()).payload == 1
    await sender
    assert (await downstream.receive()).payload == 2


async def test_queries_and_receiving_delegate_to_downstream(impl):
    downstream = impl.InMemoryChannel(maxsize=5)
    forwarder = impl.ForwardingChannel(downstream)
    assert forwarder.empty() and forwarder.maxsize == 5 and forwarder.qsize() == 0
    downstream.send_nowait(impl.ChannelMessage("direct"))
    assert not forwarder.empty() and forwarder.qsize() == 1
    assert forwarder.stats() == downstream.stats()
    assert [m.payload for m in await forwarder.receive_many(3)] == ["direct"]
    assert forwarder.downstream is downstream


async def test_closing_the_forwarder_leaves_downstream_open(impl):
    downstream = impl.InMemoryChannel()
    forwarder = impl.ForwardingChannel(downstream, name="edge-1")
    forwarder.send_nowait(impl.ChannelMessage("before"))
    forwarder.close()
    forwarder.close()
    assert forwarder.closed and not downstream.closed
    with pytest.raises(ChannelClosed, match="edge-1"):
        await forwarder.send(impl.ChannelMessage("after"))
    with pytest.raises(ChannelClosed):
        forwarder.send_nowait(impl.ChannelMessage("after"))
    await downstream.send(impl.ChannelMessage("other edge"))
    assert [(await forwarder.receive()).payload for _ in range(2)] == ["before", "other edge"]


async def test_a_closed_downstream_refuses_sends_through_the_forwarder(impl):
    downstream = impl.InMemoryChannel()
    forwarder = impl.ForwardingChannel(downstream)
    downstream.close()
    with pytest.raises(ChannelClosed):
        await forwarder.send(impl.ChannelMessage(1))
    with pytest.raises(ChannelClosed):
        await forwarder.receive()


async def test_forwarders_chain(impl):
    sink = impl.InMemoryChannel()
    inner = impl.ForwardingChannel(sink, metadata_defaults={"hop": "inner", "inner": True})
    outer = impl.ForwardingChannel(inner, metadata_defaults={"hop": "outer", "outer": True})
    await outer.send(impl.ChannelMessage(1))
    assert (await sink.receive()).metadata == {"hop": "outer", "outer": True, "inner": True}


def test_default_name_and_bad_arguments(impl):
    downstream = impl.InMemoryChannel(name="mailbox")
    assert impl.ForwardingChannel(downstream).name == "forward:mailbox"
    with pytest.raises(TypeError, match="downstream must be a channel"):
        impl.ForwardingChannel(object())
    with pytest.raises(TypeError, match="metadata_defaults must be a mapping"):
        impl.ForwardingChannel(downstream, metadata_defaults=[("a", 1)])
    with pytest.raises(TypeError, match="ChannelMessage"):
        impl.ForwardingChannel(downstream).send_nowait("raw")


async def test_forwards_into_a_custom_channel_without_send_nowait(impl):
    from spark.nodes.channels import BaseChannel

    class ListChannel(BaseChannel):
        def __init__(self):
            super().__init__(name="list")
            self.items = []

        async def send(self, message):
            self.items.append(message)

        async def receive(self):
            return self.items.pop(0)

        def empty(self):
            return not self.items

    custom = ListChannel()
    forwarder = impl.ForwardingChannel(custom, metadata_defaults={"a": 1})
    await forwarder.send(impl.ChannelMessage(1))
    assert custom.items[0].metadata == {"a": 1}
    with pytest.raises(NotImplementedError, match="send_nowait"):
        forwarder.send_nowait(impl.ChannelMessage(2))


@pytest.mark.parametrize("observed", [False, True])
async def test_async_for_over_a_forwarder_drains_downstream_then_stops(impl, observed):
    seen = []
    downstream = impl.InMemoryChannel()
    observers = [lambda message, channel, phase: seen.append((message.payload, phase))]
    forwarder = impl.ForwardingChannel(downstream, observers=observers if observed else None)
    for n in range(3):
        await forwarder.send(impl.ChannelMessage(n))
    downstream.close()
    assert [message.payload async for message in forwarder] == [0, 1, 2]
    if observed:
        assert seen == [(n, "send") for n in range(3)] + [(n, "receive") for n in range(3)]
    with pytest.raises(StopAsyncIteration):
        await forwarder.__anext__()


async def test_an_observer_added_while_a_send_through_the_forwarder_waits_sees_that_send(impl):
    downstream = impl.InMemoryChannel(maxsize=1)
    forwarder = impl.ForwardingChannel(downstream, name="edge", metadata_defaults={"edge": 1})
    seen = []
    await forwarder.send(impl.ChannelMessage("a"))
    blocked = asyncio.ensure_future(forwarder.send(impl.ChannelMessage("b")))
    await asyncio.sleep(0)
    forwarder.add_observer(lambda message, channel, phase: seen.append((phase, message.payload)))
    await downstream.receive()
    await blocked
    assert seen == [("send", "b")]


@pytest.mark.parametrize("how", ["receive", "async for"])
async def test_an_observer_added_while_a_receive_through_the_forwarder_waits_sees_it(impl, how):
    downstream = impl.InMemoryChannel()
    forwarder = impl.ForwardingChannel(downstream, name="edge")
    seen = []

    async def take():
        if how == "receive":
            return await forwarder.receive()
        async for message in forwarder:
            return message

    taker = asyncio.ensure_future(take())
    await asyncio.sleep(0)
    forwarder.add_observer(lambda message, channel, phase: seen.append((phase, message.payload)))
    await downstream.send(impl.ChannelMessage(3))
    assert (await taker).payload == 3
    assert seen == [("receive", 3)]


async def test_observers_are_read_when_their_turn_comes(impl):
    # A forwarder observer added by a downstream observer hears the same send;
    # an observer removing itself during receive_many hears only its first message.
    seen = []
    downstream = impl.InMemoryChannel(name="down")
    forwarder = impl.ForwardingChannel(downstream, name="fwd")

    async def adds(message, channel, phase):
        await asyncio.sleep(0)
        seen.append((channel.name, phase, message.payload))
        if phase == "send" and not forwarder.observers:
            forwarder.add_observer(lambda m, c, p: seen.append((c.name, p, m.payload)))

    downstream.add_observer(adds)
    await forwarder.send(impl.ChannelMessage("x"))
    assert seen == [("down", "send", "x"), ("fwd", "send", "x")]

    channel = impl.InMemoryChannel(name="c")
    for n in range(3):
        channel.send_nowait(impl.ChannelMessage(n))
    heard = []

    async def once(message, channel_, phase):
        await asyncio.sleep(0)
        heard.append(message.payload)
        channel_.remove_observer(once)

    channel.add_observer(once)
    assert [m.payload for m in await channel.receive_many(3)] == [0, 1, 2]
    assert heard == [0]


async def test_a_forwarder_send_checks_room_after_reading_the_metadata(impl):
    # Reading the message's metadata (a user mapping) may fill the downstream:
    # the send then waits, as it would if the downstream had been full before.
    downstream = impl.InMemoryChannel(maxsize=1)
    forwarder = impl.ForwardingChannel(downstream, metadata_defaults={"edge": "e"})

    class Filling(Mapping):
        def __init__(self):
            self.filled = False

        def __getitem__(self, key):
            return 1

        def __len__(self):
            return 1

        def __iter__(self):
            if not self.filled:
                self.filled = True
                downstream.send_nowait(impl.ChannelMessage("filler"))
            return iter(["k"])

    sending = asyncio.ensure_future(forwarder.send(impl.ChannelMessage("mine", Filling())))
    await asyncio.sleep(0)
    assert not sending.done() and downstream.qsize() == 1
    assert (await downstream.receive()).payload == "filler"
    await sending
    assert (await downstream.receive()).payload == "mine"
