"""Codecs: how a message's payload, metadata and shutdown flag become the body of an entry.

A codec turns ``(payload, metadata, is_shutdown)`` into bytes and back. Each
stream entry records the name of the codec that wrote it, so a receiver
refuses an entry written by another codec instead of guessing.

``MsgpackCodec`` (the default) is safe with untrusted data: decoding builds
only plain values (dicts, lists, strings, numbers, bytes, ``None``,
datetimes) and instances of the types registered with it. ``PickleCodec``
can carry any picklable object, and for that reason lets anyone who can write
to the stream run code in every consumer; it is used only when asked for by
name.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "Codec",
    "DecodeError",
    "MsgpackCodec",
    "PickleCodec",
    "resolve_codec",
]


class DecodeError(ValueError):
    """An entry's body could not be decoded into a message."""


@runtime_checkable
class Codec(Protocol):
    """Turns a message's parts into bytes and back.

    ``name`` is stored with every entry; ``decode`` raises ``DecodeError``
    for anything it cannot turn back into ``(payload, metadata, is_shutdown)``.
    ``encode`` raises ``TypeError`` for a payload it cannot represent.
    """

    @property
    def name(self) -> str: ...

    def encode(self, payload: Any, metadata: Mapping[str, Any], is_shutdown: bool) -> bytes: ...

    def decode(self, data: bytes) -> tuple[Any, dict[str, Any], bool]: ...


class _Outgoing(msgspec.Struct, array_like=True):
    payload: Any
    metadata: Mapping[str, Any]
    shutdown: bool
    tag: str | None


class _Incoming(msgspec.Struct, array_like=True):
    # The payload is decoded in a second step, with the type its tag names.
    payload: msgspec.Raw
    metadata: dict[Any, Any]
    shutdown: bool
    tag: str | None = None


_PLAIN_TYPES = frozenset({dict, list, tuple, str, int, float, bool, bytes, bytearray, type(None)})


class MsgpackCodec:
    """MessagePack through msgspec: the safe default.

    A payload made of dicts, lists, tuples, strings, numbers, booleans,
    ``None``, bytes and datetimes comes back as the same values (tuples and
    sets come back as lists; UUIDs, decimals and enums as their msgpack
    form). A payload whose type was registered with ``register`` (a
    ``msgspec.Struct``, a dataclass, an attrs class, or any type msgspec can
    decode into) comes back as an instance of that type, nested typed fields
    included. Sending an unregistered dataclass or Struct raises
    ``TypeError`` rather than letting it arrive as a dict.

    Producers and consumers must register the same types under the same tags;
    an entry naming a tag the receiver does not know is refused.
    """

    def __init__(self, types: Iterable[type] = ()) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._envelope = msgspec.msgpack.Decoder(_Incoming)
        self._untyped = msgspec.msgpack.Decoder()
        self._tags: dict[type, str] = {}
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}
        for cls in types:
            self.register(cls)

    @property
    def name(self) -> str:
        return "msgpack"

    @property
    def types(self) -> dict[str, type]:
        """The registered types, by tag."""
        return {tag: cls for cls, tag in self._tags.items()}

    def register(self, cls: type, *, tag: str | None = None) -> None:
        """Make payloads of type ``cls`` round-trip as ``cls`` instances.

        ``tag`` names the type on the wire; it defaults to the class's
        qualified name with its module.
        """
        if not isinstance(cls, type):
            raise TypeError(f"register() takes a class, got {cls!r}")
        if tag is None:
            tag = f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(tag, str) or not tag:
            raise TypeError("tag must be a non-empty str")
        known = self._decoders.get(tag)
        if known is not None and self._tags.get(cls) != tag:
            raise ValueError(f"tag {tag!r} is already registered for another type")
        self._decoders[tag] = msgspec.msgpack.Decoder(cls)
        self._tags[cls] = tag

    def encode(self, payload: Any, metadata: Mapping[str, Any], is_shutdown: bool) -> bytes:
        cls = type(payload)
        tag = self._tags.get(cls)
        if tag is None and cls not in _PLAIN_TYPES and _is_structured(payload):
            raise TypeError(
                f"{cls.__qualname__} payloads must be registered with the codec to be sent "
                f"(codec.register({cls.__qualname__})); otherwise they would arrive as dicts"
            )
        try:
            return self._encoder.encode(_Outgoing(payload, metadata, is_shutdown, tag))
        except (TypeError, OverflowError, msgspec.EncodeError) as error:
            raise TypeError(f"the msgpack codec cannot encode this message: {error}") from error

    def decode(self, data: bytes) -> tuple[Any, dict[str, Any], bool]:
        try:
            value = self._untyped.decode(data)
        except msgspec.DecodeError as error:
            raise DecodeError(f"not a msgpack message: {error}") from error
        # [payload, metadata, shutdown, tag]: an untagged payload is decoded
        # by now, in one pass; a tagged one is decoded again, into its type.
        if (
            type(value) is list
            and len(value) == 4
            and value[3] is None
            and type(value[1]) is dict
            and type(value[2]) is bool
        ):
            return value[0], value[1], value[2]
        return self._decode_envelope(data)

    def _decode_envelope(self, data: bytes) -> tuple[Any, dict[str, Any], bool]:
        try:
            envelope = self._envelope.decode(data)
            if envelope.tag is None:
                payload = self._untyped.decode(envelope.payload)
            else:
                decoder = self._decoders.get(envelope.tag)
                if decoder is None:
                    raise DecodeError(f"payload type {envelope.tag!r} is not registered")
                payload = decoder.decode(envelope.payload)
        except msgspec.DecodeError as error:
            raise DecodeError(f"not a msgpack message: {error}") from error
        return payload, envelope.metadata, envelope.shutdown

    def __repr__(self) -> str:
        return f"MsgpackCodec(types={list(self._tags)!r})"


