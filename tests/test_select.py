"""select() and merge(): fan-in over channels, on both builds and both loops."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest
from conftest import drain_payloads, settle

from spark.nodes import channels
from spark.nodes.channels import BaseChannel, ChannelClosed


class QueueChannel(BaseChannel[Any]):
    """Another kind of channel: an asyncio.Queue behind the BaseChannel interface."""

    def __init__(self, name: str | None = None, nowait: bool = True) -> None:
        super().__init__(name)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.nowait = nowait

    async def send(self, message: Any) -> None:
        await self.queue.put(message)

    async def receive(self) -> Any:
        return await self.queue.get()

    def receive_nowait(self) -> Any:
        if not self.nowait:
            raise NotImplementedError
        return self.queue.get_nowait()


# -- select ------------------------------------------------------------------


async def test_select_returns_the_ready_channel_and_its_oldest_message(impl):
    a, b = impl.InMemoryChannel("a"), impl.InMemoryChannel("b")
    b.send_nowait(impl.ChannelMessage(1))
    b.send_nowait(impl.ChannelMessage(2))
    channel, message = await impl.select(a, b)
    assert channel is b and message.payload == 1
    assert b.qsize() == 1 and a.qsize() == 0


async def test_select_waits_then_takes_exactly_one_message(impl):
    a, b, c = (impl.InMemoryChannel(name) for name in "abc")
    task = asyncio.ensure_future(impl.select(a, b, c))
    await settle()
    assert not task.done()
    assert all(ch.stats().receivers_waiting == 1 for ch in (a, b, c))
    c.send_nowait(impl.ChannelMessage("c1"))
    a.send_nowait(impl.ChannelMessage("a1"))
    channel, message = await task
    assert (channel, message.payload) == (c, "c1")
    assert drain_payloads(a) == ["a1"] and drain_payloads(c) == []
    assert all(ch.stats().receivers_waiting == 0 for ch in (a, b, c))


async def test_select_is_fair_when_several_are_ready(impl):
    a, b, c = (impl.InMemoryChannel(name) for name in "abc")
    picked: Counter[str] = Counter()
    for _ in range(3000):
        for ch in (a, b, c):
            if ch.empty():
                ch.send_nowait(impl.ChannelMessage(None))
        channel, _ = await impl.select(a, b, c)
        picked[channel.name] += 1
    assert min(picked.values()) > 600, picked


async def test_cancelled_select_takes_nothing(impl):
    a, b = impl.InMemoryChannel("a"), impl.InMemoryChannel("b")
    task = asyncio.ensure_future(impl.select(a, b))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a.stats().receivers_waiting == 0 and b.stats().receivers_waiting == 0
    a.send_nowait(impl.ChannelMessage("kept"))
    assert drain_payloads(a) == ["kept"]


async def test_select_cancelled_after_a_promise_hands_the_message_on(impl):
    a, b = impl.InMemoryChannel("a"), impl.InMemoryChannel("b")
    selecting = asyncio.ensure_future(impl.select(a, b))
    await settle()
    receiving = asyncio.ensure_future(a.receive())
    await settle()
    a.send_nowait(impl.ChannelMessage("only"))  # promised to the select, which has not run
    selecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await selecting
    message = await asyncio.wait_for(receiving, 1)
    assert message.payload == "only"
    assert a.qsize() == 0 and b.stats().receivers_waiting == 0


async def test_timed_out_select_takes_nothing(impl):
    a, b = impl.InMemoryChannel("a"), impl.InMemoryChannel("b", maxsize=1)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(impl.select(a, b), 0.01)
    b.send_nowait(impl.ChannelMessage(1))
    assert drain_payloads(b) == [1]


async def test_select_raises_channel_closed_once_all_are_closed_and_drained(impl):
    a, b = impl.InMemoryChannel("a"), impl.InMemoryChannel("b")
    a.send_nowait(impl.ChannelMessage("last"))
    a.close()
    b.close()
    channel, message = await impl.select(a, b)
    assert (channel, message.payload) == (a, "last")
    with pytest.raises(ChannelClosed, match="select"):
        await impl.select(a, b)


async def test_select_keeps_waiting_while_one_channel_is_open(impl):
    a, b = impl.InMemoryChannel("a"), impl.InMemoryChannel("b")
    task = asyncio.ensure_future(impl.select(a, b))
    await settle()
    a.close()
    await settle()
    assert not task.done()
    b.send_nowait(impl.ChannelMessage("b"))
    channel, _ = await task
    assert channel is b
    task = asyncio.ensure_future(impl.select(a, b))
    await settle()
    b.close()
    with pytest.raises(ChannelClosed):
        await task


async def test_select_runs_receive_observers_of_channel_and_forwarder(impl):
    seen: list[tuple[str, str, Any]] = []

    def observe(message: Any, channel: Any, phase: str) -> None:
        seen.append((channel.name, phase, message.payload))

    async def observe_later(message: Any, channel: Any, phase: str) -> None:
        await asyncio.sleep(0)
        seen.append((channel.name, "async " + phase, message.payload))

    inner = impl.InMemoryChannel("inner", observers=[observe_later])
    forwarder = impl.ForwardingChannel(inner, name="fwd", observers=[observe])
    other = impl.InMemoryChannel("other")
    await forwarder.send(impl.ChannelMessage(1))
    seen.clear()
    channel, message = await impl.select(other, forwarder)
    assert channel is forwarder and message.payload == 1
    assert seen == [("inner", "async receive", 1), ("fwd", "receive", 1)]
    seen.clear()
    task = asyncio.ensure_future(impl.select(other, forwarder))
    await settle()
    inner.send_nowait(impl.ChannelMessage(2))
    channel, message = await task
    assert channel is forwarder
    await settle()
    received = [entry for entry in seen if entry[1].endswith("receive")]
    assert received == [("inner", "async receive", 2), ("fwd", "receive", 2)]


async def test_select_frees_room_for_a_blocked_sender(impl):
    a, b = impl.InMemoryChannel("a", maxsize=1), impl.InMemoryChannel("b")
    a.send_nowait(impl.ChannelMessage(1))
    sender = asyncio.ensure_future(a.send(impl.ChannelMessage(2)))
    await settle()
    assert not sender.done()
    await impl.select(a, b)
    await asyncio.wait_for(sender, 1)
    assert drain_payloads(a) == [2]


async def test_select_rejects_bad_arguments(impl):
    with pytest.raises(ValueError, match="at least one"):
        await impl.select()
    with pytest.raises(TypeError, match="BaseChannel"):
        await impl.select(impl.InMemoryChannel(), "not a channel")
    with pytest.raises(TypeError, match="subscribe"):
        await impl.select(impl.BroadcastChannel())


@pytest.mark.parametrize("nowait", [True, False])
async def test_select_over_another_kind_of_channel(impl, nowait):
    other, mine = QueueChannel("other", nowait=nowait), impl.InMemoryChannel("mine")
    await other.send(impl.ChannelMessage("o1"))
    channel, message = await impl.select(mine, other)
    assert (channel, message.payload) == (other, "o1")
    task = asyncio.ensure_future(impl.select(other, mine))
    await settle()
    mine.send_nowait(impl.ChannelMessage("m1"))
    channel, message = await task
    assert (channel, message.payload) == (mine, "m1")
    task = asyncio.ensure_future(impl.select(other, mine))
    await settle()
    await other.send(impl.ChannelMessage("o2"))
    channel, message = await task
    assert (channel, message.payload) == (other, "o2")
    assert other.queue.empty() and mine.qsize() == 0


async def test_a_message_a_losing_receive_took_is_returned_by_the_next_select(impl):
    other, mine = QueueChannel("other", nowait=False), impl.InMemoryChannel("mine")
    task = asyncio.ensure_future(impl.select(other, mine))
    await settle()
    # Both arrive in the same iteration: the in-memory channel's promise wins,
    # and the queue's receive task finishes too.
    other.queue.put_nowait(impl.ChannelMessage("o"))
    mine.send_nowait(impl.ChannelMessage("m"))
    got = [(await task)[1].payload]
    await settle()
    got.append((await asyncio.wait_for(impl.select(other, mine), 1))[1].payload)
    assert sorted(got) == ["m", "o"]


async def test_select_with_many_producers_and_consumers_loses_and_duplicates_nothing(impl):
    sources = [impl.InMemoryChannel(f"s{i}", maxsize=4) for i in range(4)]
    per_source = 300

    async def produce(index: int) -> None:
        for n in range(per_source):
            await sources[index].send(impl.ChannelMessage((index, n)))
            if random.random() < 0.3:
                await asyncio.sleep(0)
        sources[index].close()

    async def consume() -> list[Any]:
        got = []
        while True:
            try:
                _, message = await impl.select(*sources)
            except ChannelClosed:
                return got
            got.append(message.payload)
            if random.random() < 0.3:
                await asyncio.sleep(0)

    producers = [asyncio.ensure_future(produce(i)) for i in range(4)]
    results = await asyncio.gather(*(consume() for _ in range(3)))
    await asyncio.gather(*producers)
    everything = [item for got in results for item in got]
    assert sorted(everything) == [(i, n) for i in range(4) for n in range(per_source)]
    for got in results:  # each consumer sees each source's messages in order
        for i in range(4):
            seq = [n for j, n in got if j == i]
            assert seq == sorted(seq)


async def test_select_under_random_cancellation_loses_nothing(impl):
    sources = [impl.InMemoryChannel(f"s{i}") for i in range(3)]
    total = 600
    received: list[Any] = []

    async def produce() -> None:
        for n in range(total):
            sources[n % 3].send_nowait(impl.ChannelMessage(n))
            await asyncio.sleep(0)
        for source in sources:
            source.close()

    async def consume() -> None:
        while True:
            _, message = await impl.select(*sources)
            received.append(message.payload)

    producer = asyncio.ensure_future(produce())
    while not producer.done() or any(not s.empty() for s in sources):
        consumer = asyncio.ensure_future(consume())
        for _ in range(random.randrange(1, 4)):
            await asyncio.sleep(0)
        consumer.cancel()
        try:
            await consumer
        except (asyncio.CancelledError, ChannelClosed):
            pass
    await producer
    assert sorted(received) == list(range(total))


# -- merge -------------------------------------------------------------------


async def test_merge_yields_from_all_sources_and_ends_when_all_are_drained(impl):
    a, b = impl.InMemoryChannel("a"), impl.InMemoryChannel("b")
    merged = impl.merge(a, b)
    assert isinstance(merged, BaseChannel) and merged.name == "merge(a, b)"
    assert merged.sources == (a, b)

    async def produce() -> None:
        for n in range(50):
            await (a if n % 2 else b).send(impl.ChannelMessage(n))
            await asyncio.sleep(0)
        a.close()
        await asyncio.sleep(0)
        b.close()

    producer = asyncio.ensure_future(produce())
    got = [message.payload async for message in merged]
    await producer
    assert sorted(got) == list(range(50))
    assert merged.closed
    with pytest.raises(ChannelClosed):
        await merged.receive()


async def test_merge_takes_ready_sources_in_turn(impl):
    a, b, c = (impl.InMemoryChannel(name) for name in "abc")
    for ch in (a, b, c):
        for n in range(3):
            ch.send_nowait(impl.ChannelMessage(f"{ch.name}{n}"))
    merged = impl.merge(a, b, c, name="all")
    got = [(await merged.receive()).payload for _ in range(6)]
    assert got == ["a0", "b0", "c0", "a1", "b1", "c1"]
    assert [m.payload for m in await merged.receive_many(10)] == ["a2", "b2", "c2"]
    assert merged.empty() and merged.qsize() == 0
    stats = merged.stats()
    assert stats.received == 9 and stats.size == 0 and not stats.closed


async def test_closing_a_merge_wakes_its_receivers_and_leaves_sources_open(impl):
    a = impl.InMemoryChannel("a")
    merged = impl.merge(a)
    task = asyncio.ensure_future(merged.receive())
    await settle()
    assert merged.stats().receivers_waiting == 1
    merged.close()
    with pytest.raises(ChannelClosed, match="merged"):
        await task
    assert not a.closed and a.stats().receivers_waiting == 0
    a.send_nowait(impl.ChannelMessage(1))
    with pytest.raises(ChannelClosed):
        merged.receive_nowait()
    assert drain_payloads(a) == [1]


async def test_merge_is_receive_only_and_checks_its_sources(impl):
    merged = impl.merge(impl.InMemoryChannel("a"))
    with pytest.raises(NotImplementedError, match="receive-only"):
        await merged.send(impl.ChannelMessage(1))
    with pytest.raises(NotImplementedError, match="receive-only"):
        merged.send_nowait(impl.ChannelMessage(1))
    with pytest.raises(asyncio.QueueEmpty):
        merged.receive_nowait()
    with pytest.raises(ValueError):
        impl.merge()
    with pytest.raises(TypeError):
        impl.merge(object())


async def test_merge_observers_and_cancelled_receive(impl):
    seen: list[Any] = []
    a = impl.InMemoryChannel("a")
    merged = impl.merge(a)
    merged.add_observer(lambda message, channel, phase: seen.append((channel, phase)))
    task = asyncio.ensure_future(merged.receive())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    a.send_nowait(impl.ChannelMessage(1))
    assert (await merged.receive()).payload == 1
    assert seen == [(merged, "receive")]


def test_public_names_come_from_the_active_build():
    build = channels.IMPLEMENTATION
    assert channels.select.__module__.endswith("_channels_c" if build == "cython" else "_select_py")
    assert channels.BroadcastChannel.__module__.endswith(
        "_channels_c" if build == "cython" else "_broadcast_py"
    )


class FailingChannel(QueueChannel):
    """Another kind of channel whose receive() fails once ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__("failing", nowait=False)
        self.fail = asyncio.Event()

    async def receive(self) -> Any:
        await self.fail.wait()
        raise RuntimeError("the backend is down")


