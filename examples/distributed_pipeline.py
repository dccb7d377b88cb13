"""A three-stage pipeline, each stage in its own OS process, connected by Redis Streams.

    generate (1 process) --"square" stream--> square (2 processes) --"collect" stream--> collect

Each process runs a graph of one working node. Its successor, the next stage,
lives in other processes: a ``RemoteStage`` node stands in for it, and the
graph's ``channel_factory`` routes the edge into that stage's Redis stream.
The middle stage is scaled out by starting it twice: both processes read the
"square" stream as consumers of one group, so each number is squared by one
of them. With ``--crash``, the first square worker is killed with SIGKILL
0.8 s after the start (``--crash SECONDS``: after SECONDS, part-way or once
the work is done) and started again under the same consumer name; it first
takes back what it held, and nothing is lost.

Delivery is at least once, so the collect stage drops duplicates by the
``trace_id`` that every stage passes along.

Ending the stages: a shutdown written to a stream goes to whichever consumer
of the group fetches it first, so sending "one shutdown per worker" works only
if the stream's readers are exactly the workers counted, each stopping at its
first shutdown. Only the launcher, which starts, kills and restarts the
processes, knows who they are, so only the launcher sends shutdowns (see
``close_stage``). Once a stage's upstream processes have exited, none of its
own will be restarted any more, and its group has acknowledged every entry,
the launcher sends one shutdown per live process of the stage and waits for
them to exit; then it does the same for the next stage.

(Stages forwarding shutdowns themselves, the generator one per square worker
and each square worker one to the collector, is not crash-safe: a square
worker killed after it had taken its shutdown comes back as a third reader of
a stream holding two, and either takes the other worker's shutdown, which then
never stops, or waits forever for one.)

Run it with ``python examples/distributed_pipeline.py [--crash [SECONDS]]``
(starts a throwaway ``redis-server``, which must be installed; with
``--cluster``, a throwaway 3-master Redis Cluster, which needs ``redis-cli``
too) or point it at a server, or at any node of a cluster, with
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

    It handles messages until the first shutdown: for the generator, the one
    at the end of its inputs; for the other stages, the one the launcher
    sends when the stage's work is done (see ``close_stage``).
    """

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name=name, live=True, **kwargs)
        self.duplicates = 0

    async def go(self) -> None:
        seen: set[str] = set()
        async for message in self.mailbox:
            if message.is_shutdown:
                break  # the channel acknowledged it on delivery
            trace_id = message.metadata.get("trace_id")
            if trace_id in seen:  # a redelivery of something already handled
                self.duplicates += 1
            else:
                result = await self.handle(message.payload)
                # Written downstream before the ack: an acknowledged entry has its result sent.
                await self.emit(result, parent=message)
                if trace_id is not None:
                    seen.add(trace_id)
            if message.ack is not None:
                await message.ack()
        # Done: prefetched entries (another worker's shutdown) go back to the group now.
        self.mailbox.close()

    async def handle(self, payload: Any) -> Any:
        return payload


class Square(Stage):
    def __init__(self, worker: int, **kwargs: Any) -> None:
        super().__init__("square", id=f"square-{worker}", **kwargs)
        self.worker = worker

    async def handle(self, payload: Any) -> Any:
        await asyncio.sleep(0.002)  # pretend this is real work
        return {"n": payload, "square": payload * payload, "worker": self.worker}


def stream(url: str, stage: str, **options: Any) -> RedisStreamChannel[Any]:
    """The channel into ``stage``: the stream is named after it, and so is its group."""
    return RedisStreamChannel(stage, url=url, group=stage, **options)


async def run_stage(role: str, url: str, index: int, count: int) -> None:
    channels: list[RedisStreamChannel[Any]] = []

    def opened(channel: RedisStreamChannel[Any]) -> RedisStreamChannel[Any]:
        channels.append(channel)
        return channel

    inputs: list[Any] = []
    if role == "generate":
        square = opened(stream(url, "square"))
        node: Stage = Stage("generate")
        node >> RemoteStage(name="square")
        outputs = {"square": square}
        # The inputs: the numbers, then the shutdown that ends this stage.
        inputs = [NodeMessage(n) for n in range(count)] + [ChannelMessage(None, is_shutdown=True)]
    elif role == "square":
        collect = opened(stream(url, "collect"))
        mailbox = opened(stream(url, "square", consumer=f"square-{index}", claim_idle=2.0))
        node = Square(index, mailbox=mailbox)
        node >> RemoteStage(name="collect")
        outputs = {"collect": collect}
    else:
        mailbox = opened(stream(url, "collect", consumer="collect-0", claim_idle=2.0))
        node = Stage("collect", mailbox=mailbox)
        outputs = {}

    def channel_factory(edge: Edge) -> BaseChannel[Any]:
        return outputs[edge.target.name]

    graph = Graph(start=node, channel_factory=channel_factory)
    try:
        result = await graph.run(Task(inputs=inputs, type=TaskType.LONG_RUNNING))
    finally:
        for channel in channels:
            await channel.aclose()
    if role == "collect":
        print(json.dumps({"results": result.outputs, "duplicates": node.duplicates}), flush=True)