def _is_structured(value: object) -> bool:
    return (
        isinstance(value, msgspec.Struct)
        or (dataclasses.is_dataclass(value) and not isinstance(value, type))
        or hasattr(type(value), "__attrs_attrs__")
    )


class PickleCodec:
    """Pickle: any picklable payload, for producers and consumers that trust each other.

    .. warning:: Unpickling runs code chosen by whoever wrote the bytes.
       With this codec, anyone who can write to the stream (any client of the
       Redis server with write access to the key) can run arbitrary code in
       every consumer. Use it only on a Redis server that nothing untrusted
       can reach, and prefer ``MsgpackCodec`` with registered types.
    """

    @property
    def name(self) -> str:
        return "pickle"

    def encode(self, payload: Any, metadata: Mapping[str, Any], is_shutdown: bool) -> bytes:
        try:
            return pickle.dumps(
                (payload, dict(metadata), bool(is_shutdown)), protocol=pickle.HIGHEST_PROTOCOL
            )
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            raise TypeError(f"the pickle codec cannot encode this message: {error}") from error

    def decode(self, data: bytes) -> tuple[Any, dict[str, Any], bool]:
        try:
            value = pickle.loads(data)
        except Exception as error:
            raise DecodeError(f"not a pickled message: {error!r}") from error
        if (
            not isinstance(value, tuple)
            or len(value) != 3
            or not isinstance(value[1], dict)
            or not isinstance(value[2], bool)
        ):
            raise DecodeError("not a pickled message: unexpected structure")
        return value[0], value[1], value[2]

    def __repr__(self) -> str:
        return "PickleCodec()"


def resolve_codec(codec: str | Codec) -> Codec:
    """The codec for ``"msgpack"``, ``"pickle"``, or a codec object passed as is."""
    if isinstance(codec, str):
        if codec == "msgpack":
            return MsgpackCodec()
        if codec == "pickle":
            return PickleCodec()
        raise ValueError(f"unknown codec {codec!r}; use 'msgpack', 'pickle' or a Codec object")
    if isinstance(codec, Codec) and isinstance(codec.name, str):
        return codec
    raise TypeError(f"codec must be 'msgpack', 'pickle' or a Codec object, got {codec!r}")
