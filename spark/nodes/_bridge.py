"""``QueueBridge``: the ``asyncio.Queue`` surface over any channel."""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from ._channel_base import BaseChannel

T = TypeVar("T")


class QueueBridge(Generic[T]):
    """Lets code written for ``asyncio.Queue`` use a channel.

    ``T`` is the type of the items: ``QueueBridge[Order](channel)``.

    ``put`` wraps an item in a ``ChannelMessage``; ``get`` returns the
    payload of the next message. Full and empty are reported with
    ``asyncio.QueueFull`` and ``asyncio.QueueEmpty``, as the queue does.

    * A shutdown message is not special here: ``get`` returns its payload,
      ``None`` unless its sender set one, which is the sentinel most
      queue-consuming loops already stop on.
    * Once the channel is closed and drained, ``get``/``get_nowait`` raise
      ``ChannelClosed``; ``put``/``put_nowait`` raise it as soon as it is closed.
    * ``task_done``/``join`` count the items put through this bridge, as
      ``asyncio.Queue`` counts its own puts; messages sent to the channel by
      other means are not counted.
    * ``copy.deepcopy`` and ``pickle`` copy the bridge with its channel and
      its count of unfinished items.
    """

    __slots__ = ("_channel", "_finished", "_message_type", "_unfinished")

    def __init__(self, channel: BaseChannel[T], *, message_type: type | None = None) -> None:
        if not isinstance(channel, BaseChannel):
            raise TypeError(f"QueueBridge wraps a channel, got {type(channel).__name__}")
        if message_type is None:
            from .channels import ChannelMessage

            message_type = ChannelMessage
        self._channel = channel
        self._message_type = message_type
        self._unfinished = 0
        self._finished = asyncio.Event()
        self._finished.set()

    @property
    def channel(self) -> BaseChannel[T]:
        """The wrapped channel."""
        return self._channel

    async def put(self, item: T) -> None:
        """Send ``item`` as a message's payload, waiting while the channel is full."""
        self._add_unfinished()
        try:
            await self._channel.send(self._message_type(item))
        except BaseException:
            self._remove_unfinished()
            raise

    def put_nowait(self, item: T) -> None:
        """Send ``item`` now, or raise ``asyncio.QueueFull``."""
        self._channel.send_nowait(self._message_type(item))
        if not self._unfinished:  # _add_unfinished() inlined: the hot path of a bridge
            self._finished.clear()
        self._unfinished += 1

    async def get(self) -> T:
        """Return the next message's payload, waiting while the channel is empty."""
        return (await self._channel.receive()).payload

    def get_nowait(self) -> T:
        """Return the next message's payload now, or raise ``asyncio.QueueEmpty``."""
        return self._channel.receive_nowait().payload

    def task_done(self) -> None:
        """Mark one item put through this bridge as handled."""
        if self._unfinished <= 0:
            raise ValueError("task_done() called more times than items were put")
        self._remove_unfinished()

    async def join(self) -> None:
        """Wait until every item put through this bridge was marked done."""
        if self._unfinished:
            await self._finished.wait()

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

    def _add_unfinished(self) -> None:
        if not self._unfinished:  # the event is already clear otherwise
            self._finished.clear()
        self._unfinished += 1

    def _remove_unfinished(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0:
            self._finished.set()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "channel": self._channel,
            "message_type": self._message_type,
            "unfinished": self._unfinished,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        QueueBridge.__init__(self, state["channel"], message_type=state["message_type"])
        self._unfinished = state["unfinished"]
        if self._unfinished:
            self._finished.clear()

    def __repr__(self) -> str:
        return f"<QueueBridge over {self._channel!r} unfinished={self._unfinished}>"
