"""Many producers and consumers, random cancellations: exactly-once delivery."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from spark.nodes.channels import ChannelClosed

MESSAGES = 10_000
CONSUMERS = 3


@pytest.mark.timeout_s(120)
@pytest.mark.parametrize("maxsize", [10, 1, 0])
async def test_producers_and_consumers_with_random_cancellations(impl, maxsize):
    rng = random.Random(1234)
    channel = impl.InMemoryChannel(maxsize=maxsize)
    work = list(range(MESSAGES))
    pending = work[::-1]  # shared stack of payloads not yet sent
    delivered: Counter[int] = Counter()

    async def produce():
        while pending:
            payload = pending.pop()
            if rng.random() < 0.2:
                try:
                    await asyncio.sleep(0)  # let others run even when the channel never blocks
                except asyncio.CancelledError:
                    pending.append(payload)
                    raise
            try:
                await channel.send(impl.ChannelMessage(payload))
            except asyncio.CancelledError:
                pending.append(payload)  # the send did not happen: retry it later
                raise

    async def consume():
        while True:
            try:
                message = await channel.receive()
            except ChannelClosed:
                return
            delivered[message.payload] += 1

    async def run_cancelled_now_and_then(role, count):
        tasks = [asyncio.ensure_future(role()) for _ in range(count)]
        cancelled = 0
        while any(not t.done() for t in tasks):
            await asyncio.sleep(0)
            for i, task in enumerate(tasks):
                if task.done():
                    if task.cancelled():
                        cancelled += 1
                        tasks[i] = asyncio.ensure_future(role())
                    else:
                        task.result()
                elif rng.random() < 0.05:
                    task.cancel()
        for task in tasks:
            if not task.cancelled():
                task.result()
        return cancelled

    producers = asyncio.ensure_future(run_cancelled_now_and_then(produce, 3))
    consumers = asyncio.ensure_future(run_cancelled_now_and_then(consume, CONSUMERS))
    producers_cancelled = await producers
    while pending:  # a cancelled last producer may have left work behind
        await channel.send(impl.ChannelMessage(pending.pop()))
    channel.close()
    consumers_cancelled = await consumers
    assert producers_cancelled > 10 and consumers_cancelled > 10  # the cancellations happened
    assert sum(delivered.values()) == MESSAGES
    assert set(delivered) == set(work)
    assert max(delivered.values()) == 1
    stats = channel.stats()
    assert stats.sent == stats.received == MESSAGES
    if maxsize:
        # Sends never fill past maxsize; only a receive cancelled after being
        # promised a message queues it again, and each consumer holds one.
        assert stats.peak_size <= maxsize + CONSUMERS
    assert stats.senders_waiting == stats.receivers_waiting == 0


async def test_fifo_per_producer_under_contention(impl):
    # Messages leave in the order they were sent, whoever takes them: two
    # consumers appending to one list see every producer's messages in order.
    channel = impl.InMemoryChannel(maxsize=3)
    per_producer = 500

    async def produce(tag):
        for i in range(per_producer):
            await channel.send(impl.ChannelMessage((tag, i)))

    received = []

    async def consume():
        async for message in channel:
            received.append(message.payload)

    consumers = [asyncio.ensure_future(consume()) for _ in range(2)]
    await asyncio.gather(*(produce(tag) for tag in "abcd"))
    channel.close()
    await asyncio.gather(*consumers)
    assert len(received) == 4 * per_producer
    for tag in "abcd":
        assert [i for t, i in received if t == tag] == list(range(per_producer))
