"""RedisStreamChannel against a real redis-server (see redis_support for how it is found)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_support import admin_client, require_extra, unique

require_extra()

import redis.asyncio as aioredis  # noqa: E402
from redis.asyncio.connection import SSLConnection  # noqa: E402
from redis.exceptions import AuthenticationError  # noqa: E402
from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: E402

from spark.backends._redis_connection import _socket_timeout  # noqa: E402
from spark.backends._redis_server import LocalRedisServer, ServerUnavailable  # noqa: E402
from spark.backends.redis import (  # noqa: E402
    METADATA_DELIVERY_COUNT,
    METADATA_STREAM_ID,
    MessagesNotWritten,
    MsgpackCodec,
    RedisStreamChannel,
)
from spark.nodes.channels import ChannelClosed, ChannelMessage  # noqa: E402


@dataclasses.dataclass
class Reading:
    sensor: str
    values: list[float]


class Touch:
    """Unpickling this creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def channel(url: str, name: str, **options: Any) -> RedisStreamChannel:
    options.setdefault("group", "workers")
    options.setdefault("block", 0.05)
    return RedisStreamChannel(name, url=url, **options)


async def receive_within(ch: RedisStreamChannel, timeout: float = 5.0) -> ChannelMessage[Any]:
    return await asyncio.wait_for(ch.receive(), timeout)


async def nothing_within(ch: RedisStreamChannel, seconds: float) -> bool:
    """True if no message arrives within ``seconds``."""
    try:
        message = await asyncio.wait_for(ch.receive(), seconds)
    except asyncio.TimeoutError:
        return True
    raise AssertionError(f"expected no message, got {message!r}")


# -- round trips -------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
async def test_round_trip_with_metadata(redis_url: str, protocol: int) -> None:
    name = unique()
    url = f"{redis_url}?protocol={protocol}"
    codec = MsgpackCodec([Reading])
    sender = channel(url, name, codec=codec)
    receiver = channel(url, name, codec=MsgpackCodec([Reading]), consumer="c1")
    try:
        payloads: list[Any] = [
            {"user": 1, "blob": b"\x00\x01", "nested": [1.5, None, True, "x"]},
            Reading("s1", [0.5, 1.5]),
            "plain",
        ]
        for payload in payloads:
            await sender.send(ChannelMessage(payload, {"trace_id": "abc", "hops": [1, 2]}))
        received = [await receive_within(receiver) for _ in payloads]
        assert [m.payload for m in received] == payloads
        assert isinstance(received[1].payload, Reading)
        ids = [m.metadata.pop(METADATA_STREAM_ID) for m in received]
        assert len(set(ids)) == 3 and ids == sorted(
            ids, key=lambda i: tuple(map(int, i.split("-")))
        )
        for message in received:
            assert message.metadata == {
                "trace_id": "abc",
                "hops": [1, 2],
                METADATA_DELIVERY_COUNT: 1,
            }
            assert not message.is_shutdown
            assert message.ack is not None
        assert sender.stats().sent == 3 and receiver.stats().received == 3
    finally:
        await sender.aclose()
        await receiver.aclose()


async def test_previous_hop_metadata_is_replaced(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name)
    try:
        await ch.send(
            ChannelMessage(1, {METADATA_STREAM_ID: "1-1", METADATA_DELIVERY_COUNT: 9, "k": "v"})
        )
        message = await receive_within(ch)
        assert message.metadata[METADATA_DELIVERY_COUNT] == 1
        assert message.metadata[METADATA_STREAM_ID] != "1-1"
        assert message.metadata["k"] == "v"
    finally:
        await ch.aclose()


async def test_shutdown_messages_keep_their_place(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name)
    try:
        await ch.send(ChannelMessage("a"))
        await ch.send(ChannelMessage(None, is_shutdown=True))
        await ch.send(ChannelMessage({"final": True}, {"reason": "drain"}, is_shutdown=True))
        first, second, third = [await receive_within(ch) for _ in range(3)]
        assert (first.payload, first.is_shutdown) == ("a", False)
        assert (second.payload, second.is_shutdown) == (None, True)
        assert (third.payload, third.is_shutdown) == ({"final": True}, True)
        assert third.metadata["reason"] == "drain"
        # Shutdowns are acknowledged when handled, as any message is.
        assert await pending_becomes(ch, 3)
        assert second.ack is not None and third.ack is not None
        await second.ack()
        await third.ack()
        assert await pending_becomes(ch, 1)
    finally:
        await ch.aclose()


async def pending_becomes(ch: RedisStreamChannel, count: int) -> bool:
    for _ in range(100):
        if (await ch.backlog()).pending == count:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_stop_requests_stay_local(redis_url: str) -> None:
    from spark.nodes._shutdown import is_stop_request, stop_request

    name = unique()
    ch = channel(redis_url, name, block=0.5)
    other = channel(redis_url, name, consumer="other", block=0.5)
    try:
        waiting = asyncio.ensure_future(ch.receive())
        await asyncio.sleep(0.05)
        ch.send_nowait(stop_request("node-1"))
        message = await asyncio.wait_for(waiting, 0.3)  # woken at once, not after a read
        assert message.is_shutdown and is_stop_request(message)
        await ch.send(stop_request("node-1"))
        assert is_stop_request(ch.receive_nowait())
        assert (await ch.backlog()).length == 0  # never written to the shared stream
        assert await nothing_within(other, 0.2)
    finally:
        await ch.aclose()
        await other.aclose()


async def test_send_refuses_what_the_codec_cannot_encode(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name)
    try:
        with pytest.raises(TypeError, match="must be registered"):
            await ch.send(ChannelMessage(Reading("s", [])))
        with pytest.raises(TypeError, match="cannot encode"):
            ch.send_nowait(ChannelMessage(object()))
        with pytest.raises(TypeError, match="ChannelMessage"):
            await ch.send("not a message")  # type: ignore[arg-type]
        await ch.send(ChannelMessage("ok"))
        assert (await ch.backlog()).length == 1
    finally:
        await ch.aclose()


