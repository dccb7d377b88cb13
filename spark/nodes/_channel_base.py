"""What every channel shares, whichever build implements it.

`BaseChannel` is the interface users subclass for their own backends;
`ChannelClosed`, `ChannelStats` and the observer plumbing are used by the
pure and the compiled builds alike, so both report the same way.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from ._channels_py import ChannelMessage

T = TypeVar("T")

__all__ = [
    "BaseChannel",
    "ChannelClosed",
    "ChannelStats",
    "ObserverCallable",
    "check_max_items",
    "check_message",
]

logger = logging.getLogger("spark.channels")

ObserverCallable = Callable[
    ["ChannelMessage[Any]", "BaseChannel[Any]", str], Awaitable[None] | None
]
"""``observer(message, channel, phase)``; phase is ``"send"`` or ``"receive"``.

It may return an awaitable, which the channel awaits (or schedules, from the
``*_nowait`` methods)."""


class ChannelClosed(Exception):
    """The channel is closed: nothing more can be sent, and it has been drained.

    Raised by ``send``/``send_nowait`` once ``close()`` was called, and by
    ``receive``/``receive_nowait`` once the channel is closed and empty.
    """


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """A snapshot of a channel's counters, taken by ``stats()``."""

    sent: int
    """Messages accepted by the channel since it was created."""
    received: int
    """Messages handed to receivers since it was created."""
    size: int
    """Messages buffered now."""
    peak_size: int
    """The most messages ever buffered at once."""
    maxsize: int
    """The bound on buffered messages; 0 means unbounded."""
    senders_waiting: int
    """Tasks blocked in ``send`` (and threads in ``blocking_send``): the channel is full."""
    receivers_waiting: int
    """Tasks blocked in ``receive`` (and threads in ``blocking_receive``): it is empty."""
    closed: bool
    """Whether ``close()`` has been called."""
    dropped: int = 0
    """Messages discarded unread to make room (a lagging broadcast subscriber's oldest)."""


_names = count(1)


def default_channel_name() -> str:
    """A process-unique name for a channel created without one."""
    return f"channel-{next(_names)}"


def check_name(name: object) -> str:
    if name is None:
        return default_channel_name()
    if not isinstance(name, str):
        raise TypeError(f"channel name must be a str or None, got {type(name).__name__}")
    return name


def check_observers(observers: Iterable[ObserverCallable] | None) -> list[ObserverCallable]:
    if observers is None:
        return []
    if callable(observers):
        raise TypeError(
            "observers must be an iterable of callables; wrap a single observer in a list"
        )
    checked = list(observers)
    for observer in checked:
        check_observer(observer)
    return checked


def check_observer(observer: object) -> None:
    if not callable(observer):
        raise TypeError(
            f"an observer must be callable as observer(message, channel, phase), got {observer!r}"
        )


def report_observer_error(channel: BaseChannel[Any], phase: str, observer: object) -> None:
    """Log the exception being handled as a failure of ``observer``; never raises."""
    logger.exception(
        "observer %r failed on channel %r during %r; the message was not affected",
        observer,
        channel.name,
        phase,
    )


# Awaitables returned by observers from the *_nowait methods run as tasks;
# this set keeps each one alive until it is done.
_background: set[asyncio.Future[Any]] = set()


