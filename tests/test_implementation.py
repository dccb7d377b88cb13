"""Which build is active, and how to choose it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spark.nodes import channels


def active_implementation(**env: str) -> str:
    code = "from spark.nodes import channels; print(channels.IMPLEMENTATION)"
    environment = {k: v for k, v in os.environ.items() if k != "SPARK_NO_EXTENSIONS"}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_implementation_is_named():
    assert channels.IMPLEMENTATION in ("cython", "python")
    expected = "_channels_c" if channels.IMPLEMENTATION == "cython" else "_channels_py"
    assert channels.InMemoryChannel.__module__.endswith(expected)
    assert channels.ChannelMessage.__module__.endswith(expected)


def test_no_extensions_variable_selects_the_pure_build():
    assert active_implementation(SPARK_NO_EXTENSIONS="1") == "python"


def test_empty_no_extensions_variable_does_not_force_the_pure_build():
    assert active_implementation(SPARK_NO_EXTENSIONS="") == active_implementation()


@pytest.mark.skipif(
    not os.environ.get("SPARK_REQUIRE_EXTENSIONS"),
    reason="set SPARK_REQUIRE_EXTENSIONS=1 where the compiled core must be active",
)
def test_compiled_core_is_active():
    assert channels.IMPLEMENTATION == "cython"
    assert active_implementation() == "cython"