# -- acknowledgement ---------------------------------------------------------


async def test_ack_removes_the_entry_from_pending(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name)
    try:
        await ch.send(ChannelMessage("one"))
        message = await receive_within(ch)
        backlog = await ch.backlog()
        assert (backlog.pending, backlog.lag, backlog.outstanding) == (1, 0, 1)
        assert message.ack is not None
        await message.ack()
        assert (await ch.backlog()).pending == 0
        await message.ack()  # a second ack does nothing
        assert (await ch.backlog()).pending == 0
    finally:
        await ch.aclose()


async def test_concurrent_acks_go_out_as_one_xack(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name)
    admin = admin_client(redis_url)
    try:
        await ch.send_many(ChannelMessage(i) for i in range(20))
        batch = await ch.receive_many(50)
        while len(batch) < 20:
            batch += await ch.receive_many(50)
        before = await xack_calls(admin)
        await ch.ack_many(batch)
        assert await xack_calls(admin) == before + 1
        assert (await ch.backlog()).pending == 0
    finally:
        await ch.aclose()
        await admin.aclose()


async def test_acks_of_one_loop_iteration_go_out_as_one_xack(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name)
    admin = admin_client(redis_url)
    try:
        await ch.send_many(ChannelMessage(i) for i in range(10))
        messages = [await receive_within(ch) for _ in range(10)]
        before = await xack_calls(admin)
        futures = []
        for message in messages:
            assert message.ack is not None
            futures.append(message.ack())  # each queued at once, none awaited yet
        await asyncio.gather(*futures)
        assert await xack_calls(admin) == before + 1
        assert (await ch.backlog()).pending == 0
    finally:
        await ch.aclose()
        await admin.aclose()


async def xack_calls(client: Any) -> int:
    """XACK calls the server (every node of a cluster) has run."""
    if isinstance(client, aioredis.RedisCluster):
        stats = list((await client.info("commandstats", target_nodes="all")).values())
    else:
        stats = [await client.info("commandstats")]
    return sum(int(s.get("cmdstat_xack", {"calls": 0})["calls"]) for s in stats)


async def test_ack_many_acks_others_too_and_close_waits_for_it(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name)
    acked: list[str] = []

    async def foreign_ack() -> None:
        acked.append("foreign")

    try:
        await ch.send_many(ChannelMessage(i) for i in range(5))
        batch = await ch.receive_many(5)
        while len(batch) < 5:
            batch += await ch.receive_many(5)
        acking = asyncio.ensure_future(
            ch.ack_many([*batch[:3], ChannelMessage("elsewhere", ack=foreign_ack)])
        )
        await asyncio.sleep(0)  # the XACK is under way
        await ch.aclose()  # waits for it
        await acking
        assert acked == ["foreign"]
        with pytest.raises(ChannelClosed, match="stays pending"):
            await ch.ack_many(batch[3:])
    finally:
        await ch.aclose()
    other = channel(redis_url, name)
    try:
        assert (await other.backlog()).pending == 2  # the last two, never acknowledged
    finally:
        await other.aclose()


async def test_ack_after_close_raises_and_entry_stays_pending(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name)
    await ch.send(ChannelMessage("late"))
    message = await receive_within(ch)
    await ch.aclose()
    assert message.ack is not None
    with pytest.raises(ChannelClosed, match="stays pending"):
        await message.ack()
    other = channel(redis_url, name)
    try:
        assert (await other.backlog()).pending == 1
    finally:
        await other.aclose()


# -- redelivery --------------------------------------------------------------

