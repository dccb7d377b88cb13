"""BroadcastChannel: every message to every subscriber, on both builds and both loops."""

from __future__ import annotations

import asyncio
import copy
import pickle
import random
from typing import Any

import pytest
from conftest import drain_payloads, settle

from spark.nodes.channels import BaseChannel, ChannelClosed


async def test_every_subscriber_gets_every_later_message_in_order(impl):
    broadcast = impl.BroadcastChannel("news")
    first = broadcast.subscribe()
    await broadcast.send(impl.ChannelMessage(1))
    second = broadcast.subscribe("late")
    for n in (2, 3):
        await broadcast.send(impl.ChannelMessage(n))
    broadcast.send_nowait(impl.ChannelMessage(4))
    assert isinstance(first, BaseChannel) and isinstance(first, impl.BroadcastSubscription)
    assert second.name == "late" and first.name.startswith("news:")
    assert broadcast.subscribers == (first, second)
    assert [m.payload for m in await first.receive_many(10)] == [1, 2, 3, 4]
    assert (await second.receive()).payload == 2
    assert second.qsize() == 2 and not second.empty()
    assert drain_payloads(second) == [3, 4]
    assert broadcast.stats().sent == 4


async def test_a_message_without_subscribers_reaches_nobody(impl):
    broadcast = impl.BroadcastChannel()
    await broadcast.send(impl.ChannelMessage("lost"))
    subscriber = broadcast.subscribe()
    assert subscriber.empty()
    assert broadcast.stats().sent == 1 and broadcast.stats().received == 0


async def test_blocked_receivers_of_each_subscription_wake(impl):
    broadcast = impl.BroadcastChannel()
    subscribers = [broadcast.subscribe() for _ in range(3)]
    waiting = [asyncio.ensure_future(s.receive()) for s in subscribers]
    await settle()
    await broadcast.send(impl.ChannelMessage("hi"))
    assert [(await w).payload for w in waiting] == ["hi"] * 3


async def test_block_waits_for_the_slowest_subscriber(impl):
    broadcast = impl.BroadcastChannel(maxsize=2)
    fast, slow = broadcast.subscribe(), broadcast.subscribe()
    for n in range(2):
        await broadcast.send(impl.ChannelMessage(n))
    assert broadcast.full()
    sending = asyncio.ensure_future(broadcast.send(impl.ChannelMessage(2)))
    await settle()
    assert drain_payloads(fast) == [0, 1]
    await settle()
    assert not sending.done()  # slow still has two waiting
    assert broadcast.stats().senders_waiting == 1
    assert (await slow.receive()).payload == 0
    await asyncio.wait_for(sending, 1)
    assert drain_payloads(fast) == [2] and drain_payloads(slow) == [1, 2]


async def test_block_send_nowait_raises_queue_full_and_delivers_to_nobody(impl):
    broadcast = impl.BroadcastChannel(maxsize=1)
    fast, slow = broadcast.subscribe(), broadcast.subscribe()
    broadcast.send_nowait(impl.ChannelMessage(0))
    fast.receive_nowait()
    with pytest.raises(asyncio.QueueFull):
        broadcast.send_nowait(impl.ChannelMessage(1))
    assert fast.empty() and drain_payloads(slow) == [0]


async def test_a_cancelled_blocked_send_delivered_to_nobody(impl):
    broadcast = impl.BroadcastChannel(maxsize=1)
    fast, slow = broadcast.subscribe(), broadcast.subscribe()
    await broadcast.send(impl.ChannelMessage(0))
    fast.receive_nowait()
    sending = asyncio.ensure_future(broadcast.send(impl.ChannelMessage(1)))
    await settle()
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert fast.empty() and drain_payloads(slow) == [0]
    await broadcast.send(impl.ChannelMessage(2))
    assert drain_payloads(fast) == [2] and drain_payloads(slow) == [2]


