"""The pure-Python build of the channels: the reference for the compiled one.

Both builds keep the same state and follow the same steps, so they behave
identically; ``spark.nodes.channels`` picks one of them.

How an ``InMemoryChannel`` works: messages wait in a deque, in the order
they were sent, until a receiver takes the oldest; blocked receivers and
blocked senders wait on futures in two FIFO deques. Waking a waiter
*promises* it something: a buffered message to a receiver, a free slot to a
sender. The promises are counted (``_receivers_woken``, ``_senders_woken``)
so that nobody arriving later can take them. A message promised to a
receiver no longer takes room (the receiver has it, in all but name), so a
sender can go on without waiting for that receiver to run. A woken waiter
that is cancelled before it runs hands its promise to the next waiter, so a
wake-up is never lost and a message is never lost, taken twice or moved.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from . import _channel_base as _base
from . import _copying
from ._channel_base import (
    BaseChannel,
    ChannelClosed,
    ChannelStats,
    ObserverCallable,
    check_ack,
    check_is_shutdown,
    check_max_items,
    check_maxsize,
    check_metadata,
    not_a_message,
    register_message_type,
)

__all__ = ["ChannelMessage", "ForwardingChannel", "InMemoryChannel"]

_new_message = object.__new__

T = TypeVar("T")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<not given>"


_MISSING: Any = _Missing()


@dataclass(slots=True, init=False)
class ChannelMessage(Generic[T]):
    """The envelope every channel carries.

    ``payload`` is the application's data; ``metadata`` carries tracing and
    routing information; ``ack``, when set, is awaited by the receiver once
    the message is handled; ``is_shutdown`` asks the receiver to stop.
    A message without ``ack`` can be pickled.

    ``metadata`` is stored as a dict (``None`` gives an empty one, another
    mapping is copied into one). ``TypeError`` is raised for metadata that
    is not a mapping, an ``ack`` that is not callable, or an ``is_shutdown``
    that is not a bool.
    """

    payload: T
    metadata: dict[str, Any] = field(default_factory=dict)
    ack: Callable[[], Awaitable[None]] | None = None
    is_shutdown: bool = False

    def __init__(
        self,
        payload: T,
        metadata: Mapping[str, Any] | None = None,
        ack: Callable[[], Awaitable[None]] | None = None,
        is_shutdown: bool = False,
    ) -> None:
        self.payload = payload
        if type(metadata) is dict:
            self.metadata = metadata
        else:
            self.metadata = {} if metadata is None else check_metadata(metadata)
        if ack is not None:
            check_ack(ack)
        if is_shutdown is not False:
            check_is_shutdown(is_shutdown)
        self.ack = ack
        self.is_shutdown = is_shutdown

    def clone(
        self,
        *,
        payload: Any = _MISSING,
        metadata: Mapping[str, Any] | None = None,
        ack: Callable[[], Awaitable[None]] | None = _MISSING,
        is_shutdown: bool = _MISSING,
    ) -> ChannelMessage[Any]:
        """A new message with the given fields replaced.

        ``metadata`` is merged: the clone has this message's keys plus the
        given ones, the given ones winning. Neither this message nor its
        metadata dict is changed.
        """
        merged = dict(self.metadata)
        if metadata is not None:
            merged.update(metadata if type(metadata) is dict else check_metadata(metadata))
        return ChannelMessage(
            self.payload if payload is _MISSING else payload,
            merged,
            self.ack if ack is _MISSING else ack,
            self.is_shutdown if is_shutdown is _MISSING else is_shutdown,
        )

    def __post_init__(self) -> None:
        """The checks of ``__init__``, for a dataclass subclass's generated one."""
        metadata = self.metadata
        if type(metadata) is not dict:
            self.metadata = check_metadata(metadata)
        check_ack(self.ack)
        check_is_shutdown(self.is_shutdown)

    def __reduce__(self) -> tuple[Any, ...]:
        return _copying.reduce_message(self)


register_message_type(ChannelMessage)


