"""What a node's default worker loop keeps, and its compiled form.

``Node.go`` is the specification of the loop. With the compiled build
active, a node whose mailbox is a compiled ``InMemoryChannel`` runs the same
steps in C (``run_worker`` in ``src_ext/_worker.pxi``): it takes queued
messages without awaiting, and awaits only where ``Node.go`` would wait.

``Route`` is the pure loop's shortcut for the common edge: when a send
would enqueue at once (into a pure ``InMemoryChannel``, or through a pure
``ForwardingChannel`` into one, without observers, open and with room), it
enqueues the message itself, building its metadata once. A channel with
methods replaced on the instance (``mock.patch.object``) when the route is
made is always sent to through its ``send``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from . import _channels_py
from ._channel_base import is_patched
from ._threads import lock_free
from .channels import IMPLEMENTATION, BaseChannel, ChannelMessage

if TYPE_CHECKING:
    from ._node import Node, RunBinding

__all__ = ["Route", "WorkerState", "compiled_loop", "new_state", "routes"]


class PyWorkerState:
    """A node worker's flags and counters, shared by the node, its loop and its graph run."""

    __slots__ = ("binding", "failed", "processed", "receiving", "stop_requested")

    def __init__(self) -> None:
        self.stop_requested = False
        """Set by ``Node.stop()`` or a graph winding down: return after the message in hand."""
        self.receiving = False
        """Whether the default loop is waiting on its mailbox."""
        self.processed = 0
        """Messages the default loop has processed successfully, over the node's life."""
        self.failed = 0
        """Messages whose processing failed in the default loop, over the node's life."""
        self.binding: RunBinding | None = None
        """The graph run the node is part of, or ``None``."""

    def __getstate__(self) -> tuple[int, int]:
        """A copy keeps the counters; it is in no run, not stopped, not receiving."""
        return (self.processed, self.failed)

    def __setstate__(self, state: tuple[int, int]) -> None:
        self.__init__()  # type: ignore[misc]
        self.processed, self.failed = state


WorkerLoop = Callable[["Node", Any, Any, Any, bool], Coroutine[Any, Any, None]]

WorkerState: Any
_run_worker: WorkerLoop | None
_compiled_mailbox: type | None

if IMPLEMENTATION == "cython":
    from . import _channels_c  # type: ignore[attr-defined, unused-ignore]

    WorkerState = _channels_c.WorkerState
    _run_worker = _channels_c.run_worker
    _compiled_mailbox = _channels_c.InMemoryChannel
else:
    WorkerState = PyWorkerState
    _run_worker = None
    _compiled_mailbox = None


def new_state(mailbox: BaseChannel[Any]) -> PyWorkerState:
    """The state of a node with ``mailbox``: compiled for the compiled loop, else pure.

    Each loop reads its own kind fastest (C fields, or slots the interpreter
    specializes).
    """
    state: PyWorkerState = WorkerState() if type(mailbox) is _compiled_mailbox else PyWorkerState()
    return state


def compiled_loop(node: Node) -> WorkerLoop | None:
    """The compiled loop, when it can run ``node``: its mailbox and state are compiled."""
    if _run_worker is None or type(node.mailbox) is not _compiled_mailbox:
        return None
    if is_patched(node.mailbox):
        return None  # Node.go uses its attributes
    if type(node._state) is not WorkerState:
        return None
    return _run_worker


_PyForwarding = _channels_py.ForwardingChannel
_PyInMemory = _channels_py.InMemoryChannel
_PyMessage = _channels_py.ChannelMessage
_new_message = _PyMessage.__new__


class Route:
    """How a node's default loop reaches one outgoing channel; made once per run.

    When a send through the channel would enqueue at once into a pure
    ``InMemoryChannel`` (the channel itself, or the mailbox behind a pure
    ``ForwardingChannel``) and involves no observer, ``deliver_now`` does
    that enqueue itself: one metadata dict, the forwarder's defaults
    overlaid with the node's tracing keys, and one envelope.
    """

    __slots__ = ("channel", "forwarder", "message_type", "target", "template")

    def __init__(self, channel: BaseChannel[Any]) -> None:
        self.channel = channel
        self.forwarder: Any = None
        self.target: Any = None
        self.template: dict[str, Any] | None = None
        self.message_type: type = ChannelMessage
        """The envelope class of what is sent along: the pure one into a pure mailbox."""
        defaults: dict[str, Any] | None = None
        # A send replaced on the instance (mock.patch.object) is always called.
        if (
            type(channel) is _PyForwarding
            and type(channel._downstream) is _PyInMemory
            and not is_patched(channel, "send")
            and not is_patched(channel._downstream, "send")
        ):
            self.forwarder = channel
            self.target = channel._downstream
            defaults = channel._defaults
        elif type(channel) is _PyInMemory and not is_patched(channel, "send"):
            self.target = channel
            self.message_type = _PyMessage
        # The keys in the order ``{**defaults, **tracing}`` gives them: copying
        # this and setting three values is cheaper than merging each time.
        self.template = {
            **(defaults or {}),
            "source_node": None,
            "trace_id": None,
            "timestamp": None,
        }

    @lock_free
    def deliver_now(
        self,
        payload: Any,
        source: str,
        trace_id: str,
        timestamp: float,
        loop: asyncio.AbstractEventLoop,
    ) -> bool:
        """Enqueue ``payload`` as a send through the channel would, if that would not wait.

        For a task of ``loop`` (running), looked up once by the caller. True
        when done; False, having sent nothing, when the send could wait or
        fail, or involves observers or a channel of another kind, or the
        target's tasks are another loop's (see spark/nodes/_threads.py).
        """
        target = self.target
        if target is None or target._observers:
            return False
        _section: object = target  # a lock-free section of the target
        if loop is not target._loop or (
            target._guarded
            and (
                target._shared  # used by threads: the general path takes its lock
                or target._closed
                or len(target._buffer) - target._receivers_woken + target._senders_woken
                >= target._maxsize  # no room: target._room_taken(), inline
            )
        ):
            return False  # the send would raise ChannelClosed, or wait
        forwarder = self.forwarder
        if forwarder is not None and (forwarder._closed or forwarder._observers):
            return False
        metadata = self.template.copy()  # type: ignore[union-attr]
        metadata["source_node"] = source
        metadata["trace_id"] = trace_id
        metadata["timestamp"] = timestamp
        # What target.send() does once its checks have passed:
        message = _new_message(_PyMessage)  # all four fields set below: no __init__ call
        message.payload = payload
        message.metadata = metadata
        message.ack = None
        message.is_shutdown = False
        target._buffer.append(message)
        target._unseen += 1
        if target._receivers:
            target._wake_receivers()
        return True


def routes(channels: Sequence[BaseChannel[Any]]) -> list[Route]:
    return [Route(channel) for channel in channels]