async def test_blocked_senders_keep_their_order(impl):
    broadcast = impl.BroadcastChannel(maxsize=1)
    first, second = broadcast.subscribe(), broadcast.subscribe()
    await broadcast.send(impl.ChannelMessage(0))
    senders = [asyncio.ensure_future(broadcast.send(impl.ChannelMessage(n))) for n in (1, 2, 3)]
    got: dict[str, list[Any]] = {"first": [], "second": []}

    async def drain(subscription: Any, key: str) -> None:
        for _ in range(4):
            got[key].append((await subscription.receive()).payload)
            await asyncio.sleep(0)

    await asyncio.gather(drain(first, "first"), drain(second, "second"), *senders)
    assert got["first"] == got["second"] == [0, 1, 2, 3]


async def test_drop_oldest_never_waits_and_counts_what_a_laggard_lost(impl):
    broadcast = impl.BroadcastChannel(maxsize=2, on_full="drop_oldest")
    assert broadcast.on_full == "drop_oldest"
    fast, slow = broadcast.subscribe(), broadcast.subscribe()
    for n in range(5):
        await broadcast.send(impl.ChannelMessage(n))
        assert (await fast.receive()).payload == n
    broadcast.send_nowait(impl.ChannelMessage(5))
    assert not broadcast.full()
    assert drain_payloads(slow) == [4, 5]
    stats = slow.stats()
    assert stats.dropped == 4 and stats.received == 2 and stats.sent == 6
    assert fast.stats().dropped == 0 and broadcast.stats().dropped == 4


async def test_drop_oldest_spares_a_message_promised_to_a_woken_receiver(impl):
    broadcast = impl.BroadcastChannel(maxsize=1, on_full="drop_oldest")
    subscriber = broadcast.subscribe()
    receiving = asyncio.ensure_future(subscriber.receive())
    await settle()
    broadcast.send_nowait(impl.ChannelMessage("promised"))  # the receiver has not run yet
    broadcast.send_nowait(impl.ChannelMessage("dropped"))
    broadcast.send_nowait(impl.ChannelMessage("kept"))
    assert (await receiving).payload == "promised"
    assert drain_payloads(subscriber) == ["kept"]
    assert subscriber.stats().dropped == 1


async def test_close_lets_subscribers_drain_then_raises(impl):
    broadcast = impl.BroadcastChannel(maxsize=1)
    ready, idle = broadcast.subscribe(), broadcast.subscribe()
    await broadcast.send(impl.ChannelMessage("last"))
    idle.receive_nowait()
    waiting = asyncio.ensure_future(idle.receive())
    blocked = asyncio.ensure_future(broadcast.send(impl.ChannelMessage("never")))
    await settle()
    broadcast.close()
    with pytest.raises(ChannelClosed):
        await waiting
    with pytest.raises(ChannelClosed, match="broadcast"):
        await blocked
    assert [m.payload async for m in ready] == ["last"]
    with pytest.raises(ChannelClosed):
        await broadcast.send(impl.ChannelMessage(1))
    with pytest.raises(ChannelClosed):
        broadcast.subscribe()
    assert broadcast.closed and broadcast.stats().closed and broadcast.subscribers == ()


async def test_closing_a_subscription_unsubscribes_it(impl):
    broadcast = impl.BroadcastChannel(maxsize=1)
    staying, leaving = broadcast.subscribe(), broadcast.subscribe()
    await broadcast.send(impl.ChannelMessage(0))
    staying.receive_nowait()
    blocked = asyncio.ensure_future(broadcast.send(impl.ChannelMessage(1)))  # leaving is full
    await settle()
    leaving.close()
    await asyncio.wait_for(blocked, 1)
    assert leaving.broadcast is None and broadcast.subscribers == (staying,)
    assert drain_payloads(leaving) == [0]
    with pytest.raises(ChannelClosed):
        leaving.receive_nowait()
    assert drain_payloads(staying) == [1]


