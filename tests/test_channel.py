"""InMemoryChannel: sending, receiving, bounds, sizes and bad input."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from conftest import settle


async def test_send_then_receive_in_order(impl):
    channel = impl.InMemoryChannel(name="my-channel")
    sent = [impl.ChannelMessage(i) for i in range(5)]
    for message in sent:
        await channel.send(message)
    received = [await channel.receive() for _ in sent]
    assert received == sent
    assert all(a is b for a, b in zip(received, sent, strict=True))


async def test_receive_waits_for_a_message(impl):
    channel = impl.InMemoryChannel()
    receiver = asyncio.ensure_future(channel.receive())
    await settle()
    assert not receiver.done()
    message = impl.ChannelMessage("late")
    await channel.send(message)
    assert await receiver is message


def test_nowait_methods_work_from_synchronous_code(impl):
    channel = impl.InMemoryChannel(maxsize=2)
    channel.send_nowait(impl.ChannelMessage(1))
    channel.send_nowait(impl.ChannelMessage(2))
    with pytest.raises(asyncio.QueueFull):
        channel.send_nowait(impl.ChannelMessage(3))
    assert channel.receive_nowait().payload == 1
    assert channel.receive_nowait().payload == 2
    with pytest.raises(asyncio.QueueEmpty):
        channel.receive_nowait()


def test_send_nowait_creates_no_task(impl, monkeypatch):
    def no_tasks(*args, **kwargs):
        raise AssertionError("send_nowait must not create a task")

    monkeypatch.setattr(asyncio, "ensure_future", no_tasks)
    monkeypatch.setattr(asyncio, "create_task", no_tasks)

    async def scenario():
        channel = impl.InMemoryChannel(observers=[lambda m, c, p: None])
        for i in range(100):
            channel.send_nowait(impl.ChannelMessage(i))
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return [channel.receive_nowait().payload for _ in range(100)]

    assert asyncio.run(scenario()) == list(range(100))


async def test_bounded_send_waits_until_room(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    await channel.send(impl.ChannelMessage(1))
    sender = asyncio.ensure_future(channel.send(impl.ChannelMessage(2)))
    await settle()
    assert not sender.done()
    assert channel.full()
    assert (await channel.receive()).payload == 1
    await sender
    assert (await channel.receive()).payload == 2


async def test_blocked_senders_are_served_first_come_first_served(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    await channel.send(impl.ChannelMessage("first"))
    senders = []
    for name in ["a", "b", "c"]:
        senders.append(asyncio.ensure_future(channel.send(impl.ChannelMessage(name))))
        await settle()
    order = [(await channel.receive()).payload for _ in range(4)]
    await asyncio.gather(*senders)
    assert order == ["first", "a", "b", "c"]


async def test_a_newcomer_cannot_overtake_a_woken_sender(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    await channel.send(impl.ChannelMessage("first"))
    blocked = asyncio.ensure_future(channel.send(impl.ChannelMessage("blocked")))
    await settle()
    channel.receive_nowait()  # frees the slot and promises it to the blocked sender
    with pytest.raises(asyncio.QueueFull):
        channel.send_nowait(impl.ChannelMessage("newcomer"))
    await blocked
    assert channel.receive_nowait().payload == "blocked"


async def test_blocked_receivers_are_served_first_come_first_served(impl):
    channel = impl.InMemoryChannel()
    receivers = []
    for _ in range(3):
        receivers.append(asyncio.ensure_future(channel.receive()))
        await settle()
    for i in range(3):
        channel.send_nowait(impl.ChannelMessage(i))
    # A receiver arriving now finds every message promised to the earlier ones.
    with pytest.raises(asyncio.QueueEmpty):
        channel.receive_nowait()
    assert channel.empty()
    assert [(await r).payload for r in receivers] == [0, 1, 2]


async def test_a_message_promised_to_a_blocked_receiver_takes_no_room(impl):
    # The receiver has it in all but name, so the sender need not wait for it.
    channel = impl.InMemoryChannel(maxsize=1)
    receiver = asyncio.ensure_future(channel.receive())
    await settle()
    promised, queued = impl.ChannelMessage("promised"), impl.ChannelMessage("queued")
    channel.send_nowait(promised)
    assert channel.qsize() == 0 and channel.empty() and not channel.full()
    channel.send_nowait(queued)
    assert channel.full() and channel.qsize() == 1
    with pytest.raises(asyncio.QueueFull):
        channel.send_nowait(impl.ChannelMessage("refused"))
    assert await receiver is promised
    assert channel.receive_nowait() is queued
    stats = channel.stats()
    assert (stats.sent, stats.received, stats.peak_size) == (2, 2, 1)


async def test_a_woken_sender_whose_message_is_promised_passes_its_room_on(impl):
    # The sender promised the only slot sends to a blocked receiver: the
    # message takes no room, so the next blocked sender gets the slot.
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage(0))
    senders = []
    for i in (1, 2):
        senders.append(asyncio.ensure_future(channel.send(impl.ChannelMessage(i))))
        await settle()
    assert channel.receive_nowait().payload == 0  # promises the slot to the first sender
    receiver = asyncio.ensure_future(channel.receive())
    await settle()
    assert (await receiver).payload == 1
    assert all(sender.done() for sender in senders)
    assert channel.receive_nowait().payload == 2


async def test_a_newcomer_takes_a_queued_message_behind_promised_ones(impl):
    # One message is promised to a woken receiver, one is queued: a receive
    # arriving now need not wait, and messages still leave in order.
    channel = impl.InMemoryChannel()
    first = asyncio.ensure_future(channel.receive())
    await settle()
    channel.send_nowait(impl.ChannelMessage(1))
    channel.send_nowait(impl.ChannelMessage(2))
    newcomer = asyncio.ensure_future(channel.receive())
    got = [(await first).payload, (await newcomer).payload]
    assert sorted(got) == [1, 2]
    assert channel.empty()


async def test_peak_size_counts_what_a_woken_receive_many_drains(impl):
    channel = impl.InMemoryChannel()
    batch = asyncio.ensure_future(channel.receive_many(10))
    await settle()
    for i in range(5):
        channel.send_nowait(impl.ChannelMessage(i))
    assert channel.qsize() == 4  # one is promised to the receive_many
    assert [m.payload for m in await batch] == [0, 1, 2, 3, 4]
    assert channel.stats().peak_size == 4 and channel.stats().size == 0


async def test_receive_many_waits_for_one_and_returns_up_to_max(impl):
    channel = impl.InMemoryChannel()
    batch_task = asyncio.ensure_future(channel.receive_many(3))
    await settle()
    assert not batch_task.done()
    for i in range(5):
        channel.send_nowait(impl.ChannelMessage(i))
    assert [m.payload for m in await batch_task] == [0, 1, 2]
    assert [m.payload for m in await channel.receive_many(10)] == [3, 4]


async def test_receive_many_frees_room_for_blocked_senders(impl):
    channel = impl.InMemoryChannel(maxsize=2)
    senders = [asyncio.ensure_future(channel.send(impl.ChannelMessage(i))) for i in range(5)]
    await settle()
    received = []
    while len(received) < 5:
        received += [m.payload for m in await channel.receive_many(2)]
    await asyncio.gather(*senders)
    assert received == [0, 1, 2, 3, 4]


async def test_receive_many_rejects_bad_sizes(impl):
    channel = impl.InMemoryChannel()
    with pytest.raises(ValueError, match="at least 1"):
        await channel.receive_many(0)
    with pytest.raises(TypeError):
        await channel.receive_many("3")


async def test_send_many_keeps_order_and_waits_for_room(impl):
    channel = impl.InMemoryChannel(maxsize=2)
    messages = [impl.ChannelMessage(i) for i in range(6)]
    sender = asyncio.ensure_future(channel.send_many(messages))
    received = [await channel.receive() for _ in range(6)]
    await sender
    assert received == messages


async def test_async_for_ends_when_closed_and_drained(impl):
    channel = impl.InMemoryChannel()
    for i in range(3):
        channel.send_nowait(impl.ChannelMessage(i))
    channel.close()
    assert [message.payload async for message in channel] == [0, 1, 2]


async def test_async_for_waits_for_close(impl):
    channel = impl.InMemoryChannel()

    async def consume():
        return [message.payload async for message in channel]

    consumer = asyncio.ensure_future(consume())
    await channel.send(impl.ChannelMessage("a"))
    await settle()
    assert not consumer.done()
    await channel.send(impl.ChannelMessage("b"))
    channel.close()
    assert await consumer == ["a", "b"]


def test_sizes_and_stats(impl):
    channel = impl.InMemoryChannel(name="stats", maxsize=3)
    assert channel.maxsize == 3
    assert channel.empty() and not channel.full() and channel.qsize() == 0
    for i in range(3):
        channel.send_nowait(impl.ChannelMessage(i))
    assert channel.full() and not channel.empty() and channel.qsize() == 3
    channel.receive_nowait()
    stats = channel.stats()
    assert (stats.sent, stats.received, stats.size, stats.peak_size, stats.maxsize) == (
        3,
        1,
        2,
        3,
        3,
    )
    assert (stats.senders_waiting, stats.receivers_waiting, stats.closed) == (0, 0, False)
    channel.close()
    assert channel.stats().closed and channel.closed


async def test_stats_count_waiting_tasks(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    receivers = [asyncio.ensure_future(channel.receive()) for _ in range(2)]
    await settle()
    assert channel.stats().receivers_waiting == 2
    channel.close()
    await asyncio.gather(*receivers, return_exceptions=True)
    full = impl.InMemoryChannel(maxsize=1)
    full.send_nowait(impl.ChannelMessage(0))
    senders = [asyncio.ensure_future(full.send(impl.ChannelMessage(i))) for i in range(3)]
    await settle()
    assert full.stats().senders_waiting == 3
    full.close()
    await asyncio.gather(*senders, return_exceptions=True)


def test_unbounded_channel_is_never_full(impl):
    channel = impl.InMemoryChannel()
    for i in range(10_000):
        channel.send_nowait(impl.ChannelMessage(i))
    assert not channel.full() and channel.maxsize == 0 and channel.qsize() == 10_000
    assert [channel.receive_nowait().payload for _ in range(10_000)] == list(range(10_000))


def test_names(impl):
    assert impl.InMemoryChannel(name="worker").name == "worker"
    first, second = impl.InMemoryChannel(), impl.InMemoryChannel()
    assert first.name != second.name and first.name.startswith("channel-")
    assert "worker" in repr(impl.InMemoryChannel(name="worker"))


def test_is_a_base_channel(impl):
    from spark.nodes.channels import BaseChannel

    assert isinstance(impl.InMemoryChannel(), BaseChannel)
    assert isinstance(impl.ForwardingChannel(impl.InMemoryChannel()), BaseChannel)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"maxsize": -1}, ValueError, "maxsize must be >= 0"),
        ({"maxsize": 1.5}, TypeError, "maxsize must be an int"),
        ({"maxsize": True}, TypeError, "maxsize must be an int"),
        ({"name": 3}, TypeError, "name must be a str"),
        ({"observers": [42]}, TypeError, "must be callable"),
        ({"observers": print}, TypeError, "iterable of callables"),
    ],
)
def test_bad_arguments_are_refused_clearly(impl, kwargs, error, text):
    with pytest.raises(error, match=text):
        impl.InMemoryChannel(**kwargs)


async def test_sending_a_raw_payload_is_refused_clearly(impl):
    channel = impl.InMemoryChannel()
    with pytest.raises(TypeError, match="ChannelMessage"):
        await channel.send({"data": 1})
    with pytest.raises(TypeError, match="ChannelMessage"):
        channel.send_nowait("text")
    assert channel.qsize() == 0


async def test_channels_accept_messages_of_either_build(impl):
    from spark.nodes import _channels_py

    channel = impl.InMemoryChannel()
    foreign = _channels_py.ChannelMessage("pure")
    await channel.send(foreign)
    assert await channel.receive() is foreign


class Payload:
    """A payload a weak reference can watch."""


@pytest.mark.parametrize("take", ["receive", "anext", "receive_many"])
async def test_the_channel_keeps_no_received_message_alive(impl, take):
    # The compiled core on CPython 3.12+ hands a result over in a reused
    # StopIteration; it must let go of it by the next operation at the latest.
    channel = impl.InMemoryChannel()
    payload = Payload()
    watch = weakref.ref(payload)
    channel.send_nowait(impl.ChannelMessage(payload))
    if take == "receive":
        received = await channel.receive()
    elif take == "anext":
        received = await channel.__anext__()
    else:
        [received] = await channel.receive_many(4)
    assert received.payload is payload
    del received, payload
    next_receive = channel.receive()  # made, never awaited: changes nothing
    gc.collect()
    assert watch() is None
    next_receive.close()
    assert channel.qsize() == 0


async def test_a_finalizer_run_while_a_result_is_handed_over_changes_nothing(impl):
    # Handing a result over (compiled, CPython 3.12+) lets go of the one
    # handed over before; that can run a finalizer, which may make operations.
    other = impl.InMemoryChannel()
    channel = impl.InMemoryChannel()

    class MakesAnOperation:
        def __del__(self):
            other.receive().close()

    observed = impl.InMemoryChannel()

    async def observer(message, channel_, phase):
        await observed.receive()  # delivers a result inside the receive below

    observed.send_nowait(impl.ChannelMessage(MakesAnOperation()))
    channel.send_nowait(impl.ChannelMessage("kept"))
    channel.add_observer(observer)
    assert (await channel.receive()).payload == "kept"
