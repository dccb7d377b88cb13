"""Time per message of every scenario, next to its baseline from the same run.

Run with ``make bench`` or ``pytest benchmarks --benchmark-only``. Each case
moves pre-built messages and checks that every one arrived. No case asserts
a time: read the ratios in the table.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from spark.bench.scenarios import BASELINE_RUNS, SCENARIOS, make_messages, runs_in, verify

N = 10_000


def _run(benchmark: Any, loop: asyncio.AbstractEventLoop, scenario: Any, contender: Any) -> None:
    messages = make_messages(contender, N)
    benchmark.group = f"{scenario.name} on {type(loop).__module__.split('.')[0]}"
    benchmark.extra_info["messages"] = N
    received = benchmark.pedantic(
        lambda: loop.run_until_complete(scenario.run(contender, messages)),
        rounds=10,
        warmup_rounds=1,
    )
    verify(received, messages)


@pytest.mark.parametrize("name", list(SCENARIOS))
def bench_scenario(benchmark, loop, contender, name):
    scenario = SCENARIOS[name]
    if not runs_in(scenario, contender):
        pytest.skip(f"{contender.name} does not take part in {name}")
    _run(benchmark, loop, scenario, contender)


@pytest.mark.parametrize("name", list(SCENARIOS))
def bench_baseline(benchmark, loop, contender, name):
    """The baseline of the scenarios not measured against asyncio.Queue."""
    scenario = SCENARIOS[name]
    if scenario.baseline not in BASELINE_RUNS or not contender.is_channel:
        pytest.skip("measured against asyncio.Queue")

    class Baseline:
        name = f"{scenario.name} baseline ({scenario.baseline})"
        run = staticmethod(BASELINE_RUNS[scenario.baseline])

    _run(benchmark, loop, Baseline, contender)
    benchmark.group = f"{scenario.name} on {type(loop).__module__.split('.')[0]}"