class InMemoryChannel(BaseChannel[T]):
    """A channel inside one event loop, unbounded or bounded by ``maxsize``.

    Guarantees:

    * Messages leave in the order they were sent. Blocked senders are
      served in the order they blocked, and so are blocked receivers; a
      message promised to a blocked receiver takes no room.
    * A cancelled ``send`` has not enqueued its message; a cancelled
      ``receive`` has not taken one (its promise goes to the next blocked
      receiver). Nothing is lost, duplicated or reordered.
    * ``close()`` wakes every blocked sender with ``ChannelClosed`` (their
      messages are not enqueued); receivers drain what is buffered, then get
      ``ChannelClosed``.
    * Observers run after each enqueue (``"send"``) and each dequeue
      (``"receive"``), in registration order; their errors are logged on the
      ``spark.channels`` logger and never reach the caller.
    """

    __slots__ = (
        "_buffer",
        "_guarded",
        "_maxsize",
        "_peak_size",
        "_receivers",
        "_receivers_woken",
        "_senders",
        "_senders_woken",
        "_sent",
        "_unseen",
    )

    def __init__(
        self,
        name: str | None = None,
        maxsize: int = 0,
        observers: Iterable[ObserverCallable] | None = None,
    ) -> None:
        super().__init__(name, observers)
        self._maxsize = check_maxsize(maxsize)
        # Whether a send must check for room or for close: one test on the
        # path of an open unbounded channel.
        self._guarded = bool(self._maxsize)
        self._buffer: deque[ChannelMessage[T]] = deque()
        # Futures of blocked tasks, oldest first. A receiver's future gets the
        # channel that promised it a message, or None when woken by close()
        # (``select`` shares one future among several channels' queues). A
        # sender's gets True when promised a free slot, False when woken by close().
        self._receivers: deque[asyncio.Future[InMemoryChannel[T] | None]] = deque()
        self._senders: deque[asyncio.Future[bool]] = deque()
        # Messages at the front of the buffer promised to woken receivers
        # that have not run yet; they take no room and are not counted in
        # qsize(). Buffered messages minus these are the queued ones.
        self._receivers_woken = 0
        # Free slots promised to woken senders that have not run yet.
        self._senders_woken = 0
        # Sends are counted once, as ``_unseen``; the first receive from the
        # buffer after them moves that count into ``_sent`` and checks whether
        # the size before it is a new peak. So the count of sends is
        # ``_sent + _unseen``, received ones are that minus the buffered ones,
        # and neither path does more than one piece of bookkeeping. Other
        # ways of taking a message check the peak themselves.
        self._sent = 0
        self._unseen = 0
        self._peak_size = 0

    # -- sending ---------------------------------------------------------

    async def send(self, message: ChannelMessage[T]) -> None:
        """Enqueue ``message``, waiting while the channel is full.

        Raises ``ChannelClosed`` if the channel is closed before the message
        is enqueued. If cancelled while waiting, the message is not enqueued.
        """
        if type(message) is not ChannelMessage and not isinstance(message, _base.message_types):
            raise not_a_message(message)
        if self._guarded:
            if self._closed:
                raise self._closed_error()
            if self._room_taken() >= self._maxsize:
                await self._wait_for_room()
        self._buffer.append(message)
        self._unseen += 1
        if self._receivers:
            self._wake_receivers()
        if self._observers:
            await self._notify_observers(message, "send")

    def send_nowait(self, message: ChannelMessage[T]) -> None:
        """Enqueue ``message`` now, or raise ``asyncio.QueueFull``.

        Works from synchronous code; an awaitable returned by an observer is
        scheduled on the running loop (see the README).
        """
        if type(message) is not ChannelMessage and not isinstance(message, _base.message_types):
            raise not_a_message(message)
        buffer = self._buffer
        if self._guarded:
            if self._closed:
                raise self._closed_error()
            if len(buffer) - self._receivers_woken + self._senders_woken >= self._maxsize:
                raise asyncio.QueueFull  # no room (``_room_taken()``, inline on this path)
        buffer.append(message)
        self._unseen += 1
        if self._receivers:
            self._wake_receivers()
        if self._observers:
            self._notify_observers_nowait(message, "send")

    async def _wait_for_room(self) -> None:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._senders.append(future)
        try:
            promised = await future
        except BaseException:
            if future.done() and not future.cancelled() and future.result():
                self._senders_woken -= 1
                self._wake_senders()
            else:
                _discard(self._senders, future)
            raise
        if promised:
            self._senders_woken -= 1
        if not promised or self._closed:
            raise self._closed_error()

    def _wake_senders(self) -> None:
        """Promise each free slot to the oldest blocked sender."""
        senders = self._senders
        while senders and self._room_taken() < self._maxsize:
            future = senders.popleft()
            if not future.done():
                future.set_result(True)
                self._senders_woken += 1

    def _room_taken(self) -> int:
        """Queued messages plus the slots promised to woken senders."""
        return len(self._buffer) - self._receivers_woken + self._senders_woken

    # -- receiving -------------------------------------------------------

    async def receive(self) -> ChannelMessage[T]:
        """Return the next message, waiting while the channel is empty.

        Raises ``ChannelClosed`` once the channel is closed and drained. If
        cancelled, no message was taken.
        """
        buffer = self._buffer
        if buffer and not self._receivers_woken:
            if self._unseen:  # the first receive after sends: the size may be a new peak
                self._sent += self._unseen
                self._unseen = 0
                if len(buffer) > self._peak_size:
                    self._peak_size = len(buffer)
            message = buffer.popleft()
        else:
            message = await self._wait_for_message()
        if self._senders:
            self._wake_senders()
        if self._observers:
            await self._notify_observers(message, "receive")
        return message

    def receive_nowait(self) -> ChannelMessage[T]:
        """Return the next message now, or raise ``asyncio.QueueEmpty``.

        Raises ``ChannelClosed`` instead once the channel is closed and drained.
        """
        buffer = self._buffer
        if buffer and not self._receivers_woken:  # the common case, as in receive()
            if self._unseen:
                self._sent += self._unseen
                self._unseen = 0
                if len(buffer) > self._peak_size:
                    self._peak_size = len(buffer)
            message = buffer.popleft()
        elif len(buffer) > self._receivers_woken:
            message = self._take_queued()
        elif self._closed:
            raise self._closed_error()
        else:
            raise asyncio.QueueEmpty
        if self._senders:
            self._wake_senders()
        if self._observers:
            self._notify_observers_nowait(message, "receive")
        return message

    async def receive_many(self, max_items: int) -> list[ChannelMessage[T]]:
        """Wait for at least one message, then return up to ``max_items``, in order."""
        check_max_items(max_items)
        batch = [await self._wait_for_message()]
        more = min(max_items - 1, len(self._buffer) - self._receivers_woken)
        if more > 0:
            self._note_size()
            buffer = self._buffer
            for _ in range(more):
                batch.append(buffer.popleft())
        if self._senders:
            self._wake_senders()
        if self._observers:
            for message in batch:
                await self._notify_observers(message, "receive")
        return batch

    async def _wait_for_message(self) -> ChannelMessage[T]:
        """Take the oldest message, waiting for a promise of one if none is queued."""
        if len(self._buffer) > self._receivers_woken:
            return self._take_queued()  # promised ones are ahead, but one is free
        if self._closed:
            raise self._closed_error()
        future: asyncio.Future[InMemoryChannel[T] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._receivers.append(future)
        try:
            promiser = await future
        except BaseException:
            if future.done() and not future.cancelled() and future.result() is not None:
                self._give_back_promise()
            else:
                _discard(self._receivers, future)
            raise
        if promiser is None:
            raise self._closed_error()
        return self._take_promised()

    def _take_promised(self) -> ChannelMessage[T]:
        """Take the message promised to a woken receiver (it is at the front)."""
        self._receivers_woken -= 1
        return self._buffer.popleft()

    def _give_back_promise(self) -> None:
        """A woken receiver left without its message: queue it again for the next one."""
        self._receivers_woken -= 1
        self._note_size()
        self._wake_receivers()

    def _take_queued(self) -> ChannelMessage[T]:
        """Dequeue the oldest message while more are buffered than promised."""
        self._note_size()
        return self._buffer.popleft()

    def _note_size(self) -> None:
        size = len(self._buffer) - self._receivers_woken
        if size > self._peak_size:
            self._peak_size = size

    def _wake_receivers(self) -> None:
        """Promise each queued message to the oldest blocked receiver."""
        receivers = self._receivers
        promised = False
        while receivers and len(self._buffer) > self._receivers_woken:
            future = receivers.popleft()
            if not future.done():
                future.set_result(self)
                self._receivers_woken += 1
                promised = True
        if promised and self._senders:  # a promised message no longer takes room
            self._wake_senders()

    # -- state -----------------------------------------------------------

    def close(self) -> None:
        """Refuse further sends and wake every blocked task.

        Blocked senders get ``ChannelClosed``; blocked receivers get
        ``ChannelClosed`` (nothing is buffered for them). Buffered messages
        can still be received. Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = self._guarded = True
        receivers, senders = self._receivers, self._senders
        while receivers:
            receiver = receivers.popleft()
            if not receiver.done():
                receiver.set_result(None)
        while senders:
            sender = senders.popleft()
            if not sender.done():
                sender.set_result(False)

    @property
    def maxsize(self) -> int:
        """The bound on buffered messages; 0 means unbounded."""
        return self._maxsize

    def qsize(self) -> int:
        """How many messages are queued (not yet promised to a woken receiver)."""
        return len(self._buffer) - self._receivers_woken

    def empty(self) -> bool:
        """Whether a new ``receive`` would have to wait."""
        return len(self._buffer) <= self._receivers_woken

    def full(self) -> bool:
        """Whether a new ``send`` would have to wait."""
        return bool(self._maxsize) and self._room_taken() >= self._maxsize

    def stats(self) -> ChannelStats:
        """A snapshot of the channel's counters."""
        return ChannelStats(
            sent=self._sent + self._unseen,
            received=self._sent + self._unseen - len(self._buffer),
            size=self.qsize(),
            peak_size=max(self._peak_size, self.qsize()),
            maxsize=self._maxsize,
            senders_waiting=_count_pending(self._senders),
            receivers_waiting=_count_pending(self._receivers),
            closed=self._closed,
        )

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(f"channel {self._name!r} is closed")

    # -- copying ---------------------------------------------------------

    def _queued(self) -> list[ChannelMessage[T]]:
        """The queued messages, oldest first (not those promised to woken receivers)."""
        return list(self._buffer)[self._receivers_woken :]

    def __getstate__(self) -> dict[str, Any]:
        """What ``copy.deepcopy`` and ``pickle`` keep (see spark/nodes/_copying.py)."""
        return _copying.in_memory_state(self, self._queued())

    def __setstate__(self, state: dict[str, Any]) -> None:
        InMemoryChannel.__init__(self, state["name"], state["maxsize"], state["observers"])
        for message in state["messages"]:
            self._buffer.append(message)
        self._unseen = len(self._buffer)
        if state["closed"]:
            self._closed = self._guarded = True
        _copying.restore_attributes(self, state)


class ForwardingChannel(BaseChannel[T]):
    """A named entry into another channel that adds default metadata.

    Each message sent through it reaches ``downstream`` as a copy whose
    metadata is ``metadata_defaults`` overlaid with the message's own
    metadata (the message's keys win); ``ack`` and ``is_shutdown`` are kept.
    Without defaults the message passes unchanged. Receiving, ``empty()``
    and the size queries are those of ``downstream``.

    Closing a forwarder stops sends through it only; ``downstream`` stays
    open, since other senders (other edges) may share it.
    """

    __slots__ = ("_defaults", "_downstream")

    def __init__(
        self,
        downstream: BaseChannel[T],
        name: str | None = None,
        metadata_defaults: Mapping[str, Any] | None = None,
        observers: Iterable[ObserverCallable] | None = None,
    ) -> None:
        if not isinstance(downstream, BaseChannel):
            raise TypeError(
                f"downstream must be a channel (a BaseChannel), got {type(downstream).__name__}"
            )
        if metadata_defaults is not None and not isinstance(metadata_defaults, Mapping):
            raise TypeError(
                f"metadata_defaults must be a mapping, got {type(metadata_defaults).__name__}"
            )
        super().__init__(f"forward:{downstream.name}" if name is None else name, observers)
        self._downstream = downstream
        self._defaults = dict(metadata_defaults) if metadata_defaults else None

    @property
    def downstream(self) -> BaseChannel[T]:
        """The channel that receives what is sent here."""
        return self._downstream

    @property
    def metadata_defaults(self) -> dict[str, Any]:
        """A copy of the metadata added to each message."""
        return dict(self._defaults or {})

    def _enrich(self, message: ChannelMessage[T]) -> ChannelMessage[T]:
        if type(message) is not ChannelMessage and not isinstance(message, _base.message_types):
            raise not_a_message(message)
        if self._closed:
            raise ChannelClosed(f"forwarding channel {self._name!r} is closed")
        defaults = self._defaults
        if defaults is None:
            return message
        metadata = message.metadata
        # A copy of the fields as they are (the compiled build's forwarder,
        # as hot a path, does not check them again either).
        enriched: ChannelMessage[T] = _new_message(ChannelMessage)
        enriched.payload = message.payload
        enriched.metadata = {**defaults, **metadata} if metadata else defaults.copy()
        enriched.ack = message.ack
        enriched.is_shutdown = message.is_shutdown
        return enriched

    async def send(self, message: ChannelMessage[T]) -> None:
        """Send the enriched message to ``downstream``, waiting while it is full."""
        enriched = self._enrich(message)
        await self._downstream.send(enriched)
        if self._observers:
            await self._notify_observers(enriched, "send")

    def send_nowait(self, message: ChannelMessage[T]) -> None:
        """Send the enriched message to ``downstream`` now, or raise ``asyncio.QueueFull``."""
        enriched = self._enrich(message)
        self._downstream.send_nowait(enriched)
        if self._observers:
            self._notify_observers_nowait(enriched, "send")

    async def receive(self) -> ChannelMessage[T]:
        """Receive from ``downstream``."""
        message = await self._downstream.receive()
        if self._observers:
            await self._notify_observers(message, "receive")
        return message

    def receive_nowait(self) -> ChannelMessage[T]:
        """Receive from ``downstream`` now, or raise ``asyncio.QueueEmpty``."""
        message = self._downstream.receive_nowait()
        if self._observers:
            self._notify_observers_nowait(message, "receive")
        return message

    async def receive_many(self, max_items: int) -> list[ChannelMessage[T]]:
        """Receive up to ``max_items`` from ``downstream``, waiting for at least one."""
        batch = await self._downstream.receive_many(max_items)
        if self._observers:
            for message in batch:
                await self._notify_observers(message, "receive")
        return batch

    @property
    def maxsize(self) -> int:
        return self._downstream.maxsize

    def qsize(self) -> int:
        return self._downstream.qsize()

    def empty(self) -> bool:
        return self._downstream.empty()

    def full(self) -> bool:
        return self._downstream.full()

    def stats(self) -> ChannelStats:
        """The statistics of ``downstream``."""
        return self._downstream.stats()

    # -- copying ---------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """What ``copy.deepcopy`` and ``pickle`` keep (see spark/nodes/_copying.py)."""
        return _copying.forwarding_state(self, self._defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        ForwardingChannel.__init__(
            self, state["downstream"], state["name"], state["metadata_defaults"], state["observers"]
        )
        self._closed = state["closed"]
        _copying.restore_attributes(self, state)


def _discard(waiters: deque[asyncio.Future[Any]], future: asyncio.Future[Any]) -> None:
    try:
        waiters.remove(future)
    except ValueError:
        pass


def _count_pending(waiters: deque[asyncio.Future[Any]]) -> int:
    return sum(1 for future in waiters if not future.done())
