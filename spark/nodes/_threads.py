"""What both builds share to let other threads use a loop's channel.

A channel starts *unshared*: only the thread that created it (its owner)
touches its state, with no lock. The pure build has two kinds of unlocked
sections:

* the general path of an operation (``_enter`` ... ``_leave``), counted in
  ``_busy`` while it runs;
* the lock-free fast paths (``send``, ``receive``, ``*_nowait`` and the
  node loop's shortcuts, marked with `lock_free`), which cost no
  bookkeeping: each keeps the channel in its local ``_section`` while its
  section runs, where a sharing thread can see it in the thread's frames.

Each fast path checks that it runs on the owner's thread: a synchronous
one (``*_nowait``) asks for the thread, since any thread may call it; a
task's checks that its running loop is ``_loop``, which only the owner's
thread binds (a channel made in a running loop is bound to it, and a
task's first general path on the owner's thread binds it, ``_claim``),
so the tasks of another thread's loop take the general path.

The first section of another thread *shares* the channel (once, under
`SHARING`): it makes the channel's lock, takes it, raises ``_shared``, and
waits, holding the lock, until no section of the owner is under way:
until ``_busy == 0``, then until no other thread's frames hold a fast
section of the channel. From then on every section, on any thread, holds
the lock (re-entrant), except one of the owner nested in a section begun
before the sharing, which goes on unlocked, as the outer one does: nested
in a counted section, or in a fast one (a signal handler, a finalizer or
a weakref callback using the channel in its middle). An owner section
raises ``_busy`` (or ``_section``) before it reads ``_shared`` and the
sharing thread raises ``_shared`` before it looks; as threads run one at
a time under the GIL, one of them sees the other, so no unlocked section
overlaps a locked one. A fast section never waits, so the wait ends.

A thread that finds the lock taken waits for it on a gate of its own
(`wait_for_lock`), so that it never holds the lock while it waits for the
GIL (a lock convoy).

A task blocked on the channel waits on a loop future, which only its
loop's thread may resolve: a section on another thread records the
wake-up (the promise is counted at once), and the loop resolves all that
were recorded in one callback, scheduled once per batch with
``call_soon_threadsafe``. If the loop closes first, the promises are
handed on to the next waiters. A blocked thread waits on a `ThreadWaiter`
in the same queue as the tasks' futures.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable
from threading import Lock, get_ident
from types import CodeType, FrameType
from typing import Any, TypeVar

__all__ = [
    "SHARING",
    "ThreadWaiter",
    "blocks_a_loop",
    "check_timeout",
    "inside_lock_free_section",
    "lock_free",
    "open_one_gate",
    "wait_for_lock",
    "wait_for_owner",
]

F = TypeVar("F", bound=Callable[..., Any])

SHARING = Lock()
"""Held while a channel is being shared, so that it is shared once."""


class ThreadWaiter:
    """What a blocked thread waits on in a channel's waiter queue, beside loop futures.

    It answers the few future methods the channel calls (``done``,
    ``cancelled``, ``result``, ``set_result``); ``set_result`` may be called
    from any thread and wakes the waiting one.
    """

    __slots__ = ("_done", "_gate", "_result")

    def __init__(self) -> None:
        self._gate = Lock()
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


def blocks_a_loop(method: str, instead: str) -> RuntimeError:
    """The error for ``method`` called on a thread that runs an event loop (it would deadlock)."""
    return RuntimeError(
        f"{method}() blocks its thread, and this thread runs an event loop; "
        f"use 'await channel.{instead}(...)' here, or call {method}() from another "
        f"thread (e.g. 'await asyncio.to_thread(channel.{method}, ...)')"
    )


def wait_for_lock(channel: Any) -> None:
    """Take ``channel._lock``, held by another thread, without a lock convoy.

    A blocking ``acquire`` would take the lock as soon as it is free, then
    hold it while its thread waits for the GIL: the other thread, which has
    the GIL, would then find it taken at its next section, and so on, a
    GIL hand-off per section. Here a thread only takes the lock when it has
    the GIL; until then it waits on a gate of its own, which each release
    opens for one waiter, to try again.
    """
    gate = Lock()
    gate.acquire()
    waiters = channel._lock_waiters
    while True:
        waiters.append(gate)  # before trying: a release after the try opens the gate
        if channel._lock.acquire(False):
            try:
                waiters.remove(gate)
            except ValueError:  # a release opened it meanwhile; it is not used again
                pass
            return
        try:
            gate.acquire()
        except BaseException:  # KeyboardInterrupt: a release that opened the gate goes on
            try:
                waiters.remove(gate)
            except ValueError:  # a release opened the gate for this thread: pass that on
                open_one_gate(waiters)
            raise


def open_one_gate(waiters: deque[Any]) -> None:
    """Let the first thread waiting for a channel's lock try again (see `wait_for_lock`)."""
    try:
        waiters.popleft().release()
    except IndexError:  # the queue was emptied meanwhile: nobody waits
        pass


_LOCK_FREE: set[CodeType] = set()
"""The code of the functions that run lock-free sections (see `lock_free`)."""


def lock_free(function: F) -> F:
    """Mark ``function`` as running lock-free sections of a channel.

    The function sets its local ``_section`` to the channel before its
    section reads the channel's state. The section ends when the function
    returns or sets ``_section`` to None, which it does before anything that
    may wait, take the channel's lock or run the user's code (observers).
    The function is returned as it is: marking costs nothing when called.
    """
    _LOCK_FREE.add(function.__code__)
    return function


def in_lock_free_section(channel: Any) -> bool:
    """Whether a thread other than this one is in a lock-free section of ``channel``."""
    me = get_ident()
    return any(
        _holds_section(frame, channel)
        for ident, frame in sys._current_frames().items()
        if ident != me
    )


def inside_lock_free_section(channel: Any) -> bool:
    """Whether this thread runs inside a lock-free section of ``channel``.

    It does when a signal handler, a finalizer or a weakref callback runs
    in the middle of the section and uses the channel.
    """
    return _holds_section(sys._getframe(1), channel)


def _holds_section(frame: FrameType | None, channel: Any) -> bool:
    """Whether ``frame`` or one of its callers is in a lock-free section of ``channel``."""
    while frame is not None:
        if frame.f_code in _LOCK_FREE and frame.f_locals.get("_section") is channel:
            return True
        frame = frame.f_back
    return False


def wait_for_owner(channel: Any) -> None:
    """Wait until no unlocked section of ``channel`` is under way (``_shared`` is already set).

    The owner's sections are short and never block, so each wait ends.
    """
    while channel._busy:
        time.sleep(0)
    while in_lock_free_section(channel):
        time.sleep(0)