VICTIM = """
import asyncio, sys
from spark.backends.redis import RedisStreamChannel

async def main(url, name, count):
    ch = RedisStreamChannel(name, url=url, group="workers", consumer="victim",
                            batch_size=10, block=0.05)
    held = [await ch.receive() for _ in range(count)]
    print(" ".join(str(m.payload) for m in held), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.mark.timeout_s(60)
async def test_sigkilled_consumer_loses_nothing(redis_url: str) -> None:
    name = unique()
    producer = channel(redis_url, name)
    survivor = channel(redis_url, name, consumer="survivor", claim_idle=0.5)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", VICTIM, redis_url, name, "3", stdout=asyncio.subprocess.PIPE
    )
    try:
        await producer.send_many(ChannelMessage(i) for i in range(30))
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        held = {int(value) for value in line.split()}
        assert held == {0, 1, 2}  # handed to its handler, never acknowledged
        # The victim prefetched a batch of 10; all of it is pending with it.
        os.kill(process.pid, signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
        assert (await producer.backlog()).pending == 10

        seen: dict[int, int] = {}
        while len(seen) < 30:
            message = await receive_within(survivor)
            assert message.payload not in seen, f"{message.payload} delivered twice"
            seen[message.payload] = message.metadata[METADATA_DELIVERY_COUNT]
            assert message.ack is not None
            await message.ack()
        assert sorted(seen) == list(range(30))
        assert {p for p, count in seen.items() if count == 2} == set(range(10))
        assert all(count == 1 for p, count in seen.items() if p >= 10)
        assert (await survivor.backlog()).outstanding == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await producer.aclose()
        await survivor.aclose()


async def test_restarted_consumer_first_takes_back_its_own_pending(redis_url: str) -> None:
    name = unique()
    first = channel(redis_url, name, consumer="w1")
    await first.send_many(ChannelMessage(i) for i in range(2))
    held = [await receive_within(first) for _ in range(2)]
    await first.aclose()  # received, never acknowledged: they stay with w1
    assert [m.payload for m in held] == [0, 1]

    again = channel(redis_url, name, consumer="w1")  # the same worker, restarted
    try:
        await again.send(ChannelMessage(2))
        received = [await receive_within(again) for _ in range(3)]
        assert [m.payload for m in received] == [0, 1, 2]
        assert [m.metadata[METADATA_DELIVERY_COUNT] for m in received] == [2, 2, 1]
        assert [m.metadata[METADATA_STREAM_ID] for m in received[:2]] == [
            m.metadata[METADATA_STREAM_ID] for m in held
        ]
    finally:
        await again.aclose()


async def test_close_hands_prefetched_entries_back_at_once(redis_url: str) -> None:
    name = unique()
    first = channel(redis_url, name, consumer="a", batch_size=10)
    # claim_idle is long: only a hand-back can get the entries to b quickly.
    second = channel(redis_url, name, consumer="b", claim_idle=60)
    try:
        await first.send_many(ChannelMessage(i) for i in range(10))
        kept = await receive_within(first)
        assert kept.payload == 0
        assert first.qsize() == 9 and not first.empty()
        await first.aclose()
        received = [await receive_within(second) for _ in range(9)]
        assert [m.payload for m in received] == list(range(1, 10))
        # Fetched by a but never handed to its handler: not counted as a delivery.
        assert all(m.metadata[METADATA_DELIVERY_COUNT] == 1 for m in received)
        # The message a's handler holds is not handed back while it may be working on it.
        assert await nothing_within(second, 0.3)
        assert (await second.backlog()).pending == 10
    finally:
        await first.aclose()
        await second.aclose()


async def test_two_consumers_split_the_work_without_duplicates(redis_url: str) -> None:
    name = unique()
    producer = channel(redis_url, name)
    consumers = [channel(redis_url, name, consumer=f"c{i}", batch_size=5) for i in range(2)]
    handled: list[list[int]] = [[], []]
    total = 200

    async def work(index: int) -> None:
        ch = consumers[index]
        while sum(map(len, handled)) < total:
            try:
                message = await asyncio.wait_for(ch.receive(), 0.5)
            except asyncio.TimeoutError:
                continue
            assert message.metadata[METADATA_DELIVERY_COUNT] == 1
            handled[index].append(message.payload)
            await asyncio.sleep(0.001)  # the work
            assert message.ack is not None
            await message.ack()

    try:
        await producer.send_many(ChannelMessage(i) for i in range(total))
        await asyncio.wait_for(asyncio.gather(work(0), work(1)), 20)
        first, second = (set(h) for h in handled)
        assert len(first) == len(handled[0]) and len(second) == len(handled[1])
        assert not first & second
        assert first | second == set(range(total))
        assert first and second, "one consumer did all the work"
        assert (await producer.backlog()).outstanding == 0
    finally:
        await producer.aclose()
        for ch in consumers:
            await ch.aclose()


async def test_prefetched_entries_are_kept_from_other_consumers(redis_url: str) -> None:
    # claim_idle is short and the first consumer's handler slow: its prefetched
    # entries would be claimed by the second consumer if they were not refreshed.
    name = unique()
    slow = channel(redis_url, name, consumer="slow", claim_idle=0.3, batch_size=20)
    eager = channel(redis_url, name, consumer="eager", claim_idle=0.3)
    try:
        await slow.send_many(ChannelMessage(i) for i in range(20))
        first = await receive_within(slow)
        assert first.ack is not None
        await first.ack()
        assert slow.qsize() == 19
        assert await nothing_within(eager, 1.2)
        rest = [await receive_within(slow) for _ in range(19)]
        assert [m.payload for m in rest] == list(range(1, 20))
        assert all(m.metadata[METADATA_DELIVERY_COUNT] == 1 for m in rest)
    finally:
        await slow.aclose()
        await eager.aclose()


async def test_unacknowledged_message_comes_back_after_claim_idle(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name, claim_idle=0.2)
    try:
        await ch.send(ChannelMessage("retry me"))
        first = await receive_within(ch)
        again = await receive_within(ch)  # the handler "failed": no ack
        assert again.payload == "retry me"
        assert again.metadata[METADATA_STREAM_ID] == first.metadata[METADATA_STREAM_ID]
        assert again.metadata[METADATA_DELIVERY_COUNT] == 2
    finally:
        await ch.aclose()


# -- dead letters ------------------------------------------------------------


async def test_poison_message_goes_to_dead_letters_after_max_deliveries(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name, claim_idle=0.2, max_deliveries=2)
    try:
        await ch.send(ChannelMessage("poison"))
        for attempt in (1, 2):
            message = await receive_within(ch)  # the handler crashes every time: no ack
            assert (message.payload, message.metadata[METADATA_DELIVERY_COUNT]) == (
                "poison",
                attempt,
            )
        await ch.send(ChannelMessage("next"))
        following = await receive_within(ch)
        assert following.payload == "next" and following.ack is not None
        await following.ack()
        waiting = asyncio.ensure_future(ch.receive())
        try:
            for _ in range(100):
                letters = await ch.dead_letters()
                if letters:
                    break
                await asyncio.sleep(0.05)
            assert not waiting.done()  # the poison message was not delivered a third time
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        [letter] = letters
        assert letter.source_id == message.metadata[METADATA_STREAM_ID]
        assert letter.delivery_count == 3
        assert "max_deliveries=2" in letter.reason
        assert letter.consumer == ch.consumer
        assert MsgpackCodec().decode(letter.fields[b"body"])[0] == "poison"
        assert (await ch.backlog()).outstanding == 0
        assert ch.dead_lettered == 1
    finally:
        await ch.aclose()


async def test_undecodable_entries_go_to_dead_letters(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique()
    ch = channel(redis_url, name)
    admin = admin_client(redis_url)
    try:
        await ch.backlog()  # creates the stream and group
        await admin.xadd(ch.key, {"codec": "msgpack", "body": b"\xc1garbage"})
        await admin.xadd(ch.key, {"something": "else"})
        await admin.xadd(ch.key, {"codec": "msgpack", "body": MsgpackCodec([Reading]).encode(
            Reading("s", [1.0]), {}, False)})  # fmt: skip
        await ch.send(ChannelMessage("fine"))
        with caplog.at_level(logging.WARNING, logger="spark.channels.redis"):
            message = await receive_within(ch)
        assert message.payload == "fine"
        letters = await ch.dead_letters()
        assert [letter.reason.split(":")[0] for letter in letters] == ["undecodable"] * 3
        assert "malformed" in letters[0].reason
        assert "not a spark message" in letters[1].reason
        assert "not registered" in letters[2].reason
        assert letters[1].fields == {b"something": b"else"}
        assert (await ch.backlog()).pending == 1  # only "fine": the others were acknowledged
        assert sum("dead-letter" in r.getMessage() for r in caplog.records) == 3
    finally:
        await ch.aclose()
        await admin.aclose()


async def test_pickled_payload_is_refused_by_the_default_codec(
    redis_url: str, tmp_path: Path
) -> None:
    name = unique()
    target = tmp_path / "pwned"
    ch = channel(redis_url, name)
    admin = admin_client(redis_url)
    try:
        await ch.backlog()
        forged = pickle.dumps((Touch(target), {}, False))
        await admin.xadd(ch.key, {"codec": "msgpack", "body": forged})
        await admin.xadd(ch.key, {"codec": "pickle", "body": forged})
        await ch.send(ChannelMessage("after"))
        assert (await receive_within(ch)).payload == "after"
        assert not target.exists()
        reasons = [letter.reason for letter in await ch.dead_letters()]
        assert len(reasons) == 2
        assert "written with codec 'pickle'" in reasons[1]

        # The same entry, read with codec="pickle", runs the attacker's code.
        trusting = channel(redis_url, unique(), codec="pickle")
        try:
            await trusting.backlog()
            await admin.xadd(trusting.key, {"codec": "pickle", "body": forged})
            await receive_within(trusting)
            assert target.exists()
        finally:
            await trusting.aclose()
    finally:
        await ch.aclose()
        await admin.aclose()


# -- backpressure ------------------------------------------------------------


async def test_backpressure_at_maxlen(redis_url: str) -> None:
    name = unique()
    producer = channel(redis_url, name, maxlen=5)
    consumer = channel(redis_url, name, consumer="c")
    admin = admin_client(redis_url)
    try:
        for i in range(5):
            await asyncio.wait_for(producer.send(ChannelMessage(i)), 5)
        blocked = asyncio.ensure_future(producer.send(ChannelMessage(5)))
        done, _ = await asyncio.wait({blocked}, timeout=0.3)
        assert not done, "send did not wait at maxlen"
        assert (await producer.backlog()).outstanding == 5
        assert producer.full()
        with pytest.raises(asyncio.QueueFull):
            producer.send_nowait(ChannelMessage("nowait"))
        assert producer.stats().senders_waiting == 1

        first = await receive_within(consumer)
        done, _ = await asyncio.wait({blocked}, timeout=0.3)
        assert not done, "a received but unacknowledged entry still counts"
        assert first.ack is not None
        await first.ack()
        await asyncio.wait_for(blocked, 5)
        assert not producer.full()

        # Nothing unacknowledged was trimmed: every message arrives, in order.
        rest = [await receive_within(consumer) for _ in range(5)]
        assert [m.payload for m in rest] == [1, 2, 3, 4, 5]
        await consumer.ack_many(rest)
        # Entries every group is done with are trimmed as producers go on.
        await producer.send(ChannelMessage(6))
        assert await admin.xlen(producer.key) <= 2
        assert (await receive_within(consumer)).payload == 6
    finally:
        await producer.aclose()
        await consumer.aclose()
        await admin.aclose()


async def test_concurrent_producers_never_exceed_maxlen(redis_url: str) -> None:
    name = unique()
    producers = [channel(redis_url, name, maxlen=4) for _ in range(3)]
    consumer = channel(redis_url, name, consumer="c", batch_size=1)
    peak = 0

    async def produce(ch: RedisStreamChannel, base: int) -> None:
        await ch.send_many(ChannelMessage(base + i) for i in range(10))

    async def consume() -> list[int]:
        nonlocal peak
        got = []
        while len(got) < 30:
            peak = max(peak, (await consumer.backlog()).outstanding)
            message = await receive_within(consumer)
            await asyncio.sleep(0.002)
            got.append(message.payload)
            assert message.ack is not None
            await message.ack()
        return got

    try:
        results = await asyncio.wait_for(
            asyncio.gather(consume(), *(produce(p, 100 * i) for i, p in enumerate(producers))), 20
        )
        assert sorted(results[0]) == sorted(100 * i + j for i in range(3) for j in range(10))
        assert 0 < peak <= 4
    finally:
        for ch in (*producers, consumer):
            await ch.aclose()


# -- closing -----------------------------------------------------------------


async def test_close_writes_pending_sends(redis_url: str) -> None:
    name = unique()
    producer = channel(redis_url, name, batch_size=50)
    for i in range(300):
        producer.send_nowait(ChannelMessage(i))
    await producer.aclose()
    with pytest.raises(ChannelClosed):
        await producer.send(ChannelMessage("too late"))
    with pytest.raises(ChannelClosed):
        producer.send_nowait(ChannelMessage("too late"))
    with pytest.raises(ChannelClosed):
        await producer.receive()
    consumer = channel(redis_url, name, batch_size=100)
    try:
        assert (await consumer.backlog()).length == 300
        received = [(await receive_within(consumer)).payload for _ in range(300)]
        assert received == list(range(300))
    finally:
        await consumer.aclose()


async def test_close_while_sends_wait_at_maxlen(redis_url: str) -> None:
    # close() writes what send_nowait queued even if it has to wait for room.
    name = unique()
    producer = channel(redis_url, name, maxlen=2)
    consumer = channel(redis_url, name, consumer="c")
    try:
        for i in range(4):
            producer.send_nowait(ChannelMessage(i))
        closing = asyncio.ensure_future(producer.aclose())
        done, _ = await asyncio.wait({closing}, timeout=0.3)
        assert not done
        got = []
        while len(got) < 4:
            message = await receive_within(consumer)
            got.append(message.payload)
            assert message.ack is not None
            await message.ack()
        await asyncio.wait_for(closing, 5)
        assert got == [0, 1, 2, 3]
    finally:
        await producer.aclose()
        await consumer.aclose()


async def test_close_wakes_a_blocked_receiver(redis_url: str) -> None:
    ch = channel(redis_url, unique(), block=0.5)
    receiving = asyncio.ensure_future(ch.receive())
    await asyncio.sleep(0.05)
    assert ch.stats().receivers_waiting == 1
    ch.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(receiving, 2)
    await ch.aclose()
    assert ch.closed and ch.stats().closed


async def test_cancelled_send_is_not_written(redis_url: str) -> None:
    ch = channel(redis_url, unique())
    try:
        sending = asyncio.ensure_future(ch.send(ChannelMessage("cancelled")))
        await asyncio.sleep(0)  # the send has queued its message; the writer has not run
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        await ch.send(ChannelMessage("kept"))
        assert (await ch.backlog()).length == 1
        assert (await receive_within(ch)).payload == "kept"
    finally:
        await ch.aclose()


async def test_async_context_manager_closes(redis_url: str) -> None:
    async with channel(redis_url, unique()) as ch:
        await ch.send(ChannelMessage(1))
        assert (await receive_within(ch)).payload == 1
    assert ch.closed
    with pytest.raises(ChannelClosed):
        await ch.send(ChannelMessage(2))


# -- observers, stats, recovery ----------------------------------------------


async def test_observers_see_send_and_receive(redis_url: str) -> None:
    seen: list[tuple[Any, str]] = []

    async def observer(message: ChannelMessage[Any], ch: Any, phase: str) -> None:
        seen.append((message.payload, phase))

    def failing(message: ChannelMessage[Any], ch: Any, phase: str) -> None:
        raise RuntimeError("observer bug")

    ch = channel(redis_url, unique(), observers=[observer, failing])
    try:
        await ch.send(ChannelMessage("a"))
        ch.send_nowait(ChannelMessage("b"))
        for _ in range(100):  # until the writer has written "b"
            if (await ch.backlog()).length == 2:
                break
            await asyncio.sleep(0.01)
        assert (await receive_within(ch)).payload == "a"  # fetches both
        assert ch.receive_nowait().payload == "b"
        await asyncio.sleep(0)  # the nowait path schedules awaitable observers
        assert seen == [("a", "send"), ("b", "send"), ("a", "receive"), ("b", "receive")]
    finally:
        await ch.aclose()


async def test_empty_reflects_the_prefetch_buffer(redis_url: str) -> None:
    ch = channel(redis_url, unique(), batch_size=3)
    try:
        assert ch.empty() and ch.qsize() == 0
        with pytest.raises(asyncio.QueueEmpty):
            ch.receive_nowait()
        await ch.send_many(ChannelMessage(i) for i in range(5))
        assert ch.empty()  # in Redis, not fetched yet
        assert (await receive_within(ch)).payload == 0
        assert ch.qsize() == 2 and not ch.empty()
        assert [m.payload for m in await ch.receive_many(10)] == [1, 2]
        assert [m.payload for m in await ch.receive_many(10)] == [3, 4]
        stats = ch.stats()
        assert (stats.sent, stats.received, stats.peak_size) == (5, 5, 3)
    finally:
        await ch.aclose()


async def test_deleted_stream_is_recreated(redis_url: str) -> None:
    ch = channel(redis_url, unique())
    admin = admin_client(redis_url)
    try:
        await ch.send(ChannelMessage(1))
        assert (await receive_within(ch)).payload == 1
        await admin.delete(ch.key)
        await ch.send(ChannelMessage(2))
        assert (await receive_within(ch)).payload == 2
    finally:
        await ch.aclose()
        await admin.aclose()


async def test_shared_client_is_left_open(redis_url: str) -> None:
    client = admin_client(redis_url)
    try:
        async with RedisStreamChannel(unique(), client=client, group="g", block=0.05) as ch:
            await ch.send(ChannelMessage("shared"))
            assert (await receive_within(ch)).payload == "shared"
        assert await client.ping()
    finally:
        await client.aclose()


# -- connecting --------------------------------------------------------------


def test_tls_and_credentials_in_the_url_are_accepted() -> None:
    ch = RedisStreamChannel(
        "orders",
        url="rediss://alice:s3cret@redis.example:6380/2?ssl_cert_reqs=required",
        group="g",
        consumer="c",
    )
    kwargs = ch._redis._pool.connection_kwargs
    assert ch._redis._pool.connection_class is SSLConnection
    assert (kwargs["username"], kwargs["password"]) == ("alice", "s3cret")
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example", 6380, 2)
    assert "s3cret" not in repr(ch)
    assert ch.key == "spark:stream:{orders}" and ch.dead_letter_key == "spark:dead:{orders}"


def test_constructor_checks_its_arguments() -> None:
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(TypeError, match="exactly one"):
        RedisStreamChannel("s", group="g")
    with pytest.raises(TypeError, match="exactly one"):
        RedisStreamChannel("s", group="g", url=url, client=aioredis.from_url(url))
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStreamChannel("s", group="g", client=aioredis.from_url(url, decode_responses=True))
    with pytest.raises(ValueError, match="socket_timeout"):
        RedisStreamChannel("s", group="g", url=f"{url}?socket_timeout=1", block=2)
    # The default depends on redis-py.
    default = _socket_timeout(aioredis.ConnectionPool.from_url(url).connection_kwargs)
    if default is not None:
        with pytest.raises(ValueError, match="socket_timeout"):
            RedisStreamChannel("s", group="g", url=url, block=default)
    RedisStreamChannel("s", group="g", url=f"{url}?socket_timeout=90", block=60)
    with pytest.raises(ValueError, match="maxlen"):
        RedisStreamChannel("s", group="g", url=url, maxlen=0)
    with pytest.raises(TypeError, match="claim_idle"):
        RedisStreamChannel("s", group="g", url=url, claim_idle="30")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="group"):
        RedisStreamChannel("s", group="", url=url)
    with pytest.raises(ValueError, match="unknown codec"):
        RedisStreamChannel("s", group="g", url=url, codec="json")
    with pytest.raises(ValueError, match="retry_timeout"):
        RedisStreamChannel("s", group="g", url=url, retry_timeout=0)
    with pytest.raises(TypeError, match="retry_timeout"):
        RedisStreamChannel("s", group="g", url=url, retry_timeout="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="trim_acknowledged"):
        RedisStreamChannel("s", group="g", url=url, trim_acknowledged=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dead_letter_maxlen"):
        RedisStreamChannel("s", group="g", url=url, dead_letter_maxlen=0)
    with pytest.raises(TypeError, match="dead_letter_maxlen"):
        RedisStreamChannel("s", group="g", url=url, dead_letter_maxlen=1.5)  # type: ignore[arg-type]


async def test_username_and_password(server_url: str) -> None:
    admin = admin_client(server_url)
    user = unique("user")
    try:
        await admin.execute_command("ACL", "SETUSER", user, "on", ">pa55", "~*", "&*", "+@all")
        base = server_url.split("://", 1)[1]
        name = unique()
        async with RedisStreamChannel(
            name, url=f"redis://{user}:pa55@{base}", group="g", block=0.05
        ) as ch:
            await ch.send(ChannelMessage("authenticated"))
            assert (await receive_within(ch)).payload == "authenticated"
        refused = RedisStreamChannel(
            name, url=f"redis://{user}:wrong@{base}", group="g", block=0.05
        )
        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(refused.send(ChannelMessage("refused")), 5)
        await refused.aclose()
        with pytest.raises(AuthenticationError):  # entering checks the connection
            async with RedisStreamChannel(
                name, url=f"redis://{user}:wrong@{base}", group="g", block=0.05
            ):
                pytest.fail("entered with a wrong password")
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A TLS-only redis-server with a throwaway CA; skipped without openssl."""
    import shutil
    import subprocess

    if os.environ.get("SPARK_REDIS_URL"):
        pytest.skip("SPARK_REDIS_URL is set: not starting a TLS server")
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.skip("openssl or redis-server is missing")
    directory = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    key = ["-newkey", "rsa:2048", "-nodes"]
    # Extensions a strict verifier (Python 3.13's default context) insists on.
    ca_extensions = ["-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign"]  # fmt: skip
    openssl("req", "-x509", *key, "-days", "1", "-subj", "/CN=test-ca", *ca_extensions,
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", *key, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (directory / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectKeyIdentifier=hash\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    signing = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1"]
    openssl("x509", "-req", "-in", "server.csr", *signing, "-extfile", "san.ext",
            "-out", "server.crt")  # fmt: skip
    server = LocalRedisServer(
        tls=True,
        extra_args=(
            "--tls-cert-file",
            str(directory / "server.crt"),
            "--tls-key-file",
            str(directory / "server.key"),
            "--tls-ca-cert-file",
            str(directory / "ca.crt"),
            "--tls-auth-clients",
            "no",
        ),
    )
    try:
        server.start()
    except ServerUnavailable as error:
        pytest.skip(f"redis-server cannot serve TLS here: {error}")
    try:
        yield server.url, directory / "ca.crt"
    finally:
        server.stop()


