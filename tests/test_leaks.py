"""A million messages leave nothing behind: memory returns, payloads are not retained."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from spark.nodes.channels import ChannelClosed

PHASE = 250_000  # four phases: one million messages
CHUNK = 1_000


async def unbounded_with_observers(impl, payload, count):
    seen = [0]

    def observer(message, channel, phase):
        seen[0] += 1

    async def async_observer(message, channel, phase):
        seen[0] += 1

    channel = impl.InMemoryChannel(observers=[observer])
    for i in range(count):
        await channel.send(impl.ChannelMessage(payload, {"i": i}))
        assert (await channel.receive()).payload is payload
    channel.add_observer(async_observer)
    for _ in range(count // 100):
        await channel.send(impl.ChannelMessage(payload))
        await channel.receive()
    assert seen[0] == 2 * count + 4 * (count // 100)


async def bounded_through_a_forwarder(impl, payload, count):
    mailbox = impl.InMemoryChannel(maxsize=64)
    edge = impl.ForwardingChannel(mailbox, metadata_defaults={"edge_id": "a->b", "hop": 1})

    async def produce():
        for _ in range(count):
            await edge.send(impl.ChannelMessage(payload, {"trace_id": "t"}))
        edge.close()
        mailbox.close()

    producer = asyncio.ensure_future(produce())
    received = 0
    async for message in mailbox:
        assert message.metadata["edge_id"] == "a->b"
        received += 1
    await producer
    assert received == count


async def with_cancellations(impl, payload, count):
    channel = impl.InMemoryChannel(maxsize=8)
    received = 0

    async def produce():
        for i in range(count):
            await channel.send(impl.ChannelMessage(payload, {"i": i}))
        channel.close()

    producer = asyncio.ensure_future(produce())
    tick = 0
    while True:
        tick += 1
        getter = asyncio.ensure_future(channel.receive_many(16))
        if tick % 3 == 0:
            await asyncio.sleep(0)
            getter.cancel()  # sometimes after it was woken, sometimes before
        try:
            received += len(await getter)
        except asyncio.CancelledError:
            continue
        except ChannelClosed:
            break
    await producer
    assert received == count


async def batches(impl, payload, count):
    channel = impl.InMemoryChannel()
    for _ in range(count // CHUNK):
        for _ in range(CHUNK):
            channel.send_nowait(impl.ChannelMessage(payload))
        got = 0
        while got < CHUNK:
            got += len(await channel.receive_many(100))


async def broadcast_through_select(impl, payload, count):
    """A tenth of the messages: each reaches two subscriptions, read by cancelled selects too."""
    count //= 10
    broadcast = impl.BroadcastChannel(maxsize=8)
    sources = [broadcast.subscribe(), broadcast.subscribe(), impl.InMemoryChannel()]

    async def produce():
        for i in range(count):
            await broadcast.send(impl.ChannelMessage(payload, {"i": i}))
        broadcast.close()
        sources[2].close()

    producer = asyncio.ensure_future(produce())
    received = tick = 0
    while True:
        tick += 1
        selecting = asyncio.ensure_future(impl.select(*sources))
        if tick % 3 == 0:
            await asyncio.sleep(0)
            selecting.cancel()  # sometimes after it was promised a message
        try:
            _, message = await selecting
        except asyncio.CancelledError:
            continue
        except ChannelClosed:
            break
        assert message.payload is payload
        received += 1
    await producer
    assert received == 2 * count


PHASES = [
    unbounded_with_observers,
    bounded_through_a_forwarder,
    with_cancellations,
    batches,
    broadcast_through_select,
]


async def run_phases(impl, payload, count):
    for phase in PHASES:
        await phase(impl, payload, count)
    for _ in range(3):  # let finished observer tasks and callbacks go
        await asyncio.sleep(0)


@pytest.mark.timeout_s(300)
async def test_a_million_messages_leave_no_trace(impl):
    payload = object()
    references = sys.getrefcount(payload)
    await run_phases(impl, payload, 2_000)  # warm up freelists and caches
    gc.collect()
    blocks = sys.getallocatedblocks()
    await run_phases(impl, payload, PHASE)
    gc.collect()
    grown = sys.getallocatedblocks() - blocks
    assert sys.getrefcount(payload) == references
    # One leaked object per message would be a million blocks; allow for caches.
    assert grown < 2_000, f"{grown} memory blocks still allocated after a million messages"
