"""Test matrix: every test runs on each channel build, every async test on each loop.

* ``impl`` is parametrized over the pure build and the compiled one. The
  compiled one is skipped when it is not built, unless
  ``SPARK_REQUIRE_EXTENSIONS`` is set (``make test`` sets it), which turns a
  missing build into a failure.
* ``node_build`` (used by every node and graph test module) makes the nodes
  a test creates get a mailbox of that build, so each node and graph test
  runs the compiled worker loop once and the pure one (its specification)
  once; edges follow their target's mailbox.
* An ``async def`` test runs once on the default asyncio loop and once on
  uvloop, each in a fresh loop, with a time limit, and must not leave a task
  running behind it; except a test marked ``@pytest.mark.asyncio``, which
  pytest-asyncio runs, as it runs users' tests.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from spark.nodes import _bridge, _broadcast_py, _channels_py, _node, _select_py, _worker

REQUIRE_EXTENSIONS = bool(os.environ.get("SPARK_REQUIRE_EXTENSIONS"))
DEFAULT_TIMEOUT = 30.0


def _uvloop_factory() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": _uvloop_factory,
}


# Where the pure build keeps what the compiled module has in one place.
_MODULES: dict[str, tuple[ModuleType, ...]] = {
    "python": (_channels_py, _broadcast_py, _select_py),
}


@dataclass(frozen=True)
class Impl:
    """One build of the channels, as the tests see it."""

    name: str
    module: ModuleType

    def __getattr__(self, attr: str) -> Any:
        for module in _MODULES.get(self.name, (self.module,)):
            if hasattr(module, attr):
                return getattr(module, attr)
        return getattr(self.module, attr)

    def QueueBridge(self, channel: Any) -> _bridge.QueueBridge:
        return _bridge.QueueBridge(channel, message_type=self.module.ChannelMessage)


def _load(name: str) -> Impl:
    if name == "python":
        return Impl("python", _channels_py)
    try:
        module = importlib.import_module("spark.nodes._channels_c")
    except ImportError as error:
        if REQUIRE_EXTENSIONS:
            pytest.fail(f"the compiled core is required but did not import: {error}")
        pytest.skip("the compiled core is not built")
    return Impl("cython", module)


@pytest.fixture(params=["python", "cython"], scope="session")
def impl(request: pytest.FixtureRequest) -> Impl:
    """The channel build under test (pure or compiled)."""
    return _load(request.param)


@pytest.fixture
def node_build(impl: Impl, monkeypatch: pytest.MonkeyPatch) -> Impl:
    """Nodes made in the test get ``impl``'s mailbox by default, and so its worker loop."""
    monkeypatch.setattr(_node, "InMemoryChannel", impl.InMemoryChannel)
    return impl


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """One Redis server for the session (see redis_support)."""
    from redis_support import redis_server

    yield from redis_server()


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A node of a 3-master Redis Cluster for the session (see redis_support)."""
    from redis_support import redis_cluster

    yield from redis_cluster()


@pytest.fixture(params=["server", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """A test that takes it runs against one Redis server, then against a cluster."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def record_sends(channel: Any) -> list[Any]:
    """A list that receives every message sent into ``channel`` (by an observer)."""
    sent: list[Any] = []

    def observe(message: Any, channel: Any, phase: str) -> None:
        if phase == "send":
            sent.append(message)

    channel.add_observer(observe)
    return sent


def uses_compiled_loop(node: Any) -> bool:
    """Whether ``node.go()`` runs the compiled worker loop."""
    return _worker.compiled_loop(node) is not None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "timeout_s(seconds): time limit for an async test (default 30 s)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("asyncio") is not None:
        return
    if inspect.iscoroutinefunction(metafunc.function):
        metafunc.fixturenames.append("loop_name")
        metafunc.parametrize("loop_name", list(LOOPS))


def run_on_loop(loop_name: str, coroutine: Any, timeout: float) -> Any:
    """Run ``coroutine`` in a fresh loop of kind ``loop_name``; fail if it leaves tasks behind."""
    try:
        loop = LOOPS[loop_name]()
    except ImportError:
        pytest.skip(f"{loop_name} is not installed")
    asyncio.set_event_loop(loop)
    try:
        result = loop.run_until_complete(asyncio.wait_for(coroutine, timeout))
        leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            pytest.fail(f"the test left {len(leftovers)} task(s) running: {leftovers!r}")
        loop.run_until_complete(loop.shutdown_asyncgens())
        return result
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    function = pyfuncitem.obj
    if pyfuncitem.get_closest_marker("asyncio") is not None:
        return None
    if not inspect.iscoroutinefunction(function):
        return None
    marker = pyfuncitem.get_closest_marker("timeout_s")
    timeout = marker.args[0] if marker else DEFAULT_TIMEOUT
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    run_on_loop(pyfuncitem.callspec.params["loop_name"], function(**arguments), timeout)
    return True


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


def drain_payloads(channel: Any) -> list[Any]:
    """The payloads ``channel`` has ready now, taken with ``receive_nowait``, oldest first."""
    from spark.nodes.channels import ChannelClosed

    out = []
    while True:
        try:
            out.append(channel.receive_nowait().payload)
        except (asyncio.QueueEmpty, ChannelClosed):
            return out
