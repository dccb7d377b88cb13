"""``BroadcastChannel``, pure-Python build.

Each subscription is an in-memory channel of its own, bounded by the
broadcast's ``maxsize``, that only the broadcast sends into; a send appends
the message to every subscription at once (nothing awaits in between), so
every subscriber sees the same messages in the same order. A ``"block"``
send waits, without delivering, until no subscription is full; a
``"drop_oldest"`` send never waits and makes room in a full subscription by
discarding its oldest queued message, which that subscription counts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Literal, TypeVar

from . import _channel_base as _base
from ._channel_base import (
    BaseChannel,
    ChannelClosed,
    ChannelStats,
    ObserverCallable,
    check_maxsize,
    not_a_message,
)
from ._channels_py import ChannelMessage, InMemoryChannel
from ._select_py import register_native_type

__all__ = ["BroadcastChannel", "BroadcastSubscription", "OnFull", "check_on_full"]

T = TypeVar("T")

OnFull = Literal["block", "drop_oldest"]
"""What a send does about a subscription with ``maxsize`` messages waiting."""


def check_on_full(on_full: object) -> bool:
    """Whether ``on_full`` drops (``"drop_oldest"``); raise unless it is a known policy."""
    if on_full == "block":
        return False
    if on_full == "drop_oldest":
        return True
    raise ValueError(f"on_full must be 'block' or 'drop_oldest', got {on_full!r}")


class BroadcastSubscription(InMemoryChannel[T]):
    """The receive side of a ``BroadcastChannel``, made by ``subscribe()``.

    It receives every message sent to the broadcast after it subscribed, in
    send order, with all of ``InMemoryChannel``'s receive guarantees.
    ``close()`` unsubscribes it: nothing more arrives, what is queued can
    still be received, then ``ChannelClosed``. Sending to it directly raises
    ``NotImplementedError``; ``stats().dropped`` counts the messages it lost
    by lagging behind a ``"drop_oldest"`` broadcast.
    """

    __slots__ = ("_broadcast", "_dropped")

    def __init__(
        self,
        broadcast: BroadcastChannel[T],
        name: str | None = None,
        observers: Iterable[ObserverCallable] | None = None,
    ) -> None:
        super().__init__(name, broadcast.maxsize, observers)
        self._broadcast: BroadcastChannel[T] | None = broadcast
        self._dropped = 0

    @property
    def broadcast(self) -> BroadcastChannel[T] | None:
        """The broadcast it listens to; None once unsubscribed."""
        return self._broadcast

    async def send(self, message: ChannelMessage[T]) -> None:
        raise NotImplementedError(self._receive_only())

    def send_nowait(self, message: ChannelMessage[T]) -> None:
        raise NotImplementedError(self._receive_only())

    def blocking_send(self, message: ChannelMessage[T], timeout: float | None = None) -> None:
        raise NotImplementedError(self._receive_only())

    def _receive_only(self) -> str:
        return (
            f"subscription {self._name!r} is the receive side of a broadcast; "
            "send to the BroadcastChannel itself"
        )

    def close(self) -> None:
        """Unsubscribe: receive what is queued, then ``ChannelClosed``."""
        broadcast, self._broadcast = self._broadcast, None
        if broadcast is not None:
            broadcast._unsubscribe(self)
        super().close()

    def stats(self) -> ChannelStats:
        """The subscription's counters; ``dropped`` counts messages lost to lag."""
        stats = super().stats()  # counts a dropped message as received: it left the buffer
        return replace(stats, received=stats.received - self._dropped, dropped=self._dropped)

    def _drop_oldest(self) -> None:
        """Discard the oldest queued message (not one promised to a woken receiver)."""
        self._note_size()
        del self._buffer[self._receivers_woken]
        self._dropped += 1

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a broadcast subscription cannot be copied or pickled; subscribe again")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a broadcast subscription cannot be copied or pickled; subscribe again")


register_native_type(BroadcastSubscription)


