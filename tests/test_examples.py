"""The examples run as scripts, and their ``main()`` works on every event loop.

The README's Python blocks run as written, each on its own.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from redis_support import REQUIRE_REDIS, unavailable

from spark.graphs import RunStatus

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
README = EXAMPLES.parent / "README.md"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mailbox", ["node-b handled {'task': 'process', 'data': 'gamma'}", "is full at 50"]),
        (
            "long_running_pipeline",
            [
                "status: stopped, last result: "
                "{'processed': {'processed': {'processed': {'data': 'initial'}}}}",
                "status: completed, outputs: [{'processed': {'processed': {'processed': "
                "{'data': 0}}}}",
            ],
        ),
        ("graceful_shutdown", ["status: completed; stored:", "status: budget_exhausted;"]),
        (
            "price_feed",
            [
                "trader: stopped on command after 2 trades",
                "chart: saw 20 of 20 ticks, dropped 0",
                "every subscription is closed and drained",
            ],
        ),
        (
            "tracing",
            [
                "span ended: parse    trace ",
                "status: completed, outputs: ['stored apple for ada', 'stored pear for ada']",
                "    request (",
                "        parse (",
                "            enrich (",
                "                store (",
                "ERROR ValueError: no such order",
            ],
        ),
    ],
)
def test_example_runs_as_a_script(name: str, expected: list[str]) -> None:
    output = run_script(name)
    for line in expected:
        assert line in output


@pytest.mark.usefixtures("node_build")
async def test_mailbox_example() -> None:
    handled = await load("mailbox").main()
    assert [payload["data"] for payload in handled] == ["alpha", "beta", "gamma"]


@pytest.mark.usefixtures("node_build")
async def test_long_running_pipeline_example() -> None:
    (reference, last), default = await load("long_running_pipeline").main()
    assert reference.status is RunStatus.STOPPED
    assert last == {"processed": {"processed": {"processed": {"data": "initial"}}}}
    assert default.status is RunStatus.COMPLETED
    assert len(default.outputs) == 3


@pytest.mark.usefixtures("node_build")
async def test_tracing_example(capsys: pytest.CaptureFixture[str]) -> None:
    spans = await load("tracing").main()
    names = {span.context.span_id: span.name for span in spans}
    chains = sorted(
        (names[span.parent.span_id] if span.parent else "", span.name) for span in spans
    )
    assert chains == sorted(
        [("", "request")] * 3
        + [("request", "parse")] * 3
        + [("parse", "enrich")] * 3
        + [("enrich", "store")] * 2
    )
    assert len({span.context.trace_id for span in spans}) == 3
    assert "stored pear for ada" in capsys.readouterr().out


@pytest.mark.timeout_s(60)
@pytest.mark.usefixtures("node_build")
async def test_graceful_shutdown_example() -> None:
    completed: Any
    exhausted: Any
    completed, exhausted = await load("graceful_shutdown").main()
    result, workers = completed
    assert result.status is RunStatus.COMPLETED
    assert workers[-1].handled == [f"order-{n} > parse > check" for n in range(3)]
    result, workers = exhausted
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert result.cancelled == []
    assert len(workers[0].handled) == 4  # the first worker finished its backlog in the grace


def needs_redis() -> None:
    """Skip (or, with SPARK_REQUIRE_REDIS, fail) without the redis extra or redis-server."""
    missing = [name for name in ("redis", "msgspec") if importlib.util.find_spec(name) is None]
    if missing:
        unavailable(f"{' and '.join(missing)} not installed")
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")


def load_distributed() -> ModuleType:
    if importlib.util.find_spec("redis") is None and not REQUIRE_REDIS:
        pytest.skip("the redis extra is not installed")
    return load("distributed_pipeline")


def test_distributed_crash_takes_an_optional_number_of_seconds() -> None:
    example = load_distributed()
    assert example.parse_args([]).crash == 0.0  # no crash
    assert example.parse_args(["--crash"]).crash == example.CRASH_AFTER > 0
    assert example.parse_args(["--crash", "2.5"]).crash == 2.5
    args = example.parse_args(["--crash", "--count", "10"])
    assert (args.crash, args.count) == (example.CRASH_AFTER, 10)


def test_distributed_help_shows_seconds_as_optional() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "distributed_pipeline.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--crash [SECONDS]" in result.stdout


def test_distributed_crash_without_seconds_runs() -> None:
    needs_redis()
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "distributed_pipeline.py"), "--count", "200", "--crash"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "killed square worker 0" in result.stdout
    assert "every number squared exactly once" in result.stdout


def readme_blocks() -> list[Any]:
    """Every fenced Python block of the README, named by its first line number."""
    text = README.read_text(encoding="utf-8")
    return [
        pytest.param(found.group(1), id=f"README.md:{text.count(chr(10), 0, found.start()) + 1}")
        for found in re.finditer(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    ]


README_REDIS_URL = "redis://localhost:6379/0"


@pytest.fixture(scope="module")
def readme_redis_url() -> Any:
    """A throwaway server (or SPARK_REDIS_URL) for the blocks that name localhost:6379."""
    needs_redis()
    from redis_support import redis_server

    yield from redis_server()


def test_readme_finds_the_blocks() -> None:
    assert len(readme_blocks()) >= 4


@pytest.mark.parametrize("block", readme_blocks())
def test_readme_python_block_runs_as_written(
    block: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if block.lstrip().startswith(">>>"):  # an interactive session: its output must match
        if "'cython'" in block and importlib.util.find_spec("spark.nodes._channels_c") is None:
            pytest.skip("shows the compiled core, which is not built here")
        if os.environ.get("SPARK_NO_EXTENSIONS"):
            pytest.skip("shows the compiled core, which SPARK_NO_EXTENSIONS turns off")
        test = doctest.DocTestParser().get_doctest(block, {}, "README", str(README), 0)
        runner = doctest.DocTestRunner()
        runner.run(test, out=lambda report: pytest.fail(report, pytrace=False))
        assert runner.summarize(verbose=False).attempted > 0
        return
    if README_REDIS_URL in block:
        block = block.replace(README_REDIS_URL, request.getfixturevalue("readme_redis_url"))
    script = tmp_path / "block.py"
    script.write_text(block, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    # ``print(...)  # what it prints``: the comment is the output the README promises.
    for promised in re.findall(r"^\s*print\(.*\)\s+# (.+)$", block, re.MULTILINE):
        assert promised in result.stdout


async def test_price_feed_example(impl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load("price_feed")
    for name in ("BroadcastChannel", "ChannelMessage", "InMemoryChannel", "merge", "select"):
        monkeypatch.setattr(example, name, getattr(impl, name))
    summary = await example.main()
    assert summary["chart"] == 20 and summary["trades"] == 2
    assert 4 <= summary["audit"] < 20  # the slow reader lost ticks to lag