async def test_tls_round_trip(tls_server: tuple[str, Path]) -> None:
    url, ca = tls_server
    async with RedisStreamChannel(
        unique(), url=f"{url}?ssl_ca_certs={ca}", group="g", block=0.05
    ) as ch:
        await ch.send(ChannelMessage({"secure": True}))
        assert (await receive_within(ch)).payload == {"secure": True}
    with pytest.raises(RedisConnectionError) as raised:  # entering checks the connection
        async with RedisStreamChannel(unique(), url=url, group="g", block=0.05):
            pytest.fail("entered a server whose certificate is not trusted")
    # redis-py names the cause from 5.1 on; 5.0 says "Error 1 connecting".
    assert "certificate" in str(raised.value).lower() or "Error 1 " in str(raised.value)


# -- the test server itself ----------------------------------------------------


def test_local_server_is_stopped_by_pid_and_leaves_nothing() -> None:
    server = LocalRedisServer()
    try:
        server.start()
    except ServerUnavailable as error:
        pytest.skip(str(error))
    process, directory = server.process, server.directory
    assert process is not None and server.url.startswith("redis://127.0.0.1:")
    server.stop()
    assert process.poll() is not None
    assert not directory.exists()
    server.stop()  # twice is fine


def test_missing_server_binary_is_reported() -> None:
    with pytest.raises(ServerUnavailable, match="not installed"):
        LocalRedisServer("no-such-redis-server").start()


