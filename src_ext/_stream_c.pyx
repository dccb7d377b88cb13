# cython: language_level=3, boundscheck=False, wraparound=False
"""The receive buffer of ``RedisStreamChannel``, compiled.

The specification is ``spark/backends/_stream_py.py``: same class, same
behaviour, checked by the same tests. What this adds: the per-entry loops run
in C, and a body written by ``MsgpackCodec`` with an untagged payload is
decoded with one call into msgspec (the shape check of
``MsgpackCodec.decode``, done here), without a Python frame per message.
"""

from spark.backends._codec import DecodeError, MsgpackCodec
from spark.backends._stream_py import (
    METADATA_DELIVERY_COUNT,
    METADATA_STREAM_ID,
    _ack_repr,
    stream_fields,
)

cdef bytes _CODEC = b"codec"
cdef bytes _BODY = b"body"


cdef class EntryAck:
    """A received message's ``ack``: ``EntryAck(target, entry_id)()`` is ``target(entry_id)``."""

    cdef readonly object target
    cdef readonly bytes entry_id

    def __init__(self, target, bytes entry_id):
        self.target = target
        self.entry_id = entry_id

    def __call__(self):
        return self.target(self.entry_id)

    def __repr__(self):
        return _ack_repr(self.target, self.entry_id)


cdef inline EntryAck _new_ack(object target, bytes entry_id):
    cdef EntryAck ack = EntryAck.__new__(EntryAck)
    ack.target = target
    ack.entry_id = entry_id
    return ack


cdef class StreamBuffer:
    """What one channel object fetched and has not seen acknowledged (see ``_stream_py``)."""

    cdef readonly object ready
    cdef readonly dict fetched
    cdef readonly set in_hand
    cdef object _codec
    cdef object _codec_decode
    cdef object _untyped_decode
    cdef bytes _codec_name
    cdef object _message_type
    cdef object _ack_target
    cdef object _max_deliveries
    cdef object _append
    cdef object _popleft

    def __init__(self, codec, message_type, ack_target, max_deliveries):
        from collections import deque

        self.ready = deque()
        self.fetched = {}
        self.in_hand = set()
        self._codec = codec
        self._codec_decode = codec.decode
        # MsgpackCodec exactly (a subclass may decode differently): its
        # untagged bodies are decoded here in one call.
        self._untyped_decode = codec._untyped.decode if type(codec) is MsgpackCodec else None
        self._codec_name = codec.name.encode()
        self._message_type = message_type
        self._ack_target = ack_target
        self._max_deliveries = max_deliveries
        self._append = self.ready.append
        self._popleft = self.ready.popleft

    def accept(self, entries, fetched_at, counts):
        """Decode raw ``[id, fields]`` entries onto ``ready``; return the dead and the gone."""
        cdef list dead = []
        cdef list gone = []
        cdef object by_id = counts
        cdef dict fetched = self.fetched
        cdef object at = fetched_at
        cdef object entry, entry_id, fields, count, message
        for entry in entries:
            if entry is None:  # Redis < 7 lists entries deleted while pending as nil
                continue
            entry_id, fields = entry
            if type(entry_id) is not bytes:
                entry_id = bytes(entry_id)
            if fields is None:
                gone.append(entry_id)
                continue
            if entry_id in fetched:
                continue
            if by_id is None:
                count = 1
            else:
                count = by_id.get(entry_id)
                if count is None:
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
            self._append((entry_id, message))
            fetched[entry_id] = at
        return dead, gone

    cdef object _decode(self, bytes entry_id, object raw, object count):
        cdef list flat
        if type(raw) is list and len(<list>raw) == 4:
            flat = <list>raw
            if flat[0] == _CODEC and flat[2] == _BODY:
                return self._message(entry_id, flat[1], flat[3], count)
        fields = stream_fields(raw)
        return self._message(entry_id, fields.get(_CODEC), fields.get(_BODY), count)

    cdef object _message(self, bytes entry_id, object codec, object body, object count):
        if codec is None or body is None:
            raise DecodeError("not a spark message (no 'codec' and 'body' fields)")
        if codec != self._codec_name:
            raise DecodeError(
                f"written with codec {bytes(codec).decode(errors='replace')!r}, "
                f"but this channel decodes {self._codec.name!r}"
            )
        payload, metadata, is_shutdown = self._decode_body(body)
        metadata[METADATA_STREAM_ID] = entry_id.decode("utf-8")
        metadata[METADATA_DELIVERY_COUNT] = count
        return self._message_type(payload, metadata, _new_ack(self._ack_target, entry_id), is_shutdown)

    cdef object _decode_body(self, object body):
        cdef list value
        if self._untyped_decode is not None:
            try:
                decoded = self._untyped_decode(body)
            except Exception:
                return self._codec_decode(body)  # raises the codec's DecodeError
            # [payload, metadata, shutdown, tag]: untagged means decoded by now.
            if type(decoded) is list and len(<list>decoded) == 4:
                value = <list>decoded
                if value[3] is None and type(value[1]) is dict and type(value[2]) is bool:
                    return value[0], value[1], value[2]
        return self._codec_decode(body)

    def push_front(self, message):
        """Put a locally delivered message (a stop request) before everything fetched."""
        self.ready.appendleft((b"", message))

    def take_one(self):
        """Hand out the oldest ready message (there must be one)."""
        entry_id, message = self._popleft()
        if entry_id:
            del self.fetched[entry_id]
            self.in_hand.add(entry_id)
        return message

    def take(self, count):
        """Hand out up to ``count`` ready messages, oldest first."""
        cdef list batch = []
        cdef dict fetched = self.fetched
        cdef set in_hand = self.in_hand
        cdef Py_ssize_t n = len(self.ready)
        cdef Py_ssize_t i
        if count < n:
            n = count
        for i in range(n):
            entry_id, message = self._popleft()
            if entry_id:
                del fetched[entry_id]
                in_hand.add(entry_id)
            batch.append(message)
        return batch

    def sort_acks(self, messages):
        """The ids to acknowledge among ``messages``, and the acks that are not ours."""
        cdef list ids = []
        cdef list others = []
        cdef set in_hand = self.in_hand
        cdef object target = self._ack_target
        for message in messages:
            ack = message.ack
            if type(ack) is EntryAck and (<EntryAck>ack).target is target:
                entry_id = (<EntryAck>ack).entry_id
                if entry_id in in_hand:
                    ids.append(entry_id)
            elif ack is not None:
                others.append(ack)
        return ids, others