class StageFailed(RuntimeError):
    """A stage's process failed, or the stage did not finish in time."""


async def close_stage(
    url: str, stage: str, processes: list[subprocess.Popen[str]], deadline: float
) -> None:
    """Once ``stage`` has handled its whole input, send one shutdown per process.

    Call it when every process that writes to the stage's stream has exited
    and none of ``processes`` (the stage's live processes) will be restarted.
    Then nothing new arrives, an entry is acknowledged only once its result
    is written downstream, and an entry held by a killed process stays
    pending until its restarted successor (or, after ``claim_idle``, another
    worker) has handled it: a backlog of zero means the stage's work is done.
    Each live process then takes exactly one shutdown, as each stops at its
    first and hands any other it prefetched back to the group.
    """
    async with stream(url, stage) as channel:
        while True:
            backlog = await channel.backlog()
            if backlog.lag is None:
                raise StageFailed("this Redis cannot report a group's lag; use Redis 7.0 or later")
            if backlog.outstanding == 0:
                break
            for process in processes:
                if process.poll() is not None:
                    raise StageFailed(
                        f"a {stage} process (pid {process.pid}) exited with status "
                        f"{process.returncode} before its stage was done"
                    )
            if time.monotonic() > deadline:
                raise StageFailed(f"the {stage} stage still has {backlog} at the deadline")
            await asyncio.sleep(0.05)
        await channel.send_many(
            [ChannelMessage(None, {"source_node": "launcher"}, is_shutdown=True) for _ in processes]
        )


def wait_for(process: subprocess.Popen[str], role: str, deadline: float) -> None:
    try:
        status = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        raise StageFailed(f"the {role} process (pid {process.pid}) did not exit in time") from None
    if status != 0:
        raise StageFailed(f"the {role} process (pid {process.pid}) exited with status {status}")


def spawn(role: str, url: str, index: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--role", role, "--url", url, "--index", str(index)]
    command += ["--count", str(args.count)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def launch(args: argparse.Namespace, url: str) -> int:
    """Start every stage's processes, end the stages in order, and check the results."""
    started = time.monotonic()
    deadline = started + args.crash + 60.0  # generous: a shared, loaded machine can be slow
    collector = spawn("collect", url, 0, args)
    squares = [spawn("square", url, i, args) for i in range(args.workers)]
    generator = spawn("generate", url, 0, args)
    processes = [collector, *squares, generator]
    try:
        if args.crash:
            time.sleep(args.crash)
            victim = squares[0]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            print(f"killed square worker 0 (pid {victim.pid}) with SIGKILL; restarting it")
            squares[0] = spawn("square", url, 0, args)
            processes.append(squares[0])
        # No process is restarted from here on: the live ones are every reader there will be.
        wait_for(generator, "generate", deadline)
        asyncio.run(close_stage(url, "square", squares, deadline))
        for square in squares:
            wait_for(square, "square", deadline)
        asyncio.run(close_stage(url, "collect", [collector], deadline))
        output, _ = collector.communicate(timeout=max(deadline - time.monotonic(), 1.0))
        if collector.returncode != 0:
            raise StageFailed(f"the collect process exited with status {collector.returncode}")
    except StageFailed as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
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


CRASH_AFTER = 0.8
"""Seconds before ``--crash`` with no SECONDS kills a square worker: part-way through
the default 500 numbers on a typical machine."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis server (default: start a throwaway one)")
    parser.add_argument(
        "--cluster", action="store_true", help="start a throwaway Redis Cluster instead"
    )
    parser.add_argument("--count", type=int, default=500, help="numbers to square")
    parser.add_argument("--workers", type=int, default=2, help="processes for the middle stage")
    parser.add_argument(
        "--crash",
        type=float,
        nargs="?",
        const=CRASH_AFTER,
        default=0.0,
        metavar="SECONDS",
        help=f"SIGKILL square worker 0 after SECONDS (default {CRASH_AFTER:g}), then restart "
        "it; without --crash, nothing is killed",
    )
    parser.add_argument("--role", choices=["generate", "square", "collect"], help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.crash < 0:
        parser.error("--crash SECONDS must not be negative")
    return args


def main() -> int:
    args = parse_args()

    if args.role is not None:
        asyncio.run(run_stage(args.role, args.url, args.index, args.count))
        return 0
    if args.url is not None:
        # Fresh stream names would be cleaner on a shared server; this keeps the demo short.
        print("using", args.url, "- the 'square' and 'collect' streams must not be in use")
        return launch(args, args.url)
    from spark.backends._redis_server import LocalRedisCluster, LocalRedisServer

    if args.cluster:
        with LocalRedisCluster() as cluster:
            pids = ", ".join(str(server.pid) for server in cluster.servers)
            print(f"started a Redis Cluster on ports {cluster.ports} (pids {pids})")
            return launch(args, cluster.url)
    with LocalRedisServer() as server:
        print(f"started redis-server on {server.url} (pid {server.pid})")
        return launch(args, server.url)


if __name__ == "__main__":
    sys.exit(main())
