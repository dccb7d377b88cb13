"""close() and cancellation: nobody hangs, nothing is lost or duplicated."""

from __future__ import annotations

import asyncio
import gc

import pytest
from conftest import settle

from spark.nodes.channels import ChannelClosed


async def test_close_is_idempotent_and_refuses_sends(impl):
    channel = impl.InMemoryChannel(name="worker-channel")
    channel.close()
    channel.close()
    assert channel.closed
    with pytest.raises(ChannelClosed, match="worker-channel"):
        await channel.send(impl.ChannelMessage({}))
    with pytest.raises(ChannelClosed):
        channel.send_nowait(impl.ChannelMessage({}))
    assert channel.stats().sent == 0


async def test_receivers_drain_in_order_then_get_closed(impl):
    channel = impl.InMemoryChannel()
    for i in range(3):
        await channel.send(impl.ChannelMessage(i))
    channel.close()
    assert [(await channel.receive()).payload for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ChannelClosed):
        await channel.receive()
    with pytest.raises(ChannelClosed):
        channel.receive_nowait()
    with pytest.raises(ChannelClosed):
        await channel.receive_many(5)


async def test_close_wakes_blocked_receivers_at_once(impl):
    channel = impl.InMemoryChannel()
    receivers = [asyncio.ensure_future(channel.receive()) for _ in range(3)]
    batch = asyncio.ensure_future(channel.receive_many(4))
    await settle()
    channel.close()
    results = await asyncio.wait_for(
        asyncio.gather(*receivers, batch, return_exceptions=True), timeout=5
    )
    assert all(isinstance(result, ChannelClosed) for result in results)