class BroadcastChannel(BaseChannel[T]):
    """A channel whose every message reaches every subscriber.

    ``subscribe()`` makes a receive side that gets each message sent after
    it subscribed, in send order. ``maxsize`` bounds each subscriber's
    backlog (0: unbounded); ``on_full`` says what a send does when a
    subscriber has ``maxsize`` messages waiting:

    * ``"block"``: the send waits until every subscriber has room, so the
      slowest sets the pace. A cancelled send has delivered to nobody.
    * ``"drop_oldest"``: the send never waits; the lagging subscriber loses
      its oldest queued message, counted in its ``stats().dropped``.

    A message sent while nobody is subscribed reaches nobody (it is counted
    in ``stats().sent``). ``close()`` refuses further sends and closes every
    subscription: each drains what it has, then gets ``ChannelClosed``.
    Observers see each ``"send"`` here and each ``"receive"`` of every
    subscription (the subscription is the channel they are given).
    """

    __slots__ = ("_blocked", "_drops", "_maxsize", "_sent", "_subscribed", "_subscribers")

    _is_broadcast = True

    def __init__(
        self,
        name: str | None = None,
        maxsize: int = 0,
        *,
        on_full: OnFull = "block",
        observers: Iterable[ObserverCallable] | None = None,
    ) -> None:
        super().__init__(name, observers)
        self._maxsize = check_maxsize(maxsize)
        self._drops = check_on_full(on_full)
        self._subscribers: list[BroadcastSubscription[T]] = []
        self._sent = 0
        self._subscribed = 0  # subscriptions ever made, for their default names
        # Sends blocked by a full subscriber, oldest first; each future is set
        # (True) when its send's turn comes, or (False) by close().
        self._blocked: deque[asyncio.Future[bool]] = deque()

    @property
    def maxsize(self) -> int:
        """The bound on each subscriber's backlog; 0 means unbounded."""
        return self._maxsize

    @property
    def on_full(self) -> OnFull:
        """What a send does about a full subscriber: ``"block"`` or ``"drop_oldest"``."""
        return "drop_oldest" if self._drops else "block"

    @property
    def subscribers(self) -> tuple[BroadcastSubscription[T], ...]:
        """The current subscriptions, oldest first."""
        return tuple(self._subscribers)

    def subscribe(self, name: str | None = None) -> BroadcastSubscription[T]:
        """A new receive side that gets every message sent from now on."""
        if self._closed:
            raise self._closed_error()
        self._subscribed += 1
        if name is None:
            name = f"{self._name}:subscriber-{self._subscribed}"
        subscription = BroadcastSubscription(self, name, self._observers)
        self._subscribers = [*self._subscribers, subscription]
        return subscription

    def _unsubscribe(self, subscription: BroadcastSubscription[T]) -> None:
        self._subscribers = [s for s in self._subscribers if s is not subscription]

    def add_observer(self, observer: ObserverCallable) -> None:
        """Call ``observer`` for every later send here and receive on any subscription."""
        super().add_observer(observer)
        for subscription in self._subscribers:
            subscription.add_observer(observer)

    def remove_observer(self, observer: ObserverCallable) -> None:
        """Stop calling ``observer``; raises ``ValueError`` if it is not registered."""
        super().remove_observer(observer)
        for subscription in self._subscribers:
            if observer in subscription.observers:
                subscription.remove_observer(observer)

    # -- sending ---------------------------------------------------------

    async def send(self, message: ChannelMessage[T]) -> None:
        """Deliver ``message`` to every subscriber.

        With ``on_full="block"``, waits until every subscriber has room;
        raises ``ChannelClosed`` if the broadcast closes first. Cancelled
        while waiting, it has delivered to nobody.
        """
        self._check(message)
        if self._maxsize and not self._drops and (self._blocked or self._first_full()):
            await self._wait_for_room()
        self._deliver(message)
        if self._observers:
            await self._notify_observers(message, "send")

    async def _wait_for_room(self) -> None:
        """Wait, behind the sends blocked before, until every subscriber has room.

        Only the oldest blocked send waits on the subscribers; the others
        wait for their turn, so sends finish in the order they blocked.
        """
        turn: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        blocked = self._blocked
        blocked.append(turn)
        try:
            if blocked[0] is not turn:
                await turn
            while True:
                if self._closed:  # before our turn came, or while we waited for room
                    raise self._closed_error()
                if (full := self._first_full()) is None:
                    break
                try:
                    await full._wait_for_room()
                except ChannelClosed:  # that subscriber left, or we are closed
                    if self._closed:
                        raise self._closed_error() from None
        finally:
            blocked.remove(turn)
            if blocked and not blocked[0].done():
                blocked[0].set_result(True)  # the next blocked send's turn

    def send_nowait(self, message: ChannelMessage[T]) -> None:
        """Deliver ``message`` to every subscriber now, or raise ``asyncio.QueueFull``.

        ``QueueFull`` (with ``on_full="block"`` only) means a subscriber is
        full; the message then reached nobody.
        """
        self._check(message)
        if self._maxsize and not self._drops and (self._blocked or self._first_full()):
            raise asyncio.QueueFull
        self._deliver(message)
        if self._observers:
            self._notify_observers_nowait(message, "send")

    def _check(self, message: ChannelMessage[T]) -> None:
        if type(message) is not ChannelMessage and not isinstance(message, _base.message_types):
            raise not_a_message(message)
        if self._closed:
            raise self._closed_error()

    def _first_full(self) -> BroadcastSubscription[T] | None:
        for subscription in self._subscribers:
            if subscription._room_taken() >= self._maxsize:
                return subscription
        return None

    def _deliver(self, message: ChannelMessage[T]) -> None:
        """Append ``message`` to every subscription; nothing awaits in between."""
        self._sent += 1
        maxsize = self._maxsize
        for subscription in self._subscribers:
            locked = subscription._enter()  # threads may be receiving from it
            try:
                while maxsize and subscription._room_taken() >= maxsize:
                    subscription._drop_oldest()  # only "drop_oldest" gets here
                subscription._enqueue(message)
            finally:
                subscription._leave(locked)

    # -- the receive side is the subscriptions ---------------------------

    async def receive(self) -> ChannelMessage[T]:
        raise NotImplementedError(self._send_only())

    def receive_nowait(self) -> ChannelMessage[T]:
        raise NotImplementedError(self._send_only())

    def _send_only(self) -> str:
        return f"broadcast {self._name!r} is received through subscriptions: call subscribe()"

    # -- state -----------------------------------------------------------

    def close(self) -> None:
        """Refuse further sends; every subscriber drains, then gets ``ChannelClosed``."""
        if self._closed:
            return
        self._closed = True
        for turn in self._blocked:
            if not turn.done():
                turn.set_result(False)
        subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            subscription._broadcast = None
            InMemoryChannel.close(subscription)

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(f"broadcast channel {self._name!r} is closed")

    def full(self) -> bool:
        """Whether a ``"block"`` send would wait (a subscriber is full)."""
        return bool(self._maxsize and not self._drops and (self._blocked or self._first_full()))

    def empty(self) -> bool:
        """Whether no subscriber has a message waiting."""
        return all(subscription.empty() for subscription in self._subscribers)

    def qsize(self) -> int:
        """The largest backlog among the subscribers."""
        return max((subscription.qsize() for subscription in self._subscribers), default=0)

    def stats(self) -> ChannelStats:
        """Sends counted here; size is the largest backlog, dropped the total over subscribers."""
        subscribers = self._subscribers
        size = self.qsize()
        return ChannelStats(
            sent=self._sent,
            received=sum(s.stats().received for s in subscribers),
            size=size,
            peak_size=max((s.stats().peak_size for s in subscribers), default=0),
            maxsize=self._maxsize,
            senders_waiting=len(self._blocked),
            receivers_waiting=sum(s.stats().receivers_waiting for s in subscribers),
            closed=self._closed,
            dropped=sum(s._dropped for s in subscribers),
        )

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a BroadcastChannel cannot be copied or pickled")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a BroadcastChannel cannot be copied or pickled")