def test_unavailable_redis_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import redis_support

    monkeypatch.setattr(redis_support, "REQUIRE_REDIS", False)
    with pytest.raises(pytest.skip.Exception):
        redis_support.unavailable("no server")
    monkeypatch.setattr(redis_support, "REQUIRE_REDIS", True)
    with pytest.raises(pytest.fail.Exception, match="SPARK_REQUIRE_REDIS"):
        redis_support.unavailable("no server")


# -- failing fast ------------------------------------------------------------


def unreachable_url() -> str:
    """A Redis URL on a local port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def test_entering_raises_at_once_when_redis_is_unreachable() -> None:
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        async with RedisStreamChannel("s", group="g", url=unreachable_url()):
            pytest.fail("entered a channel whose server is unreachable")
    assert time.monotonic() - started < 5


async def test_send_raises_once_retry_timeout_is_over() -> None:
    ch = RedisStreamChannel("s", group="g", url=unreachable_url(), retry_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        await ch.send(ChannelMessage(1))
    assert 0.3 <= time.monotonic() - started < 5
    await asyncio.wait_for(ch.aclose(), 5)  # nothing left to write: closes quietly


@pytest.mark.parametrize("reported_by", ["aclose", "flush", "next send"])
async def test_nowait_messages_given_up_on_are_reported_once(reported_by: str) -> None:
    ch = RedisStreamChannel("s", group="g", url=unreachable_url(), retry_timeout=0.3)
    for number in range(3):
        ch.send_nowait(ChannelMessage(number))
    with pytest.raises(MessagesNotWritten, match="3 message") as raised:
        if reported_by == "aclose":
            await asyncio.wait_for(ch.aclose(), 5)
        elif reported_by == "flush":
            await asyncio.wait_for(ch.flush(), 5)
        else:
            await asyncio.sleep(1)  # the writer gives up meanwhile
            ch.send_nowait(ChannelMessage("next"))
    assert raised.value.count == 3
    assert isinstance(raised.value.__cause__, RedisConnectionError)
    if reported_by != "aclose":
        with pytest.raises(RedisConnectionError):
            await ch.send(ChannelMessage("again"))  # reported once; this one fails itself
        await asyncio.wait_for(ch.aclose(), 5)


async def test_a_cancelled_aclose_reports_what_it_did_not_write() -> None:
    ch = RedisStreamChannel("s", group="g", url=unreachable_url(), retry_timeout=None)
    for number in range(3):
        ch.send_nowait(ChannelMessage(number))
    waiting = asyncio.ensure_future(ch.send(ChannelMessage("waiting")))
    closing = asyncio.ensure_future(ch.aclose())
    await asyncio.sleep(0.2)  # the writer retries, forever
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    with pytest.raises(ChannelClosed, match="interrupted"):
        await waiting
    with pytest.raises(MessagesNotWritten, match="3 message") as raised:
        await asyncio.wait_for(ch.aclose(), 5)
    assert isinstance(raised.value.__cause__, ChannelClosed)
    await asyncio.wait_for(ch.aclose(), 5)  # reported once


async def test_an_aclose_cancelled_before_it_started_is_finished_by_the_next(
    redis_url: str,
) -> None:
    name = unique()
    ch = channel(redis_url, name, consumer="first")
    await ch.send_many(ChannelMessage(i) for i in range(5))
    held = await receive_within(ch)  # and the rest prefetched
    closing = asyncio.ensure_future(ch.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.wait_for(ch.aclose(), 5)
    assert held.ack is not None
    with pytest.raises(ChannelClosed, match="stays pending"):
        await held.ack()  # released: the channel takes no more acks
    other = channel(redis_url, name, consumer="second", claim_idle=60)
    try:  # the prefetched four were handed back: taken at once, not after claim_idle
        assert sorted([(await receive_within(other)).payload for _ in range(4)]) == [1, 2, 3, 4]
    finally:
        await other.aclose()


async def test_an_aclose_cancelled_during_a_write_leaves_nobody_waiting() -> None:
    server = LocalRedisServer(extra_args=("--enable-debug-command", "yes"))
    await asyncio.to_thread(server.start)
    ch = channel(server.url, unique())
    admin = aioredis.Redis.from_url(server.url)
    try:
        await ch.backlog()
        stall = asyncio.ensure_future(admin.execute_command("DEBUG", "SLEEP", "0.5"))
        await asyncio.sleep(0.05)  # the server is busy: the next write stays under way
        ch.send_nowait(ChannelMessage("queued"))
        waiting = asyncio.ensure_future(ch.send(ChannelMessage("waiting")))
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(ch.aclose())
        await asyncio.sleep(0.05)
        assert not closing.done()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(waiting, 5)
        # Reported (the batch may have reached Redis all the same), never hanging.
        with pytest.raises(MessagesNotWritten, match="1 message"):
            await asyncio.wait_for(ch.aclose(), 5)
        await stall
    finally:
        await ch.aclose()
        await admin.aclose()
        await asyncio.to_thread(server.stop)


async def test_an_entry_with_thousands_of_fields_is_dead_lettered(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name)
    admin = admin_client(redis_url)
    try:
        await ch.backlog()
        fields = {f"f{i}": str(i) for i in range(4100)}
        await admin.xadd(ch.key, fields)
        await ch.send(ChannelMessage("after"))
        assert (await receive_within(ch)).payload == "after"
        [letter] = await ch.dead_letters()
        assert letter.reason.startswith("undecodable: not a spark message")
        assert len(letter.fields) == 4100 and letter.fields[b"f4099"] == b"4099"
        assert (await ch.backlog()).pending == 1  # only "after"
    finally:
        await ch.aclose()
        await admin.aclose()


@pytest.mark.timeout_s(60)
async def test_a_server_restarted_within_retry_timeout_loses_nothing() -> None:
    server = LocalRedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    await asyncio.to_thread(server.start)
    name = unique()
    producer = RedisStreamChannel(name, url=server.url, group="g", block=0.05, retry_timeout=30)
    consumer = RedisStreamChannel(
        name, url=server.url, group="g", block=0.05, consumer="c", retry_timeout=30
    )
    try:
        await producer.send(ChannelMessage("before"))
        first = await receive_within(consumer)
        assert first.ack is not None
        await first.ack()
        await asyncio.to_thread(server._terminate)  # the server dies mid-stream
        for number in range(3):
            producer.send_nowait(ChannelMessage(number))  # queued; the writer retries
        sending = asyncio.ensure_future(producer.send(ChannelMessage("waiting")))
        with pytest.raises(RedisConnectionError):  # receive says so; the next one retries
            await receive_within(consumer)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.restart)
        await asyncio.wait_for(sending, 20)
        await asyncio.wait_for(producer.flush(), 20)
        payloads = []
        while len(payloads) < 4:
            message = await receive_within(consumer, 20)
            payloads.append(message.payload)
            assert message.ack is not None
            await message.ack()
        assert payloads == [0, 1, 2, "waiting"]
        assert await nothing_within(consumer, 0.3)
        assert (await consumer.backlog()).pending == 0
    finally:
        await producer.aclose()
        await consumer.aclose()
        await asyncio.to_thread(server.stop)


async def test_nowait_messages_redis_refuses_are_reported(redis_url: str) -> None:
    name = unique()
    admin = admin_client(redis_url)
    async with channel(redis_url, name) as ch:
        await admin.set(ch.key, "not a stream")  # every write now fails with WRONGTYPE
        ch.send_nowait(ChannelMessage(1))
        with pytest.raises(MessagesNotWritten, match="1 message"):
            await ch.flush()
        await admin.delete(ch.key)
    await admin.aclose()


async def test_flush_returns_once_queued_messages_are_written(redis_url: str) -> None:
    name = unique()
    admin = admin_client(redis_url)
    async with channel(redis_url, name) as ch:
        for number in range(5):
            ch.send_nowait(ChannelMessage(number))
        await ch.flush()
        assert await admin.xlen(ch.key) == 5
    await admin.aclose()


# -- bounded dead letters, idle consumers ----------------------------------------


async def test_the_dead_letter_stream_keeps_the_newest_up_to_its_cap(redis_url: str) -> None:
    name = unique()
    ch = channel(redis_url, name, dead_letter_maxlen=3)
    admin = admin_client(redis_url)
    try:
        await ch.backlog()  # creates the stream and group
        for number in range(5):
            await admin.xadd(ch.key, {"unknown": str(number)})  # undecodable: dead-lettered
        await ch.send(ChannelMessage("fine"))
        assert (await receive_within(ch)).payload == "fine"
        letters = await ch.dead_letters()
        assert [letter.fields for letter in letters] == [
            {b"unknown": str(number).encode()} for number in (2, 3, 4)
        ]
        assert ch.dead_lettered == 5
    finally:
        await ch.aclose()
        await admin.aclose()


async def test_prune_consumers_removes_only_idle_ones_holding_nothing(redis_url: str) -> None:
    name = unique()
    async with channel(redis_url, name, consumer="done") as done:
        await done.send(ChannelMessage("handled"))
        message = await receive_within(done)
        await message.ack()
    holder = channel(redis_url, name, consumer="holder")
    await holder.send(ChannelMessage("held"))
    await receive_within(holder)  # never acknowledged: stays pending for "holder"
    await holder.aclose()
    await asyncio.sleep(0.2)
    async with channel(redis_url, name, consumer="pruner") as pruner:
        assert await pruner.prune_consumers(idle=0.1) == ["done"]
        admin = admin_client(redis_url)
        rows = await admin.xinfo_consumers(pruner.key, "workers")
        await admin.aclose()
        assert [row["name"].decode() for row in rows] == ["holder"]  # pruner never read
        assert await pruner.prune_consumers(idle=3600) == []


# -- trimming what every group acknowledged ---------------------------------------


async def stream_length_becomes(admin: aioredis.Redis, key: str, most: int) -> bool:
    for _ in range(200):
        if await admin.xlen(key) <= most:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_acknowledged_entries_are_trimmed(redis_url: str) -> None:
    name = unique()
    admin = admin_client(redis_url)
    async with channel(redis_url, name) as ch:
        await ch.send_many([ChannelMessage(number) for number in range(50)])
        first = await ch.receive_many(20)
        await ch.ack_many(first)
        # the 30 fetched (prefetched) but not acknowledged stay
        assert await stream_length_becomes(admin, ch.key, 30)
        assert await admin.xlen(ch.key) == 30
        rest = [await receive_within(ch) for _ in range(30)]
        assert [m.payload for m in first + rest] == list(range(50))
        await asyncio.sleep(1.1)  # at most one trim a second
        await ch.ack_many(rest)
        assert await stream_length_becomes(admin, ch.key, 1)
    await admin.aclose()


async def test_trimming_keeps_what_any_group_still_needs(redis_url: str) -> None:
    name = unique()
    admin = admin_client(redis_url)
    slow = channel(redis_url, name, group="slow")
    await slow.backlog()  # the group exists, and has read nothing
    async with channel(redis_url, name, group="fast") as fast:
        await fast.send_many([ChannelMessage(number) for number in range(10)])
        await fast.ack_many([await receive_within(fast) for _ in range(10)])
        await asyncio.sleep(0.2)
        assert await admin.xlen(fast.key) == 10  # "slow" has read none of them
        held = await receive_within(slow)  # pending for "slow" from now on
        await slow.ack_many([await receive_within(slow) for _ in range(9)])
        await asyncio.sleep(1.1)
        await fast.send(ChannelMessage("more"))
        await fast.ack_many([await receive_within(fast)])
        await asyncio.sleep(0.2)
        assert await admin.xlen(fast.key) == 11  # from the one "slow" still holds
        await held.ack()
    await slow.aclose()
    await admin.aclose()


async def test_trimming_can_be_turned_off(redis_url: str) -> None:
    name = unique()
    admin = admin_client(redis_url)
    async with channel(redis_url, name, trim_acknowledged=False) as ch:
        await ch.send_many([ChannelMessage(number) for number in range(10)])
        await ch.ack_many([await receive_within(ch) for _ in range(10)])
        await asyncio.sleep(0.2)
        assert await admin.xlen(ch.key) == 10
    await admin.aclose()
