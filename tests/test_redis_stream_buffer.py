"""StreamBuffer, the receive path of RedisStreamChannel, on both builds.

The unit tests feed raw replies as Redis sends them (RESP2 flat fields, RESP3
maps, nil entries) to each build and check what comes out; one test checks
that both builds give the same result for the same replies; the last ones run
a channel over a real server with each build.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_support import require_extra, unique

require_extra()

import msgspec  # noqa: E402

from spark.backends import _stream, _stream_py  # noqa: E402
from spark.backends import redis as redis_backend  # noqa: E402
from spark.backends._codec import MsgpackCodec, PickleCodec  # noqa: E402
from spark.backends.redis import RedisStreamChannel  # noqa: E402
from spark.nodes.channels import ChannelMessage  # noqa: E402

REQUIRE_EXTENSIONS = bool(os.environ.get("SPARK_REQUIRE_EXTENSIONS"))


def _buffer_class(build: str) -> Any:
    if build == "python":
        return _stream_py.StreamBuffer
    try:
        return importlib.import_module("spark.backends._stream_c").StreamBuffer
    except ImportError as error:
        if REQUIRE_EXTENSIONS:
            pytest.fail(f"the compiled stream buffer is required but did not import: {error}")
        pytest.skip("the compiled stream buffer is not built")


@pytest.fixture(params=["python", "cython"])
def buffer_class(request: pytest.FixtureRequest) -> Any:
    return _buffer_class(request.param)


@dataclasses.dataclass
class Point:
    x: int
    y: int


def target(entry_id: bytes) -> str:
    return f"acked {entry_id.decode()}"


Factory = Callable[..., Any]


@pytest.fixture
def make(buffer_class: Any) -> Factory:
    def factory(codec: Any = None, max_deliveries: int | None = 3, ack_target: Any = target) -> Any:
        codec = MsgpackCodec([Point]) if codec is None else codec
        return buffer_class(codec, ChannelMessage, ack_target, max_deliveries)

    return factory


def entry(entry_id: str, payload: Any, metadata: dict[str, Any] | None = None, **kw: Any) -> Any:
    codec = kw.get("codec") or MsgpackCodec([Point])
    body = codec.encode(payload, metadata or {}, kw.get("shutdown", False))
    return [entry_id.encode(), [b"codec", codec.name.encode(), b"body", body]]


def test_entries_become_messages_with_their_id_count_and_ack(make: Factory) -> None:
    buffer = make()
    dead, gone = buffer.accept(
        [entry("1-0", {"a": [1, 2]}, {"trace": "t"}), entry("1-1", Point(1, 2), shutdown=True)],
        5.0,
        None,
    )
    assert (dead, gone) == ([], [])
    assert list(buffer.fetched.items()) == [(b"1-0", 5.0), (b"1-1", 5.0)]
    first, second = buffer.take(10)
    assert first.payload == {"a": [1, 2]} and not first.is_shutdown
    assert first.metadata == {"trace": "t", "redis_stream_id": "1-0", "redis_delivery_count": 1}
    assert second.payload == Point(1, 2) and second.is_shutdown  # a tagged payload, typed
    assert type(first.ack).__name__ == "EntryAck" and first.ack() == "acked 1-0"
    assert first.ack.entry_id == b"1-0" and first.ack.target is target
    assert repr(first.ack) == "<ack of entry 1-0>"
    assert buffer.fetched == {} and buffer.in_hand == {b"1-0", b"1-1"}


def test_every_layout_redis_sends_is_read(make: Factory) -> None:
    buffer = make()
    body = MsgpackCodec().encode("x", {}, False)
    replies = [
        [b"1-0", [b"codec", b"msgpack", b"body", body]],  # RESP2, as spark writes it
        [b"1-1", [b"body", body, b"codec", b"msgpack"]],  # other field order
        [b"1-2", {b"codec": b"msgpack", b"body": body}],  # a map
        [bytearray(b"1-3"), [b"codec", b"msgpack", b"body", body, b"extra", b"1"]],
        None,  # Redis < 7: an entry deleted while pending, in XAUTOCLAIM
    ]
    dead, gone = buffer.accept(replies, 0.0, None)
    assert (dead, gone) == ([], [])
    ids = [m.metadata["redis_stream_id"] for m in buffer.take(10)]
    assert ids == ["1-0", "1-1", "1-2", "1-3"]


def test_undeliverable_entries_are_returned_with_the_reason(make: Factory) -> None:
    buffer = make(max_deliveries=2)
    good = entry("1-0", "ok")
    counts = {b"1-0": 2, b"1-1": 3, b"2-0": 1, b"2-1": 1, b"2-2": 1, b"2-3": 1}
    replies = [
        good,
        entry("1-1", "too often"),
        [b"2-0", [b"codec", b"msgpack", b"body", b"\xc1"]],
        [b"2-1", [b"something", b"else"]],
        [b"2-2", [b"codec", b"pickle", b"body", b"x"]],
        [b"2-3", [b"codec", b"msgpack", b"body", MsgpackCodec().encode([1], {}, False)[:-1]]],
        [b"3-0", None],  # deleted while pending
        entry("4-0", "acknowledged meanwhile"),  # not in counts
    ]
    dead, gone = buffer.accept(replies, 0.0, counts)
    assert gone == [b"3-0"]
    reasons = {entry_id: (reason, count) for entry_id, _, reason, count in dead}
    assert reasons[b"1-1"] == ("delivered 3 times, more than max_deliveries=2", 3)
    assert reasons[b"2-0"][0].startswith("undecodable: not a msgpack message")
    assert reasons[b"2-1"][0] == "undecodable: not a spark message (no 'codec' and 'body' fields)"
    assert reasons[b"2-2"][0] == (
        "undecodable: written with codec 'pickle', but this channel decodes 'msgpack'"
    )
    assert reasons[b"2-3"][0].startswith("undecodable: not a msgpack message")
    assert [fields for entry_id, fields, *_ in dead if entry_id == b"2-1"] == [
        [b"something", b"else"]
    ]
    [message] = buffer.take(10)
    assert message.payload == "ok" and message.metadata["redis_delivery_count"] == 2


def test_any_delivery_bound_and_time_are_taken_as_given(make: Factory) -> None:
    buffer = make(max_deliveries=2**70)
    buffer.accept([entry("1-0", "a")], 3, {b"1-0": 2**69})
    assert buffer.fetched == {b"1-0": 3}
    assert buffer.take_one().metadata["redis_delivery_count"] == 2**69


def test_a_tag_the_receiver_does_not_know_is_undecodable(make: Factory) -> None:
    buffer = make(codec=MsgpackCodec())
    dead, _ = buffer.accept([entry("1-0", Point(1, 2))], 0.0, None)
    assert dead[0][2].startswith("undecodable: payload type") and "not registered" in dead[0][2]


def test_other_codecs_decode_through_their_own_decode(make: Factory) -> None:
    buffer = make(codec=PickleCodec())
    dead, _ = buffer.accept([entry("1-0", {1, 2}, codec=PickleCodec())], 0.0, None)
    assert dead == [] and buffer.take(1)[0].payload == {1, 2}


def test_entries_already_waiting_are_not_taken_twice(make: Factory) -> None:
    buffer = make()
    buffer.accept([entry("1-0", "a"), entry("1-1", "b")], 1.0, None)
    buffer.accept([entry("1-1", "b again"), entry("1-2", "c")], 2.0, None)
    assert buffer.fetched == {b"1-0": 1.0, b"1-1": 1.0, b"1-2": 2.0}
    assert [m.payload for m in buffer.take(10)] == ["a", "b", "c"]
    # Once handed out, a redelivered entry (claimed back after claim_idle) comes again.
    buffer.accept([entry("1-1", "b redelivered")], 3.0, {b"1-1": 2})
    assert buffer.take_one().metadata["redis_delivery_count"] == 2


def test_take_hands_out_in_order_and_a_local_message_first(make: Factory) -> None:
    buffer = make()
    buffer.accept([entry(f"1-{i}", i) for i in range(5)], 0.0, None)
    stop = ChannelMessage("stop", is_shutdown=True)
    buffer.push_front(stop)
    assert buffer.take_one() is stop
    assert buffer.in_hand == set() and len(buffer.fetched) == 5  # no id for a local message
    assert [m.payload for m in buffer.take(2)] == [0, 1]
    assert buffer.take_one().payload == 2
    assert [m.payload for m in buffer.take(10**30)] == [3, 4]
    assert buffer.take(5) == [] and buffer.fetched == {}
    assert buffer.in_hand == {f"1-{i}".encode() for i in range(5)}


def test_acks_are_sorted_into_ours_and_the_rest(make: Factory) -> None:
    buffer = make()
    other = make(ack_target=lambda entry_id: "another channel")
    buffer.accept([entry("1-0", "a"), entry("1-1", "b")], 0.0, None)
    other.accept([entry("1-0", "elsewhere")], 0.0, None)
    a, b = buffer.take(2)
    [elsewhere] = other.take(1)

    async def own_ack() -> None: ...

    plain = ChannelMessage("no ack")
    foreign = ChannelMessage("foreign", ack=own_ack)
    buffer.in_hand.discard(b"1-1")  # acknowledged already
    ids, others = buffer.sort_acks([a, b, plain, foreign, a])
    assert ids == [b"1-0", b"1-0"]
    assert others == [own_ack]
    ids, others = buffer.sort_acks(iter([elsewhere]))  # another buffer's ack is not ours
    assert ids == [] and others == [elsewhere.ack]


def pack(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def test_both_builds_read_the_same_replies_the_same_way() -> None:
    builds = [_buffer_class("python"), _buffer_class("cython")]
    body = MsgpackCodec([Point]).encode(Point(3, 4), {"k": [1]}, True)
    replies = [
        entry("1-0", {"nested": {"x": b"\x00", "y": None}}),
        [b"1-1", {b"body": body, b"codec": b"msgpack"}],
        [b"1-2", [b"codec", b"msgpack", b"body", pack([1, {}, False])]],  # no tag at all
        [b"1-3", [b"codec", b"msgpack", b"body", pack([1, {}, False, "who"])]],  # unknown tag
        [b"1-4", [b"codec", b"msgpack", b"body", pack([1, {1: 2}, 1, None])]],  # not a bool
        [b"1-5", [b"codec", b"msgpack", b"body", pack([1, [], False, None])]],  # not a dict
        [b"1-6", [b"codec", b"msgpack", b"body", pack({"payload": 1})]],
        [b"1-7", [b"codec", b"msgpack"]],
        [b"1-8", None],
        entry("1-9", "late"),
    ]
    results = []
    for build in builds:
        buffer = build(MsgpackCodec([Point]), ChannelMessage, target, 3)
        dead, gone = buffer.accept(replies, 7.0, {f"1-{i}".encode(): i for i in range(10)})
        messages = buffer.take(100)
        results.append(
            (
                [(i, reason, count) for i, _, reason, count in dead],
                gone,
                [(m.payload, m.metadata, m.is_shutdown, m.ack.entry_id) for m in messages],
                sorted(buffer.in_hand),
            )
        )
    assert results[0] == results[1]


# -- a channel over a real server, with each build --------------------------------


@pytest.fixture
def channel_build(
    request: pytest.FixtureRequest, buffer_class: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    monkeypatch.setattr(redis_backend, "StreamBuffer", buffer_class)
    yield buffer_class


async def test_a_channel_receives_acks_and_dead_letters_with_each_build(
    server_url: str, channel_build: Any
) -> None:
    name = unique()
    sender = RedisStreamChannel(
        name, url=server_url, group="g", block=0.05, codec=MsgpackCodec([Point])
    )
    receiver = RedisStreamChannel(
        name, url=server_url, group="g", block=0.05, consumer="c", codec=MsgpackCodec([Point])
    )
    try:
        assert type(receiver._buffer) is channel_build
        await sender.send_many(ChannelMessage(i) for i in range(5))
        await sender.send(ChannelMessage(Point(1, 2), {"m": 1}))
        await receiver.backlog()
        sender_admin = sender._redis
        await sender_admin.execute("xadd", sender.key, "*", "codec", "msgpack", "body", b"\xc1")
        first = await receiver.receive()
        rest = await receiver.receive_many(10)
        while len(rest) < 5:
            rest += await receiver.receive_many(10)
        assert [m.payload for m in [first, *rest]] == [0, 1, 2, 3, 4, Point(1, 2)]
        assert rest[-1].metadata["m"] == 1
        assert (
            repr(first.ack)
            == f"<ack of entry {first.metadata['redis_stream_id']} in {receiver.key!r}>"
        )
        await receiver.ack_many([first, *rest[:2]])
        assert first.ack is not None
        await first.ack()  # again: nothing to do
        for message in rest[2:]:
            assert message.ack is not None
            await message.ack()
        backlog = await receiver.backlog()
        assert backlog.pending == 0 and receiver.dead_lettered == 1
        [letter] = await receiver.dead_letters()
        assert letter.reason.startswith("undecodable: not a msgpack message")
    finally:
        await sender.aclose()
        await receiver.aclose()


@pytest.mark.skipif(
    not REQUIRE_EXTENSIONS,
    reason="set SPARK_REQUIRE_EXTENSIONS=1 where the compiled core must be active",
)
def test_the_compiled_buffer_is_active() -> None:
    assert _stream.IMPLEMENTATION == "cython"
    assert type(
        RedisStreamChannel("s", url="redis://127.0.0.1:1", group="g")._buffer
    ).__module__ == ("spark.backends._stream_c")