async def test_observers_see_sends_here_and_receives_on_subscriptions(impl):
    seen: list[tuple[Any, str, Any]] = []

    async def observe(message: Any, channel: Any, phase: str) -> None:
        seen.append((channel, phase, message.payload))

    broadcast = impl.BroadcastChannel(observers=[observe])
    first = broadcast.subscribe()
    second = broadcast.subscribe()
    late: list[Any] = []
    broadcast.add_observer(lambda message, channel, phase: late.append(phase))
    await broadcast.send(impl.ChannelMessage(1))
    await first.receive()
    await second.receive()
    assert seen == [(broadcast, "send", 1), (first, "receive", 1), (second, "receive", 1)]
    assert late == ["send", "receive", "receive"]


async def test_a_cancelled_receive_on_a_subscription_takes_nothing(impl):
    broadcast = impl.BroadcastChannel()
    subscriber = broadcast.subscribe()
    receiving = asyncio.ensure_future(subscriber.receive())
    await settle()
    broadcast.send_nowait(impl.ChannelMessage("x"))
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving
    assert drain_payloads(subscriber) == ["x"]


async def test_subscriptions_work_with_select(impl):
    news, alerts = impl.BroadcastChannel("news"), impl.BroadcastChannel("alerts")
    subscriptions = news.subscribe(), alerts.subscribe()
    task = asyncio.ensure_future(impl.select(*subscriptions))
    await settle()
    await alerts.send(impl.ChannelMessage("fire"))
    channel, message = await task
    assert channel is subscriptions[1] and message.payload == "fire"


async def test_wrong_direction_and_bad_arguments_are_refused(impl):
    broadcast = impl.BroadcastChannel()
    subscriber = broadcast.subscribe()
    with pytest.raises(NotImplementedError, match="subscribe"):
        await broadcast.receive()
    with pytest.raises(NotImplementedError, match="subscribe"):
        broadcast.receive_nowait()
    with pytest.raises(NotImplementedError, match="receive side"):
        await subscriber.send(impl.ChannelMessage(1))
    with pytest.raises(NotImplementedError, match="receive side"):
        subscriber.send_nowait(impl.ChannelMessage(1))
    with pytest.raises(TypeError, match="ChannelMessage"):
        await broadcast.send("bare")
    with pytest.raises(ValueError, match="on_full"):
        impl.BroadcastChannel(on_full="drop_newest")
    with pytest.raises(ValueError, match="maxsize"):
        impl.BroadcastChannel(maxsize=-1)
    for thing in (broadcast, subscriber):
        with pytest.raises(TypeError, match="cannot be copied"):
            copy.deepcopy(thing)
        with pytest.raises(TypeError, match="cannot be copied"):
            pickle.dumps(thing)


@pytest.mark.parametrize("on_full", ["block", "drop_oldest"])
async def test_many_producers_and_subscribers_agree_on_one_order(impl, on_full):
    broadcast = impl.BroadcastChannel(maxsize=8, on_full=on_full)
    subscribers = [broadcast.subscribe() for _ in range(3)]
    per_producer = 300

    async def produce(p: int) -> None:
        for n in range(per_producer):
            await broadcast.send(impl.ChannelMessage((p, n)))
            if random.random() < 0.2:
                await asyncio.sleep(0)

    async def consume(subscription: Any) -> list[Any]:
        got = []
        async for message in subscription:
            got.append(message.payload)
            if random.random() < 0.5:
                await asyncio.sleep(0)
        return got

    consumers = [asyncio.ensure_future(consume(s)) for s in subscribers]
    await asyncio.gather(*(produce(p) for p in range(4)))
    broadcast.close()
    results = await asyncio.gather(*consumers)
    for got, subscription in zip(results, subscribers, strict=True):
        for p in range(4):  # each producer's messages in its order
            seq = [n for q, n in got if q == p]
            assert seq == sorted(seq)
        assert len(got) + subscription.stats().dropped == 4 * per_producer
    if on_full == "block":
        assert results[0] == results[1] == results[2]
        assert sorted(results[0]) == [(p, n) for p in range(4) for n in range(per_producer)]


