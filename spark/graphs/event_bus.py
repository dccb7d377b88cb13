"""``GraphEventBus``: publish and subscribe by topic, beside the edges of a graph.

A node publishes named events (``await self.publish_event("orders", order)``)
and any code holding the bus subscribes to a topic, or to ``"*"`` for every
topic, without an edge between them. Each subscription has a channel of its
own, made by the bus's ``channel_factory``, into which it gets a copy of each
event. A graph makes a bus (or takes one: ``Graph(start, event_bus=bus)``)
and attaches it to each of its nodes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from spark.nodes.channels import BaseChannel, ChannelClosed, ChannelMessage, InMemoryChannel

__all__ = [
    "ALL_TOPICS",
    "EventSubscription",
    "GraphEventBus",
    "SubscriptionClosed",
    "TopicChannelFactory",
]

ALL_TOPICS = "*"
"""The topic of a subscription that receives every event, whatever its topic."""

TopicChannelFactory = Callable[[str], BaseChannel[Any]]
"""Makes the channel of a new subscription, given its topic."""


class SubscriptionClosed(ChannelClosed, StopAsyncIteration):
    """The subscription was closed, or its bus was closed and it has been drained.

    Raised by ``EventSubscription.receive()``. It is both a ``ChannelClosed``
    (like a channel's ``receive``) and a ``StopAsyncIteration`` (what the
    reference framework raised; it also ends ``async for``), so code that
    catches either keeps working.
    """


def _check_topic(topic: object) -> str:
    if not isinstance(topic, str):
        raise TypeError(f"an event topic must be a str, got {type(topic).__name__}")
    if not topic:
        raise ValueError("an event topic must be a non-empty str")
    return topic


class EventSubscription:
    """What ``GraphEventBus.subscribe(topic)`` returns: the events of one topic, in order.

    Guarantees:

    * ``receive()`` returns first the events replayed from the bus's buffer
      when it subscribed, then every event published after ``subscribe()``
      returned, each once, in the order given under ``GraphEventBus``.
    * Each event received is a copy of its own: its metadata dict belongs
      to this subscription (the payload is shared, not copied).
    * After ``close()``, ``receive()`` raises ``SubscriptionClosed`` at once,
      even with events undelivered; a ``receive()`` blocked at the time
      wakes with it. After the bus's ``close()``, the events already
      delivered can still be received, then ``SubscriptionClosed`` is raised.
      (A blocked ``receive()`` wakes as long as the channel's ``close()``
      wakes its receivers, as ``InMemoryChannel``'s does.)
    * ``async for event in subscription`` ends where ``receive()`` would
      raise ``SubscriptionClosed``; ``async with subscription`` closes it
      on the way out.

    Made by the bus; not meant to be instantiated directly.
    """

    __slots__ = ("_backlog", "_bus", "_channel", "_closed", "_topic")

    def __init__(
        self,
        topic: str,
        channel: BaseChannel[Any],
        bus: GraphEventBus,
        replayed: Iterable[ChannelMessage[Any]] = (),
    ) -> None:
        self._topic = topic
        self._channel = channel
        self._bus = bus
        # Replayed events, served before the channel's: they take no room in it.
        self._backlog: deque[ChannelMessage[Any]] = deque(replayed)
        self._closed = False

    @property
    def topic(self) -> str:
        """The topic subscribed to; ``"*"`` for every topic."""
        return self._topic

    @property
    def channel(self) -> BaseChannel[Any]:
        """The channel the bus sends this subscription's events into.

        It holds the events published after ``subscribe()`` returned, not
        the replayed ones: receive through the subscription to get both.
        """
        return self._channel

    @property
    def closed(self) -> bool:
        """Whether no more events will be delivered to this subscription."""
        return self._closed or self._channel.closed

    async def receive(self) -> ChannelMessage[Any]:
        """The next event, waiting for one if need be.

        Raises ``SubscriptionClosed`` once the subscription is closed, or
        once the bus (or the channel) is closed and what was delivered has
        been received.
        """
        if self._closed:
            raise SubscriptionClosed(f"the subscription to {self._topic!r} is closed")
        if self._backlog:
            return self._backlog.popleft()
        try:
            return await self._channel.receive()
        except ChannelClosed as error:
            what = "closed" if self._closed else "closed and drained"
            raise SubscriptionClosed(f"the subscription to {self._topic!r} is {what}") from error

    async def close(self) -> None:
        """Unsubscribe: no more events are delivered, and those undelivered are dropped.

        Closes the channel. Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._backlog.clear()
        self._bus._forget(self)
        self._channel.close()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> ChannelMessage[Any]:
        return await self.receive()

    async def __aenter__(self) -> EventSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<EventSubscription topic={self._topic!r}{state}>"


class GraphEventBus:
    """Topic-based publish/subscribe inside one event loop, for the nodes of a graph.

    Topics are non-empty strings; a subscription to ``"*"`` receives every
    event. ``channel_factory(topic)`` makes each subscription's channel
    (by default an unbounded ``InMemoryChannel`` named ``"event:<topic>"``);
    the bus keeps the last ``replay_buffer_size`` events (none by default).

    Guarantees:

    * ``publish`` delivers a copy of the event to each open subscription to
      its topic or to ``"*"``, one after the other in the order they
      subscribed, waiting while a bounded channel is full (backpressure).
    * A subscriber receives the events of a topic in the order ``publish``
      was called for them (its channel being first-in first-out, as
      ``InMemoryChannel`` is). A ``"*"`` subscriber may receive events of
      different topics out of that order only while a full channel holds
      back one publish and not another; the replay buffer keeps call order.
    * A new subscription first receives the buffered events it would have
      received (all of them for ``"*"``, those of its topic otherwise),
      then every event published after ``subscribe()`` returned: none is
      missed or received twice, even while publishes are under way. (The
      reference framework replayed to ``"*"`` subscriptions only.)
    * ``close()`` ends every subscription once drained; later ``publish``
      and ``subscribe`` calls raise ``ChannelClosed``.

    A bus is a shared service, not a value: ``copy.copy`` and
    ``copy.deepcopy`` return the bus itself, so a copy of a node stays
    attached to the same bus. Pickling gives a new, empty bus with the same
    settings (subscriptions and events live in one process).
    """

    def __init__(
        self,
        *,
        channel_factory: TopicChannelFactory | None = None,
        replay_buffer_size: int = 0,
    ) -> None:
        if channel_factory is not None and not callable(channel_factory):
            raise TypeError(
                "channel_factory must be callable as channel_factory(topic) -> channel, or None; "
                f"got {type(channel_factory).__name__}"
            )
        if isinstance(replay_buffer_size, bool) or not isinstance(replay_buffer_size, int):
            raise TypeError(
                f"replay_buffer_size must be an int, got {type(replay_buffer_size).__name__}"
            )
        if replay_buffer_size < 0:
            raise ValueError(f"replay_buffer_size must be >= 0, got {replay_buffer_size}")
        self._channel_factory = channel_factory
        self._replay_buffer_size = replay_buffer_size
        # The last events published, with their topics, oldest first. They
        # are never handed out: subscribers and replay() get copies.
        self._buffer: deque[tuple[str, ChannelMessage[Any]]] = deque(maxlen=replay_buffer_size)
        self._subscriptions: list[EventSubscription] = []
        self._closed = False

    # -- publishing ------------------------------------------------------

    async def publish(
        self, topic: str, payload: Any, *, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Publish ``payload`` on ``topic``; return once every subscriber has it.

        The event is a ``ChannelMessage`` whose metadata is
        ``{"topic": topic, **metadata}`` (the given keys win, as in the
        reference framework). ``"*"`` is refused with ``ValueError``: it
        is a subscription wildcard, not a topic (the reference accepted it
        and delivered the event twice to each ``"*"`` subscriber).

        A subscription closed meanwhile is skipped. A failure of a
        subscriber's channel other than ``ChannelClosed`` is raised here,
        and the subscribers after it do not get the event. A publish
        cancelled while waiting for a full channel may have reached only
        some subscribers (the event is in the replay buffer). Raises
        ``ChannelClosed`` once the bus is closed.
        """
        _check_topic(topic)
        if topic == ALL_TOPICS:
            raise ValueError(
                f"cannot publish to {ALL_TOPICS!r}: it is the wildcard that subscribes to "
                "every topic; publish on a named topic"
            )
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")
        self._check_open("publish on")
        event = ChannelMessage(
            payload, {"topic": topic, **metadata} if metadata else {"topic": topic}
        )
        # Buffer and pick the subscribers with no await in between, so that a
        # concurrent subscribe() gets the event either replayed or delivered: once.
        if self._replay_buffer_size:
            self._buffer.append((topic, event))
        targets = [
            subscription
            for subscription in self._subscriptions
            if subscription._topic == topic or subscription._topic == ALL_TOPICS
        ]
        for subscription in targets:
            if subscription._closed:
                continue  # closed since it was picked
            try:
                await subscription._channel.send(event.clone())
            except ChannelClosed:
                self._forget(subscription)  # its channel was closed under it

    # -- subscribing -----------------------------------------------------

    async def subscribe(self, topic: str) -> EventSubscription:
        """Subscribe to ``topic``, or to every topic with ``"*"``.

        The subscription first holds copies of the buffered events of its
        topic (every buffered event for ``"*"``), oldest first, then gets
        each event published after this returns. Raises ``ChannelClosed``
        once the bus is closed.
        """
        _check_topic(topic)
        self._check_open("subscribe to")
        channel = self._new_channel(topic)
        # No await from here on: no publish can slip between the replay and
        # the registration (publish() buffers and picks its targets at once).
        replayed = [
            event.clone()
            for event_topic, event in self._buffer
            if topic == ALL_TOPICS or event_topic == topic
        ]
        subscription = EventSubscription(topic, channel, self, replayed)
        self._subscriptions.append(subscription)
        return subscription

    async def replay(self, topic: str = ALL_TOPICS) -> list[ChannelMessage[Any]]:
        """Copies of the buffered events, oldest first: all of them, or those of ``topic``."""
        _check_topic(topic)
        return [
            event.clone()
            for event_topic, event in self._buffer
            if topic == ALL_TOPICS or event_topic == topic
        ]

    # -- state -----------------------------------------------------------

    def close(self) -> None:
        """Close every subscription's channel and refuse later publishes and subscriptions.

        Subscribers receive what was delivered to them, then
        ``SubscriptionClosed``; a blocked ``receive()`` wakes. A publish
        under way skips the closed subscriptions. The replay buffer stays
        readable. Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription._channel.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    @property
    def replay_buffer_size(self) -> int:
        """How many of the last events are kept for replay; 0 means none."""
        return self._replay_buffer_size

    @property
    def subscriptions(self) -> tuple[EventSubscription, ...]:
        """The open subscriptions, in the order they were made."""
        return tuple(self._subscriptions)

    def topics(self) -> set[str]:
        """The topics with at least one open subscription (``"*"`` included)."""
        return {subscription._topic for subscription in self._subscriptions}

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"<GraphEventBus subscriptions={len(self._subscriptions)} "
            f"buffered={len(self._buffer)}/{self._replay_buffer_size}{state}>"
        )

    # -- copying ---------------------------------------------------------

    def __copy__(self) -> GraphEventBus:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> GraphEventBus:
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {
            "channel_factory": self._channel_factory,
            "replay_buffer_size": self._replay_buffer_size,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        GraphEventBus.__init__(self, **state)

    # -- internals -------------------------------------------------------

    def _check_open(self, action: str) -> None:
        if self._closed:
            raise ChannelClosed(f"cannot {action} a closed GraphEventBus")

    def _new_channel(self, topic: str) -> BaseChannel[Any]:
        if self._channel_factory is None:
            return InMemoryChannel(name=f"event:{topic}")
        channel = self._channel_factory(topic)
        if not isinstance(channel, BaseChannel):
            raise TypeError(
                f"channel_factory must return a channel (a BaseChannel) for topic {topic!r}, "
                f"got {type(channel).__name__}"
            )
        return channel

    def _forget(self, subscription: EventSubscription) -> None:
        """Take ``subscription`` off the bus, if it is still on it."""
        try:
            self._subscriptions.remove(subscription)
        except ValueError:
            pass
