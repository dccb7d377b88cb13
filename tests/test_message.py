"""ChannelMessage: the envelope, its defaults, clone and pickling."""

from __future__ import annotations

import pickle

import pytest


def test_defaults(impl):
    message = impl.ChannelMessage(payload={"user_id": 123})
    assert message.payload == {"user_id": 123}
    assert message.metadata == {}
    assert message.ack is None
    assert message.is_shutdown is False


def test_metadata_default_is_not_shared(impl):
    first, second = impl.ChannelMessage(1), impl.ChannelMessage(2)
    first.metadata["key"] = "value"
    assert second.metadata == {}


def test_positional_and_keyword_construction_agree(impl):
    async def ack() -> None: ...

    by_position = impl.ChannelMessage("p", {"k": 1}, ack, True)
    by_keyword = impl.ChannelMessage(payload="p", metadata={"k": 1}, ack=ack, is_shutdown=True)
    assert by_position == by_keyword
    assert by_position.ack is ack


def test_equality_and_repr(impl):
    assert impl.ChannelMessage(1, {"a": 1}) == impl.ChannelMessage(1, {"a": 1})
    assert impl.ChannelMessage(1) != impl.ChannelMessage(2)
    assert impl.ChannelMessage(1) != impl.ChannelMessage(1, is_shutdown=True)
    text = repr(impl.ChannelMessage("hello", {"trace_id": "abc"}))
    assert "ChannelMessage(" in text and "'hello'" in text and "'trace_id'" in text


def test_fields_are_mutable_like_a_dataclass(impl):
    message = impl.ChannelMessage(1)
    message.payload = 2
    message.is_shutdown = True
    assert message.payload == 2 and message.is_shutdown is True


def test_has_no_instance_dict(impl):
    with pytest.raises(AttributeError):
        impl.ChannelMessage(1).unknown_field = 1


def test_generic_subscription_for_type_checkers(impl):
    message = impl.ChannelMessage[int](payload=5)
    assert message.payload == 5


def test_clone_without_overrides_copies_every_field(impl):
    async def ack() -> None: ...

    original = impl.ChannelMessage({"a": 1}, {"trace_id": "abc"}, ack, True)
    clone = original.clone()
    assert clone == original
    assert clone is not original
    assert clone.metadata is not original.metadata
    assert clone.payload is original.payload
    assert clone.ack is ack


def test_clone_merges_metadata_override_wins(impl):
    original = impl.ChannelMessage(1, metadata={"trace_id": "abc", "hop": 1})
    clone = original.clone(metadata={"additional": "info", "hop": 2})
    assert clone.metadata == {"trace_id": "abc", "hop": 2, "additional": "info"}
    assert original.metadata == {"trace_id": "abc", "hop": 1}


def test_clone_never_mutates_the_original_or_its_dict(impl):
    metadata = {"trace_id": "abc"}
    original = impl.ChannelMessage(1, metadata=metadata)
    clone = original.clone(payload=2, metadata={"x": 1})
    clone.metadata["y"] = 2
    assert original.metadata is metadata
    assert metadata == {"trace_id": "abc"}
    assert original.payload == 1


def test_clone_payload_none_really_sets_none(impl):
    clone = impl.ChannelMessage({"data": 1}).clone(payload=None)
    assert clone.payload is None


def test_clone_overrides_ack_and_shutdown(impl):
    async def ack() -> None: ...

    original = impl.ChannelMessage(1, ack=ack)
    assert original.clone(ack=None).ack is None
    assert original.clone(is_shutdown=True).is_shutdown is True
    assert original.clone(is_shutdown=True).clone().is_shutdown is True


def test_clone_takes_keywords_only(impl):
    with pytest.raises(TypeError):
        impl.ChannelMessage(1).clone(2)
    with pytest.raises(TypeError):
        impl.ChannelMessage(1).clone(unknown=2)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_without_ack(impl, protocol):
    message = impl.ChannelMessage({"data": [1, 2]}, {"trace_id": "abc"}, None, True)
    restored = pickle.loads(pickle.dumps(message, protocol=protocol))
    assert restored == message
    assert type(restored) is type(message)


def test_pickling_with_a_local_ack_fails_loudly(impl):
    async def ack() -> None: ...

    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(impl.ChannelMessage(1, ack=ack))
