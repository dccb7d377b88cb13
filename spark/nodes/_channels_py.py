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
from asyncio import _get_running_loop
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from threading import Lock, RLock, get_ident
from typing import Any, Generic, TypeVar, Union

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
from ._threads import (
    SHARING,
    ThreadWaiter,
    blocks_a_loop,
    check_timeout,
    inside_lock_free_section,
    lock_free,
    open_one_gate,
    wait_for_lock,
    wait_for_owner,
)

__all__ = ["ChannelMessage", "ForwardingChannel", "InMemoryChannel"]

_new_message = object.__new__

T = TypeVar("T")

Waiter = Union["asyncio.Future[Any]", ThreadWaiter]
"""What a blocked sender or receiver waits on: a task's loop future, or a thread's waiter."""


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
    * Other threads may call ``blocking_send``, ``blocking_receive``,
      ``send_nowait``, ``receive_nowait`` and ``close``: all of the above
      holds across threads (order per sending thread), a thread blocked
      in ``blocking_*`` is served in turn with blocked tasks, and ``close()``
      wakes it too.
    """

    __slots__ = (
        "_buffer",
        "_busy",
        "_guarded",
        "_lock",
        "_lock_waiters",
        "_loop",
        "_loop_thread",
        "_maxsize",
        "_owner",
        "_peak_size",
        "_posted",
        "_receivers",
        "_receivers_woken",
        "_senders",
        "_senders_woken",
        "_sent",
        "_shared",
        "_sharing",
        "_unseen",
        "_wakes",
    )

    def __init__(
        self,
        name: str | None = None,
        maxsize: int = 0,
        observers: Iterable[ObserverCallable] | None = None,
    ) -> None:
        super().__init__(name, observers)
        self._maxsize = check_maxsize(maxsize)
        self._buffer: deque[ChannelMessage[T]] = deque()
        # Waiters of blocked tasks (loop futures) and threads (ThreadWaiter),
        # oldest first. A receiver's gets the channel that promised it a
        # message, or None when woken by close() (``select`` shares one future
        # among several channels' queues). A sender's gets True when promised
        # a free slot, False when woken by close().
        self._receivers: deque[Waiter] = deque()
        self._senders: deque[Waiter] = deque()
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
        # Threads (see spark/nodes/_threads.py): the owner's counted sections
        # under way, whether another thread has used the channel (then every
        # section holds ``_lock``), the loop whose tasks wait here (and,
        # unshared, take the fast paths) and its thread, and the wake-ups of
        # those tasks recorded by other threads (``_posted`` once the loop
        # was asked to deliver them).
        self._owner = get_ident()
        self._busy = 0
        self._shared = False
        self._sharing = False  # while the sharing thread waits for the owner's sections
        self._lock: RLock | None = None
        self._lock_waiters: deque[Lock] = deque()  # threads waiting for ``_lock`` (contended)
        self._loop: asyncio.AbstractEventLoop | None = asyncio._get_running_loop()
        self._loop_thread: int | None = None if self._loop is None else self._owner
        # Whether a send must take the general path: the channel is bounded,
        # closed or shared. One test on the path of an open unbounded channel.
        self._guarded = bool(self._maxsize)
        self._wakes: list[tuple[Waiter, Any, bool]] = []
        self._posted = False

    # -- sections (see spark/nodes/_threads.py) ---------------------------

    def _enter(self) -> bool:
        """Begin a section on the channel's state; True if it took the lock.

        The owner's sections are counted and take no lock while the channel
        is not shared; a section of another thread shares it first. Once
        shared, sections hold the lock, except one nested in a section of
        the owner begun before the sharing (which goes on as it began): in
        a counted one, or in a lock-free one (a signal handler or a
        finalizer using the channel in the middle of it).
        """
        if not self._shared:
            if get_ident() != self._owner:
                self._share()
            else:
                self._busy += 1
                if not self._shared:
                    return False
                self._busy -= 1
        elif self._busy and get_ident() == self._owner:
            self._busy += 1
            return False
        if not self._lock.acquire(False):  # type: ignore[union-attr]
            if self._sharing and get_ident() == self._owner and inside_lock_free_section(self):
                self._busy += 1  # the sharing thread waits for that section
                return False
            wait_for_lock(self)
        return True

    def _leave(self, locked: bool) -> None:
        """End a section begun by ``_enter``; ask the loop for recorded wake-ups."""
        if not locked:
            self._busy -= 1
            return
        loop = self._loop
        post = dropped = False
        if self._wakes:
            if not self._posted:
                self._posted = True
                post = loop is not None  # else its loop was closed (see _drop_wakes)
                dropped = not post
            elif loop is not None and loop.is_closed():  # closed before it delivered them
                dropped = True
        self._lock.release()  # type: ignore[union-attr]
        if self._lock_waiters:  # one of them may take it now
            open_one_gate(self._lock_waiters)
        if post:
            try:
                loop.call_soon_threadsafe(self._deliver_wakes)  # type: ignore[union-attr]
            except RuntimeError:  # the loop is closed: its tasks will never run again
                dropped = True
        if dropped:
            self._drop_wakes()

    def _drop_wakes(self) -> None:
        """The loop of the recorded wake-ups is closed: hand on what was promised to its tasks.

        A promise handed on may go to another of its tasks, recorded again:
        handed on again, here, until it reaches a thread or nobody.
        """
        locked = self._enter()
        try:
            self._loop = self._loop_thread = None  # it will never run again: nothing to post to
            self._posted = True  # (sections nested below leave the recorded wake-ups to us)
            while self._wakes:
                wakes, self._wakes = self._wakes, []
                for _future, value, receiving in wakes:
                    self._hand_on(value, receiving)
            self._posted = False
        finally:
            self._leave(locked)

    def _hand_on(self, value: Any, receiving: bool) -> None:
        """A woken waiter that will not run: its promise goes to the next one (inside a section)."""
        if receiving and value is not None:
            self._give_back_promise()
        elif not receiving and value:
            self._senders_woken -= 1
            self._wake_senders()

    def _share(self) -> None:
        """Let threads other than the owner use the channel (once; see _threads.py)."""
        with SHARING:
            if self._lock is not None:
                return
            lock = RLock()
            lock.acquire()  # sections that see _shared wait until the owner's are done
            self._lock = lock
            self._shared = self._guarded = self._sharing = True
        try:
            wait_for_owner(self)
        finally:
            self._sharing = False
            self._leave(True)

    def _claim(self) -> None:
        """Let the running loop's tasks take the lock-free paths (in an owner's section).

        Called from a task's general path when its section is unlocked,
        which only the owner's thread gets: the fast paths are for the tasks
        of ``_loop``, so they run on the owner's thread. A task of another
        thread's loop has shared the channel instead.
        """
        loop = _get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._loop_thread = self._owner

    def _resolve(self, waiter: Waiter, value: Any, receiving: bool) -> None:
        """Wake ``waiter`` with ``value``, or record it for the loop if it is a task's future."""
        if type(waiter) is ThreadWaiter or not self._shared or get_ident() == self._loop_thread:
            waiter.set_result(value)
        else:
            self._wakes.append((waiter, value, receiving))

    def _deliver_wakes(self) -> None:
        """On the loop: resolve the wake-ups recorded by other threads."""
        locked = self._enter()
        try:
            wakes, self._wakes = self._wakes, []
            self._posted = False
            for future, value, receiving in wakes:
                if not future.done():
                    future.set_result(value)
                else:  # its task left, or a select's future was woken by another channel
                    self._hand_on(value, receiving)
        finally:
            self._leave(locked)

    def _park(self, waiters: deque[Waiter]) -> asyncio.Future[Any]:
        """Queue a new future of the running loop as the last waiter (inside a section)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._loop_thread = get_ident()
        future = loop.create_future()
        waiters.append(future)
        return future

    def _park_waiter(self, future: asyncio.Future[Any]) -> None:
        """Queue ``future``, of the running loop, as the last receiver (inside a section)."""
        loop = future.get_loop()
        if loop is not self._loop:
            self._loop = loop
            self._loop_thread = get_ident()
        self._receivers.append(future)

    # -- sending ---------------------------------------------------------

    @lock_free
    async def send(self, message: ChannelMessage[T]) -> None:
        """Enqueue ``message``, waiting while the channel is full.

        Raises ``ChannelClosed`` if the channel is closed before the message
        is enqueued. If cancelled while waiting, the message is not enqueued.
        """
        if type(message) is not ChannelMessage and not isinstance(message, _base.message_types):
            raise not_a_message(message)
        _section: object = self  # a lock-free section (see spark/nodes/_threads.py)
        if (
            self._guarded  # bounded, closed or shared
            and (
                self._shared
                or self._closed
                or len(self._buffer) - self._receivers_woken + self._senders_woken >= self._maxsize
            )  # (no room: ``_room_taken()``, inline on this path)
        ) or _get_running_loop() is not self._loop:  # a task of another loop
            _section = None
            await self._send_guarded(message)
            return
        self._buffer.append(message)
        self._unseen += 1
        if self._receivers:
            self._wake_receivers()
        if self._observers:
            _section = None
            await self._notify_observers(message, "send")

    async def _send_guarded(self, message: ChannelMessage[T]) -> None:
        locked = self._enter()
        try:
            if not locked:
                self._claim()
            if self._closed:
                raise self._closed_error()
            future = self._park(self._senders) if self._no_room() else None
            if future is None:
                self._enqueue(message)
        finally:
            self._leave(locked)
        if future is not None:
            await self._wait_for_room(future, message)
        if self._observers:
            await self._notify_observers(message, "send")

    @lock_free
    def send_nowait(self, message: ChannelMessage[T]) -> None:
        """Enqueue ``message`` now, or raise ``asyncio.QueueFull``.

        Works from synchronous code and from any thread; an awaitable
        returned by an observer is scheduled on the channel's loop (see the
        README).
        """
        if type(message) is not ChannelMessage and not isinstance(message, _base.message_types):
            raise not_a_message(message)
        _section: object = self  # a lock-free section (see spark/nodes/_threads.py)
        if get_ident() != self._owner or (
            self._guarded
            and (
                self._shared
                or self._closed
                or len(self._buffer) - self._receivers_woken + self._senders_woken >= self._maxsize
            )
        ):
            _section = None
            locked = self._enter()  # (shares the channel first, for another thread)
            try:
                if self._closed:
                    raise self._closed_error()
                if self._no_room():
                    raise asyncio.QueueFull
                self._enqueue(message)
            finally:
                self._leave(locked)
        else:
            self._buffer.append(message)
            self._unseen += 1
            if self._receivers:
                self._wake_receivers()
        if self._observers:
            _section = None
            self._notify_observers_nowait(message, "send", self._loop)

    def blocking_send(self, message: ChannelMessage[T], timeout: float | None = None) -> None:
        """Enqueue ``message`` from a thread that runs no event loop, blocking while full.

        Raises ``ChannelClosed`` if the channel is closed before the message
        is enqueued, and ``TimeoutError`` if no room came within ``timeout``
        seconds (the message is then not enqueued). Raises ``RuntimeError``
        at once if this thread runs an event loop: use ``await send()``.
        """
        if _get_running_loop() is not None:
            raise blocks_a_loop("blocking_send", "send")
        deadline = None if timeout is None else check_timeout(timeout)
        if type(message) is not ChannelMessage and not isinstance(message, _base.message_types):
            raise not_a_message(message)
        locked = self._enter()
        try:
            if self._closed:
                raise self._closed_error()
            waiter = ThreadWaiter() if self._no_room() else None
            if waiter is None:
                self._enqueue(message)
            else:
                self._senders.append(waiter)
        finally:
            self._leave(locked)
        if waiter is not None:
            self._wait_in_thread(waiter, deadline, receiving=False)
            locked = self._enter()
            try:
                self._end_thread_wait(waiter, timeout, receiving=False)
                self._take_room(waiter.result(), message)
            finally:
                self._leave(locked)
        if self._observers:
            self._notify_observers_nowait(message, "send", self._loop)

    def _wait_in_thread(
        self, waiter: ThreadWaiter, deadline: float | None, receiving: bool
    ) -> None:
        """Block a thread on its queued waiter; if that raises (KeyboardInterrupt), withdraw it."""
        try:
            waiter.wait(deadline)
        except BaseException:  # the thread sends or takes nothing; a promise goes on
            if receiving:
                self._abandon_receiver(waiter)
            else:
                self._abandon_sender(waiter)
            raise

    def _end_thread_wait(self, waiter: ThreadWaiter, timeout: object, receiving: bool) -> None:
        """A blocked thread's turn (inside a section): TimeoutError, withdrawn, if not woken."""
        if waiter.done():
            return
        _discard(self._receivers if receiving else self._senders, waiter)
        if receiving:
            raise TimeoutError(
                f"channel {self._name!r} stayed empty for {timeout} s; nothing was received"
            )
        raise TimeoutError(
            f"channel {self._name!r} stayed full for {timeout} s; the message was not sent"
        )

    async def _wait_for_room(
        self, future: asyncio.Future[Any] | None = None, message: ChannelMessage[T] | None = None
    ) -> None:
        """Wait for a free slot promised to ``future`` (parked if None), then enqueue ``message``.

        Without a message the slot is released for the caller to fill at
        once, in the same step (a broadcast's send).
        """
        if future is None:
            locked = self._enter()
            try:
                if self._closed:
                    raise self._closed_error()
                if not self._no_room():  # a thread made room since the caller looked
                    return
                future = self._park(self._senders)
            finally:
                self._leave(locked)
        try:
            promised = await future
        except BaseException:
            self._abandon_sender(future)
            raise
        locked = self._enter()
        try:
            self._take_room(promised, message)
        finally:
            self._leave(locked)

    def _take_room(self, promised: bool, message: ChannelMessage[T] | None) -> None:
        """A woken sender's turn (inside a section): enqueue, or raise ChannelClosed."""
        if promised:
            self._senders_woken -= 1
        if not promised or self._closed:
            raise self._closed_error()
        if message is not None:
            self._enqueue(message)

    def _enqueue(self, message: ChannelMessage[T]) -> None:
        self._buffer.append(message)
        self._unseen += 1
        if self._receivers:
            self._wake_receivers()

    def _no_room(self) -> bool:
        return bool(self._maxsize) and self._room_taken() >= self._maxsize

    def _wake_senders(self) -> None:
        """Promise each free slot to the oldest blocked sender."""
        senders = self._senders
        while senders and self._room_taken() < self._maxsize:
            future = senders.popleft()
            if not future.done():
                self._resolve(future, True, False)
                self._senders_woken += 1

    def _room_taken(self) -> int:
        """Queued messages plus the slots promised to woken senders."""
        return len(self._buffer) - self._receivers_woken + self._senders_woken

    # -- receiving -------------------------------------------------------

    @lock_free
    async def receive(self) -> ChannelMessage[T]:
        """Return the next message, waiting while the channel is empty.

        Raises ``ChannelClosed`` once the channel is closed and drained. If
        cancelled, no message was taken.
        """
        _section: object = self  # a lock-free section (see spark/nodes/_threads.py)
        buffer = self._buffer
        if (
            buffer
            and not self._receivers_woken
            and not self._shared
            and _get_running_loop() is self._loop  # not a task of another loop
        ):
            if self._unseen:  # the first receive after sends: the size may be a new peak
                self._sent += self._unseen
                self._unseen = 0
                if len(buffer) > self._peak_size:
                    self._peak_size = len(buffer)
            message = buffer.popleft()
            if self._senders:
                self._wake_senders()
        else:
            _section = None
            message = await self._wait_for_message()
        if self._observers:
            _section = None
            await self._notify_observers(message, "receive")
        return message

    @lock_free
    def receive_nowait(self) -> ChannelMessage[T]:
        """Return the next message now, or raise ``asyncio.QueueEmpty``.

        Raises ``ChannelClosed`` instead once the channel is closed and
        drained. Works from any thread.
        """
        _section: object = self  # a lock-free section (see spark/nodes/_threads.py)
        buffer = self._buffer
        if (
            buffer and not self._receivers_woken and not self._shared and get_ident() == self._owner
        ):  # the common case, as in receive()
            if self._unseen:
                self._sent += self._unseen
                self._unseen = 0
                if len(buffer) > self._peak_size:
                    self._peak_size = len(buffer)
            message = buffer.popleft()
            if self._senders:
                self._wake_senders()
        else:
            _section = None
            locked = self._enter()  # (shares the channel first, for another thread)
            try:
                message = self._take_free()  # type: ignore[assignment]
                if message is None:
                    if self._closed:
                        raise self._closed_error()
                    raise asyncio.QueueEmpty
            finally:
                self._leave(locked)
        if self._observers:
            _section = None
            self._notify_observers_nowait(message, "receive", self._loop)
        return message

    @lock_free
    def _receive_now(self, loop: asyncio.AbstractEventLoop) -> ChannelMessage[T] | None:
        """For a task of ``loop``: what ``receive()`` would return at once, observers aside.

        None when it would wait, or take the general path (the channel is
        shared, or its tasks are another loop's). The node loop's shortcut,
        for a mailbox without observers; the loop, which a task cannot
        change, is looked up once by the caller.
        """
        _section: object = self  # a lock-free section (see spark/nodes/_threads.py)
        buffer = self._buffer
        if not buffer or self._receivers_woken or self._shared or loop is not self._loop:
            return None
        if self._unseen:  # as in receive()
            self._sent += self._unseen
            self._unseen = 0
            if len(buffer) > self._peak_size:
                self._peak_size = len(buffer)
        message = buffer.popleft()
        if self._senders:
            self._wake_senders()
        return message

    def blocking_receive(self, timeout: float | None = None) -> ChannelMessage[T]:
        """Return the next message to a thread that runs no event loop, blocking while empty.

        Raises ``ChannelClosed`` once the channel is closed and drained, and
        ``TimeoutError`` if no message came within ``timeout`` seconds (none
        was taken). Raises ``RuntimeError`` at once if this thread runs an
        event loop: use ``await receive()``.
        """
        if _get_running_loop() is not None:
            raise blocks_a_loop("blocking_receive", "receive")
        deadline = None if timeout is None else check_timeout(timeout)
        locked = self._enter()
        try:
            message = self._take_free()
            waiter = None
            if message is None:
                if self._closed:
                    raise self._closed_error()
                waiter = ThreadWaiter()
                self._receivers.append(waiter)
        finally:
            self._leave(locked)
        if waiter is not None:
            self._wait_in_thread(waiter, deadline, receiving=True)
            locked = self._enter()
            try:
                self._end_thread_wait(waiter, timeout, receiving=True)
                if waiter.result() is None:
                    raise self._closed_error()
                message = self._take_promised()
                if self._senders:
                    self._wake_senders()
            finally:
                self._leave(locked)
        assert message is not None
        if self._observers:
            self._notify_observers_nowait(message, "receive", self._loop)
        return message

    async def receive_many(self, max_items: int) -> list[ChannelMessage[T]]:
        """Wait for at least one message, then return up to ``max_items``, in order."""
        check_max_items(max_items)
        batch = await self._receive_batch(max_items)
        if self._observers:
            for message in batch:
                await self._notify_observers(message, "receive")
        return batch

    async def _receive_batch(self, max_items: int) -> list[ChannelMessage[T]]:
        """Wait for a message, take up to ``max_items``, wake senders for the room freed."""
        locked = self._enter()
        try:
            if not locked:
                self._claim()
            if len(self._buffer) > self._receivers_woken:
                return self._take_batch(self._take_queued(), max_items)
            if self._closed:
                raise self._closed_error()
            future = self._park(self._receivers)
        finally:
            self._leave(locked)
        try:
            promiser = await future
        except BaseException:
            self._abandon_receiver(future)
            raise
        if promiser is None:
            raise self._closed_error()
        locked = self._enter()
        try:
            self._receivers_woken -= 1
            return self._take_batch(self._buffer.popleft(), max_items)
        finally:
            self._leave(locked)

    def _take_batch(self, first: ChannelMessage[T], max_items: int) -> list[ChannelMessage[T]]:
        """``first`` and up to ``max_items - 1`` queued messages (inside a section)."""
        batch = [first]
        more = min(max_items - 1, len(self._buffer) - self._receivers_woken)
        if more > 0:
            self._note_size()
            buffer = self._buffer
            for _ in range(more):
                batch.append(buffer.popleft())
        if self._senders:
            self._wake_senders()
        return batch

    async def _wait_for_message(self) -> ChannelMessage[T]:
        """Take the oldest message, waiting for a promise of one if none is queued.

        Wakes blocked senders for the room it frees.
        """
        locked = self._enter()
        try:
            if not locked:
                self._claim()
            message = self._take_free()
            if message is not None:
                return message
            if self._closed:
                raise self._closed_error()
            future = self._park(self._receivers)
        finally:
            self._leave(locked)
        try:
            promiser = await future
        except BaseException:
            self._abandon_receiver(future)
            raise
        if promiser is None:
            raise self._closed_error()
        locked = self._enter()
        try:
            self._receivers_woken -= 1
            message = self._buffer.popleft()
            if self._senders:
                self._wake_senders()
            return message
        finally:
            self._leave(locked)

    def _abandon_sender(self, future: Waiter) -> None:
        """A sender left: hand its promised slot on if it had one, else leave the queue."""
        locked = self._enter()
        try:
            if future.done() and not future.cancelled() and future.result():
                self._senders_woken -= 1
                self._wake_senders()
            else:
                _discard(self._senders, future)
        finally:
            self._leave(locked)

    def _abandon_receiver(self, future: Waiter) -> None:
        """A receiver left: hand its promise on if it had one, else leave the queue."""
        locked = self._enter()
        try:
            if future.done() and not future.cancelled() and future.result() is not None:
                self._give_back_promise()
            else:
                _discard(self._receivers, future)
        finally:
            self._leave(locked)

    def _take_promised(self) -> ChannelMessage[T]:
        """Take the message promised to a woken receiver (it is at the front)."""
        locked = self._enter()
        try:
            self._receivers_woken -= 1
            return self._buffer.popleft()
        finally:
            self._leave(locked)

    def _give_back_promise(self) -> None:
        """A woken receiver left without its message: queue it again for the next one."""
        locked = self._enter()
        try:
            self._receivers_woken -= 1
            self._note_size()
            self._wake_receivers()
        finally:
            self._leave(locked)

    def _take_free(self) -> ChannelMessage[T] | None:
        """The oldest queued message, taken and its room promised on; None if none is queued.

        (Inside a section.)
        """
        if len(self._buffer) <= self._receivers_woken:
            return None
        message = self._take_queued()
        if self._senders:
            self._wake_senders()
        return message

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
                self._resolve(future, self, True)
                self._receivers_woken += 1
                promised = True
        if promised and self._senders:  # a promised message no longer takes room
            self._wake_senders()

    def _freed_room(self) -> None:
        """A message was taken: promise the room to blocked senders."""
        locked = self._enter()
        try:
            if self._senders:
                self._wake_senders()
        finally:
            self._leave(locked)

    def _withdraw(self, future: Waiter) -> None:
        """Take a receiver's waiter out of the queue if it is still there."""
        locked = self._enter()
        try:
            _discard(self._receivers, future)
        finally:
            self._leave(locked)

    # -- state -----------------------------------------------------------

    def close(self) -> None:
        """Refuse further sends and wake every blocked task and thread.

        Blocked senders get ``ChannelClosed``; blocked receivers get
        ``ChannelClosed`` (nothing is buffered for them). Buffered messages
        can still be received. Calling it again does nothing. Works from
        any thread.
        """
        locked = self._enter()
        try:
            if self._closed:
                return
            self._closed = self._guarded = True
            receivers, senders = self._receivers, self._senders
            while receivers:
                receiver = receivers.popleft()
                if not receiver.done():
                    self._resolve(receiver, None, True)
            while senders:
                sender = senders.popleft()
                if not sender.done():
                    self._resolve(sender, False, False)
        finally:
            self._leave(locked)

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
        locked = self._enter()
        try:
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
        finally:
            self._leave(locked)

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(f"channel {self._name!r} is closed")

    # -- copying ---------------------------------------------------------

    def _queued(self) -> list[ChannelMessage[T]]:
        """The queued messages, oldest first (not those promised to woken receivers)."""
        locked = self._enter()
        try:
            return list(self._buffer)[self._receivers_woken :]
        finally:
            self._leave(locked)

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


def _discard(waiters: deque[Any], future: Any) -> None:
    try:
        waiters.remove(future)
    except ValueError:
        pass


def _count_pending(waiters: deque[Any]) -> int:
    return sum(1 for future in waiters if not future.done())
