"""A three-stage pipeline, each stage in its own OS process, connected by Redis Streams.

    generate (1 process) --"square" stream--> square (2 processes) --"collect" stream--> collect

Each process runs a graph of one working node. Its successor, the next stage,
lives in other processes: a ``RemoteStage`` node stands in for it, and the
graph's ``channel_factory`` routes the edge into that stage's Redis stream.
The middle stage is scaled out by starting it twice: both processes read the
"square" stream as consumers of one group, so each number is squared by one
of them. With ``--crash``, the first square worker is killed with SIGKILL
part-way and started again under the same consumer name; it first takes back
what it held, and nothing is lost.

Delivery is at least once, so the collect stage drops duplicates by the
``trace_id`` that every stage passes along. Shutdown travels with the data:
the generator sends one shutdown per square worker, and each square worker
sends one to the collector, which stops once it has heard from all of them.

Run it with ``python examples/distributed_pipeline.py`` (starts a throwaway
``redis-server``, which must be installed) or point it at a server with
``--url redis://host:6379/0``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from spark.backends.redis import RedisStreamChannel
from spark.graphs import Graph, NodeMessage, Task, TaskType
from spark.nodes import Edge, Node
from spark.nodes.channels import BaseChannel, ChannelMessage


class RemoteStage(Node):
    """Stands for a stage that runs in other processes: nothing to do here."""

    async def go(self) -> None:
        return


class Stage(Node):
    """One stage of the pipeline; several processes may run the same stage.

    It stops after ``shutdowns`` shutdown messages (one per worker of the
    stage before it), then sends ``downstream_workers`` shutdowns on
    ``output``, one for each worker of the next stage.
    """

    def __init__(
        self,
        name: str,
        *,
        shutdowns: int = 1,
        output: BaseChannel | None = None,
        downstream_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, live=True, **kwargs)
        self.shutdowns = shutdowns
        self.output = output
        self.downstream_workers = downstream_workers
        self.duplicates = 0

    async def go(self) -> None:
        seen: set[str] = set()
        heard = 0
        async for message in self.mailbox:
            if message.is_shutdown:
                heard += 1
                if heard == self.shutdowns:
                    break
                continue
            trace_id = message.metadata.get("trace_id")
            if trace_id in seen:  # a redelivery of something already handled
                self.duplicates += 1
            else:
                result = await self.handle(message.payload)
                await self.emit(result, parent=message)
                if trace_id is not None:
                    seen.add(trace_id)
            if message.ack is not None:
                await message.ack()
        # Done: prefetched entries go back to the other workers of this stage now.
        self.mailbox.close()
        for _ in range(self.downstream_workers):
            assert self.output is not None
            await self.output.send(ChannelMessage(None, {"source_node": self.id}, is_shutdown=True))

    async def handle(self, payload: Any) -> Any:
        return payload


class Square(Stage):
    def __init__(self, worker: int, **kwargs: Any) -> None:
        super().__init__("square", id=f"square-{worker}", **kwargs)
        self.worker = worker

    async def handle(self, payload: Any) -> Any:
        await asyncio.sleep(0.002)  # pretend this is real work
        return {"n": payload, "square": payload * payload, "worker": self.worker}


def stream(url: str, stage: str, **options: Any) -> RedisStreamChannel:
    """The channel into ``stage``: the stream is named after it, and so is its group."""
    return RedisStreamChannel(stage, url=url, group=stage, **options)


async def run_stage(role: str, url: str, index: int, count: int, workers: int) -> None:
    channels: list[RedisStreamChannel] = []

    def opened(channel: RedisStreamChannel) -> RedisStreamChannel:
        channels.append(channel)
        return channel

    inputs: list[Any] = []
    if role == "generate":
        square = opened(stream(url, "square"))
        node: Stage = Stage("generate", output=square, downstream_workers=workers)
        node >> RemoteStage(name="square")
        outputs = {"square": square}
        # The inputs: the numbers, then the shutdown that ends this stage.
        inputs = [NodeMessage(n) for n in range(count)] + [ChannelMessage(None, is_shutdown=True)]
    elif role == "square":
        collect = opened(stream(url, "collect"))
        mailbox = opened(stream(url, "square", consumer=f"square-{index}", claim_idle=2.0))
        node = Square(index, mailbox=mailbox, output=collect, downstream_workers=1)
        node >> RemoteStage(name="collect")
        outputs = {"collect": collect}
    else:
        mailbox = opened(stream(url, "collect", consumer="collect-0", claim_idle=2.0))
        node = Stage("collect", mailbox=mailbox, shutdowns=workers)
        outputs = {}

    def channel_factory(edge: Edge) -> BaseChannel:
        return outputs[edge.target.name]

    graph = Graph(start=node, channel_factory=channel_factory)
    try:
        result = await graph.run(Task(inputs=inputs, type=TaskType.LONG_RUNNING))
    finally:
        for channel in channels:
            await channel.aclose()
    if role == "collect":
        print(json.dumps({"results": result.outputs, "duplicates": node.duplicates}), flush=True)


def spawn(role: str, url: str, index: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--role", role, "--url", url, "--index", str(index)]
    command += ["--count", str(args.count), "--workers", str(args.workers)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def launch(args: argparse.Namespace, url: str) -> int:
    """Start every stage's processes, wait for them, and check the collector's results."""
    started = time.monotonic()
    processes = [spawn("collect", url, 0, args)]
    squares = [spawn("square", url, i, args) for i in range(args.workers)]
    processes += squares
    processes.append(spawn("generate", url, 0, args))
    try:
        if args.crash:
            time.sleep(args.crash)
            victim = squares[0]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            print(f"killed square worker 0 (pid {victim.pid}) with SIGKILL; restarting it")
            processes.append(spawn("square", url, 0, args))
        output, _ = processes[0].communicate(timeout=120)
        for process in processes[1:]:
            process.wait(timeout=30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    report = json.loads(output)
    results = report["results"]
    numbers = sorted(result["n"] for result in results)
    per_worker = {w: sum(1 for r in results if r["worker"] == w) for w in range(args.workers)}
    print(f"collected {len(results)} squares in {time.monotonic() - started:.2f} s")
    print(f"squares per worker: {per_worker}")
    print(f"duplicates dropped by the collector: {report['duplicates']}")
    print(f"sum of squares: {sum(result['square'] for result in results)}")
    ok = numbers == list(range(args.count)) and all(r["square"] == r["n"] ** 2 for r in results)
    print("every number squared exactly once" if ok else "RESULTS ARE WRONG")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis server (default: start a throwaway one)")
    parser.add_argument("--count", type=int, default=500, help="numbers to square")
    parser.add_argument("--workers", type=int, default=2, help="processes for the middle stage")
    parser.add_argument(
        "--crash",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="SIGKILL square worker 0 after this long, then restart it",
    )
    parser.add_argument("--role", choices=["generate", "square", "collect"], help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role is not None:
        asyncio.run(run_stage(args.role, args.url, args.index, args.count, args.workers))
        return 0
    if args.url is not None:
        # Fresh stream names would be cleaner on a shared server; this keeps the demo short.
        print("using", args.url, "- the 'square' and 'collect' streams must not be in use")
        return launch(args, args.url)
    from spark.backends._redis_server import LocalRedisServer

    with LocalRedisServer() as server:
        print(f"started redis-server on {server.url} (pid {server.pid})")
        return launch(args, server.url)


if __name__ == "__main__":
    sys.exit(main())