def schedule_observer_awaitable(
    channel: BaseChannel[Any],
    phase: str,
    observer: object,
    awaitable: Awaitable[Any],
    channel_loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Run an observer's awaitable without waiting for it.

    It runs on the running loop; from a thread that runs none, on
    ``channel_loop`` (the channel's, when known and not closed).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        if channel_loop is not None and not channel_loop.is_closed():
            try:
                channel_loop.call_soon_threadsafe(
                    schedule_observer_awaitable, channel, phase, observer, awaitable
                )
                return
            except RuntimeError:  # closed meanwhile
                pass
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()
        warnings.warn(
            f"observer {observer!r} on channel {channel.name!r} returned an awaitable "
            f"during {phase!r} outside a running event loop; it was closed without running. "
            "Call send_nowait/receive_nowait from a coroutine, or use a synchronous observer.",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    future = asyncio.ensure_future(awaitable, loop=loop)
    _background.add(future)

    def done(fut: asyncio.Future[Any]) -> None:
        _background.discard(fut)
        if fut.cancelled():
            return
        error = fut.exception()
        if error is not None and isinstance(error, Exception):
            logger.error(
                "observer %r failed on channel %r during %r; the message was not affected",
                observer,
                channel.name,
                phase,
                exc_info=error,
            )

    future.add_done_callback(done)


def check_max_items(max_items: object) -> int:
    """Return ``max_items`` if it is an int of at least 1; raise ``TypeError`` or ``ValueError``.

    For the batch methods of custom channels (``receive_many(max_items)``),
    with the built-in channels' wording.
    """
    if not isinstance(max_items, int) or isinstance(max_items, bool):
        raise TypeError(f"max_items must be an int, got {type(max_items).__name__}")
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    return max_items


def check_maxsize(maxsize: object) -> int:
    if not isinstance(maxsize, int) or isinstance(maxsize, bool):
        raise TypeError(f"maxsize must be an int, got {type(maxsize).__name__}")
    if maxsize < 0:
        raise ValueError(f"maxsize must be >= 0 (0 means unbounded), got {maxsize}")
    return maxsize


def check_metadata(metadata: object) -> dict[str, Any]:
    """A message's metadata as it is stored: a dict (``None`` is an empty one)."""
    if type(metadata) is dict:
        return metadata
    if metadata is None:
        return {}
    if isinstance(metadata, Mapping):
        return dict(metadata)
    raise TypeError(f"metadata must be a mapping (a dict) or None, got {type(metadata).__name__}")


def check_ack(ack: object) -> None:
    if ack is not None and not callable(ack):
        raise TypeError(
            "ack must be None or a callable taking no argument and returning an awaitable "
            f"(an async def function), got {type(ack).__name__}"
        )


def check_is_shutdown(is_shutdown: object) -> None:
    if is_shutdown is not True and is_shutdown is not False:
        raise TypeError(
            f"is_shutdown must be True or False, got {type(is_shutdown).__name__} {is_shutdown!r}"
        )


def empty_or_unknown(channel: BaseChannel[Any]) -> bool:
    """Whether ``channel`` is empty, or cannot say (``empty()`` not implemented)."""
    try:
        return channel.empty()
    except NotImplementedError:
        return True


def is_patched(channel: object, *names: str) -> bool:
    """Whether a method of ``channel`` is replaced on the instance.

    ``names`` are the methods a shortcut would go around (default: every
    one a shortcut may go around). A channel whose ``send`` (for example)
    was replaced on the instance, as ``mock.patch.object`` does, is used
    through its attributes: no shortcut of the node loops or of the graph
    bypasses what was put there. The class's own method put back on the
    instance, as pytest's monkeypatch undoes a patch, is no replacement.
    """
    if isinstance(channel, flagged_types):
        return bool(channel._patched)  # type: ignore[attr-defined]  # kept up to date in C
    kind = type(channel)
    for name in names or SHORTCUT_METHODS:
        method = getattr(channel, name, None)
        if getattr(method, "__func__", None) is not getattr(kind, name, None):
            return True
    return False


SHORTCUT_METHODS = ("send", "send_nowait", "receive", "receive_nowait")
"""The methods a shortcut of the node loops or of the graph's feeder may go around."""

flagged_types: tuple[type, ...] = ()
"""Channel classes whose instances say themselves whether they are patched (``_patched``)."""


def register_flagged_type(cls: type) -> None:
    global flagged_types
    if cls not in flagged_types:
        flagged_types = (*flagged_types, cls)


message_types: tuple[type, ...] = ()
"""Every envelope class a channel accepts: each build registers its ChannelMessage."""


def register_message_type(cls: type) -> None:
    global message_types
    if cls not in message_types:
        message_types = (*message_types, cls)


def check_message(message: object) -> None:
    """Raise ``TypeError`` (saying how to wrap the value) unless ``message`` is a ChannelMessage.

    Either build's ``ChannelMessage`` (and its subclasses) passes. For the
    ``send`` of custom channels, with the built-in channels' wording.
    """
    if not isinstance(message, message_types):
        raise not_a_message(message)


def not_a_message(message: object) -> TypeError:
    return TypeError(
        f"channels carry ChannelMessage envelopes, got {type(message).__name__}; "
        "wrap the value: ChannelMessage(payload=value)"
    )


class BaseChannel(ABC, Generic[T]):
    """The interface of every channel: in memory, forwarding, or a custom backend.

    ``T`` is the type of the payloads it carries: ``InMemoryChannel[Order]``.
    A subclass implements ``send`` and ``receive``; the other methods have
    working defaults built on those, except ``send_nowait``,
    ``receive_nowait``, ``empty``, ``qsize`` and ``stats``, which raise
    ``NotImplementedError`` unless overridden. Observers registered here
    are available to the subclass through ``observers``.

    Instances take attributes of their own (``channel.owner = ...``), and
    their methods can be replaced on the instance (``mock.patch.object``).
    """

    __slots__ = ("__dict__", "__weakref__", "_closed", "_name", "_observers")

    def __init__(
        self,
        name: str | None = None,
        observers: Iterable[ObserverCallable] | None = None,
    ) -> None:
        self._name = check_name(name)
        self._observers = check_observers(observers)
        self._closed = False

    @property
    def name(self) -> str:
        """The channel's name, used in logs and by observers."""
        return self._name

    @property
    def __orig_class__(self) -> Any:
        # ``InMemoryChannel[Order]()`` would store the alias in the instance's
        # dict, and a channel with a dict is slower to call methods on; typing
        # skips that when it cannot be set.
        raise AttributeError("__orig_class__")

    @property
    def observers(self) -> tuple[ObserverCallable, ...]:
        """The registered observers, in the order they are called."""
        return tuple(self._observers)

    def add_observer(self, observer: ObserverCallable) -> None:
        """Call ``observer`` for every later send and receive, after those already registered."""
        check_observer(observer)
        self._observers = [*self._observers, observer]

    def remove_observer(self, observer: ObserverCallable) -> None:
        """Stop calling ``observer``; raises ``ValueError`` if it is not registered."""
        observers = list(self._observers)
        try:
            observers.remove(observer)
        except ValueError:
            raise ValueError(f"{observer!r} is not an observer of channel {self._name!r}") from None
        self._observers = observers

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._closed

    @property
    def maxsize(self) -> int:
        """The bound on buffered messages; 0 means unbounded."""
        return 0

    @abstractmethod
    async def send(self, message: ChannelMessage[T]) -> None:
        """Enqueue ``message``, waiting for room if the channel is full."""

    def send_nowait(self, message: ChannelMessage[T]) -> None:
        """Enqueue ``message`` at once, or raise ``asyncio.QueueFull``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not support send_nowait; use 'await channel.send(message)'"
        )

    async def send_many(self, messages: Iterable[ChannelMessage[T]]) -> None:
        """Send each message in order, waiting for room as needed.

        If the channel closes part-way, the messages before the failing one
        stay sent and ``ChannelClosed`` is raised.
        """
        for message in messages:
            await self.send(message)

    @abstractmethod
    async def receive(self) -> ChannelMessage[T]:
        """Return the next message, waiting for one if the channel is empty.

        Raises ``ChannelClosed`` once the channel is closed and drained.
        """

    def receive_nowait(self) -> ChannelMessage[T]:
        """Return the next message at once, or raise ``asyncio.QueueEmpty``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not support receive_nowait; use 'await channel.receive()'"
        )

    async def receive_many(self, max_items: int) -> list[ChannelMessage[T]]:
        """Wait for at least one message, then return up to ``max_items`` in order."""
        check_max_items(max_items)
        batch = [await self.receive()]
        while len(batch) < max_items:
            try:
                batch.append(self.receive_nowait())
            except (asyncio.QueueEmpty, ChannelClosed, NotImplementedError):
                break
        return batch

    def empty(self) -> bool:
        """Whether no message is ready to be received."""
        raise NotImplementedError(f"{type(self).__name__} does not say whether it is empty")

    def full(self) -> bool:
        """Whether a send would have to wait."""
        return False

    def qsize(self) -> int:
        """How many messages are buffered."""
        raise NotImplementedError(f"{type(self).__name__} does not report its size")

    def close(self) -> None:
        """Refuse further sends; what is buffered can still be received."""
        self._closed = True

    def stats(self) -> ChannelStats:
        """A snapshot of the channel's counters."""
        raise NotImplementedError(f"{type(self).__name__} does not keep statistics")

    async def _notify_observers(self, message: ChannelMessage[T], phase: str) -> None:
        """Call every observer in order, awaiting what it returns; failures are logged."""
        for observer in self._observers:
            try:
                result = observer(message, self, phase)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:
                report_observer_error(self, phase, observer)

    def _notify_observers_nowait(
        self,
        message: ChannelMessage[T],
        phase: str,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Call every observer in order; what one returns is scheduled on the running loop.

        From a thread that runs no loop, it is scheduled on ``loop``.
        """
        for observer in self._observers:
            try:
                result = observer(message, self, phase)
            except Exception:
                report_observer_error(self, phase, observer)
                continue
            if result is not None and inspect.isawaitable(result):
                schedule_observer_awaitable(self, phase, observer, result, loop)

    def __aiter__(self) -> AsyncIterator[ChannelMessage[T]]:
        return self

    async def __anext__(self) -> ChannelMessage[T]:
        try:
            return await self.receive()
        except ChannelClosed:
            raise StopAsyncIteration from None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.name!r} {state}>"
