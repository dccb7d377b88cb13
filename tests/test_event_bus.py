"""The graph event bus: topics, the wildcard, replay, closing, nodes and graphs that use it."""

from __future__ import annotations

import asyncio
import copy
import pickle
from typing import Any

import pytest

from spark.graphs import (
    Budget,
    EventSubscription,
    Graph,
    GraphEventBus,
    NodeMessage,
    RunStatus,
    SubscriptionClosed,
    Task,
    TaskType,
)
from spark.graphs import event_bus as bus_module
from spark.nodes import Node
from spark.nodes.channels import BaseChannel, ChannelClosed


@pytest.fixture(autouse=True)
def build(node_build: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Buses and nodes made in the test use ``impl``'s channels and messages."""
    monkeypatch.setattr(bus_module, "InMemoryChannel", node_build.InMemoryChannel)
    monkeypatch.setattr(bus_module, "ChannelMessage", node_build.ChannelMessage)
    return node_build


def bounded(maxsize: int) -> Any:
    """A channel factory making bounded channels of the build under test."""
    return lambda topic: bus_module.InMemoryChannel(name=f"event:{topic}", maxsize=maxsize)


async def take(subscription: EventSubscription, count: int) -> list[Any]:
    return [(await subscription.receive()).payload for _ in range(count)]


async def blocked(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is still waiting after the loop has had time to run it."""
    for _ in range(5):
        await asyncio.sleep(0)
    return not task.done()


# -- publishing and routing ---------------------------------------------------


async def test_an_event_reaches_the_subscribers_of_its_topic_only(build: Any) -> None:
    bus = GraphEventBus()
    orders, audits = await bus.subscribe("orders"), await bus.subscribe("audit")
    await bus.publish("orders", {"id": 1}, metadata={"source": "shop"})
    await bus.publish("audit", "checked")
    event = await orders.receive()
    assert type(event) is build.ChannelMessage
    assert event.payload == {"id": 1}
    assert event.metadata == {"topic": "orders", "source": "shop"}
    assert (await audits.receive()).metadata == {"topic": "audit"}
    assert orders.channel.empty() and audits.channel.empty()


async def test_the_wildcard_receives_every_topic_in_publish_order() -> None:
    bus = GraphEventBus()
    everything = await bus.subscribe("*")
    for topic, value in [("a", 1), ("b", 2), ("a", 3)]:
        await bus.publish(topic, value)
    events = [await everything.receive() for _ in range(3)]
    assert [(e.metadata["topic"], e.payload) for e in events] == [("a", 1), ("b", 2), ("a", 3)]


async def test_publishing_without_subscribers_is_fine() -> None:
    bus = GraphEventBus()
    await bus.publish("nobody", 1)
    assert bus.subscriptions == () and bus.topics() == set()


async def test_subscribers_are_served_in_the_order_they_subscribed(build: Any) -> None:
    served: list[str] = []

    def factory(topic: str) -> BaseChannel[Any]:
        label = f"{topic}#{len(made)}"
        made.append(label)
        return build.InMemoryChannel(
            name=label, observers=[lambda m, c, phase: served.append(c.name)]
        )

    made: list[str] = []
    bus = GraphEventBus(channel_factory=factory)
    await bus.subscribe("t")
    await bus.subscribe("*")
    await bus.subscribe("t")
    await bus.subscribe("other")
    await bus.publish("t", None)
    assert served == ["t#0", "*#1", "t#2"]
    assert [s.topic for s in bus.subscriptions] == ["t", "*", "t", "other"]
    assert bus.topics() == {"t", "*", "other"}


async def test_each_subscriber_gets_a_copy_of_its_own() -> None:
    bus = GraphEventBus(replay_buffer_size=1)
    first, second, everything = [await bus.subscribe(t) for t in ("x", "x", "*")]
    payload = {"shared": True}
    await bus.publish("x", payload, metadata={"k": 1})
    mine, theirs, wild = [await s.receive() for s in (first, second, everything)]
    mine.metadata["k"] = "changed"
    mine.metadata["extra"] = 1
    assert theirs.metadata == wild.metadata == {"topic": "x", "k": 1}
    assert (await bus.replay())[0].metadata == {"topic": "x", "k": 1}
    assert mine is not theirs and theirs.payload is payload  # payloads are shared


async def test_given_metadata_is_copied_and_its_keys_win() -> None:
    bus = GraphEventBus()
    sub = await bus.subscribe("x")
    given = {"who": "me"}
    await bus.publish("x", 1, metadata=given)
    given["who"] = "someone else"
    await bus.publish("x", 2, metadata={"topic": "relabelled"})  # as in the reference
    assert (await sub.receive()).metadata == {"topic": "x", "who": "me"}
    assert (await sub.receive()).metadata == {"topic": "relabelled"}


async def test_the_default_channel_is_an_unbounded_in_memory_one(build: Any) -> None:
    sub = await GraphEventBus().subscribe("news")
    assert type(sub.channel) is build.InMemoryChannel
    assert sub.channel.name == "event:news" and sub.channel.maxsize == 0
    assert sub.topic == "news" and not sub.closed


# -- replay -----------------------------------------------------------------------


async def test_replay_keeps_the_last_events_oldest_first() -> None:
    # The reference framework's scenario.
    bus = GraphEventBus(replay_buffer_size=3)
    await bus.publish("alpha", {"val": 1})
    await bus.publish("beta", {"val": 2})
    await bus.publish("alpha", {"val": 3})
    await bus.publish("gamma", {"val": 4})
    replay = await bus.replay()
    assert [(e.metadata["topic"], e.payload["val"]) for e in replay] == [
        ("beta", 2),
        ("alpha", 3),
        ("gamma", 4),
    ]
    [alpha] = await bus.replay("alpha")
    assert alpha.payload == {"val": 3}
    assert await bus.replay("delta") == []
    alpha.metadata["topic"] = "changed"  # a copy
    assert (await bus.replay("alpha"))[0].metadata["topic"] == "alpha"


async def test_without_a_replay_buffer_nothing_is_kept() -> None:
    bus = GraphEventBus()
    await bus.publish("a", 1)
    assert await bus.replay() == [] and bus.replay_buffer_size == 0
    late = await bus.subscribe("*")
    await bus.publish("a", 2)
    assert await take(late, 1) == [2]
    assert late.channel.empty()


async def test_a_new_wildcard_subscriber_first_gets_the_whole_buffer() -> None:
    bus = GraphEventBus(replay_buffer_size=2)
    for value in range(3):
        await bus.publish("even" if value % 2 == 0 else "odd", value)
    late = await bus.subscribe("*")
    await bus.publish("odd", 3)
    assert await take(late, 3) == [1, 2, 3]


async def test_a_new_topic_subscriber_first_gets_the_buffered_events_of_its_topic() -> None:
    bus = GraphEventBus(replay_buffer_size=10)
    for value in range(5):
        await bus.publish("even" if value % 2 == 0 else "odd", value)
    evens = await bus.subscribe("even")
    await bus.publish("odd", 5)
    await bus.publish("even", 6)
    assert await take(evens, 4) == [0, 2, 4, 6]
    assert evens.channel.empty()


async def test_replayed_events_take_no_room_in_a_bounded_channel() -> None:
    bus = GraphEventBus(replay_buffer_size=3, channel_factory=bounded(1))
    for value in range(3):
        await bus.publish("t", value)
    sub = await bus.subscribe("t")
    await asyncio.wait_for(bus.publish("t", 3), 5)  # the channel has room for it
    assert await take(sub, 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("maxsize", [0, 1])
async def test_subscribing_while_publishing_misses_nothing_and_repeats_nothing(
    maxsize: int,
) -> None:
    # A slow wildcard subscriber with a bounded channel keeps publishes waiting
    # half-way through their deliveries while others subscribe.
    count = 60
    bus = GraphEventBus(replay_buffer_size=4, channel_factory=bounded(maxsize))
    slow = await bus.subscribe("*")
    called: list[int] = []  # the values, in the order publish() was called
    outcomes: list[tuple[int, list[int], list[int]]] = []

    async def drain_slowly() -> None:
        for _ in range(count):
            await slow.receive()
            await asyncio.sleep(0)

    async def publish(base: int) -> None:
        for value in range(base, count, 2):  # two publishers, interleaved
            called.append(value)
            await bus.publish("n", value)
            await asyncio.sleep(0)

    async def late_subscriber() -> None:
        before = [event.payload for event in await bus.replay("n")]
        sub = await bus.subscribe("n")  # no await ran between the two
        calls_before = len(called)
        mine: list[int] = []
        while len(mine) < len(before) + count - calls_before:  # what it should get
            try:
                event = await asyncio.wait_for(sub.receive(), 5)
            except asyncio.TimeoutError:
                break  # one missing: the assertions below tell
            mine.append(event.payload)
        with pytest.raises(asyncio.TimeoutError):  # and nothing more
            await asyncio.wait_for(sub.receive(), 0.05)
        await sub.close()
        outcomes.append((calls_before, before, mine))

    async def subscribe_now_and_then() -> None:
        late = []
        for _ in range(6):
            late.append(asyncio.create_task(late_subscriber()))
            for _ in range(7):
                await asyncio.sleep(0)
        await asyncio.gather(*late)

    await asyncio.gather(drain_slowly(), publish(0), publish(1), subscribe_now_and_then())
    assert sorted(called) == list(range(count))
    assert len(outcomes) == 6
    for calls_before, before, mine in outcomes:
        assert before == called[calls_before - len(before) : calls_before]
        # The replay, then every event published since, in call order: once each.
        assert mine == called[calls_before - len(before) :]


# -- closing ----------------------------------------------------------------------


async def test_closing_a_subscription_wakes_its_blocked_receiver() -> None:
    bus = GraphEventBus()
    sub = await bus.subscribe("t")
    waiting = asyncio.create_task(sub.receive())
    assert await blocked(waiting)
    await sub.close()
    with pytest.raises(SubscriptionClosed, match="closed"):
        await asyncio.wait_for(waiting, 5)
    assert sub.closed and bus.subscriptions == ()


async def test_a_closed_subscription_receives_nothing_more() -> None:
    bus = GraphEventBus(replay_buffer_size=5)
    await bus.publish("t", 0)
    sub = await bus.subscribe("t")
    await bus.publish("t", 1)
    await sub.close()
    await sub.close()  # again: nothing happens
    with pytest.raises(SubscriptionClosed):
        await sub.receive()  # even with events undelivered
    await bus.publish("t", 2)  # no error: it has no subscriber
    assert sub.channel.closed


async def test_closing_the_bus_lets_subscribers_drain_then_end() -> None:
    bus = GraphEventBus(replay_buffer_size=1)
    await bus.publish("t", 0)
    sub, idle = await bus.subscribe("t"), await bus.subscribe("*")
    await bus.publish("t", 1)
    waiting = asyncio.create_task(take(await bus.subscribe("other"), 1))
    assert await blocked(waiting)
    bus.close()
    bus.close()  # again: nothing happens
    assert [event.payload async for event in sub] == [0, 1]
    assert [event.payload async for event in idle] == [0, 1]
    with pytest.raises(SubscriptionClosed, match="drained"):
        await asyncio.wait_for(waiting, 5)
    assert bus.closed and sub.closed and bus.subscriptions == ()
    with pytest.raises(ChannelClosed, match="closed GraphEventBus"):
        await bus.publish("t", 2)
    with pytest.raises(ChannelClosed, match="closed GraphEventBus"):
        await bus.subscribe("t")
    assert [event.payload for event in await bus.replay()] == [1]
    await sub.close()  # still allowed


async def test_subscription_closed_is_both_channel_closed_and_stop_async_iteration() -> None:
    assert issubclass(SubscriptionClosed, ChannelClosed)
    assert issubclass(SubscriptionClosed, StopAsyncIteration)
    sub = await GraphEventBus().subscribe("t")
    await sub.close()
    with pytest.raises(ChannelClosed):
        await sub.receive()
    with pytest.raises(StopAsyncIteration):
        await sub.receive()
    try:
        await sub.receive()
    except StopAsyncIteration:  # as written against the reference framework
        pass


async def test_async_for_ends_when_the_subscription_is_closed_elsewhere() -> None:
    bus = GraphEventBus()
    sub = await bus.subscribe("t")
    seen: list[Any] = []

    async def listen() -> None:
        async for event in sub:
            seen.append(event.payload)

    listener = asyncio.create_task(listen())
    await bus.publish("t", "a")
    await bus.publish("t", "b")
    assert await blocked(listener)  # waiting for a third
    assert seen == ["a", "b"]
    await sub.close()
    await asyncio.wait_for(listener, 5)


async def test_async_with_closes_the_subscription() -> None:
    bus = GraphEventBus()
    async with await bus.subscribe("t") as sub:
        await bus.publish("t", 1)
        assert await take(sub, 1) == [1]
    assert sub.closed and bus.subscriptions == ()


# -- backpressure and skipping ----------------------------------------------------


async def test_a_bounded_subscriber_holds_publish_back_until_it_receives() -> None:
    bus = GraphEventBus(channel_factory=bounded(1))
    sub = await bus.subscribe("t")
    await bus.publish("t", 1)  # fits
    second = asyncio.create_task(bus.publish("t", 2))
    assert await blocked(second)
    assert await take(sub, 1) == [1]
    await asyncio.wait_for(second, 5)
    assert await take(sub, 1) == [2]


async def test_a_subscription_closed_while_a_publish_waits_is_skipped() -> None:
    bus = GraphEventBus(channel_factory=bounded(1))
    full, later = await bus.subscribe("t"), await bus.subscribe("t")
    await bus.publish("t", 1)
    await take(later, 1)
    publishing = asyncio.create_task(bus.publish("t", 2))
    assert await blocked(publishing)  # waiting for room in ``full``
    await later.close()
    assert await take(full, 2) == [1, 2]
    await asyncio.wait_for(publishing, 5)  # no error


async def test_closing_the_bus_releases_a_waiting_publish() -> None:
    bus = GraphEventBus(channel_factory=bounded(1))
    sub = await bus.subscribe("t")
    await bus.publish("t", 1)
    publishing = asyncio.create_task(bus.publish("t", 2))
    assert await blocked(publishing)
    bus.close()
    await asyncio.wait_for(publishing, 5)  # returns: its subscriber is gone
    assert [event.payload async for event in sub] == [1]


async def test_a_subscription_whose_channel_was_closed_is_dropped() -> None:
    bus = GraphEventBus()
    sub, other = await bus.subscribe("t"), await bus.subscribe("t")
    sub.channel.close()
    assert sub.closed
    await bus.publish("t", 1)
    assert bus.subscriptions == (other,)
    assert await take(other, 1) == [1]
    with pytest.raises(SubscriptionClosed):
        await sub.receive()


# -- arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: GraphEventBus(replay_buffer_size=-1), ValueError, ">= 0"),
        (lambda: GraphEventBus(replay_buffer_size="3"), TypeError, "must be an int"),
        (lambda: GraphEventBus(replay_buffer_size=True), TypeError, "must be an int"),
        (lambda: GraphEventBus(replay_buffer_size=2.0), TypeError, "must be an int"),
        (lambda: GraphEventBus(channel_factory="memory"), TypeError, "callable"),
        (lambda: GraphEventBus(3), TypeError, "positional"),
    ],
)
def test_bad_settings_are_refused(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


async def test_bad_calls_are_refused() -> None:
    bus = GraphEventBus(channel_factory=lambda topic: "not a channel")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="must be a str, got int"):
        await bus.publish(5, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        await bus.publish("", 1)
    with pytest.raises(ValueError, match="wildcard"):
        await bus.publish("*", 1)
    with pytest.raises(TypeError, match="metadata must be a mapping"):
        await bus.publish("t", 1, metadata=[("k", "v")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a str, got NoneType"):
        await bus.subscribe(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must return a channel"):
        await bus.subscribe("t")
    with pytest.raises(TypeError, match="must be a str"):
        await bus.replay(3)  # type: ignore[arg-type]
    assert bus.subscriptions == ()


# -- copying ----------------------------------------------------------------------


def test_a_bus_is_shared_by_copies_and_pickles_as_a_new_empty_one() -> None:
    bus = GraphEventBus(replay_buffer_size=7)
    assert copy.copy(bus) is bus and copy.deepcopy(bus) is bus
    node = Node(id="n")
    node.attach_event_bus(bus)
    assert copy.deepcopy(node).event_bus is bus
    restored = pickle.loads(pickle.dumps(node)).event_bus
    assert isinstance(restored, GraphEventBus) and restored is not bus
    assert restored.replay_buffer_size == 7 and restored.subscriptions == ()


# -- nodes --------------------------------------------------------------------------


async def test_a_node_without_a_bus_publishes_nothing_and_cannot_subscribe() -> None:
    node = Node(name="lonely")
    assert node.event_bus is None
    await node.publish_event("t", 1)  # no error, as in the reference
    with pytest.raises(RuntimeError, match=r"'lonely' has no event bus.*Graph.*attach_event_bus"):
        await node.subscribe_event("t")


async def test_a_node_publishes_with_its_identity_and_the_given_metadata() -> None:
    bus = GraphEventBus()
    node = Node(id="n1", name="worker")
    node.attach_event_bus(bus)
    sub = await node.subscribe_event("*")
    await node.publish_event("done", 1)
    await node.publish_event("done", 2, metadata={"node_name": "alias", "run": 7})
    first, second = await sub.receive(), await sub.receive()
    assert first.metadata == {"topic": "done", "node_id": "n1", "node_name": "worker"}
    assert second.metadata == {"topic": "done", "node_id": "n1", "node_name": "alias", "run": 7}
    with pytest.raises(TypeError, match="metadata must be a mapping"):
        await node.publish_event("done", 3, metadata="x")  # type: ignore[arg-type]
    node.attach_event_bus(None)
    assert node.event_bus is None
    with pytest.raises(TypeError, match="GraphEventBus or None"):
        node.attach_event_bus("bus")  # type: ignore[arg-type]


# -- graphs -------------------------------------------------------------------------


class Announcer(Node):
    """Passes payloads on and announces each on the ``seen`` topic."""

    async def process(self, payload: Any) -> Any:
        await self.publish_event("seen", payload, metadata={"step": "announce"})
        return payload


def test_a_graph_attaches_its_bus_to_every_node() -> None:
    a, b, c = Node(), Node(), Node()
    a >> b >> c
    graph = Graph(a)
    assert isinstance(graph.event_bus, GraphEventBus)
    assert all(node.event_bus is graph.event_bus for node in (a, b, c))
    assert Graph(Node()).event_bus is not graph.event_bus  # a bus of its own by default
    mine = GraphEventBus()
    assert Graph(a, event_bus=mine).event_bus is mine
    assert all(node.event_bus is mine for node in (a, b, c))
    other = GraphEventBus()
    graph.event_bus = other
    assert all(node.event_bus is other for node in (a, b, c))
    with pytest.raises(TypeError, match="must be a GraphEventBus"):
        Graph(a, event_bus="bus")  # type: ignore[arg-type]


async def test_a_run_attaches_the_bus_to_nodes_connected_since_and_keeps_it() -> None:
    bus = GraphEventBus(replay_buffer_size=5)
    a = Announcer(id="a")
    graph = Graph(a, event_bus=bus)
    b = Announcer(id="b")
    a >> b  # after the graph was made
    assert b.event_bus is None
    result = await graph.run(Task(inputs=NodeMessage(1)))
    assert result.status is RunStatus.COMPLETED and result.outputs == [1]
    assert b.event_bus is bus and not bus.closed
    assert [e.metadata["node_id"] for e in await bus.replay("seen")] == ["a", "b"]
    await graph.run(Task(inputs=NodeMessage(2)))  # the buffer outlives runs
    assert [e.payload for e in await bus.replay()] == [1, 1, 2, 2]


async def test_nodes_publish_during_a_long_running_graph() -> None:
    announcer, sink = Announcer(id="announcer", name="Announcer"), Node(id="sink")
    announcer >> sink
    graph = Graph(announcer)
    watcher = await graph.event_bus.subscribe("seen")
    listener = await sink.subscribe_event("*")  # a node's subscription, on the same bus
    task = Task(
        inputs=[NodeMessage(content=n) for n in (1, 2, 3)],
        type=TaskType.LONG_RUNNING,
        budget=Budget(max_seconds=20),
    )
    run = asyncio.create_task(graph.run(task))
    events = [await asyncio.wait_for(watcher.receive(), 10) for _ in range(3)]
    assert [e.payload for e in events] == [1, 2, 3]
    assert events[0].metadata == {
        "topic": "seen",
        "node_id": "announcer",
        "node_name": "Announcer",
        "step": "announce",
    }
    assert await take(listener, 3) == [1, 2, 3]
    assert graph.stop()
    result = await asyncio.wait_for(run, 10)
    assert result.status is RunStatus.STOPPED and result.outputs == [1, 2, 3]
    await watcher.close()
    await listener.close()


# -- drop-in ----------------------------------------------------------------------


async def test_reference_publish_and_subscribe_scenario() -> None:
    from spark.graphs.event_bus import GraphEventBus as ReferenceName

    bus = ReferenceName()
    subscription = await bus.subscribe("updates")
    await bus.publish("updates", {"value": 42}, metadata={"source": "test-suite"})
    message = await subscription.receive()
    assert message.payload == {"value": 42}
    assert message.metadata["topic"] == "updates"
    assert message.metadata["source"] == "test-suite"
    await subscription.close()