async def test_cancelled_sends_reach_nobody_and_completed_ones_everybody(impl):
    broadcast = impl.BroadcastChannel(maxsize=2)
    subscribers = [broadcast.subscribe() for _ in range(3)]
    completed: list[int] = []

    async def send(n: int) -> None:
        await broadcast.send(impl.ChannelMessage(n))
        completed.append(n)

    async def consume(subscription: Any) -> list[int]:
        got = []
        async for message in subscription:
            got.append(message.payload)
            for _ in range(random.randrange(3)):
                await asyncio.sleep(0)
        return got

    consumers = [asyncio.ensure_future(consume(s)) for s in subscribers]
    for n in range(300):
        sending = asyncio.ensure_future(send(n))
        for _ in range(random.randrange(3)):
            await asyncio.sleep(0)
        sending.cancel()
        try:
            await sending
        except asyncio.CancelledError:
            pass
    broadcast.close()
    results = await asyncio.gather(*consumers)
    assert completed, "no send completed: the test proves nothing"
    assert len(completed) < 300, "no send was cancelled: the test proves nothing"
    for got in results:
        assert got == completed


async def test_close_stops_a_blocked_send_whose_turn_came(impl):
    broadcast = impl.BroadcastChannel(maxsize=1)
    subscriber = broadcast.subscribe()
    await broadcast.send(impl.ChannelMessage(0))
    first = asyncio.ensure_future(broadcast.send(impl.ChannelMessage(1)))
    second = asyncio.ensure_future(broadcast.send(impl.ChannelMessage(2)))
    await settle()
    subscriber.receive_nowait()  # room: the first delivers and hands its turn to the second
    for _ in range(10):
        await asyncio.sleep(0)
        if first.done():
            break
    assert first.done() and not second.done()
    broadcast.close()
    with pytest.raises(ChannelClosed):
        await second
    assert broadcast.stats().sent == 2
    assert drain_payloads(subscriber) == [1]


async def test_senders_waiting_counts_every_blocked_send(impl):
    broadcast = impl.BroadcastChannel(maxsize=1)
    subscriber = broadcast.subscribe()
    await broadcast.send(impl.ChannelMessage(0))
    sends = [asyncio.ensure_future(broadcast.send(impl.ChannelMessage(n))) for n in (1, 2, 3)]
    await settle()
    assert broadcast.stats().senders_waiting == 3 and broadcast.full()
    subscriber.receive_nowait()
    await settle()
    assert broadcast.stats().senders_waiting == 2
    sends[2].cancel()
    await settle()
    assert broadcast.stats().senders_waiting == 1
    subscriber.receive_nowait()
    await settle()
    assert broadcast.stats().senders_waiting == 0 and sends[1].done()
    await asyncio.gather(*sends[:2])


async def test_drop_oldest_keeps_a_backlog_within_maxsize_after_promises_come_back(impl):
    broadcast = impl.BroadcastChannel(maxsize=1, on_full="drop_oldest")
    subscriber = broadcast.subscribe()
    receivers = [asyncio.ensure_future(subscriber.receive()) for _ in range(3)]
    await settle()
    for n in range(6):
        broadcast.send_nowait(impl.ChannelMessage(n))  # three promised, the rest dropped to one
    for receiver in receivers:
        receiver.cancel()  # the promised messages are queued again
    await asyncio.gather(*receivers, return_exceptions=True)
    broadcast.send_nowait(impl.ChannelMessage(6))
    assert subscriber.qsize() == 1
    assert drain_payloads(subscriber) == [6]
    stats = subscriber.stats()
    assert stats.sent == stats.received + stats.dropped
