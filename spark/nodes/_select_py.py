"""``select`` and ``merge`` over channels, pure-Python build.

How a ``select`` waits: it scans the channels once, from a random one (so
that no channel starves when several are ready), and takes the first ready
message. When none is ready, it puts one future in the receiver queue of
every in-memory channel (a forwarder's: its downstream's). The first channel
with a message wakes the future with a promise, as it would wake a blocked
``receive``; the others find it done and pass over it. The select takes the
promised message and withdraws the future from the rest. If it is cancelled
after being promised a message, the promise goes to the next receiver of
that channel, as a cancelled ``receive``'s does. So exactly one message is
taken, and a cancelled select takes none.

Other channels (custom ``BaseChannel`` subclasses, Redis, channels whose
methods are patched) are polled with ``receive_nowait`` when they have it,
and waited on with one ``receive()`` task each, which is cancelled when
another channel wins; see ``select`` for what that guarantees.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

from ._channel_base import (
    BaseChannel,
    ChannelClosed,
    ChannelStats,
    ObserverCallable,
    empty_or_unknown,
    is_patched,
)
from ._channels_py import ChannelMessage, ForwardingChannel, InMemoryChannel

__all__ = ["MergedChannel", "merge", "select"]

T = TypeVar("T")

Message = ChannelMessage[Any]
SelectFrom = Callable[
    [Sequence[BaseChannel[Any]], int, "MergedChannel[Any] | None"],
    Coroutine[Any, Any, tuple[BaseChannel[Any], Any]],
]
"""``select_from(channels, start, merged)``: a build's select, scanning from ``start``."""

# Messages that a losing receive() task of another kind of channel received
# anyway, by channel: the next select (or merge) over the channel hands them
# out first, oldest first.
_held: weakref.WeakKeyDictionary[BaseChannel[Any], deque[Any]] = weakref.WeakKeyDictionary()

_native_types: tuple[type, ...] = (InMemoryChannel,)
"""Pure in-memory channel classes a select waits on directly (their receive is the base one)."""


def register_native_type(cls: type) -> None:
    """Let select wait directly on ``cls`` (an InMemoryChannel subclass with its receive)."""
    global _native_types
    _native_types = (*_native_types, cls)


