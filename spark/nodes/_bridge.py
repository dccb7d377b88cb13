"""``QueueBridge``: the ``asyncio.Queue`` surface over any channel."""

from __future__ import annotations

import asyncio
from collections import deque
from types import GenericAlias
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._channel_base import BaseChannel, ChannelClosed

T = TypeVar("T")

_QueueShutDown: type[Exception] | None = getattr(asyncio, "QueueShutDown", None)  # 3.13+

if _QueueShutDown is not None:

    class QueueShutDown(ChannelClosed, _QueueShutDown):  # type: ignore[misc, valid-type]
        """The bridge's channel is closed: ``ChannelClosed`` and ``asyncio.QueueShutDown``."""

else:

    class QueueShutDown(ChannelClosed):  # type: ignore[no-redef]
        """The bridge's channel is closed (``asyncio.QueueShutDown`` from Python 3.13)."""


class QueueBridge(Generic[T]):
    """Lets code written for ``asyncio.Queue`` use a channel.

    ``T`` is the type of the items: ``QueueBridge[Order](channel)``.

    ``put`` wraps an item in a ``ChannelMessage``; ``get`` returns the
    payload of the next message. Full and empty are reported with
    ``asyncio.QueueFull`` and ``asyncio.QueueEmpty``, as the queue does.
    CPython's own tests of ``asyncio.Queue`` pass on a bridge over an
    ``InMemoryChannel``, but for a float ``maxsize``, which channels refuse.

    * A shutdown message is not special here: ``get`` returns its payload,
      ``None`` unless its sender set one, which is the sentinel most
      queue-consuming loops already stop on.
    * Once the channel is closed and drained, ``get``/``get_nowait`` raise
      ``QueueShutDown``; ``put``/``put_nowait`` raise it as soon as it is
      closed. It is a ``ChannelClosed`` and, from Python 3.13, an
      ``asyncio.QueueShutDown``. ``shutdown()`` closes the channel, as
      ``asyncio.Queue.shutdown()`` shuts the queue down.
    * ``task_done``/``join`` count the items put through this bridge, as
      ``asyncio.Queue`` counts its own puts; messages sent to the channel by
      other means are not counted.
    * ``_getters`` and ``_putters`` hold a future per ``get`` and ``put``
      waiting on the channel, as ``asyncio.Queue``'s do, and a ``get`` (a
      ``put``) wakes the oldest waiting future of ``_putters`` (``_getters``).
    * ``copy.deepcopy`` and ``pickle`` copy the bridge with its channel and
      its count of unfinished items.
    """

    if not TYPE_CHECKING:
        # As asyncio.Queue: QueueBridge[int] is a types.GenericAlias.
        __class_getitem__ = classmethod(GenericAlias)

    __slots__ = (
        "_channel",
        "_dropping",
        "_finished",
        "_getters",
        "_message_type",
        "_putters",
        "_unfinished_tasks",
    )

    def __init__(self, channel: BaseChannel[T], *, message_type: type | None = None) -> None:
        if not isinstance(channel, BaseChannel):
            raise TypeError(f"QueueBridge wraps a channel, got {type(channel).__name__}")
        if message_type is None:
            from .channels import ChannelMessage

            message_type = ChannelMessage
        self._channel = channel
        self._message_type = message_type
        self._unfinished_tasks = 0
        self._finished = asyncio.Event()
        self._finished.set()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._dropping = False  # after shutdown(immediate=True)

    @property
    def channel(self) -> BaseChannel[T]:
        """The wrapped channel."""
        return self._channel

    async def put(self, item: T) -> None:
        """Send ``item`` as a message's payload, waiting while the channel is full."""
        channel = self._channel
        self._add_unfinished()
        try:
            if channel.full():
                await self._wait_in(self._putters, channel.send(self._message_type(item)))
            else:
                await channel.send(self._message_type(item))
        except ChannelClosed as closed:
            self._remove_unfinished()
            raise QueueShutDown(*closed.args) from None
        except BaseException:
            self._remove_unfinished()
            raise
        if self._getters:
            _wake_next(self._getters)

    def put_nowait(self, item: T) -> None:
        """Send ``item`` now, or raise ``asyncio.QueueFull``."""
        try:
            self._channel.send_nowait(self._message_type(item))
        except ChannelClosed as closed:
            raise QueueShutDown(*closed.args) from None
        if not self._unfinished_tasks:  # _add_unfinished() inlined: the hot path of a bridge
            self._finished.clear()
        self._unfinished_tasks += 1
        if self._getters:
            _wake_next(self._getters)

    async def get(self) -> T:
        """Return the next message's payload, waiting while the channel is empty."""
        channel = self._channel
        try:
            try:
                waits = channel.empty()
            except NotImplementedError:
                waits = False  # a channel that cannot say: not listed in _getters
            if waits:
                message = await self._wait_in(self._getters, channel.receive())
            else:
                message = await channel.receive()
        except ChannelClosed as closed:
            raise QueueShutDown(*closed.args) from None
        if self._dropping:
            self._drop()
        if self._putters:
            _wake_next(self._putters)
        return message.payload  # type: ignore[no-any-return]

    def get_nowait(self) -> T:
        """Return the next message's payload now, or raise ``asyncio.QueueEmpty``."""
        try:
            message = self._channel.receive_nowait()
        except ChannelClosed as closed:
            raise QueueShutDown(*closed.args) from None
        if self._dropping:
            self._drop()
        if self._putters:
            _wake_next(self._putters)
        return message.payload

    def task_done(self) -> None:
        """Mark one item put through this bridge as handled."""
        if self._unfinished_tasks <= 0:
            raise ValueError("task_done() called more times than items were put")
        self._remove_unfinished()

    async def join(self) -> None:
        """Wait until every item put through this bridge was marked done."""
        if self._unfinished_tasks:
            await self._finished.wait()

    def shutdown(self, immediate: bool = False) -> None:
        """Close the channel: puts fail from now on, gets once it is drained.

        With ``immediate``, what the channel buffers is dropped and counted
        as done for ``join``, and every get raises ``QueueShutDown``, even
        one already promised a message. Blocked puts (and gets, when nothing
        is left) raise ``QueueShutDown``.
        """
        self._channel.close()
        if immediate:
            self._dropping = True
            while True:
                try:
                    self._channel.receive_nowait()
                except (asyncio.QueueEmpty, ChannelClosed, NotImplementedError):
                    break
                self._count_dropped()

    def _drop(self) -> None:
        """A get after ``shutdown(immediate=True)``: its message is dropped too."""
        self._count_dropped()
        raise QueueShutDown(f"the queue over channel {self._channel.name!r} was shut down")

    def _count_dropped(self) -> None:
        if self._unfinished_tasks:
            self._remove_unfinished()

    def qsize(self) -> int:
        """How many messages the channel buffers."""
        return self._channel.qsize()

    def empty(self) -> bool:
        """Whether ``get_nowait`` would raise ``asyncio.QueueEmpty``."""
        return self._channel.empty()

    def full(self) -> bool:
        """Whether ``put_nowait`` would raise ``asyncio.QueueFull``."""
        return self._channel.full()

    @property
    def maxsize(self) -> int:
        """The channel's bound; 0 means unbounded."""
        return self._channel.maxsize

    async def _wait_in(self, waiters: deque[asyncio.Future[None]], operation: Any) -> Any:
        """Await ``operation``, with a future in ``waiters`` while it lasts."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            return await operation
        finally:
            try:
                waiters.remove(waiter)
            except ValueError:
                pass  # a put (or get) woke it meanwhile

    def _add_unfinished(self) -> None:
        if not self._unfinished_tasks:  # the event is already clear otherwise
            self._finished.clear()
        self._unfinished_tasks += 1

    def _remove_unfinished(self) -> None:
        self._unfinished_tasks -= 1
        if self._unfinished_tasks == 0:
            self._finished.set()

    def _format(self) -> str:
        """What the repr shows, as ``asyncio.Queue._format`` does."""
        result = f"maxsize={self.maxsize!r}"
        queued = getattr(self._channel, "_queued", None)
        if callable(queued):
            payloads = [message.payload for message in queued()]
            if payloads:
                result += f" _queue={payloads!r}"
        if self._getters:
            result += f" _getters[{len(self._getters)}]"
        if self._putters:
            result += f" _putters[{len(self._putters)}]"
        if self._unfinished_tasks:
            result += f" tasks={self._unfinished_tasks}"
        if self._channel.closed:
            result += " shutdown"
        return result

    def __getstate__(self) -> dict[str, Any]:
        return {
            "channel": self._channel,
            "message_type": self._message_type,
            "unfinished": self._unfinished_tasks,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        QueueBridge.__init__(self, state["channel"], message_type=state["message_type"])
        self._unfinished_tasks = state["unfinished"]
        if self._unfinished_tasks:
            self._finished.clear()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {id(self):#x} over {self._channel!r} {self._format()}>"

    def __str__(self) -> str:
        return f"<{type(self).__name__} over {self._channel!r} {self._format()}>"


def _wake_next(waiters: deque[asyncio.Future[None]]) -> None:
    """Wake the oldest waiting future, as ``asyncio.Queue`` does after a get or a put."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            break
