"""``InMemoryChannel.receive`` as a Python coroutine, for the compiled build on CPython 3.12+.

From 3.12 the interpreter hands an awaited value back from a non-generator
awaitable only through a ``StopIteration``, which costs more than running a
small Python coroutine, whose return needs no exception. The compiled build
installs this ``receive`` there (and keeps its own awaitable on 3.10/3.11,
where ``am_send`` makes that the faster one). Behaviour is the same: nothing
happens until it is awaited, and the slow path is the compiled awaitable.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any


def make_receive(
    ready: Callable[[Any], Any], wait: Callable[[Any], Any], not_ready: object
) -> Callable[[Any], Coroutine[Any, Any, Any]]:
    """``receive`` that takes a ready message with ``ready(self)``, else awaits ``wait(self)``."""

    async def receive(self: Any) -> Any:
        message = ready(self)
        if message is not_ready:
            return await wait(self)
        return message

    return receive