def check_channels(channels: Sequence[object], what: str) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``channels`` are channels a select can use."""
    if not channels:
        raise ValueError(f"{what} needs at least one channel")
    for channel in channels:
        if not isinstance(channel, BaseChannel):
            raise TypeError(
                f"{what} takes channels (BaseChannel instances), got {type(channel).__name__}"
            )
        if getattr(channel, "_is_broadcast", False):
            raise TypeError(
                f"{what} cannot receive from a BroadcastChannel itself; "
                "pass a receive side made by its subscribe()"
            )


def _native(channel: BaseChannel[Any]) -> InMemoryChannel[Any] | None:
    """The in-memory channel to wait on for ``channel``, or None to treat it as another kind."""
    kind = type(channel)
    if kind is ForwardingChannel:
        if is_patched(channel):
            return None
        channel = channel._downstream  # type: ignore[attr-defined]
        kind = type(channel)
    if kind in _native_types and not is_patched(channel):
        return channel  # type: ignore[return-value]
    return None


async def select(*channels: BaseChannel[Any]) -> tuple[BaseChannel[Any], ChannelMessage[Any]]:
    """Wait for the first channel with a message; return ``(channel, message)``.

    Guarantees for ``InMemoryChannel``, ``ForwardingChannel`` (into one) and
    broadcast subscriptions, of both builds:

    * exactly one message is taken, from the returned channel, the oldest it
      had; the others are untouched;
    * fair: when several are ready, the scan starts at a random channel, so
      each ready one is picked with a probability of at least 1/n;
    * a select that is cancelled (or times out) has taken nothing (as with
      ``receive``, except while it awaits an async receive observer: the
      message is taken by then);
    * the channels' receive observers run, as for ``receive``;
    * once every channel is closed and drained, ``ChannelClosed`` is raised.

    Other ``BaseChannel`` implementations are read with ``receive_nowait``
    when they have it, and waited on with one ``receive()`` task each,
    cancelled when another channel wins. A message taken by such a task
    anyway (it finished in the same loop iteration as the winner) is not
    lost: the next ``select`` or ``merge`` over that channel returns it
    first. Exactness then rests on their ``receive`` taking nothing when
    cancelled, as the built-in channels' does.
    """
    check_channels(channels, "select()")
    return await _select_from(channels, random.randrange(len(channels)), None)


async def _select_from(
    channels: Sequence[BaseChannel[Any]], start: int, merged: MergedChannel[Any] | None
) -> tuple[BaseChannel[Any], Any]:
    """Select from ``channels``, scanning from index ``start``; ``merged`` ends it when closed."""
    count = len(channels)
    inners = [_native(channel) for channel in channels]
    gone: set[int] = set()  # other kinds of channels known to be closed and drained
    while True:
        if merged is not None and merged._closed:
            raise merged._closed_error()
        closed = 0
        for step in range(count):
            index = (start + step) % count
            channel, inner = channels[index], inners[index]
            if inner is not None:
                message = _take_queued(inner)
                if message is not None:
                    return channel, await _received(channel, inner, message)
                closed += inner._closed
            elif index in gone:
                closed += 1
            else:
                try:
                    return channel, _take_other(channel)
                except (asyncio.QueueEmpty, NotImplementedError):
                    pass
                except ChannelClosed:
                    gone.add(index)
                    closed += 1
        if closed == count:
            raise ChannelClosed(
                "every channel given to select() is closed and drained: "
                + ", ".join(repr(channel.name) for channel in channels)
            )
        won = await _wait(channels, inners, gone, merged)
        if won is not None:
            return won


def _take_queued(inner: InMemoryChannel[Any]) -> Any:
    """The oldest queued message of ``inner``, taken; None if none is queued."""
    locked = inner._enter()
    try:
        return inner._take_free()
    finally:
        inner._leave(locked)


def _take_other(channel: BaseChannel[Any]) -> Any:
    held = _held.get(channel)
    if held:
        return held.popleft()
    return channel.receive_nowait()


async def _received(channel: BaseChannel[Any], inner: InMemoryChannel[Any], message: Any) -> Any:
    """Finish taking ``message`` from ``inner`` (room freed already): tell the observers."""
    if inner._observers:
        await inner._notify_observers(message, "receive")
    if channel is not inner and channel._observers:
        await channel._notify_observers(message, "receive")
    return message


async def _wait(
    channels: Sequence[BaseChannel[Any]],
    inners: Sequence[InMemoryChannel[Any] | None],
    gone: set[int],
    merged: MergedChannel[Any] | None,
) -> tuple[BaseChannel[Any], Any] | None:
    """Wait until a channel has a message: it, taken; None to scan again (a close woke us)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    tasks = _start_receives(channels, inners, gone, future)
    closed = len(gone)
    for inner in inners:
        if inner is not None:
            locked = inner._enter()
            try:
                if len(inner._buffer) > inner._receivers_woken:
                    if not future.done():  # sent since the scan (by another thread): scan again
                        future.set_result(None)
                elif inner._closed:
                    closed += 1
                else:
                    inner._park_waiter(future)
            finally:
                inner._leave(locked)
    if closed == len(channels) and not future.done():  # all closed since the scan
        future.set_result(None)
    if merged is not None:
        merged._waiting.add(future)
    try:
        promiser = await future
    except BaseException:  # cancelled: take nothing
        if future.done() and not future.cancelled() and future.result() is not None:
            future.result()._give_back_promise()
        _withdraw(future, inners, merged)
        won = _settle(channels, tasks, gone)
        if won is not None:
            _hold(*won)
        raise
    _withdraw(future, inners, merged)
    try:
        won = _settle(channels, tasks, gone)
    except BaseException:  # another kind of channel failed: take nothing
        if promiser is not None:
            promiser._give_back_promise()
        raise
    if promiser is not None:  # an in-memory channel promised us its oldest message
        if won is not None:  # and another kind finished too: keep its message for later
            _hold(*won)
        index = inners.index(promiser)
        message = promiser._take_promised()
        promiser._freed_room()
        return channels[index], await _received(channels[index], promiser, message)
    return won


def _start_receives(
    channels: Sequence[BaseChannel[Any]],
    inners: Sequence[InMemoryChannel[Any] | None],
    gone: set[int],
    future: asyncio.Future[Any],
) -> dict[asyncio.Future[Any], int]:
    """A receive() task for each open channel of another kind; each wakes ``future`` when done.

    If one cannot be started (its receive raises at once), those started
    are cancelled before they ran, having taken nothing, and the error is raised.
    """
    tasks: dict[asyncio.Future[Any], int] = {}
    try:
        for index, inner in enumerate(inners):
            if inner is None and index not in gone:
                task = asyncio.ensure_future(channels[index].receive())
                tasks[task] = index
                task.add_done_callback(partial(_wake, future))
    except BaseException:
        for started in tasks:
            started.cancel()
        raise
    return tasks


def _withdraw(
    future: asyncio.Future[Any],
    inners: Sequence[InMemoryChannel[Any] | None],
    merged: MergedChannel[Any] | None,
) -> None:
    """Take ``future`` out of every receiver queue (and ``merged``'s waiters) it is still in."""
    if merged is not None:
        merged._waiting.discard(future)
    for inner in inners:
        if inner is not None:
            inner._withdraw(future)


