"""Instructions per message of a benchmark scenario, counted by callgrind.

Wall-clock times on a shared machine move by tens of percent from one run
to the next; instruction counts do not. This runs a scenario of
``spark.bench`` under ``valgrind --tool=callgrind`` twice, with N and 2N
messages, and prints the difference divided by N: the instructions one
message costs, set-up and warm-up excluded. Use it for speed decisions.

    python scripts/instructions.py batch cython asyncio.Queue
    python scripts/instructions.py --loop uvloop pipeline-1 cython
    python scripts/instructions.py batch floor
    python scripts/instructions.py floor-call

Besides the contenders of ``spark.bench``, ``floor`` is the cheapest
channel a Python coroutine can make: a deque whose ``send``/``receive`` are
minimal coroutines (``send_nowait`` is ``deque.append``). Against it, a
scenario shows what one await per message costs the interpreter at least,
when a Python coroutine completes it (it cannot block: use it with batch or
alternating). Besides the scenarios and baselines
(a baseline's name with ``-`` for spaces, e.g. ``plain-channel``),
``floor-call`` is what calling a minimal Python function from C costs (a
``map`` over it, less the same ``map`` over a minimal C function): what
calling an observer costs at least.

Needs valgrind; the counts are for the interpreter running this script.
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from typing import Any


class Floor:
    """The cheapest channel made of Python coroutines: a deque, and nothing else."""

    def __init__(self, maxsize: int) -> None:
        items: deque[Any] = deque()
        append, popleft = items.append, items.popleft
        self.send_nowait = append
        self.receive_nowait = popleft

        async def send(message: Any) -> None:
            append(message)

        async def receive() -> Any:
            return popleft()

        self.send, self.receive = send, receive


def _observer(message: Any, channel: Any) -> None:
    return None


async def _call_python(_: Any, messages: Sequence[Any]) -> None:
    """A minimal Python function called from C (by map) per message."""
    deque(map(_observer, messages, messages), maxlen=0)


async def _call_c(_: Any, messages: Sequence[Any]) -> None:
    """The same with a minimal C function (operator.is_): the loop around the call."""
    deque(map(operator.is_, messages, messages), maxlen=0)


def _child(scenario: str, contender: str, messages: int, loop_name: str) -> None:
    """Run the scenario once on ``messages`` messages (after a warm-up), under callgrind."""
    from spark.bench._runner import new_loop
    from spark.bench.scenarios import (
        BASELINE_RUNS,
        SCENARIOS,
        Contender,
        available_contenders,
        make_messages,
    )

    loop = new_loop(loop_name)
    if contender == "floor":
        chosen: Any = Contender("floor", None, Floor, is_channel=False)
    else:
        chosen = next(c for c in available_contenders() if c.name == contender)
    name = scenario.replace("-", " ")
    if scenario in ("call-python", "call-c"):
        run: Any = _call_python if scenario == "call-python" else _call_c
    else:
        run = BASELINE_RUNS[name] if name in BASELINE_RUNS else SCENARIOS[scenario].run
    prebuilt = make_messages(chosen, max(messages, 1000))
    loop.run_until_complete(run(chosen, prebuilt[:1000]))
    loop.run_until_complete(run(chosen, prebuilt[:messages]))


def count(scenario: str, contender: str, messages: int, loop_name: str) -> int:
    """Instructions callgrind counts for one child run."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={scratch}/out",
            sys.executable,
            __file__,
            "--child",
            scenario,
            contender,
            str(messages),
            loop_name,
        ]
        # A fixed hash seed: dict probing, and so the count, is the same every run.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"callgrind failed for {scenario} {contender}:\n{done.stderr[-2000:]}")
        return int(found.group(1))


def per_message(scenario: str, contender: str, messages: int, loop_name: str) -> float:
    """Instructions one message costs: the runs with N and 2N messages, told apart."""
    small = count(scenario, contender, messages, loop_name)
    large = count(scenario, contender, 2 * messages, loop_name)
    return (large - small) / messages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", help="a spark.bench scenario or baseline, or floor-call")
    parser.add_argument("contenders", nargs="*", help="contenders, or floor (default: cython)")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--messages", type=int, default=10_000, help="N (the runs use N and 2N)")
    args = parser.parse_args(argv)
    names = args.contenders or ["cython"]
    if args.scenario == "floor-call":  # a Python call, less the loop around it
        python = per_message("call-python", "floor", args.messages, args.loop)
        c = per_message("call-c", "floor", args.messages, args.loop)
        print(f"floor-call: {python - c:,.0f} instructions per call of a Python function from C")
        return 0
    for name in names:
        cost = per_message(args.scenario, name, args.messages, args.loop)
        print(f"{args.scenario} {name} ({args.loop}): {cost:,.0f} instructions per message")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        scenario, contender, messages, loop_name = sys.argv[2:6]
        _child(scenario, contender, int(messages), loop_name)
        asyncio.set_event_loop(None)
    else:
        sys.exit(main())
