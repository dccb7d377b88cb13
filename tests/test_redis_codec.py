"""The codecs of the Redis backend: what round-trips, what is refused (no server needed)."""

from __future__ import annotations

import dataclasses
import datetime
import pickle
from pathlib import Path
from typing import Any

import pytest
from redis_support import require_extra

require_extra()

import msgspec  # noqa: E402

from spark.backends._codec import (  # noqa: E402
    Codec,
    DecodeError,
    MsgpackCodec,
    PickleCodec,
    resolve_codec,
)


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Order:
    id: str
    points: list[Point]
    placed: datetime.datetime


@dataclasses.dataclass
class Unregistered:
    value: int


class Touch:
    """Unpickling this creates ``path``: the code execution pickle allows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_plain_values_round_trip() -> None:
    codec = MsgpackCodec()
    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)
    payload = {
        "text": "héllo",
        "n": 2**63,
        "neg": -7,
        "f": 1.5,
        "flag": True,
        "none": None,
        "blob": b"\x00\xff",
        "list": [1, [2, {"k": "v"}]],
        "when": when,
    }
    data = codec.encode(payload, {"trace": "abc", "hop": 2}, False)
    assert codec.decode(data) == (payload, {"trace": "abc", "hop": 2}, False)


def test_tuples_come_back_as_lists_and_shutdown_flag_survives() -> None:
    codec = MsgpackCodec()
    assert codec.decode(codec.encode((1, (2, 3)), {}, True)) == ([1, [2, 3]], {}, True)


def test_registered_types_round_trip_as_instances() -> None:
    codec = MsgpackCodec([Point])
    codec.register(Order, tag="order")
    order = Order("o-1", [Point(1, 2), Point(3, 4)], datetime.datetime(2024, 1, 1))
    payload, _, _ = codec.decode(codec.encode(order, {}, False))
    assert payload == order
    assert isinstance(payload.points[0], Point)
    assert codec.types == {f"{__name__}.Point": Point, "order": Order}
    assert codec.decode(codec.encode(Point(5, 6), {}, False))[0] == Point(5, 6)


def test_unregistered_structured_payload_is_refused() -> None:
    codec = MsgpackCodec()
    with pytest.raises(TypeError, match="must be registered"):
        codec.encode(Unregistered(1), {}, False)
    with pytest.raises(TypeError, match="must be registered"):
        codec.encode(Point(1, 2), {}, False)


def test_unencodable_payload_raises_type_error() -> None:
    codec = MsgpackCodec()
    with pytest.raises(TypeError, match="cannot encode"):
        codec.encode(object(), {}, False)
    with pytest.raises(TypeError, match="cannot encode"):
        codec.encode(2**70, {}, False)
    with pytest.raises(TypeError, match="cannot encode"):
        codec.encode(1, {"bad": object()}, False)


def test_unknown_tag_is_a_decode_error() -> None:
    data = MsgpackCodec([Point]).encode(Point(1, 2), {}, False)
    with pytest.raises(DecodeError, match="not registered"):
        MsgpackCodec().decode(data)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01", b"not msgpack at all", b"\x80"])
def test_malformed_bytes_are_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        MsgpackCodec().decode(data)


def test_msgpack_codec_never_unpickles(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    data = pickle.dumps((Touch(target), {}, False))
    with pytest.raises(DecodeError):
        MsgpackCodec().decode(data)
    assert not target.exists()
    # The same bytes through the pickle codec do run code: what the default protects from.
    PickleCodec().decode(data)
    assert target.exists()


def test_pickle_codec_round_trips_arbitrary_objects() -> None:
    codec = PickleCodec()
    value = {"set": {1, 2}, "obj": Unregistered(3), "tuple": (1, 2)}
    assert codec.decode(codec.encode(value, {"m": 1}, True)) == (value, {"m": 1}, True)


def test_pickle_codec_rejects_other_structures() -> None:
    codec = PickleCodec()
    with pytest.raises(DecodeError, match="unexpected structure"):
        codec.decode(pickle.dumps([1, 2, 3]))
    with pytest.raises(DecodeError):
        codec.decode(b"garbage")
    with pytest.raises(TypeError, match="cannot encode"):
        codec.encode(lambda: None, {}, False)


def test_resolve_codec() -> None:
    assert isinstance(resolve_codec("msgpack"), MsgpackCodec)
    assert isinstance(resolve_codec("pickle"), PickleCodec)
    custom = MsgpackCodec([Point])
    assert resolve_codec(custom) is custom
    assert isinstance(custom, Codec)
    with pytest.raises(ValueError, match="unknown codec"):
        resolve_codec("json")
    with pytest.raises(TypeError):
        resolve_codec(42)  # type: ignore[arg-type]


def test_register_rejects_conflicting_tags() -> None:
    codec = MsgpackCodec()
    codec.register(Point, tag="p")
    codec.register(Point, tag="p")  # the same registration again is fine
    with pytest.raises(ValueError, match="already registered"):
        codec.register(Order, tag="p")
    with pytest.raises(TypeError):
        codec.register(Point(1, 2))  # type: ignore[arg-type]
