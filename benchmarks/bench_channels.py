"""Time per message of the core scenarios, against asyncio.Queue in the same run."""

from __future__ import annotations

import asyncio
from typing import Any


def run(benchmark: Any, loop: asyncio.AbstractEventLoop, group: str, scenario: Any) -> None:
    benchmark.group = group
    benchmark.pedantic(lambda: loop.run_until_complete(scenario()), rounds=15, warmup_rounds=2)


def bench_batch_send_nowait_then_receive(benchmark, contender, loop, messages):
    """send_nowait x N, then await receive() x N: no task ever blocks."""

    async def scenario():
        channel = contender.make(0)
        send_nowait, receive = channel.send_nowait, channel.receive
        for message in messages:
            send_nowait(message)
        for message in messages:
            assert await receive() is message

    run(benchmark, loop, f"batch {type(loop).__module__}", scenario)


def bench_pipeline_maxsize_100(benchmark, contender, loop, messages):
    """One producer task, one consumer task, maxsize=100."""

    async def scenario():
        channel = contender.make(100)

        async def produce():
            send = channel.send
            for message in messages:
                await send(message)

        producer = asyncio.ensure_future(produce())
        receive = channel.receive
        for message in messages:
            assert await receive() is message
        await producer

    run(benchmark, loop, f"pipeline-100 {type(loop).__module__}", scenario)
