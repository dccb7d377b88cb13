"""The receive buffer of ``RedisStreamChannel``, pure Python (the compiled twin is
``src_ext/_stream_c.pyx``; ``_stream`` picks one).

It holds what a channel object fetched and has not seen acknowledged, and
does the per-message work of receiving: decoding raw stream entries into
messages, handing them out, and sorting a batch of acks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from ._codec import Codec, DecodeError

__all__ = ["EntryAck", "StreamBuffer"]

_CODEC = b"codec"
_BODY = b"body"
METADATA_STREAM_ID = "redis_stream_id"
METADATA_DELIVERY_COUNT = "redis_delivery_count"

Dead = tuple[bytes, Any, str, int]
"""An entry that cannot be delivered: its id, raw fields, why, and its delivery count."""


def stream_fields(raw: Any) -> dict[bytes, bytes]:
    """An entry's fields, from a raw reply (flat ``[field, value, ...]`` or a map)."""
    if isinstance(raw, dict):
        return {bytes(k): bytes(v) for k, v in raw.items()}
    return {bytes(raw[i]): bytes(raw[i + 1]) for i in range(0, len(raw) - 1, 2)}


class EntryAck(partial[Any]):
    """A received message's ``ack``: ``EntryAck(target, entry_id)()`` is ``target(entry_id)``.

    ``target`` is the receiving channel's ``_ack``, which queues the XACK
    and returns a future (a ``partial``, so made in C).
    """

    __slots__ = ()

    @property
    def target(self) -> Callable[[bytes], Any]:
        return self.func

    @property
    def entry_id(self) -> bytes:
        entry_id: bytes = self.args[0]
        return entry_id

    def __repr__(self) -> str:
        return _ack_repr(self.func, self.args[0])


def _ack_repr(target: Any, entry_id: bytes) -> str:
    key = getattr(getattr(target, "__self__", None), "key", None)
    where = "" if key is None else f" in {key!r}"
    return f"<ack of entry {entry_id.decode()}{where}>"


class StreamBuffer:
    """What one channel object fetched and has not seen acknowledged.

    * ``ready``: fetched messages not handed out yet, in stream order, as
      ``(entry id, message)``; the id is ``b""`` for a stop request
      delivered locally (``push_front``).
    * ``fetched``: the ids in ``ready``, with when they were fetched (or
      last claimed again).
    * ``in_hand``: ids handed out and not acknowledged yet.

    Received messages are ``message_type(payload, metadata, ack, is_shutdown)``
    with ``ack = EntryAck(ack_target, entry_id)``; their metadata gains
    ``redis_stream_id`` and ``redis_delivery_count``.
    """

    def __init__(
        self,
        codec: Codec,
        message_type: Callable[..., Any],
        ack_target: Callable[[bytes], Any],
        max_deliveries: int | None,
    ) -> None:
        self.ready: deque[tuple[bytes, Any]] = deque()
        self.fetched: dict[bytes, float] = {}
        self.in_hand: set[bytes] = set()
        self._codec = codec
        self._codec_name = codec.name.encode()
        self._message_type = message_type
        self._ack_target = ack_target
        self._max_deliveries = max_deliveries

    def accept(
        self, entries: Iterable[Any], fetched_at: float, counts: dict[bytes, int] | None
    ) -> tuple[list[Dead], list[bytes]]:
        """Decode raw ``[id, fields]`` entries onto ``ready``; return the dead and the gone.

        ``counts`` gives each entry's delivery count (``None``: all are
        first deliveries; an id missing from it was acknowledged meanwhile
        and is skipped). Entries already in ``ready`` are skipped. Dead:
        delivered more than ``max_deliveries`` times, or undecodable. Gone:
        deleted from the stream while pending (their fields are nil).
        """
        dead: list[Dead] = []
        gone: list[bytes] = []
        for entry in entries:
            if entry is None:  # Redis < 7 lists entries deleted while pending as nil
                continue
            entry_id, fields = entry
            entry_id = bytes(entry_id)
            if fields is None:
                gone.append(entry_id)
                continue
            if entry_id in self.fetched:
                continue
            if counts is None:
                count = 1
            elif entry_id in counts:
                count = counts[entry_id]
            else:
                continue
            if self._max_deliveries is not None and count > self._max_deliveries:
                reason = f"delivered {count} times, more than max_deliveries={self._max_deliveries}"
                dead.append((entry_id, fields, reason, count))
                continue
            try:
                message = self._decode(entry_id, fields, count)
            except Exception as error:
                reason = str(error) if isinstance(error, DecodeError) else repr(error)
                dead.append((entry_id, fields, f"undecodable: {reason}", count))
                continue
            self.ready.append((entry_id, message))
            self.fetched[entry_id] = fetched_at
        return dead, gone

    def _decode(self, entry_id: bytes, raw: Any, count: int) -> Any:
        if type(raw) is list and len(raw) == 4 and raw[0] == _CODEC and raw[2] == _BODY:
            codec, body = raw[1], raw[3]  # what a spark producer writes
        else:
            fields = stream_fields(raw)
            codec = fields.get(_CODEC)
            body = fields.get(_BODY)
        if codec is None or body is None:
            raise DecodeError("not a spark message (no 'codec' and 'body' fields)")
        if codec != self._codec_name:
            raise DecodeError(
                f"written with codec {bytes(codec).decode(errors='replace')!r}, "
                f"but this channel decodes {self._codec.name!r}"
            )
        payload, metadata, is_shutdown = self._codec.decode(body)
        metadata[METADATA_STREAM_ID] = entry_id.decode()
        metadata[METADATA_DELIVERY_COUNT] = count
        ack = EntryAck(self._ack_target, entry_id)
        return self._message_type(payload, metadata, ack, is_shutdown)

    def push_front(self, message: Any) -> None:
        """Put a locally delivered message (a stop request) before everything fetched."""
        self.ready.appendleft((b"", message))

    def take_one(self) -> Any:
        """Hand out the oldest ready message (there must be one)."""
        entry_id, message = self.ready.popleft()
        if entry_id:
            del self.fetched[entry_id]
            self.in_hand.add(entry_id)
        return message

    def take(self, count: int) -> list[Any]:
        """Hand out up to ``count`` ready messages, oldest first."""
        ready, fetched, in_hand = self.ready, self.fetched, self.in_hand
        batch = []
        for _ in range(min(count, len(ready))):
            entry_id, message = ready.popleft()
            if entry_id:
                del fetched[entry_id]
                in_hand.add(entry_id)
            batch.append(message)
        return batch

    def sort_acks(self, messages: Iterable[Any]) -> tuple[list[bytes], list[Any]]:
        """The ids to acknowledge among ``messages``, and the acks that are not ours.

        Ours: an ``ack`` made by this buffer whose entry is still in hand
        (acknowledged ones are left out). Not ours: any other ``ack`` that
        is not ``None``, to be called by the caller.
        """
        ids: list[bytes] = []
        others: list[Any] = []
        target, in_hand = self._ack_target, self.in_hand
        for message in messages:
            ack = message.ack
            if type(ack) is EntryAck and ack.func is target:
                entry_id = ack.args[0]
                if entry_id in in_hand:
                    ids.append(entry_id)
            elif ack is not None:
                others.append(ack)
        return ids, others
