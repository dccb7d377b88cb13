"""RedisStreamChannel throughput on loopback: pipelined sends, batched receives with
grouped acks, and a Node's default loop acknowledging each message; and, as
the baseline of batched receives, plain redis-py reading and acknowledging
the same entries (XREADGROUP COUNT 100 + XACK, nothing decoded).

Under ``make bench`` (pytest-benchmark) each case reports its time per round
(the receive rounds include writing the messages they then read) and, in
``extra_info``, messages per second over the measured part alone. Run as a script for a plain
report: ``python benchmarks/bench_redis.py [--url redis://...] [--count N]``.
Both start a throwaway ``redis-server`` unless ``SPARK_REDIS_URL``/``--url``
names one, and are skipped without it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

COUNT = 20_000


@dataclass(frozen=True)
class Measured:
    """A measured part of a round: wall-clock seconds, and this process's CPU seconds.

    The server is another process: ``cpu`` is the client's share alone.
    """

    wall: float
    cpu: float


def _start() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> Measured:
    return Measured(time.perf_counter() - start[0], time.process_time() - start[1])


PAYLOAD = {"user": 12345, "event": "click", "tags": ["a", "b"], "blob": b"x" * 32}


def _channel(url: str, name: str, **options: Any) -> Any:
    from spark.backends.redis import RedisStreamChannel

    return RedisStreamChannel(name, url=url, group="bench", **options)


def _messages(count: int) -> list[Any]:
    from spark.nodes.channels import ChannelMessage

    return [ChannelMessage(PAYLOAD, {"seq": i}) for i in range(count)]


async def pipelined_send(url: str, count: int, batch_size: int) -> Measured:
    """Time to write ``count`` messages with send_many (pipelined XADDs)."""
    messages = _messages(count)
    channel = _channel(url, f"bench-{uuid.uuid4().hex}", batch_size=batch_size)
    try:
        await channel.backlog()  # connect and create the group outside the timing
        started = _start()
        await channel.send_many(messages)
        return _since(started)
    finally:
        await channel.aclose()


async def batched_receive(url: str, count: int, batch_size: int) -> Measured:
    """Time to receive and acknowledge ``count`` messages, a batch and one XACK at a time."""
    name = f"bench-{uuid.uuid4().hex}"
    producer = _channel(url, name, batch_size=1000)
    await producer.send_many(_messages(count))
    await producer.aclose()
    consumer = _channel(url, name, batch_size=batch_size)
    try:
        await consumer.backlog()
        started = _start()
        received = 0
        while received < count:
            batch = await consumer.receive_many(batch_size)
            received += len(batch)
            await consumer.ack_many(batch)
        elapsed = _since(started)
        assert (await consumer.backlog()).pending == 0
        return elapsed
    finally:
        await consumer.aclose()


async def plain_redis_py(url: str, count: int, batch_size: int) -> Measured:
    """Time for plain redis-py to read and acknowledge ``count`` entries the same way.

    The baseline of ``batched receive + grouped ack``: the same entries,
    XREADGROUP COUNT ``batch_size`` then one XACK per batch, with redis-py's
    own reply parsing and nothing decoded.
    """
    from redis.asyncio import Redis

    name = f"bench-{uuid.uuid4().hex}"
    producer = _channel(url, name, batch_size=1000)
    await producer.send_many(_messages(count))
    await producer.aclose()
    client = Redis.from_url(url)
    key = producer.key
    try:
        await client.ping()
        started = _start()
        received = 0
        while received < count:
            reply = await client.xreadgroup("bench", "plain", {key: ">"}, count=batch_size)
            ids = [entry_id for _, entries in reply for entry_id, _ in entries]
            received += len(ids)
            await client.xack(key, "bench", *ids)
        elapsed = _since(started)
        assert (await client.xpending(key, "bench"))["pending"] == 0
        return elapsed
    finally:
        await client.aclose()


async def node_loop(url: str, count: int, batch_size: int) -> Measured:
    """Time for a Node's default loop to handle ``count`` messages from a Redis mailbox.

    ``process`` does nothing and returns nothing (a sink); every message is
    acknowledged by the loop, as in a pipeline stage.
    """
    from spark.nodes import Node
    from spark.nodes.channels import ChannelMessage

    class Sink(Node):
        def process(self, payload: Any) -> None:
            return None

    name = f"bench-{uuid.uuid4().hex}"
    producer = _channel(url, name, batch_size=1000)
    await producer.send_many([*_messages(count), ChannelMessage(None, is_shutdown=True)])
    await producer.aclose()
    mailbox = _channel(url, name, batch_size=batch_size)
    try:
        await mailbox.backlog()
        node = Sink(mailbox=mailbox)
        started = _start()
        await node.go()
        elapsed = _since(started)
        assert node.stats().processed == count and (await mailbox.backlog()).pending == 0
        return elapsed
    finally:
        await mailbox.aclose()


SCENARIOS: dict[str, Callable[[str, int, int], Coroutine[Any, Any, Measured]]] = {
    "pipelined send": pipelined_send,
    "batched receive + grouped ack": batched_receive,
    "plain redis-py XREADGROUP + XACK": plain_redis_py,
    "node loop, ack per message": node_loop,
}


# -- pytest-benchmark ----------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    pytest.importorskip("redis")
    pytest.importorskip("msgspec")
    url = os.environ.get("SPARK_REDIS_URL")
    if url:
        yield url
        return
    from spark.backends._redis_server import LocalRedisServer, ServerUnavailable

    server = LocalRedisServer()
    try:
        server.start()
    except ServerUnavailable as error:
        pytest.skip(f"no redis-server: {error}")
    try:
        yield server.url
    finally:
        server.stop()


def _bench(benchmark: Any, loop: asyncio.AbstractEventLoop, scenario: str, url: str) -> None:
    """Time whole rounds; ``extra_info`` has the rate over the measured part of each round."""
    benchmark.group = f"redis {type(loop).__module__}"
    measured: list[Measured] = []

    def round_() -> None:
        measured.append(loop.run_until_complete(SCENARIOS[scenario](url, COUNT, 100)))

    benchmark.pedantic(round_, rounds=3, warmup_rounds=1)
    rounds = measured[1:]
    wall = statistics.median(m.wall for m in rounds)
    cpu = statistics.median(m.cpu for m in rounds)
    benchmark.extra_info["messages_per_second"] = round(COUNT / wall)
    benchmark.extra_info["client_cpu_us_per_message"] = round(cpu / COUNT * 1e6, 2)


def bench_redis_pipelined_send(benchmark: Any, loop: Any, redis_url: str) -> None:
    _bench(benchmark, loop, "pipelined send", redis_url)


def bench_redis_batched_receive_grouped_acks(benchmark: Any, loop: Any, redis_url: str) -> None:
    _bench(benchmark, loop, "batched receive + grouped ack", redis_url)


def bench_redis_plain_redis_py(benchmark: Any, loop: Any, redis_url: str) -> None:
    _bench(benchmark, loop, "plain redis-py XREADGROUP + XACK", redis_url)


def bench_redis_node_loop(benchmark: Any, loop: Any, redis_url: str) -> None:
    _bench(benchmark, loop, "node loop, ack per message", redis_url)


# -- as a script -----------------------------------------------------------------


def _loops() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:
        return loops
    loops["uvloop"] = uvloop.new_event_loop
    return loops


def report(url: str, count: int, rounds: int, batches: list[int]) -> None:
    """Print each scenario's rate and client CPU; then batched receive against plain redis-py.

    Each round runs every scenario once, so that the machine's drifts hit
    all of them alike; the figures are medians over the rounds.
    """
    print(f"{count} messages per round, median of {rounds} rounds, server {url}")
    for loop_name, new_loop in _loops().items():
        for batch in batches:
            samples: dict[str, list[Measured]] = {scenario: [] for scenario in SCENARIOS}
            loop = new_loop()
            try:
                for _ in range(rounds):
                    for scenario, run in SCENARIOS.items():
                        samples[scenario].append(loop.run_until_complete(run(url, count, batch)))
            finally:
                loop.close()
            rate: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for scenario, measured in samples.items():
                rate[scenario] = count / statistics.median(m.wall for m in measured)
                cpu[scenario] = statistics.median(m.cpu for m in measured) / count * 1e6
                print(
                    f"  {loop_name:8} {scenario:34} batch {batch:5}: {rate[scenario]:10,.0f} msg/s"
                    f"  client CPU {cpu[scenario]:5.2f} us/msg"
                )
            ours, plain = "batched receive + grouped ack", "plain redis-py XREADGROUP + XACK"
            print(
                f"  {loop_name:8} batched receive / plain redis-py, batch {batch}: "
                f"throughput {rate[ours] / rate[plain]:.2f}, "
                f"messages per client CPU second {cpu[plain] / cpu[ours]:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description="RedisStreamChannel throughput")
    parser.add_argument("--url", default=os.environ.get("SPARK_REDIS_URL"))
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[100, 500])
    args = parser.parse_args()
    if args.url:
        report(args.url, args.count, args.rounds, args.batch)
        return
    from spark.backends._redis_server import LocalRedisServer

    with LocalRedisServer() as server:
        report(server.url, args.count, args.rounds, args.batch)


if __name__ == "__main__":
    main()
