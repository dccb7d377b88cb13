"""What both builds share to let other threads use a loop's channel.

A channel starts *unshared*: only the thread that created it (its owner)
touches its state, with no lock, and each of the owner's sections is
counted in ``_busy`` while it runs. Every operation checks its thread;
the first one on another thread *shares* the channel (once, under
`SHARING`): it makes the channel's lock, takes it, raises ``_shared``, and
waits, holding the lock, until no owner section is under way
(``_busy == 0``). From then on every section, on any thread, holds the
lock (re-entrant; a section nested in an owner section begun before the
sharing goes on unlocked, as it began). An owner section raises ``_busy``
before it reads ``_shared`` and the sharing thread raises ``_shared``
before it reads ``_busy``; as threads run one at a time under the GIL, one
of them sees the other, so no unlocked section overlaps a locked one.

A task blocked on the channel waits on a loop future, which only its
loop's thread may resolve: a section on another thread records the
wake-up (the promise is counted at once), and the loop resolves all that
were recorded in one callback, scheduled once per batch with
``call_soon_threadsafe``. If the loop closes first, the promises are
handed on to the next waiters. A blocked thread waits on a `ThreadWaiter`
in the same queue as the tasks' futures.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

__all__ = ["SHARING", "ThreadWaiter", "check_timeout", "refuse_in_loop", "wait_for_owner"]

SHARING = threading.Lock()
"""Held while a channel is being shared, so that it is shared once."""


class ThreadWaiter:
    """What a blocked thread waits on in a channel's waiter queue, beside loop futures.

    It answers the few future methods the channel calls (``done``,
    ``cancelled``, ``result``, ``set_result``); ``set_result`` may be called
    from any thread and wakes the waiting one.
    """

    __slots__ = ("_done", "_gate", "_result")

    def __init__(self) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()
        self._done = False
        self._result: Any = None

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def result(self) -> Any:
        return self._result

    def set_result(self, value: Any) -> None:
        self._result = value
        self._done = True
        self._gate.release()

    def wait(self, deadline: float | None) -> None:
        """Block until woken or until ``deadline`` (``time.monotonic()``) passes."""
        if deadline is None:
            self._gate.acquire()
        else:
            self._gate.acquire(timeout=max(0.0, deadline - time.monotonic()))


def check_timeout(timeout: object) -> float | None:
    """The deadline (``time.monotonic()``) for ``timeout`` seconds; None waits forever."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__}"
        )
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds (None waits forever), got {timeout!r}")
    return time.monotonic() + timeout


def refuse_in_loop(method: str, instead: str) -> None:
    """Raise ``RuntimeError`` if this thread runs an event loop: blocking it would deadlock."""
    if asyncio._get_running_loop() is not None:
        raise RuntimeError(
            f"{method}() blocks its thread, and this thread runs an event loop; "
            f"use 'await channel.{instead}(...)' here, or call {method}() from another "
            f"thread (e.g. 'await asyncio.to_thread(channel.{method}, ...)')"
        )


def wait_for_owner(channel: Any) -> None:
    """Wait until no section of ``channel``'s owner is under way (``_shared`` is already set)."""
    while channel._busy:
        time.sleep(0)  # let the owner finish: its sections are short and never block
