"""``RedisStreamChannel``: a channel over a Redis stream, shared by many processes.

Install with ``pip install 'spark-channels[redis]'`` (redis-py with hiredis,
and msgspec).

How it works
============

The channel is one Redis stream (``{key_prefix}stream:{name}``) read by one
consumer group. Every process that sends or receives makes its own channel
object with the same ``name`` and ``group``; each receiving process gives
itself a distinct ``consumer`` name. A message sent by any of them is
received by exactly one consumer of the group at a time.

* ``send`` appends an entry (XADD) holding the encoded payload, metadata and
  shutdown flag. Sends are queued locally and written in order by one
  background task, up to ``batch_size`` entries per round trip (one server
  script that XADDs the batch, cheaper for the client than a pipeline of
  XADDs); ``send`` returns once Redis has the entry, ``send_nowait`` as soon
  as it is queued. The server must allow scripts (EVAL/EVALSHA).
* ``receive`` first returns the entries this consumer received before a
  restart and never acknowledged, then entries other consumers left
  unacknowledged for longer than ``claim_idle`` seconds (XAUTOCLAIM), then new
  entries (XREADGROUP, ``batch_size`` at a time, buffered locally).
* ``message.ack()`` acknowledges the entry (XACK). Acks issued together are
  sent as one XACK.

Delivery is **at least once**. An entry that is received but not acknowledged
within ``claim_idle`` seconds (because the consumer died, hung, or did not
call ``ack``) is delivered again, to whichever consumer claims it first, so a
handler can see a message twice. The metadata of each received message holds
``redis_stream_id`` (the entry id, unique within the stream) and
``redis_delivery_count`` (1 on the first delivery); a receiver that must not
act twice records the ids it has handled. An entry delivered more than
``max_deliveries`` times, or one that cannot be decoded, is moved to the
dead-letter stream (``{key_prefix}dead:{name}``) and acknowledged instead.

With ``maxlen``, the stream is bounded without losing anything: ``send``
waits while the group's backlog (entries not yet read plus entries read but
not acknowledged) is ``maxlen``, and only entries every group has finished
with are trimmed. The trade-off: a stalled consumer group stalls every
producer, as a full in-memory queue would, instead of Redis dropping the
oldest entries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from time import monotonic
from types import TracebackType
from typing import Any, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError

from ..nodes import is_stop_request
from ..nodes.channels import (
    BaseChannel,
    ChannelClosed,
    ChannelMessage,
    ChannelStats,
    ObserverCallable,
    check_max_items,
    check_message,
)
from ._codec import Codec, DecodeError, MsgpackCodec, PickleCodec, resolve_codec
from ._redis_connection import UNREACHABLE, RedisConnection
from ._stream import StreamBuffer
from ._stream_py import METADATA_DELIVERY_COUNT, METADATA_STREAM_ID, Dead, stream_fields

__all__ = [
    "METADATA_DELIVERY_COUNT",
    "METADATA_STREAM_ID",
    "Backlog",
    "Codec",
    "DeadLetter",
    "DecodeError",
    "MessagesNotWritten",
    "MsgpackCodec",
    "PickleCodec",
    "RedisStreamChannel",
]

T = TypeVar("T")


class MessagesNotWritten(Exception):
    """Messages queued by ``send_nowait`` were not written to the stream.

    Raised by the next ``send``, ``send_nowait``, ``send_many``, ``flush`` or
    ``aclose`` after the background writer gave up on them: Redis stayed
    unreachable for ``retry_timeout`` seconds, or refused them, or
    ``aclose()`` was cancelled (a batch on its way then may have reached
    Redis all the same). ``count``
    says how many; the error that stopped the writer is ``__cause__``. The
    call that raises it sends nothing; each loss is reported once.
    """

    def __init__(self, channel: str, count: int, error: BaseException) -> None:
        super().__init__(
            f"{count} message(s) queued by send_nowait on channel {channel!r} "
            f"were not written: {error}"
        )
        self.count = count


logger = logging.getLogger("spark.channels.redis")

# METADATA_STREAM_ID ("redis_stream_id"): a received message's entry id, e.g.
# "1718000000000-0". METADATA_DELIVERY_COUNT ("redis_delivery_count"): how many
# times it was delivered, 1 the first time. (Defined with the receive buffer.)
_RECEIVER_KEYS = (METADATA_STREAM_ID, METADATA_DELIVERY_COUNT)

# Fields of a dead-letter entry, before the original entry's own fields.
DEAD_REASON = b"dead:reason"
DEAD_SOURCE_ID = b"dead:source-id"
DEAD_DELIVERIES = b"dead:deliveries"
DEAD_STREAM = b"dead:stream"
DEAD_GROUP = b"dead:group"
DEAD_CONSUMER = b"dead:consumer"

# An entry handed back at close looks idle this long, so that any consumer's
# XAUTOCLAIM takes it at once (Redis clamps idle times reaching before 1970).
_HAND_BACK_IDLE_MS = 365 * 24 * 3600 * 1000
# Errors a background task logs and retries later: Redis unreachable, or refusing.
_RECOVERABLE: tuple[type[Exception], ...] = (*UNREACHABLE, ResponseError)
_TRIM_INTERVAL = 1.0
# Field/value items of a dead-letter record above which _BURY cannot unpack() it.
_SCRIPT_RECORD_LIMIT = 7000  # seconds between two trims of acknowledged entries, at most
_FIRST_RETRY = 0.005
_LAST_RETRY = 0.25

# Adds entries while the group's backlog is below maxlen, after trimming what
# every group is done with. Atomic, so concurrent producers cannot overshoot.
# KEYS[1]: the stream. ARGV: group, maxlen, then codec and body of each entry.
# Returns {entries added, backlog after adding}.
_BOUNDED_XADD = """
local key = KEYS[1]
local group = ARGV[1]
local maxlen = tonumber(ARGV[2])
local function older(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
if not ok then groups = {} end
local mine = nil
local keep = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local needed = info['last-delivered-id']
  if info['pending'] > 0 then
    needed = redis.call('XPENDING', key, info['name'])[2]
  end
  if keep == nil or older(needed, keep) then keep = needed end
  if info['name'] == group then mine = info end
end
local backlog
if mine == nil then
  redis.call('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')
  backlog = redis.call('XLEN', key)
else
  if keep ~= nil and keep ~= '0-0' then redis.call('XTRIM', key, 'MINID', keep) end
  if mine['lag'] then
    backlog = mine['pending'] + mine['lag']
  else
    backlog = redis.call('XLEN', key)
  end
end
local added = 0
local total = (#ARGV - 2) / 2
while added < total and backlog + added < maxlen do
  local at = 3 + added * 2
  redis.call('XADD', key, '*', 'codec', ARGV[at], 'body', ARGV[at + 1])
  added = added + 1
end
return {added, backlog + added}
"""
# The same without a bound: one command per batch costs the client far less
# than a pipeline of XADDs. KEYS[1]: the stream. ARGV: codec and body of each entry.
_XADD_MANY = """
local key = KEYS[1]
for i = 1, #ARGV, 2 do
  redis.call('XADD', key, '*', 'codec', ARGV[i], 'body', ARGV[i + 1])
end
return {#ARGV / 2, -1}
"""
# Remove a consumer only if it holds no pending entry (XGROUP DELCONSUMER would
# drop them): KEYS[1] the stream; ARGV the group and the consumer. 1 if removed.
_DELETE_IDLE_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
    return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Trim what every group of the stream has acknowledged: entries older than the
# oldest one a group still has pending or has not read yet. KEYS[1]: the stream.
_TRIM_ACKNOWLEDGED = """
local function older(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
local keep = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, oldest
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1] end
    if group[i] == 'last-delivered-id' then oldest = group[i + 1] end
  end
  local pending = redis.call('XPENDING', KEYS[1], name)
  if pending[1] > 0 then oldest = pending[2] end
  if keep == nil or older(oldest, keep) then keep = oldest end
end
if keep == nil then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
"""

# Move entries to the dead-letter stream and acknowledge them, atomically.
# KEYS: the stream, the dead-letter stream (one slot: the same hash tag).
# ARGV: group, dead-letter cap (0: none), how many entries move; then for each
# entry its id, how many record items follow, and those items (field, value,
# ...); then the ids to acknowledge without moving (deleted while pending).
_BURY = """
local group, cap, moving = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local at = 4
local ids = {}
for _ = 1, moving do
  local id, n = ARGV[at], tonumber(ARGV[at + 1])
  local record = {}
  for i = 1, n do record[i] = ARGV[at + 1 + i] end
  if cap > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', cap, '*', unpack(record))
  else
    redis.call('XADD', KEYS[2], '*', unpack(record))
  end
  ids[#ids + 1] = id
  at = at + 2 + n
end
for i = at, #ARGV do ids[#ids + 1] = ARGV[i] end
for first = 1, #ids, 1000 do  -- unpack() has a limit
  redis.call('XACK', KEYS[1], group, unpack(ids, first, math.min(first + 999, #ids)))
end
return #ids
"""


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the consumer group still has to do, as ``RedisStreamChannel.backlog()`` saw it."""

    length: int
    """Entries in the stream, including ones already acknowledged but not yet trimmed."""
    pending: int
    """Entries delivered to a consumer of the group and not yet acknowledged."""
    lag: int | None
    """Entries not yet delivered to the group; ``None`` when Redis cannot tell (before 7.0)."""

    @property
    def outstanding(self) -> int:
        """``pending + lag``: what ``maxlen`` bounds (``length`` when the lag is unknown)."""
        return self.length if self.lag is None else self.pending + self.lag


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry moved to the dead-letter stream instead of being delivered."""

    id: str
    """The id of the dead-letter entry."""
    source_id: str
    """The id the entry had in the channel's stream."""
    reason: str
    """Why it was not delivered (undecodable, or delivered too many times)."""
    delivery_count: int
    """How many times it had been delivered."""
    consumer: str
    """The consumer that moved it."""
    fields: dict[bytes, bytes] = field(repr=False)
    """The original entry's fields (``b"codec"`` and ``b"body"`` for a spark message)."""


class _Outgoing:
    __slots__ = ("body", "future", "message")

    def __init__(
        self, message: ChannelMessage[Any], body: bytes, future: asyncio.Future[None] | None
    ) -> None:
        self.message = message
        self.body = body
        self.future = future


class _AckBatch:
    __slots__ = ("future", "ids")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.ids: dict[bytes, None] = {}
        self.future = future


Entry = tuple[bytes, "dict[bytes, bytes] | None"]


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _check_positive(name: str, value: object, *, integer: bool = False) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or (integer and not isinstance(value, int))
    ):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


class RedisStreamChannel(BaseChannel[T]):
    """A channel over a Redis stream and consumer group; see the module docstring.

    ``name`` names the stream (the key is ``{key_prefix}stream:{{name}}``:
    the braces make ``name`` the Redis Cluster hash tag, so the stream and
    its dead-letter stream share one slot), ``group`` the consumer group
    (created on first use, reading from the start of the stream),
    ``consumer`` this receiver within the group (give a stable name, e.g.
    per host and worker slot, so that a restarted worker first takes back
    what it held; by default a unique one is made up).

    Connect with ``url`` (``redis://``, or ``rediss://`` for TLS, with
    ``user:password@`` and query options as redis-py reads them; extra
    keyword arguments for the client go in ``connection_options``) or share
    an existing ``client``, which the channel never closes: a
    ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``, without
    ``decode_responses``. A Redis Cluster works either way: the first
    command asks a ``url``'s server whether it is a cluster node (any node
    will do), unless ``cluster=True`` or ``cluster=False`` says so.

    Guarantees and semantics:

    * At-least-once delivery, described in the module docstring; received
      metadata holds ``redis_stream_id`` and ``redis_delivery_count``.
    * Messages from one channel object are appended in the order they were
      sent, and a group reads them in stream order; with several consumers,
      each handles its share in that order.
    * ``send`` returns once Redis holds the entry; cancelled before its batch
      is written, the message is not sent. ``send_nowait`` queues it (up to
      ``buffer_size`` messages) for the background writer; ``flush()`` waits
      until what is queued is written.
    * Failing fast: ``async with`` checks that Redis answers and raises its
      connection error at once if not. Connection errors are retried for
      ``retry_timeout`` seconds (10 by default; ``None`` retries forever):
      then ``send`` raises the error, and the writer gives up on the queued
      messages; the next ``send``, ``send_nowait``, ``send_many``,
      ``flush()`` or ``aclose()`` raises ``MessagesNotWritten`` saying how
      many, as it does for messages Redis refused. Nothing queued is dropped
      with only a log line, and ``aclose()`` does not hang on an unreachable
      server.
    * With ``maxlen``, senders wait while the group's backlog is ``maxlen``
      (``send_nowait`` raises ``asyncio.QueueFull`` once a write found no
      room), and nothing unacknowledged is ever trimmed.
    * ``empty()``/``qsize()`` describe the local prefetch buffer only;
      ``backlog()`` asks Redis about the whole group.
    * ``close()`` refuses further sends but writes every message already
      passed to ``send``/``send_nowait``; it stops receiving (``receive``
      raises ``ChannelClosed`` at once) and hands the prefetched entries back
      to the group so another consumer can take them immediately. Messages
      already received stay pending: acknowledge them before closing, or they
      are redelivered after ``claim_idle``. ``aclose()`` (or ``async with``)
      does the same and waits for it to finish; call it before the loop ends.
    * Observers run for each message written or queued (``"send"``) and each
      message handed to a receiver (``"receive"``); their errors are logged.
    * The sender's ``ack`` callback is not carried: received messages get an
      ``ack`` that acknowledges the entry. Calling it again does nothing;
      calling it after the channel finished closing raises ``ChannelClosed``.
      Acks issued together (``ack_many``, or ``ack()`` calls in the same
      loop iteration) go out as one XACK: ``ack()`` queues it at once and
      returns a future, which a node's default loop keeps and awaits with
      the others before it waits for more messages.
    * A shutdown message goes through the stream like any other and reaches
      one consumer of the group (send one per consumer to stop them all).
      Like any message it is acknowledged when handled (a node's default
      loop does so once it has counted it); one left pending is delivered
      again after ``claim_idle``, and would stop a later worker. A stop request
      (what ``Node.stop()`` and a stopping graph put in a mailbox) is for the
      workers reading this object, so it is delivered to them directly and
      never written to Redis.
    * Entries every group on the stream has acknowledged are trimmed as
      acks go out, at most once a second (``trim_acknowledged=False`` keeps
      them); a group created later starts from what is left.
    * The dead-letter stream keeps the newest ``dead_letter_maxlen``
      entries (``None``: all of them). ``prune_consumers(idle=...)`` removes
      the group's consumers that are gone and hold nothing.
    * Trimming under ``maxlen`` keeps whatever any group on the stream still
      needs, so an abandoned group on the same stream stops trimming (not
      sending); remove it with ``XGROUP DESTROY``.
    """

    def __init__(
        self,
        name: str,
        *,
        group: str,
        url: str | None = None,
        client: Redis | RedisCluster | None = None,
        consumer: str | None = None,
        claim_idle: float = 30.0,
        maxlen: int | None = None,
        codec: str | Codec = "msgpack",
        max_deliveries: int | None = 5,
        batch_size: int = 100,
        block: float = 1.0,
        buffer_size: int = 10_000,
        key_prefix: str = "spark:",
        connection_options: Mapping[str, Any] | None = None,
        retry_timeout: float | None = 10.0,
        dead_letter_maxlen: int | None = 10_000,
        trim_acknowledged: bool = True,
        cluster: bool | None = None,
        observers: Iterable[ObserverCallable] | None = None,
    ) -> None:
        super().__init__(_check_text("name", name), observers)
        self._group = _check_text("group", group)
        self._consumer = (
            _default_consumer() if consumer is None else _check_text("consumer", consumer)
        )
        _check_positive("claim_idle", claim_idle)
        _check_positive("block", block)
        _check_positive("batch_size", batch_size, integer=True)
        _check_positive("buffer_size", buffer_size, integer=True)
        if maxlen is not None:
            _check_positive("maxlen", maxlen, integer=True)
        if max_deliveries is not None:
            _check_positive("max_deliveries", max_deliveries, integer=True)
        if retry_timeout is not None:
            _check_positive("retry_timeout", retry_timeout)
        if dead_letter_maxlen is not None:
            _check_positive("dead_letter_maxlen", dead_letter_maxlen, integer=True)
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        self._claim_idle = float(claim_idle)
        self._block = float(block)
        self._batch_size = batch_size
        self._buffer_size = buffer_size
        self._maxlen = maxlen
        self._max_deliveries = max_deliveries
        self._retry_timeout = None if retry_timeout is None else float(retry_timeout)
        if not isinstance(trim_acknowledged, bool):
            raise TypeError(
                f"trim_acknowledged must be True or False, got {type(trim_acknowledged).__name__}"
            )
        self._trim_acknowledged = trim_acknowledged
        self._next_trim = 0.0
        self._dead_letter_maxlen = dead_letter_maxlen or 0
        self._codec = resolve_codec(codec)
        self._codec_name = self._codec.name.encode()
        self._key = f"{key_prefix}stream:{{{name}}}"
        self._dead_key = f"{key_prefix}dead:{{{name}}}"
        if key_slot(self._key.encode()) != key_slot(self._dead_key.encode()):
            raise ValueError(
                f"name {name!r} and key_prefix {key_prefix!r} put the stream and its "
                "dead-letter stream in different Redis Cluster slots; leave '{' and '}' "
                "out of them"
            )
        self._redis = RedisConnection(
            url=url,
            client=client,
            connection_options=connection_options,
            cluster=cluster,
            block=self._block,
        )
        self._group_ready = False

        # Sending.
        self._outbox: deque[_Outgoing] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._stream_full = False
        self._senders_waiting = 0
        self._sent = 0
        # Messages queued by send_nowait that the writer gave up on, and why:
        # the next send, flush or aclose raises MessagesNotWritten.
        self._unwritten = 0
        self._unwritten_error: BaseException | None = None

        # Receiving.
        # What was fetched and not acknowledged (see StreamBuffer): messages
        # ready to hand out (with their ids, and when they were fetched), and
        # the ids of those handed out.
        self._buffer = StreamBuffer(self._codec, ChannelMessage, self._ack, max_deliveries)
        self._ready: deque[tuple[bytes, ChannelMessage[Any]]] = self._buffer.ready
        self._ready_ids: dict[bytes, float] = self._buffer.fetched
        self._in_hand: set[bytes] = self._buffer.in_hand
        self._fetch: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        # One future per receiver waiting for a fetch round to end; also woken
        # on close, and when a stop request is delivered locally.
        self._waiters: list[asyncio.Future[None]] = []
        self._fetch_name = f"spark-redis-receive:{name}"
        self._history: bytes | None = b"0"
        self._claim_cursor: bytes = b"0-0"
        self._next_claim = 0.0
        self._receivers_waiting = 0
        self._received = 0
        self._peak_size = 0
        self._dead_lettered = 0
        self._used_receive = False

        # Acknowledging.
        self._ack_batch: _AckBatch | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()
        # XACKs that ack_many is sending from its caller's task, and what
        # close() waits on until they are done.
        self._acking = 0
        self._acks_settled: asyncio.Future[None] | None = None

        # Closing.
        self._closing: asyncio.Task[None] | None = None
        self._released = False

    # -- properties ------------------------------------------------------

    @property
    def key(self) -> str:
        """The stream's Redis key."""
        return self._key

    @property
    def dead_letter_key(self) -> str:
        """The Redis key of the dead-letter stream."""
        return self._dead_key

    @property
    def group(self) -> str:
        """The consumer group."""
        return self._group

    @property
    def consumer(self) -> str:
        """This receiver's name within the group."""
        return self._consumer

    @property
    def codec(self) -> Codec:
        """The codec that encodes and decodes messages."""
        return self._codec

    @property
    def maxsize(self) -> int:
        """``maxlen``, the bound on the group's backlog; 0 means unbounded."""
        return self._maxlen or 0

    # -- sending ---------------------------------------------------------

    def _check(self, message: ChannelMessage[Any]) -> None:
        check_message(message)
        if self._closed:
            raise self._closed_error()

    def _encode(self, message: ChannelMessage[Any]) -> bytes:
        self._check(message)
        metadata = message.metadata
        if METADATA_STREAM_ID in metadata or METADATA_DELIVERY_COUNT in metadata:
            # What a previous hop's receiver added describes that hop, not this one.
            metadata = {k: v for k, v in metadata.items() if k not in _RECEIVER_KEYS}
        return self._codec.encode(message.payload, metadata, message.is_shutdown)

    async def send(self, message: ChannelMessage[T]) -> None:
        """Append ``message`` to the stream; return once Redis holds it.

        Waits while the group's backlog is at ``maxlen``. Raises
        ``TypeError`` if the codec cannot encode the message and
        ``ChannelClosed`` if the channel is closed.
        """
        self._check(message)
        self._raise_unwritten()
        if _is_stop_request(message):
            self._deliver_locally(message)
            if self._observers:
                await self._notify_observers(message, "send")
            return
        body = self._encode(message)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outgoing(message, body, future))
        self._start_flusher()
        self._senders_waiting += 1
        try:
            await future
        finally:
            self._senders_waiting -= 1
        if self._observers:
            await self._notify_observers(message, "send")

    def send_nowait(self, message: ChannelMessage[T]) -> None:
        """Queue ``message`` for the background writer, or raise ``asyncio.QueueFull``.

        Full means ``buffer_size`` messages are queued, or (with ``maxlen``)
        the last write found the group's backlog at ``maxlen``. Must be
        called with the event loop running.
        """
        self._check(message)
        self._raise_unwritten()
        if _is_stop_request(message):
            self._deliver_locally(message)
            if self._observers:
                self._notify_observers_nowait(message, "send")
            return
        body = self._encode(message)
        if self.full():
            raise asyncio.QueueFull
        self._outbox.append(_Outgoing(message, body, None))
        self._start_flusher()
        if self._observers:
            self._notify_observers_nowait(message, "send")

    async def send_many(self, messages: Iterable[ChannelMessage[T]]) -> None:
        """Send every message, in order, in as few round trips as possible.

        Every message is encoded before any is queued, so a ``TypeError``
        sends none of them.
        """
        self._raise_unwritten()
        loop = asyncio.get_running_loop()
        items: list[_Outgoing] = []
        local: list[ChannelMessage[Any]] = []
        for message in messages:
            self._check(message)
            if _is_stop_request(message):
                local.append(message)
            else:
                items.append(_Outgoing(message, self._encode(message), loop.create_future()))
        for message in local:
            self._deliver_locally(message)
            if self._observers:
                await self._notify_observers(message, "send")
        if not items:
            return
        self._outbox.extend(items)
        self._start_flusher()
        self._senders_waiting += len(items)
        try:
            for item in items:
                assert item.future is not None
                await item.future
        except BaseException:
            for item in items:
                if item.future is not None:
                    item.future.cancel()  # those not written yet stay unsent
            raise
        finally:
            self._senders_waiting -= len(items)
        if self._observers:
            for item in items:
                await self._notify_observers(item.message, "send")

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name=f"spark-redis-send:{self._name}"
            )

    async def _flush(self) -> None:
        """Write the outbox in order, a batch per round trip, until it is empty."""
        outbox = self._outbox
        retry = _FIRST_RETRY
        failing_since: float | None = None  # the first failure of a run of them
        while outbox:
            batch: list[_Outgoing] = []
            while outbox and len(batch) < self._batch_size:
                item = outbox.popleft()
                if item.future is None or not item.future.done():  # skip cancelled sends
                    batch.append(item)
            if not batch:
                continue
            try:
                added = await self._write(batch)
            except (AuthenticationError, AuthorizationError) as error:
                self._fail(batch, error)
                continue
            except UNREACHABLE as error:
                outbox.extendleft(reversed(batch))
                now = monotonic()
                if failing_since is None:
                    failing_since = now
                if self._retry_timeout is not None and now - failing_since >= self._retry_timeout:
                    logger.error(
                        "channel %r: Redis unreachable for %.1f s (%s); giving up on %d "
                        "queued message(s)",
                        self._name,
                        now - failing_since,
                        error,
                        len(outbox),
                    )
                    batch = list(outbox)
                    outbox.clear()
                    self._fail(batch, error)
                    return
                logger.warning(
                    "channel %r: cannot reach Redis (%s); retrying %d queued message(s) in %.3f s",
                    self._name,
                    error,
                    len(outbox),
                    retry,
                )
                await asyncio.sleep(retry)
                retry = min(retry * 2, _LAST_RETRY)
                continue
            except Exception as error:
                self._fail(batch, error)
                continue
            except BaseException:
                outbox.extendleft(reversed(batch))
                raise
            failing_since = None
            self._sent += added
            for item in batch[:added]:
                if item.future is not None and not item.future.done():
                    item.future.set_result(None)
            if added < len(batch):
                outbox.extendleft(reversed(batch[added:]))
                self._stream_full = True
                await asyncio.sleep(retry)
                retry = min(retry * 2, _LAST_RETRY)
            else:
                self._stream_full = False
                retry = _FIRST_RETRY

    async def _write(self, batch: list[_Outgoing]) -> int:
        """Append the batch's entries; return how many went in (fewer when at ``maxlen``)."""
        arguments: list[bytes | str | int] = []
        if self._maxlen is None:
            await self._ensure_group()
            script = _XADD_MANY
        else:
            script = _BOUNDED_XADD
            arguments += (self._group, self._maxlen)
        for item in batch:
            arguments += (self._codec_name, item.body)
        reply = await self._redis.run_script(script, (self._key,), *arguments)
        self._group_ready = True
        return int(reply[0])

    def _fail(self, batch: list[_Outgoing], error: BaseException) -> None:
        """Fail a batch: its senders get ``error``; its ``send_nowait`` messages are
        counted, for the next send, flush or aclose to raise ``MessagesNotWritten``."""
        lost = 0
        for item in batch:
            if item.future is None:
                lost += 1
            elif not item.future.done():
                item.future.set_exception(error)
        if lost:
            self._unwritten += lost
            self._unwritten_error = error
            logger.error(
                "channel %r: %d message(s) queued by send_nowait were not written; "
                "the next send, flush or aclose raises MessagesNotWritten",
                self._name,
                lost,
                exc_info=error,
            )

    def _raise_unwritten(self) -> None:
        """Raise ``MessagesNotWritten`` for what the writer gave up on, once."""
        if self._unwritten:
            count, error = self._unwritten, self._unwritten_error
            self._unwritten, self._unwritten_error = 0, None
            assert error is not None
            raise MessagesNotWritten(self._name, count, error) from error

    async def flush(self) -> None:
        """Wait until every message queued so far is written.

        Raises ``MessagesNotWritten`` if the writer gave up on messages
        queued by ``send_nowait`` (see ``retry_timeout``).
        """
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        self._raise_unwritten()

    # -- receiving -------------------------------------------------------

    async def receive(self) -> ChannelMessage[T]:
        """Return the next message, waiting for one.

        Raises ``ChannelClosed`` once the channel is closed. Errors talking to
        Redis propagate; a later ``receive`` tries again.
        """
        while True:
            if self._closed:
                raise self._closed_error()
            if self._ready:
                break
            await self._wait_for_fetch()
        message = self._take()
        if self._observers:
            await self._notify_observers(message, "receive")
        return message

    def receive_nowait(self) -> ChannelMessage[T]:
        """Return a prefetched message now, or raise ``asyncio.QueueEmpty``."""
        if self._closed:
            raise self._closed_error()
        if not self._ready:
            raise asyncio.QueueEmpty
        message = self._take()
        if self._observers:
            self._notify_observers_nowait(message, "receive")
        return message

    async def receive_many(self, max_items: int) -> list[ChannelMessage[T]]:
        """Wait for at least one message, then return up to ``max_items`` already fetched."""
        check_max_items(max_items)
        while True:
            if self._closed:
                raise self._closed_error()
            if self._ready:
                break
            await self._wait_for_fetch()
        batch: list[ChannelMessage[T]] = self._buffer.take(max_items)
        self._received += len(batch)
        if self._observers:
            for message in batch:
                await self._notify_observers(message, "receive")
        return batch

    def _take(self) -> ChannelMessage[Any]:
        self._received += 1
        message: ChannelMessage[Any] = self._buffer.take_one()
        return message

    def _wake_receivers(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _fetch_ended(self, fetch: asyncio.Task[None]) -> None:
        if not fetch.cancelled():
            fetch.exception()  # retrieved: the receivers woken here raise it
        self._wake_receivers()

    def _deliver_locally(self, message: ChannelMessage[Any]) -> None:
        """A stop request wakes the workers reading this object; it never goes to Redis."""
        self._buffer.push_front(message)
        self._wake_receivers()

    async def _wait_for_fetch(self) -> None:
        """Wait until a fetch round ends (starting one if none runs) or the channel closes."""
        loop = asyncio.get_running_loop()
        self._used_receive = True
        fetch = self._fetch
        if fetch is None or fetch.done():
            fetch = self._fetch = loop.create_task(self._fetch_round(), name=self._fetch_name)
            fetch.add_done_callback(self._fetch_ended)
        waiter = loop.create_future()
        self._waiters.append(waiter)
        self._receivers_waiting += 1
        try:
            await waiter
        finally:
            self._receivers_waiting -= 1
        if fetch.done() and not fetch.cancelled():
            error = fetch.exception()
            if error is not None:
                raise error

    async def _fetch_round(self) -> None:
        await self._ensure_group()
        try:
            await self._fetch_once()
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # The stream or the group was deleted behind our back: make it again.
            self._group_ready = False
            await self._ensure_group()
            await self._fetch_once()

    async def _fetch_once(self) -> None:
        if self._history is not None:
            # What this consumer received in an earlier life and never acknowledged.
            reply = await self._redis.execute(
                "xreadgroup", "GROUP", self._group, self._consumer,
                "COUNT", self._batch_size, "STREAMS", self._key, self._history,
            )  # fmt: skip
            entries = _stream_entries(reply, self._key)
            if entries:
                self._history = bytes(entries[-1][0])
                await self._accept(entries, fresh=False)
                return
            self._history = None
        now = monotonic()
        if now >= self._next_claim:
            # What other consumers (dead, hung, or closed) left unacknowledged.
            reply = await self._redis.execute(
                "xautoclaim", self._key, self._group, self._consumer,
                int(self._claim_idle * 1000), self._claim_cursor, "COUNT", self._batch_size,
            )  # fmt: skip
            self._claim_cursor = bytes(reply[0])
            # Keep scanning next round while the pending list has more to look at.
            self._next_claim = now if self._claim_cursor != b"0-0" else now + self._block
            entries = reply[1]
            if entries:
                await self._accept(entries, fresh=False)
                if self._ready:
                    return
        reply = await self._redis.execute(
            "xreadgroup", "GROUP", self._group, self._consumer, "COUNT", self._batch_size,
            "BLOCK", max(1, int(self._block * 1000)), "STREAMS", self._key, ">",
        )  # fmt: skip
        entries = _stream_entries(reply, self._key)
        if entries:
            await self._accept(entries, fresh=True)

    async def _accept(self, entries: list[Any], *, fresh: bool) -> None:
        """Decode fetched entries into the ready buffer; dead-letter the ones that fail.

        ``entries`` is the raw reply: ``[entry id, fields]`` pairs (fields
        flat, or ``None`` for an entry deleted while pending).
        """
        counts: dict[bytes, int] | None = None
        if not fresh:
            counts = await self._delivery_counts(
                [bytes(e[0]) for e in entries if e is not None and e[1] is not None]
            )
        dead, gone = self._buffer.accept(entries, monotonic(), counts)
        if len(self._ready) > self._peak_size:
            self._peak_size = len(self._ready)
        if self._ready and (self._keeper is None or self._keeper.done()):
            self._keeper = asyncio.get_running_loop().create_task(
                self._keep_fresh(), name=f"spark-redis-keeper:{self._name}"
            )
        if dead or gone:
            await self._bury(dead, gone)

    async def _delivery_counts(self, ids: list[bytes]) -> dict[bytes, int]:
        """How many times each id was delivered; ids no longer pending are left out."""
        if not ids:
            return {}
        pipe = await self._redis.pipeline()
        queue: Callable[..., object] = pipe.execute_command
        for entry_id in ids:
            queue("xpending", self._key, self._group, entry_id, entry_id, 1)
        counts: dict[bytes, int] = {}
        for rows in await pipe.execute():
            for row in rows or ():
                counts[bytes(row[0])] = int(row[3])
        return counts

    async def _bury(self, dead: list[Dead], gone: list[bytes]) -> None:
        """Move entries to the dead-letter stream and acknowledge them, atomically."""
        arguments: list[bytes | str | int] = [self._group, self._dead_letter_maxlen, 0]
        for entry_id, fields, reason, count in dead:
            record: list[bytes | str | int] = [
                DEAD_REASON, reason, DEAD_SOURCE_ID, entry_id, DEAD_DELIVERIES, count,
                DEAD_STREAM, self._key, DEAD_GROUP, self._group, DEAD_CONSUMER, self._consumer,
            ]  # fmt: skip
            for name, value in stream_fields(fields).items():
                record += (name, value)
            if len(record) > _SCRIPT_RECORD_LIMIT:
                # Too many fields for the script's unpack(): two commands, not
                # atomic (a crash between them dead-letters the entry twice).
                cap = ("MAXLEN", self._dead_letter_maxlen) if self._dead_letter_maxlen else ()
                await self._redis.execute("xadd", self._dead_key, *cap, "*", *record)
                await self._redis.execute("xack", self._key, self._group, entry_id)
                continue
            arguments += (entry_id, len(record), *record)
            arguments[2] = int(arguments[2]) + 1
        arguments += gone
        await self._redis.run_script(_BURY, (self._key, self._dead_key), *arguments)
        ids = [entry_id for entry_id, *_ in dead] + gone
        self._in_hand.difference_update(ids)  # a handler that never acked may have held one
        self._dead_lettered += len(dead)
        for entry_id, _, reason, _ in dead:
            logger.warning(
                "channel %r: entry %s moved to dead-letter stream %r: %s",
                self._name,
                entry_id.decode(),
                self._dead_key,
                reason,
            )

    async def _keep_fresh(self) -> None:
        """Keep prefetched entries ours while they wait in the buffer.

        An entry idle for ``claim_idle`` may be claimed by another consumer.
        Entries waiting longer than a third of that are claimed again by this
        consumer, which resets their idle time; one that someone else took in
        the meantime is dropped from the buffer instead of being handled twice.
        """
        horizon = self._claim_idle / 3
        fetched = self._ready_ids
        while fetched and not self._closed:
            now = monotonic()
            oldest = min(fetched.values())
            if now - oldest < horizon:
                await asyncio.sleep(oldest + horizon - now)
                continue
            stale = {i: at for i, at in fetched.items() if now - at >= horizon}
            try:
                kept = await self._reclaim(stale, now)
            except _RECOVERABLE as error:
                logger.warning(
                    "channel %r: cannot refresh prefetched entries: %s", self._name, error
                )
                await asyncio.sleep(min(horizon, 1.0))
                continue
            refreshed = monotonic()
            lost = set()
            for entry_id in stale:
                if entry_id not in fetched:
                    continue  # handed out meanwhile
                if entry_id in kept:
                    fetched[entry_id] = refreshed
                else:
                    lost.add(entry_id)
                    del fetched[entry_id]
            if lost:
                kept_ready = [r for r in self._ready if r[0] not in lost]
                self._ready.clear()
                self._ready.extend(kept_ready)

    async def _reclaim(self, fetched: dict[bytes, float], now: float) -> set[bytes]:
        """Claim entries again if nobody claimed them since we fetched them; return those kept."""
        pipe = await self._redis.pipeline()
        queue: Callable[..., object] = pipe.execute_command
        for entry_id, fetched_at in fetched.items():
            # Our copy is at least this old on the server; another consumer's
            # claim would have made it younger.
            idle = max(0, int((now - fetched_at) * 1000) - 2)
            queue("xclaim", self._key, self._group, self._consumer, idle, entry_id, "JUSTID")
        kept: set[bytes] = set()
        for ids in await pipe.execute():
            kept.update(bytes(i) for i in ids or ())
        return kept

    # -- acknowledging ---------------------------------------------------

    def _ack(self, entry_id: bytes) -> asyncio.Future[None]:
        """The XACK of ``entry_id``, queued at once (with the others of this loop iteration)."""
        loop = asyncio.get_running_loop()
        if entry_id not in self._in_hand:
            done = loop.create_future()  # acknowledged already
            done.set_result(None)
            return done
        if self._released:
            refused = loop.create_future()
            refused.set_exception(self._not_acknowledged(entry_id))
            return refused
        return asyncio.shield(self._queue_ack(entry_id).future)

    def _not_acknowledged(self, entry_id: bytes) -> ChannelClosed:
        return ChannelClosed(
            f"channel {self._name!r} is closed; entry {entry_id.decode()} stays pending "
            f"and will be delivered again after claim_idle"
        )

    def _queue_ack(self, entry_id: bytes) -> _AckBatch:
        """Add ``entry_id`` to the XACK about to be sent, starting one if needed."""
        batch = self._ack_batch
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._ack_batch = _AckBatch(loop.create_future())
            batch.future.add_done_callback(_mark_retrieved)
            task = loop.create_task(self._send_acks(batch), name=f"spark-redis-ack:{self._name}")
            self._ack_tasks.add(task)
            task.add_done_callback(self._ack_tasks.discard)
        batch.ids[entry_id] = None
        return batch

    async def _send_acks(self, batch: _AckBatch) -> None:
        # Runs one loop iteration after the first ack: every ack issued
        # meanwhile joins the same XACK.
        if self._ack_batch is batch:
            self._ack_batch = None
        try:
            await self._acknowledge(list(batch.ids))
        except asyncio.CancelledError:
            batch.future.set_exception(self._closed_error())
            raise
        except Exception as error:
            batch.future.set_exception(error)
        else:
            batch.future.set_result(None)

    async def _acknowledge(self, ids: list[bytes]) -> None:
        """XACK ``ids`` now, from the calling task (``close()`` waits for it); trim after."""
        self._acking += 1
        try:
            await self._redis.execute("xack", self._key, self._group, *ids)
        finally:
            self._acking -= 1
            if not self._acking and self._acks_settled is not None:
                self._acks_settled.set_result(None)
                self._acks_settled = None
        self._in_hand.difference_update(ids)
        if self._trim_acknowledged and monotonic() >= self._next_trim:
            self._start_trim()

    def _start_trim(self) -> None:
        """Trim what every group acknowledged, in the background, at most once a second."""
        self._next_trim = monotonic() + _TRIM_INTERVAL
        task = asyncio.get_running_loop().create_task(
            self._trim(), name=f"spark-redis-trim:{self._name}"
        )
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    async def _trim(self) -> None:
        try:
            await self._redis.run_script(_TRIM_ACKNOWLEDGED, (self._key,))
        except Exception as error:  # the next acks try again
            logger.warning("channel %r: could not trim the stream: %s", self._name, error)

    async def ack_many(self, messages: Iterable[ChannelMessage[Any]]) -> None:
        """Acknowledge messages received from this channel in one XACK.

        Messages from elsewhere have their own ``ack`` awaited.
        """
        ids, foreign = self._buffer.sort_acks(messages)
        if ids and self._released:
            raise self._not_acknowledged(ids[0])
        others: list[Awaitable[None]] = [ack() for ack in foreign]
        if ids:
            await self._acknowledge(ids)
        if others:
            await asyncio.gather(*others)

    # -- state -----------------------------------------------------------

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.execute("xgroup", "CREATE", self._key, self._group, "0", "MKSTREAM")
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    async def backlog(self) -> Backlog:
        """Ask Redis how far behind the group is."""
        await self._ensure_group()
        pipe = await self._redis.pipeline()
        queue: Callable[..., object] = pipe.execute_command
        queue("xinfo", "GROUPS", self._key)
        queue("xlen", self._key)
        groups, length = await pipe.execute()
        for group in groups:
            info = _mapping(group)
            if _text(info.get("name")) == self._group:
                lag = info.get("lag")
                return Backlog(int(length), int(info["pending"]), None if lag is None else int(lag))
        return Backlog(int(length), 0, int(length))

    async def prune_consumers(self, idle: float) -> list[str]:
        """Remove the group's consumers idle for ``idle`` seconds that hold nothing.

        A consumer that stopped for good (a worker process that is gone)
        stays listed in the group; once its pending entries were reclaimed
        by the others (after ``claim_idle``), this removes it. Consumers
        still holding pending entries, and this channel's own, are kept.
        Returns the names removed.
        """
        _check_positive("idle", idle)
        await self._ensure_group()
        rows = await self._redis.execute("xinfo", "CONSUMERS", self._key, self._group)
        removed: list[str] = []
        for row in rows:
            info = _mapping(row)
            name = _text(info["name"])
            if name == self._consumer or int(info["pending"]) or int(info["idle"]) < idle * 1000:
                continue
            # XGROUP DELCONSUMER drops a consumer's pending entries with it:
            # only one that still holds none is removed (checked atomically).
            if await self._redis.run_script(_DELETE_IDLE_CONSUMER, (self._key,), self._group, name):
                removed.append(name)
        if removed:
            logger.info("channel %r: removed idle consumers %s", self._name, removed)
        return removed

    async def dead_letters(self, count: int = 100, *, after: str | None = None) -> list[DeadLetter]:
        """The oldest ``count`` dead letters (those after id ``after``, if given)."""
        check_max_items(count)
        start = "-" if after is None else f"({after}"
        reply = await self._redis.execute("xrange", self._dead_key, start, "+", "COUNT", count)
        letters = []
        for entry_id, fields in _entries(reply):
            if fields is None:
                continue
            original = {k: v for k, v in fields.items() if not k.startswith(b"dead:")}
            letters.append(
                DeadLetter(
                    id=entry_id.decode(),
                    source_id=_text(fields.get(DEAD_SOURCE_ID)),
                    reason=_text(fields.get(DEAD_REASON)),
                    delivery_count=int(fields.get(DEAD_DELIVERIES) or 0),
                    consumer=_text(fields.get(DEAD_CONSUMER)),
                    fields=original,
                )
            )
        return letters

    def empty(self) -> bool:
        """Whether no prefetched message is ready (Redis may still hold some)."""
        return not self._ready

    def qsize(self) -> int:
        """How many fetched messages wait in the local buffer."""
        return len(self._ready)

    def full(self) -> bool:
        """Whether ``send_nowait`` would raise ``asyncio.QueueFull``."""
        return len(self._outbox) >= self._buffer_size or (
            self._maxlen is not None and self._stream_full
        )

    def stats(self) -> ChannelStats:
        """Local counters: ``size`` is the prefetch buffer, ``sent`` the entries written."""
        return ChannelStats(
            sent=self._sent,
            received=self._received,
            size=len(self._ready),
            peak_size=self._peak_size,
            maxsize=self._maxlen or 0,
            senders_waiting=self._senders_waiting,
            receivers_waiting=self._receivers_waiting,
            closed=self._closed,
        )

    @property
    def dead_lettered(self) -> int:
        """How many entries this object moved to the dead-letter stream."""
        return self._dead_lettered

    def close(self) -> None:
        """Refuse further sends, stop receiving, and start the rest of the shutdown.

        Queued messages are still written, prefetched entries are handed back
        to the group, and the connections are released, in a background task
        that ``aclose()`` waits for. Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._wake_receivers()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # nothing can be in flight without a running loop; aclose() finishes
        self._closing = loop.create_task(self._shutdown(), name=f"spark-redis-close:{self._name}")

    async def aclose(self) -> None:
        """Close, and wait until queued sends are written and connections are released.

        Raises ``MessagesNotWritten`` if messages queued by ``send_nowait``
        could not be written (see ``retry_timeout``). If cancelled, queued
        messages not yet written are not written (senders waiting on them
        get the ``ChannelClosed`` error, and the next ``aclose()`` or
        ``flush()`` raises ``MessagesNotWritten`` for the others) and the
        connections are released anyway.
        """
        self.close()
        if self._closing is None or (self._closing.cancelled() and not self._released):
            # Never started, or cancelled before it could release anything.
            self._closing = asyncio.get_running_loop().create_task(self._shutdown())
        # Cancelled: an earlier aclose() was, and the shutdown went as far as it got.
        if not self._closing.cancelled():
            await self._closing
        self._raise_unwritten()

    async def _shutdown(self) -> None:
        try:
            pending = [task for task in (self._fetch, self._keeper) if task is not None]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if self._flusher is not None:
                await self._flusher
            if self._used_receive:
                await self._hand_back()
            while self._ack_tasks or self._acking:  # acks sent meanwhile included
                if self._acking:
                    if self._acks_settled is None:
                        self._acks_settled = asyncio.get_running_loop().create_future()
                    await asyncio.shield(self._acks_settled)
                await asyncio.gather(*self._ack_tasks, return_exceptions=True)
        finally:
            for task in self._ack_tasks:
                task.cancel()
            batch = self._ack_batch  # its task may be cancelled before it starts
            if batch is not None and not batch.future.done():
                batch.future.set_exception(self._closed_error())
            self._ack_batch = None
            if self._flusher is not None and not self._flusher.done():
                self._flusher.cancel()
                # It puts the batch it was writing back in the outbox as it stops.
                await asyncio.wait((self._flusher,))
            outbox = list(self._outbox)
            self._outbox.clear()
            # Interrupted (aclose() cancelled): what send_nowait queued is
            # reported by the next flush() or aclose(), as MessagesNotWritten.
            self._fail(outbox, ChannelClosed(f"closing channel {self._name!r} was interrupted"))
            self._ready.clear()
            self._ready_ids.clear()
            self._released = True
            await self._redis.close()

    async def _hand_back(self) -> None:
        """Make this consumer's pending entries that no handler holds claimable at once."""
        returned = 0
        start = "-"
        try:
            while True:
                rows = await self._redis.execute(
                    "xpending", self._key, self._group, start, "+", 1000, self._consumer
                )
                if not rows:
                    break
                pipe = await self._redis.pipeline()
                queue: Callable[..., object] = pipe.execute_command
                for row in rows:
                    entry_id, idle, count = bytes(row[0]), int(row[2]), int(row[3])
                    if entry_id in self._in_hand:
                        continue  # a handler may still be working on it
                    if entry_id in self._ready_ids:
                        count -= 1  # fetched, never handed out: that delivery does not count
                    queue(
                        "xclaim", self._key, self._group, self._consumer, max(0, idle - 5),
                        entry_id, "IDLE", max(_HAND_BACK_IDLE_MS, int(self._claim_idle * 2000)),
                        "RETRYCOUNT", max(0, count), "JUSTID",
                    )  # fmt: skip
                    returned += 1
                if len(pipe):
                    await pipe.execute()
                if len(rows) < 1000:
                    break
                start = "(" + bytes(rows[-1][0]).decode()
        except _RECOVERABLE as error:
            logger.warning(
                "channel %r: could not hand back prefetched entries (%s); "
                "they will be reclaimed after claim_idle",
                self._name,
                error,
            )
            return
        if returned:
            logger.debug("channel %r: handed %d entries back to the group", self._name, returned)

    async def __aenter__(self) -> RedisStreamChannel[Any]:
        """Check that Redis answers: raise its connection error at once if not."""
        try:
            await self._redis.ping()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(f"channel {self._name!r} is closed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<RedisStreamChannel {self._name!r} stream={self._key!r} group={self._group!r} "
            f"consumer={self._consumer!r} {state}>"
        )


# -- raw reply parsing -------------------------------------------------------
# Replies arrive unparsed: RESP2 gives flat lists, RESP3 gives dicts for maps.


def _is_stop_request(message: ChannelMessage[Any]) -> bool:
    return message.is_shutdown and is_stop_request(message)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _mapping(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {_text(k): v for k, v in raw.items()}
    return {_text(raw[i]): raw[i + 1] for i in range(0, len(raw) - 1, 2)}


def _entries(raw: Any) -> list[Entry]:
    return [
        (bytes(item[0]), None if item[1] is None else stream_fields(item[1]))
        for item in raw or ()
        if item is not None
    ]


def _stream_entries(raw: Any, key: str) -> list[Any]:
    """The entries of ``key`` in an XREAD/XREADGROUP reply, raw: ``[id, fields]`` pairs."""
    if not raw:
        return []
    if isinstance(raw, dict):
        streams = list(raw.items())
    else:
        streams = [(item[0], item[1]) for item in raw]
    wanted = key.encode()
    for name, entries in streams:
        if bytes(name) == wanted:
            return list(entries or ())
    return []