def _settle(
    channels: Sequence[BaseChannel[Any]], tasks: dict[asyncio.Future[Any], int], gone: set[int]
) -> tuple[BaseChannel[Any], Any] | None:
    """Stop the receive() tasks; return the first message one of them got, hold the rest."""
    won = None
    for task, index in tasks.items():
        if not task.done():
            task.cancel()
            task.add_done_callback(partial(_keep, channels[index]))
        elif not task.cancelled():
            error = task.exception()
            if isinstance(error, ChannelClosed):
                gone.add(index)
            elif error is not None:
                raise error
            elif won is None:
                won = (channels[index], task.result())
            else:
                _hold(channels[index], task.result())
    return won


def _wake(future: asyncio.Future[Any], _: object) -> None:
    if not future.done():
        future.set_result(None)


def _keep(channel: BaseChannel[Any], task: asyncio.Future[Any]) -> None:
    """A cancelled receive() task that took a message anyway: hold it for the next select."""
    if not task.cancelled() and task.exception() is None:
        _hold(channel, task.result())


def _hold(channel: BaseChannel[Any], message: Any) -> None:
    _held.setdefault(channel, deque()).append(message)


class MergedChannel(BaseChannel[T]):
    """A receive-only channel over several sources: what ``merge()`` returns.

    ``receive`` returns the next message of whichever source has one first,
    taking sources in turn when several are ready (round robin), with the
    guarantees of ``select``. It raises ``ChannelClosed`` once every source
    is closed and drained, or once this channel's own ``close()`` is called
    (the sources stay open). Sending raises ``NotImplementedError``.
    """

    __slots__ = ("_next", "_received", "_select_from", "_sources", "_waiting")

    def __init__(
        self,
        sources: Sequence[BaseChannel[T]],
        name: str | None = None,
        observers: Iterable[ObserverCallable] | None = None,
        *,
        select_from: SelectFrom = _select_from,
    ) -> None:
        check_channels(sources, "merge()")
        if name is None:
            name = "merge(" + ", ".join(source.name for source in sources) + ")"
        super().__init__(name, observers)
        self._sources = tuple(sources)
        self._select_from = select_from
        self._next = 0  # the source to try first: the one after the last that gave a message
        self._received = 0
        self._waiting: set[asyncio.Future[Any]] = set()

    @property
    def sources(self) -> tuple[BaseChannel[T], ...]:
        """The channels merged, in the order given."""
        return self._sources

    async def send(self, message: ChannelMessage[T]) -> None:
        raise NotImplementedError(self._receive_only())

    def send_nowait(self, message: ChannelMessage[T]) -> None:
        raise NotImplementedError(self._receive_only())

    def _receive_only(self) -> str:
        return f"{self._name!r} is receive-only (made by merge()); send to one of its sources"

    async def receive(self) -> ChannelMessage[T]:
        """The next message from any source; ``ChannelClosed`` once all are closed and drained."""
        source, message = await self._select_from(self._sources, self._next, self)
        self._took(source)
        if self._observers:
            await self._notify_observers(message, "receive")
        message_: ChannelMessage[T] = message
        return message_

    def receive_nowait(self) -> ChannelMessage[T]:
        """A ready message from any source, or ``asyncio.QueueEmpty``."""
        if self._closed:
            raise self._closed_error()
        sources, count, closed = self._sources, len(self._sources), 0
        for step in range(count):
            source = sources[(self._next + step) % count]
            try:
                message: ChannelMessage[T] = _take_other(source)
            except (asyncio.QueueEmpty, NotImplementedError):
                continue
            except ChannelClosed:
                closed += 1
                continue
            self._took(source)
            if self._observers:
                self._notify_observers_nowait(message, "receive")
            return message
        if closed == count:
            raise self._closed_error()
        raise asyncio.QueueEmpty

    def _took(self, source: BaseChannel[T]) -> None:
        self._received += 1
        self._next = (self._sources.index(source) + 1) % len(self._sources)

    def close(self) -> None:
        """Stop this merged view (blocked receives get ``ChannelClosed``); the sources stay open."""
        self._closed = True
        for future in list(self._waiting):
            if not future.done():
                future.set_result(None)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called or every source is closed and drained."""
        return self._closed or all(
            source.closed and empty_or_unknown(source) for source in self._sources
        )

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(f"merged channel {self._name!r} is closed")

    def empty(self) -> bool:
        """Whether no source has a message ready."""
        return all(empty_or_unknown(source) for source in self._sources)

    def qsize(self) -> int:
        """Messages ready in all sources together."""
        return sum(source.qsize() for source in self._sources)

    def stats(self) -> ChannelStats:
        """Messages received through this view; size is the sources' together."""
        size = self.qsize()
        return ChannelStats(
            sent=self._received + size,
            received=self._received,
            size=size,
            peak_size=size,
            maxsize=0,
            senders_waiting=0,
            receivers_waiting=sum(not future.done() for future in self._waiting),
            closed=self.closed,
        )


def merge(*channels: BaseChannel[T], name: str | None = None) -> MergedChannel[T]:
    """A receive-only channel yielding the messages of all ``channels`` as they arrive.

    See ``MergedChannel``; it closes when every source is closed and drained.
    """
    return MergedChannel(channels, name)