async def test_a_failing_channel_raises_and_a_promised_message_stays(impl):
    mine, failing = impl.InMemoryChannel("mine"), FailingChannel()
    selecting = asyncio.ensure_future(impl.select(mine, failing))
    await settle()
    failing.fail.set()  # fails in the same iteration as mine promises its message
    mine.send_nowait(impl.ChannelMessage("x"))
    with pytest.raises(RuntimeError, match="backend"):
        await selecting
    assert (await asyncio.wait_for(mine.receive(), 1)).payload == "x"


class SendOnlyChannel(QueueChannel):
    """Another kind of channel whose receive() raises at once, not when awaited."""

    def receive(self) -> Any:  # type: ignore[override]
        raise NotImplementedError("send only")


async def test_a_select_that_cannot_start_leaves_no_waiter_behind(impl):
    mine, other, send_only = (
        impl.InMemoryChannel("mine"),
        QueueChannel(nowait=False),
        SendOnlyChannel(),
    )
    with pytest.raises(NotImplementedError, match="send only"):
        await impl.select(other, mine, send_only)
    mine.send_nowait(impl.ChannelMessage("m"))
    await other.send(impl.ChannelMessage("o"))
    await settle()
    assert (await asyncio.wait_for(mine.receive(), 1)).payload == "m"
    assert other.queue.qsize() == 1  # no receive() task of that select took it


async def test_select_checks_its_arguments_only_when_awaited(impl):
    pending = [impl.select(), impl.select(impl.BroadcastChannel()), impl.select("x")]
    for awaitable in pending:
        with pytest.raises((ValueError, TypeError)):
            await awaitable
