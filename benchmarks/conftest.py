"""pytest-benchmark matrix over ``spark.bench.scenarios``.

Every case runs on each contender (compiled, pure, asyncio.Queue, and anyio
or aiochannel when installed) and on both loops. Cases are grouped by
scenario and loop, so the table shows each contender next to its baseline
measured in the same run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from spark.bench.scenarios import available_contenders

CONTENDERS = available_contenders()


@pytest.fixture(params=CONTENDERS, ids=[c.name for c in CONTENDERS])
def contender(request: pytest.FixtureRequest):
    return request.param


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