async def test_close_wakes_blocked_senders_without_enqueueing(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    await channel.send(impl.ChannelMessage("kept"))
    senders = [asyncio.ensure_future(channel.send(impl.ChannelMessage(i))) for i in range(3)]
    await settle()
    channel.close()
    results = await asyncio.wait_for(asyncio.gather(*senders, return_exceptions=True), 5)
    assert all(isinstance(result, ChannelClosed) for result in results)
    assert channel.qsize() == 1
    assert (await channel.receive()).payload == "kept"
    with pytest.raises(ChannelClosed):
        await channel.receive()


async def test_a_sender_woken_with_room_but_run_after_close_does_not_enqueue(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage("first"))
    sender = asyncio.ensure_future(channel.send(impl.ChannelMessage("late")))
    await settle()
    channel.receive_nowait()  # promises the slot to the sender...
    channel.close()  # ...which is closed before it runs
    with pytest.raises(ChannelClosed):
        await sender
    assert channel.qsize() == 0


async def test_cancelled_receive_takes_nothing(impl):
    channel = impl.InMemoryChannel()
    receiver = asyncio.ensure_future(channel.receive())
    await settle()
    receiver.cancel()
    await settle()
    assert receiver.cancelled()
    message = impl.ChannelMessage("kept")
    channel.send_nowait(message)
    assert channel.receive_nowait() is message
    assert channel.stats().receivers_waiting == 0


async def test_receive_cancelled_after_being_woken_leaves_the_message(impl):
    channel = impl.InMemoryChannel()
    first = asyncio.ensure_future(channel.receive())
    second = asyncio.ensure_future(channel.receive())
    await settle()
    message = impl.ChannelMessage("only")
    channel.send_nowait(message)  # promises the message to `first`
    first.cancel()  # before `first` runs
    assert await second is message
    with pytest.raises(asyncio.CancelledError):
        await first
    assert channel.stats().received == 1 and channel.qsize() == 0


async def test_woken_then_cancelled_receiver_with_nobody_behind_it(impl):
    channel = impl.InMemoryChannel()
    receiver = asyncio.ensure_future(channel.receive())
    await settle()
    channel.send_nowait(impl.ChannelMessage("kept"))
    receiver.cancel()
    await settle()
    assert receiver.cancelled()
    assert not channel.empty()
    assert channel.receive_nowait().payload == "kept"


async def test_a_message_promised_to_a_cancelled_receiver_stays_first_in_line(impl):
    # Promised, then its receiver is cancelled: the message is queued again,
    # still first, even past maxsize; no send may add to it meanwhile.
    channel = impl.InMemoryChannel(maxsize=1)
    receiver = asyncio.ensure_future(channel.receive())
    await settle()
    channel.send_nowait(impl.ChannelMessage("promised"))
    channel.send_nowait(impl.ChannelMessage("queued"))
    receiver.cancel()
    await settle()
    assert receiver.cancelled()
    assert channel.qsize() == 2 and channel.full()
    with pytest.raises(asyncio.QueueFull):
        channel.send_nowait(impl.ChannelMessage("refused"))
    assert [channel.receive_nowait().payload for _ in range(2)] == ["promised", "queued"]
    assert channel.stats().received == channel.stats().sent == 2
    assert channel.stats().peak_size == 2


async def test_cancelling_a_pool_of_blocked_receivers_keeps_the_order(impl):
    # What TaskGroup or gather(...).cancel() does to idle workers.
    channel = impl.InMemoryChannel(maxsize=10)
    workers = [asyncio.ensure_future(channel.receive()) for _ in range(3)]
    await settle()
    for i in range(5):
        await channel.send(impl.ChannelMessage(i))  # 0, 1, 2 promised; 3, 4 queued
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert [channel.receive_nowait().payload for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_one_receiver_never_sees_an_earlier_message_after_a_later_one(impl):
    channel = impl.InMemoryChannel()
    woken = asyncio.ensure_future(channel.receive())
    await settle()
    channel.send_nowait(impl.ChannelMessage(1))  # promised to `woken`
    channel.send_nowait(impl.ChannelMessage(2))
    seen = [channel.receive_nowait().payload]
    woken.cancel()
    with pytest.raises(asyncio.CancelledError):
        await woken
    seen.append(channel.receive_nowait().payload)
    assert seen == [1, 2]


async def test_a_receive_many_batch_stays_in_order_when_a_receiver_ahead_is_cancelled(impl):
    channel = impl.InMemoryChannel()
    ahead = asyncio.ensure_future(channel.receive())
    await settle()
    batch = asyncio.ensure_future(channel.receive_many(10))
    await settle()
    for i in (1, 2, 3):
        channel.send_nowait(impl.ChannelMessage(i))  # 1 and 2 promised, 3 queued
    ahead.cancel()
    assert [m.payload for m in await batch] == [1, 2, 3]
    with pytest.raises(asyncio.CancelledError):
        await ahead
    assert channel.stats().peak_size == 2


async def test_cancelled_blocked_send_does_not_enqueue(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage("first"))
    sender = asyncio.ensure_future(channel.send(impl.ChannelMessage("cancelled")))
    await settle()
    sender.cancel()
    await settle()
    assert channel.receive_nowait().payload == "first"
    with pytest.raises(asyncio.QueueEmpty):
        channel.receive_nowait()
    assert channel.stats().senders_waiting == 0


async def test_send_cancelled_after_being_woken_passes_the_room_on(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage("first"))
    woken = asyncio.ensure_future(channel.send(impl.ChannelMessage("cancelled")))
    await settle()
    behind = asyncio.ensure_future(channel.send(impl.ChannelMessage("behind")))
    await settle()
    channel.receive_nowait()  # promises the slot to `woken`
    woken.cancel()  # before it runs: the promise must go to `behind`
    await asyncio.wait_for(behind, 5)
    with pytest.raises(asyncio.CancelledError):
        await woken
    assert channel.receive_nowait().payload == "behind"
    assert channel.qsize() == 0


async def test_woken_then_cancelled_sender_frees_the_slot(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage("first"))
    sender = asyncio.ensure_future(channel.send(impl.ChannelMessage("cancelled")))
    await settle()
    channel.receive_nowait()
    sender.cancel()
    await settle()
    assert not channel.full()
    channel.send_nowait(impl.ChannelMessage("next"))
    assert channel.receive_nowait().payload == "next"


async def test_cancelled_receive_many_takes_nothing(impl):
    channel = impl.InMemoryChannel()
    batch = asyncio.ensure_future(channel.receive_many(3))
    await settle()
    channel.send_nowait(impl.ChannelMessage(1))
    batch.cancel()
    await settle()
    assert batch.cancelled()
    assert channel.receive_nowait().payload == 1


async def test_a_receive_started_by_hand_then_dropped_takes_nothing(impl):
    # Driven until it waits, then dropped without close(): like a coroutine
    # that is garbage, it withdraws; the messages go to the next receivers.
    channel = impl.InMemoryChannel()
    waiting = channel.receive().__await__()
    next(waiting)
    del waiting
    gc.collect()
    assert channel.stats().receivers_waiting == 0
    channel.send_nowait(impl.ChannelMessage("m1"))
    channel.send_nowait(impl.ChannelMessage("m2"))
    got = [(await asyncio.wait_for(channel.receive(), 5)).payload for _ in range(2)]
    assert got == ["m1", "m2"]


async def test_a_send_started_by_hand_then_dropped_takes_no_room(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage("in"))
    waiting = channel.send(impl.ChannelMessage("dropped")).__await__()
    next(waiting)
    del waiting
    gc.collect()
    assert channel.stats().senders_waiting == 0
    assert (await channel.receive()).payload == "in"
    channel.send_nowait(impl.ChannelMessage("next"))
    assert (await asyncio.wait_for(channel.receive(), 5)).payload == "next"
    assert channel.empty()
