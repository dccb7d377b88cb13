"""RedisStreamChannel as node mailboxes and as a graph's channel_factory, and the example."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis_support import EXTERNAL_URL, require_extra, unique

require_extra()

from spark.backends.redis import RedisStreamChannel  # noqa: E402
from spark.graphs import Budget, Graph, NodeMessage, RunStatus, Task, TaskType  # noqa: E402
from spark.nodes import Edge, Node  # noqa: E402
from spark.nodes.channels import BaseChannel, ChannelMessage  # noqa: E402

# Every test runs each build's worker loop (see conftest.node_build).
pytestmark = pytest.mark.usefixtures("node_build")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "distributed_pipeline.py"


class Double(Node):
    def process(self, payload: Any) -> Any:
        return payload * 2


class Increment(Node):
    async def process(self, payload: Any) -> Any:
        await asyncio.sleep(0)
        return payload + 1


class Picky(Node):
    def process(self, payload: Any) -> Any:
        if payload == "bad":
            raise ValueError("cannot handle this one")
        return payload


class Mailboxes:
    """One Redis stream per node: its mailbox reads it, edges into the node write to it."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.prefix = unique("graph")
        self.options = {"block": 0.05, **options}
        self.opened: list[RedisStreamChannel] = []
        self.edges: dict[str, RedisStreamChannel] = {}

    def _open(self, stream: str, **options: Any) -> RedisStreamChannel:
        channel = RedisStreamChannel(
            f"{self.prefix}:{stream}", url=self.url, group="nodes", **self.options, **options
        )
        self.opened.append(channel)
        return channel

    def mailbox(self, node_id: str) -> RedisStreamChannel:
        return self._open(node_id, consumer=f"{node_id}-worker")

    def channel_factory(self, edge: Edge) -> BaseChannel:
        channel = self.edges[edge.id] = self._open(edge.target.id)
        return channel

    async def aclose(self) -> None:
        for channel in self.opened:
            await channel.aclose()


async def test_pipeline_over_redis_mailboxes_and_edges(redis_url: str) -> None:
    streams = Mailboxes(redis_url)
    try:
        first = Double(id="double", mailbox=streams.mailbox("double"))
        second = Increment(id="increment", mailbox=streams.mailbox("increment"))
        third = Double(id="double-again", mailbox=streams.mailbox("double-again"))
        first >> second >> third
        graph = Graph(start=first, channel_factory=streams.channel_factory)
        inputs: list[Any] = [NodeMessage(n, {"trace_id": f"t{n}"}) for n in range(20)]
        task = Task(
            inputs=[*inputs, ChannelMessage(None, is_shutdown=True)],
            type=TaskType.LONG_RUNNING,
            budget=Budget(max_seconds=20),
        )
        result = await graph.run(task)
        assert result.status is RunStatus.COMPLETED, result.error
        assert result.outputs == [(n * 2 + 1) * 2 for n in range(20)]
        assert result.processed == {"double": 20, "increment": 20, "double-again": 20}
        # Every message and every shutdown was acknowledged: nothing is left to redeliver.
        for node in (first, second, third):
            assert isinstance(node.mailbox, RedisStreamChannel)
            assert (await node.mailbox.backlog()).outstanding == 0
        # Each edge carried its 20 results and one shutdown through Redis.
        assert [c.stats().sent for c in streams.edges.values()] == [21, 21]
    finally:
        await streams.aclose()


async def test_graph_stop_wakes_workers_on_redis_mailboxes(redis_url: str) -> None:
    streams = Mailboxes(redis_url, block=0.5)
    try:
        first = Increment(id="a", mailbox=streams.mailbox("a"))
        second = Increment(id="b", mailbox=streams.mailbox("b"))
        first >> second
        graph = Graph(start=first, channel_factory=streams.channel_factory)
        task = Task(inputs=[NodeMessage(1)], type=TaskType.LONG_RUNNING, grace_seconds=5)
        running = asyncio.ensure_future(graph.run(task))
        for _ in range(200):
            if first.stats().processed and second.stats().processed:
                break
            await asyncio.sleep(0.01)
        started = asyncio.get_running_loop().time()
        assert graph.stop()
        result = await asyncio.wait_for(running, 5)
        assert result.status is RunStatus.STOPPED
        assert result.cancelled == []  # woken by the stop requests, not cancelled after grace
        assert asyncio.get_running_loop().time() - started < 1.0
        assert result.outputs == [3]
        # The stop requests were delivered locally, never written to the shared streams.
        assert isinstance(first.mailbox, RedisStreamChannel)
        assert (await first.mailbox.backlog()).length == 1
    finally:
        await streams.aclose()


async def test_failing_message_is_retried_then_dead_lettered(redis_url: str) -> None:
    streams = Mailboxes(redis_url, claim_idle=0.2, max_deliveries=2)
    try:
        mailbox = streams.mailbox("picky")
        node = Picky(id="picky", mailbox=mailbox)
        graph = Graph(start=node)
        task = Task(inputs=[NodeMessage("bad"), NodeMessage("good")], type=TaskType.LONG_RUNNING)
        running = asyncio.ensure_future(graph.run(task))
        try:
            for _ in range(200):
                letters = await mailbox.dead_letters()
                if letters:
                    break
                await asyncio.sleep(0.02)
        finally:
            graph.stop()
            result = await asyncio.wait_for(running, 5)
        [letter] = letters
        assert letter.delivery_count == 3 and "max_deliveries=2" in letter.reason
        assert result.outputs == ["good"]
        assert result.failed == {"picky": 2}  # the first delivery and the redelivery
        assert (await mailbox.backlog()).outstanding == 0
    finally:
        await streams.aclose()


@pytest.mark.parametrize(
    "crash",
    [
        pytest.param(None, id="no-crash"),
        # Square worker 0 killed part-way (or while starting, on a slow machine).
        pytest.param("0.8", id="crash"),
        # Killed once the work is done; with the old protocol it had taken its
        # shutdown by then, and the restarted worker then took the other
        # worker's shutdown or waited for one forever.
        pytest.param("3", id="late-crash"),
    ],
)
@pytest.mark.parametrize("topology", ["server", "cluster"])
def test_distributed_example(topology: str, crash: str | None) -> None:
    command = [sys.executable, str(EXAMPLE), "--count", "200"]
    if EXTERNAL_URL is not None:
        pytest.skip("the example uses fixed stream names; it runs on its own server")
    if topology == "cluster":
        command.append("--cluster")
    if crash is not None:
        command += ["--crash", crash]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "collected 200 squares" in result.stdout
    assert "every number squared exactly once" in result.stdout
    if crash is not None:
        assert "killed square worker 0" in result.stdout
