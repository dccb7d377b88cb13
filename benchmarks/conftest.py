"""Benchmark matrix: each case runs on every build (asyncio.Queue, pure, compiled) and loop.

Cases are grouped by scenario and loop, so pytest-benchmark's table shows
each build's time next to ``asyncio.Queue`` measured in the same run.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from spark.nodes import _channels_py


@dataclass(frozen=True)
class Contender:
    """Something that moves messages: a channel build, or asyncio.Queue for reference."""

    name: str
    make: Callable[[int], Any]
    """``make(maxsize)`` returns an object with ``send``, ``send_nowait`` and ``receive``."""


class QueueAsChannel:
    """asyncio.Queue under the channel method names, bound once, so calls cost the same."""

    __slots__ = ("receive", "receive_nowait", "send", "send_nowait")

    def __init__(self, maxsize: int) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.send = queue.put
        self.send_nowait = queue.put_nowait
        self.receive = queue.get
        self.receive_nowait = queue.get_nowait


def _contenders() -> list[Any]:
    params = [
        pytest.param(Contender("asyncio.Queue", QueueAsChannel), id="asyncio.Queue"),
        pytest.param(Contender("python", _make(_channels_py)), id="python"),
    ]
    try:
        compiled = importlib.import_module("spark.nodes._channels_c")
    except ImportError:
        pass
    else:
        params.append(pytest.param(Contender("cython", _make(compiled)), id="cython"))
    return params


def _make(module: Any) -> Callable[[int], Any]:
    return lambda maxsize: module.InMemoryChannel(maxsize=maxsize)


@pytest.fixture(params=_contenders())
def contender(request: pytest.FixtureRequest) -> Contender:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        new_loop = uvloop.new_event_loop()
    else:
        new_loop = asyncio.new_event_loop()
    asyncio.set_event_loop(new_loop)
    yield new_loop
    asyncio.set_event_loop(None)
    new_loop.close()


@pytest.fixture
def messages() -> list[Any]:
    """Pre-built messages, so every contender moves the same objects."""
    return [_channels_py.ChannelMessage(i) for i in range(10_000)]
