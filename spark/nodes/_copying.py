"""What ``copy.deepcopy`` and ``pickle`` keep of channels and messages, in both builds.

A copy of a channel is a new channel with the original's name, bound,
observers, closed flag and instance attributes (its dict, and the slots of
a user's subclass), into which copies of the messages queued in the
original were sent, in order; its statistics count those sends. Nothing
else is copied: tasks blocked on the original stay there, and so do
messages already promised to one of its woken receivers.

A ``ChannelMessage`` pickles as a call with its four fields; a message of
a subclass also carries its own attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MemberDescriptorType
from typing import Any

from . import _channel_base

__all__ = [
    "forwarding_state",
    "in_memory_state",
    "instance_attributes",
    "reduce_message",
    "restore_attributes",
    "restore_message",
]


def instance_attributes(instance: object) -> dict[str, Any] | None:
    """``instance.__dict__``, or None when it has none or it is empty.

    From Python 3.11 this makes no dict where there is none, as asking for
    ``__dict__`` would: an instance with a dict is slower to call methods
    on (the interpreter stops specializing those lookups).
    """
    if _object_getstate is None:  # Python 3.10: it may make an empty one
        return getattr(instance, "__dict__", None) or None
    state = _object_getstate(instance)
    if type(state) is tuple:  # (the dict or None, the slots)
        state = state[0]
    return state if type(state) is dict and state else None


_object_getstate: Callable[[object], object] | None = getattr(object, "__getstate__", None)


def in_memory_state(channel: Any, queued: list[Any]) -> dict[str, Any]:
    return {
        "name": channel.name,
        "maxsize": channel.maxsize,
        "observers": list(channel.observers),
        "closed": channel.closed,
        "messages": queued,
        "attributes": _attributes(channel),
    }


def forwarding_state(channel: Any, defaults: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": channel.name,
        "downstream": channel.downstream,
        "metadata_defaults": defaults,
        "observers": list(channel.observers),
        "closed": channel.closed,
        "attributes": _attributes(channel),
    }


def _attributes(channel: object) -> dict[str, Any] | None:
    """The instance's own attributes: its dict, and the slots its user subclasses add."""
    attributes = dict(instance_attributes(channel) or {})
    attributes.update(_subclass_slots(channel))
    return attributes or None


_OWN_MODULES = frozenset(
    {"spark.nodes._channel_base", "spark.nodes._channels_py", "spark.nodes._channels_c"}
)


def _subclass_slots(instance: object) -> dict[str, Any]:
    """The values of the slots its users' subclasses give ``instance`` (ours are state)."""
    values: dict[str, Any] = {}
    for cls in type(instance).__mro__:
        if cls.__module__ in _OWN_MODULES or cls is object:
            break
        for name, member in vars(cls).items():  # a slot's name as stored: mangled if private
            if type(member) is MemberDescriptorType:
                try:
                    values[name] = getattr(instance, name)
                except AttributeError:
                    pass  # never set
    return values


def reduce_message(message: Any) -> tuple[Any, ...]:
    fields = (message.payload, message.metadata, message.ack, message.is_shutdown)
    kind = type(message)
    if kind in _channel_base.message_types:
        return (kind, fields)
    attributes, slots = instance_attributes(message), _subclass_slots(message)
    state: Any = (attributes or None, slots) if slots else (attributes or None)
    return (restore_message, (kind, fields), state)


def restore_message(kind: Any, fields: tuple[Any, Any, Any, Any]) -> Any:
    message = kind.__new__(kind)
    message.payload, message.metadata, message.ack, message.is_shutdown = fields
    return message


def restore_attributes(channel: object, state: Mapping[str, Any]) -> None:
    attributes = state.get("attributes")
    if attributes:
        for name, value in attributes.items():
            setattr(channel, name, value)
