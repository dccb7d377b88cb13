"""Tests written as users write them: ``@pytest.mark.asyncio``, with pytest-asyncio.

The ``[test]`` extra installs pytest-asyncio, so tests in the style the
reference documents for channels run as written, in this suite and in a
user's own project (checked in a fresh pytest run, for each build).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spark.nodes.channels import IMPLEMENTATION, ChannelMessage, InMemoryChannel

pytest.importorskip("pytest_asyncio")


@pytest.mark.asyncio
async def test_marked_test_runs_under_pytest_asyncio() -> None:
    channel: InMemoryChannel[dict[str, int]] = InMemoryChannel()
    await channel.send(ChannelMessage(payload={"n": 1}))
    assert (await channel.receive()).payload == {"n": 1}


# A user's test module: the three kinds of test the reference shows for
# channels (send/receive, observers, shutdown), in its style.
USER_TESTS = """
import os

import pytest

from spark.nodes import channels
from spark.nodes.channels import ChannelMessage, InMemoryChannel


def test_the_expected_build_is_active():
    assert channels.IMPLEMENTATION == os.environ["EXPECTED_BUILD"]


@pytest.mark.asyncio
async def test_what_is_sent_is_received():
    channel = InMemoryChannel()
    await channel.send(ChannelMessage(payload={"order": 7}))
    message = await channel.receive()
    assert message.payload == {"order": 7}


@pytest.mark.asyncio
async def test_observers_see_both_phases():
    phases = []

    def watch(message, channel, phase):
        phases.append(phase)

    channel = InMemoryChannel(observers=[watch])
    await channel.send(ChannelMessage(payload={"ping": True}))
    await channel.receive()
    assert phases == ["send", "receive"]


@pytest.mark.asyncio
async def test_a_shutdown_arrives_as_one():
    channel = InMemoryChannel()
    await channel.send(ChannelMessage(payload=None, is_shutdown=True))
    assert (await channel.receive()).is_shutdown is True
"""


@pytest.mark.parametrize("build", ["python", "cython"])
def test_users_marked_tests_run_as_written(build: str, tmp_path: Path) -> None:
    if build == "cython" and IMPLEMENTATION != "cython":
        pytest.skip("the compiled core is not active")
    (tmp_path / "test_user_channels.py").write_text(textwrap.dedent(USER_TESTS))
    env = {**os.environ, "EXPECTED_BUILD": build}
    env.pop("SPARK_NO_EXTENSIONS", None)
    if build == "python":
        env["SPARK_NO_EXTENSIONS"] = "1"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,  # a project of its own: no conftest, no configuration of ours
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout, run.stdout
