"""Graphs: discovery, tasks, and runs (one-off, long-running, stopping, failing)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import pytest
from conftest import record_sends

from spark.graphs import (
    Budget,
    Graph,
    NodeMessage,
    RunResult,
    RunStatus,
    Task,
    TaskType,
)
from spark.nodes import Edge, Node
from spark.nodes.channels import (
    BaseChannel,
    ChannelMessage,
    InMemoryChannel,
)
from spark.nodes.config import NodeConfig

# Every test runs each build's worker loop (see conftest.node_build).
pytestmark = pytest.mark.usefixtures("node_build")

LONG = TaskType.LONG_RUNNING

# -- helpers ---------------------------------------------------------------


class Add(Node):
    def __init__(self, amount: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.amount = amount

    async def process(self, payload: Any) -> Any:
        return payload + self.amount


class Gate(Node):
    """Processes a payload only once ``gate`` is set; records what it saw."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[Any] = []
        self.started = asyncio.Event()

    async def process(self, payload: Any) -> Any:
        self.seen.append(payload)
        self.started.set()
        return payload


class Stuck(Node):
    """A ``process`` that never finishes unless cancelled."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started = asyncio.Event()
        self.cancelled = False

    async def process(self, payload: Any) -> Any:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class ContinuousWorker(Node):
    """The reference's worker, as written (output through ``print`` dropped)."""

    def __init__(self, **kwargs: Any) -> None:
        config = NodeConfig(live=True)
        super().__init__(config=config, **kwargs)

    async def go(self) -> None:
        while not self._stop_flag:
            try:
                message = await self.mailbox.receive()
                if message.is_shutdown:
                    break
                result = await self.process_payload(message.payload)
                next_nodes = self.get_next_nodes()
                for next_node in next_nodes:
                    await next_node.mailbox.send(ChannelMessage(payload=result))
                if message.ack:
                    await message.ack()
            except Exception as e:
                print(f"Worker {self.id} error: {e}")

    async def process_payload(self, payload: Any) -> Any:
        return {"processed": payload}


class RecordingWorker(ContinuousWorker):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results: list[Any] = []
        self.produced = asyncio.Event()

    async def process_payload(self, payload: Any) -> Any:
        result = await super().process_payload(payload)
        self.results.append(result)
        self.produced.set()
        return result


def inputs(values: Any, *, then_shutdown: bool = False) -> list[Any]:
    messages: list[Any] = [NodeMessage(content=value) for value in values]
    if then_shutdown:
        messages.append(ChannelMessage(payload=None, is_shutdown=True))
    return messages


async def run_with_stopper(graph: Graph, task: Task, ready: asyncio.Event) -> RunResult:
    """Run ``graph`` and stop it from outside once ``ready`` is set."""

    async def stopper() -> None:
        await ready.wait()
        assert graph.stop() is True

    result, _ = await asyncio.gather(graph.run(task), stopper())
    return result


# -- discovery and tasks -------------------------------------------------------


def test_graph_discovers_every_node_reachable_from_start() -> None:
    outside, a, b, c, d = (Node(id=name) for name in "xabcd")
    outside >> a
    a >> b
    a >> c
    b >> d
    c >> d
    d >> a  # a cycle back to start
    graph = Graph(start=a)
    assert [node.id for node in graph.nodes] == ["a", "b", "c", "d"]
    assert {edge.id for edge in graph.edges} == {"a->b", "a->c", "b->d", "c->d", "d->a"}
    e = Node(id="e")
    d >> e
    assert graph.nodes[-1] is e  # connected later, still part of the graph


def test_graph_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="starts at a Node"):
        Graph(start="a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="channel_factory"):
        Graph(Node(), channel_factory="forward")  # type: ignore[arg-type]
    a = Node(id="same", name="first")
    a >> Node(id="same", name="second")
    with pytest.raises(ValueError, match="share the id 'same'"):
        Graph(a)


def test_task_defaults_to_one_off_without_limits() -> None:
    task = Task()
    assert task.type is TaskType.ONE_OFF
    assert task.budget == Budget() and task.budget.max_seconds is None
    assert task.idle_timeout is None
    assert task.messages() == []


def test_reference_task_is_built_as_written() -> None:
    task = Task(
        inputs=NodeMessage(content={"data": "initial"}),
        type=TaskType.LONG_RUNNING,
        budget=Budget(max_seconds=60),
    )
    [message] = task.messages()
    assert message.payload == {"data": "initial"}
    assert not message.is_shutdown
    assert Budget(max_seconds=0.25).max_seconds == 0.25
    assert Task(type="long_running").type is TaskType.LONG_RUNNING  # type: ignore[arg-type]
    assert str(TaskType.LONG_RUNNING) == "long_running"
    assert RunStatus.COMPLETED == "completed"  # type: ignore[comparison-overlap]
    assert str(RunStatus.FAILED) == "failed"


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Budget(max_seconds=0), ValueError),
        (lambda: Budget(max_seconds=-1.5), ValueError),
        (
            lambda: Budget(max_seconds="60"),  # type: ignore[arg-type]
            TypeError,
        ),
        (lambda: Budget(max_seconds=True), TypeError),
        (
            lambda: Task(type="forever"),  # type: ignore[arg-type]
            ValueError,
        ),
        (
            lambda: Task(budget=60),  # type: ignore[arg-type]
            TypeError,
        ),
        (lambda: Task(idle_timeout=-1), ValueError),
        (lambda: Task(grace_seconds=float("nan")), ValueError),
        (
            lambda: Task(inputs=[1, 2]),  # type: ignore[list-item]
            TypeError,
        ),
        (
            lambda: Task(inputs="text"),  # type: ignore[arg-type]
            TypeError,
        ),
    ],
)
def test_bad_task_settings_are_rejected(build: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        build()


def test_stop_without_a_run_does_nothing() -> None:
    graph = Graph(Node())
    assert graph.stop() is False
    assert not graph.running


# -- one-off runs ----------------------------------------------------------------


async def test_one_off_is_the_default_and_returns_once_every_node_is_idle() -> None:
    a, b = Add(1, id="a"), Add(10, id="b")
    a >> b
    graph = Graph(start=a)
    result = await graph.run(Task(inputs=inputs([1, 2, 3])))
    assert result.status is RunStatus.COMPLETED
    assert result.outputs == [12, 13, 14]
    assert result.outputs_by_node == {"b": [12, 13, 14]}
    assert result.processed == {"a": 3, "b": 3}
    assert result.failed == {"a": 0, "b": 0}
    assert result.pending == {"a": 0, "b": 0}
    assert result.cancelled == [] and result.error is None and result.ok
    assert not graph.running


async def test_one_off_without_inputs_completes_at_once() -> None:
    result = await Graph(Node()).run()
    assert result.status == "completed"
    assert result.outputs == []


async def test_one_off_runs_reference_style_workers_too() -> None:
    w1, w2, w3 = ContinuousWorker(), ContinuousWorker(), RecordingWorker()
    w1 >> w2 >> w3
    result = await Graph(start=w1).run(Task(inputs=inputs(["x", "y"])))
    assert result.status is RunStatus.COMPLETED
    assert w3.results == [
        {"processed": {"processed": {"processed": "x"}}},
        {"processed": {"processed": {"processed": "y"}}},
    ]
    assert result.processed == {w1.id: 2, w2.id: 2, w3.id: 2}
    assert all(node.mailbox.empty() for node in (w1, w2, w3))  # stop requests removed


async def test_sinks_report_their_outputs_separately() -> None:
    a, left, right = Node(id="a"), Add(1, id="left"), Add(2, id="right")
    a >> left
    a >> right
    result = await Graph(a).run(Task(inputs=inputs([0, 10])))
    assert result.outputs_by_node == {"left": [1, 11], "right": [2, 12]}
    assert sorted(result.outputs) == [1, 2, 11, 12]


@pytest.mark.timeout_s(60)
async def test_ten_thousand_messages_through_bounded_mailboxes_arrive_once() -> None:
    count = 10_000
    a, b, c = (Node(id=name, mailbox_maxsize=16) for name in "abc")
    a >> b >> c
    result = await Graph(a).run(Task(inputs=inputs(range(count))))
    assert result.status is RunStatus.COMPLETED
    assert Counter(result.outputs) == Counter(range(count))
    assert len(result.outputs) == count
    assert result.processed == {"a": count, "b": count, "c": count}
    for node in (a, b, c):
        assert node.mailbox.stats().peak_size <= 16


@pytest.mark.timeout_s(60)
async def test_ten_thousand_messages_long_running_keep_their_order() -> None:
    count = 10_000
    a, b, c = Add(1, mailbox_maxsize=8), Add(1, mailbox_maxsize=8), Node(mailbox_maxsize=8)
    a >> b >> c
    task = Task(inputs=inputs(range(count), then_shutdown=True), type=LONG)
    result = await Graph(a).run(task)
    assert result.status is RunStatus.COMPLETED
    assert result.outputs == [n + 2 for n in range(count)]


# -- long-running runs -------------------------------------------------------------


async def test_reference_three_worker_pipeline_end_to_end() -> None:
    worker1 = ContinuousWorker()
    worker2 = ContinuousWorker()
    worker3 = RecordingWorker()
    worker1 >> worker2 >> worker3
    graph = Graph(start=worker1)
    task = Task(
        inputs=NodeMessage(content={"data": "initial"}),
        type=TaskType.LONG_RUNNING,
        budget=Budget(max_seconds=60),
    )
    result = await run_with_stopper(graph, task, worker3.produced)
    assert result.status is RunStatus.STOPPED
    assert worker3.results == [{"processed": {"processed": {"processed": {"data": "initial"}}}}]
    assert result.processed == {worker1.id: 1, worker2.id: 1, worker3.id: 1}
    assert result.cancelled == []


async def test_reference_pipeline_ends_with_an_idle_timeout() -> None:
    worker1, worker2, worker3 = ContinuousWorker(), ContinuousWorker(), RecordingWorker()
    worker1 >> worker2 >> worker3
    task = Task(
        inputs=inputs(["a", "b", "c"]),
        type=TaskType.LONG_RUNNING,
        budget=Budget(max_seconds=60),
        idle_timeout=0.2,
    )
    result = await Graph(start=worker1).run(task)
    assert result.status is RunStatus.COMPLETED
    assert [r["processed"]["processed"]["processed"] for r in worker3.results] == ["a", "b", "c"]


async def test_long_running_ends_when_the_shutdown_has_gone_through() -> None:
    a, b = Add(1, id="a"), Add(1, id="b")
    a >> b
    acks: list[int] = []

    async def ack() -> None:
        acks.append(1)

    task = Task(
        inputs=[
            NodeMessage(content=1),
            ChannelMessage(payload=5, ack=ack),
            ChannelMessage(payload=None, is_shutdown=True),
        ],
        type=LONG,
    )
    result = await Graph(a).run(task)
    assert result.status is RunStatus.COMPLETED
    assert result.outputs == [3, 7]
    assert acks == [1]


async def test_long_running_without_idle_timeout_waits_for_its_budget() -> None:
    node = Node()
    result = await Graph(node).run(Task(inputs=inputs([1]), type=LONG, budget=Budget(0.3)))
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert result.outputs == [1]
    assert result.cancelled == []
    assert node.mailbox.empty()  # the stop request does not linger


async def test_graph_stop_from_outside() -> None:
    a, b = Node(), Gate()
    a >> b
    task = Task(inputs=inputs([1]), type=LONG)
    result = await run_with_stopper(Graph(a), task, b.started)
    assert result.status is RunStatus.STOPPED
    assert b.seen == [1]
    assert result.cancelled == []


async def test_a_graph_runs_once_at_a_time() -> None:
    a, b = Node(), Gate()
    a >> b
    graph = Graph(a)
    run = asyncio.create_task(graph.run(Task(inputs=inputs([1]), type=LONG)))
    await b.started.wait()
    assert graph.running
    with pytest.raises(RuntimeError, match="already running"):
        await graph.run(Task())
    with pytest.raises(RuntimeError, match="already running in a graph"):
        await Graph(b).run(Task())
    graph.stop()
    assert (await run).status is RunStatus.STOPPED
    assert (await Graph(b).run(Task(inputs=inputs([2])))).outputs == [2]


# -- edges in a run ------------------------------------------------------------------


async def test_edges_get_forwarding_channels_with_edge_metadata() -> None:
    a, b = Node(id="a"), Node(id="b")
    a >> b
    into_b = record_sends(b.mailbox)
    await Graph(a).run(Task(inputs=NodeMessage(content=1, metadata={"trace_id": "t"})))
    data = [m for m in into_b if not m.is_shutdown]
    [message] = data
    assert message.metadata["edge_id"] == "a->b"
    assert (message.metadata["from_node"], message.metadata["to_node"]) == ("a", "b")
    assert (message.metadata["source_node"], message.metadata["trace_id"]) == ("a", "t")
    assert isinstance(message.metadata["timestamp"], float)


async def test_channel_factory_makes_the_edge_channels(node_build: Any) -> None:
    a, b, c = Node(id="a"), Node(id="b"), Node(id="c")
    a >> b >> c
    made: list[Edge] = []

    def factory(edge: Edge) -> BaseChannel:
        made.append(edge)
        return node_build.ForwardingChannel(
            edge.target.mailbox, metadata_defaults={**edge.metadata, "backend": "custom"}
        )

    into_c = record_sends(c.mailbox)
    result = await Graph(a, channel_factory=factory).run(Task(inputs=inputs([1])))
    assert result.outputs == [1]
    assert [edge.id for edge in made] == ["a->b", "b->c"]
    assert [m.metadata["backend"] for m in into_c if not m.is_shutdown] == ["custom"]


async def test_a_synchronous_go_is_rejected_before_anything_runs() -> None:
    class Sync(Node):
        def go(self) -> None:  # type: ignore[override]
            raise AssertionError("must not be called")

    start = Node()
    start >> Sync()
    with pytest.raises(TypeError, match="async def go"):
        await Graph(start).run(Task(inputs=inputs([1])))
    assert start.mailbox.empty()


async def test_channel_factory_must_return_a_channel() -> None:
    a = Node()
    a >> Node()
    graph = Graph(a, channel_factory=lambda edge: edge.target)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="must return a channel"):
        await graph.run(Task())
    assert not graph.running
    assert a._binding is None


async def test_an_edge_with_its_own_channel_keeps_it(node_build: Any) -> None:
    a, b = Node(), Node()
    a.connect(b, channel=node_build.ForwardingChannel(b.mailbox, metadata_defaults={"via": "own"}))
    into_b = record_sends(b.mailbox)
    await Graph(a).run(Task(inputs=inputs([1])))
    [message] = [m for m in into_b if not m.is_shutdown]
    assert message.metadata["via"] == "own"
    assert "edge_id" not in message.metadata


# -- shutdown ---------------------------------------------------------------------


async def test_shutdown_through_a_diamond_stops_the_join_once_after_both() -> None:
    class Slow(Node):
        async def process(self, payload: Any) -> Any:
            await asyncio.sleep(0.005)
            return ("b", payload)

    class Tag(Node):
        def process(self, payload: Any) -> Any:
            return ("c", payload)

    a, b, c, d, e = Node(id="a"), Slow(id="b"), Tag(id="c"), Node(id="d"), Node(id="e")
    a >> b
    a >> c
    b >> d
    c >> d
    d >> e
    into_d, into_e = record_sends(d.mailbox), record_sends(e.mailbox)
    count = 20
    task = Task(inputs=inputs(range(count), then_shutdown=True), type=LONG, budget=Budget(20))
    result = await Graph(a).run(task)

    assert result.status is RunStatus.COMPLETED  # every worker returned by itself
    assert sorted(result.outputs) == sorted(
        [("b", n) for n in range(count)] + [("c", n) for n in range(count)]
    )
    assert result.processed["d"] == 2 * count
    shutdowns_into_d = [m.metadata["source_node"] for m in into_d if m.is_shutdown]
    assert sorted(shutdowns_into_d) == ["b", "c"]
    # c's shutdown reached d while b still had work on its way: d kept going.
    events = [("stop", m.metadata["source_node"]) if m.is_shutdown else m.payload for m in into_d]
    assert events.index(("stop", "c")) < events.index(("b", count - 1))
    shutdowns_into_e = [m for m in into_e if m.is_shutdown]
    assert len(shutdowns_into_e) == 1
    assert shutdowns_into_e[0].metadata["source_node"] == "d"
    assert into_e[-1].is_shutdown  # after all of d's data


async def test_stop_request_left_from_before_a_run_is_ignored() -> None:
    node = Node()
    node.stop()  # not running: leaves a stop request in the mailbox
    result = await Graph(node).run(Task(inputs=inputs([1, 2])))
    assert result.status is RunStatus.COMPLETED
    assert result.outputs == [1, 2]


async def test_messages_left_over_stay_for_the_next_run() -> None:
    class Held(Gate):
        """Holds its first payload until the graph is asked to stop."""

        async def process(self, payload: Any) -> Any:
            await super().process(payload)
            while len(self.seen) == 1 and not self._stop_flag:  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.01)
            return payload

    a, b = Held(), ContinuousWorker()
    a >> b
    for n in range(3):
        await a.mailbox.send(ChannelMessage(payload=n))
    first = await run_with_stopper(Graph(a), Task(type=LONG), a.started)
    assert first.status is RunStatus.STOPPED
    assert a.seen == [0]
    assert first.pending == {a.id: 2, b.id: 1}  # b was stopped before a's result reached it
    assert [m.payload for m in _peek(a.mailbox)] == [1, 2]  # shutdowns gone, order kept
    second = await Graph(a).run(Task())
    assert second.status is RunStatus.COMPLETED
    assert a.seen == [0, 1, 2]
    assert second.processed == {a.id: 2, b.id: 3}


def _peek(channel: BaseChannel) -> list[ChannelMessage[Any]]:
    messages = []
    while not channel.empty():
        messages.append(channel.receive_nowait())
    for message in messages:
        channel.send_nowait(message)
    return messages


# -- budget ---------------------------------------------------------------------------


async def test_budget_expiry_cancels_a_stuck_worker_after_the_grace_period() -> None:
    stuck = Stuck(id="stuck")
    budget, grace = 0.5, 0.5
    task = Task(inputs=inputs([1]), type=LONG, budget=Budget(budget), grace_seconds=grace)
    began = time.monotonic()
    result = await Graph(stuck).run(task)
    took = time.monotonic() - began
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert result.cancelled == ["stuck"]
    assert stuck.cancelled
    assert took < budget + grace + 1
    assert result.elapsed < budget + grace + 1


async def test_budget_expiry_lets_in_flight_work_finish_within_the_grace_period() -> None:
    release = asyncio.Event()

    class Waits(Node):
        async def process(self, payload: Any) -> Any:
            await release.wait()
            return payload

    first, sink = Waits(id="first"), Node(id="sink")
    first >> sink
    task = Task(inputs=inputs([1, 2]), type=LONG, budget=Budget(0.2), grace_seconds=20)

    async def release_when_stopping() -> None:
        while not first._stop_flag:  # noqa: ASYNC110 - the flag has no event
            await asyncio.sleep(0.01)
        release.set()

    result, _ = await asyncio.gather(Graph(first).run(task), release_when_stopping())
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert result.cancelled == []
    assert result.processed["first"] == 1  # the message in hand, not the one after it
    assert result.pending["first"] == 1


async def test_leftovers_tidied_at_the_end_of_a_run_are_not_sent_again() -> None:
    release = asyncio.Event()

    class Waits(Node):
        async def process(self, payload: Any) -> Any:
            await release.wait()
            return payload

    first = Waits(id="first")
    seen: list[tuple[str, Any]] = []
    first.mailbox.add_observer(lambda message, channel, phase: seen.append((phase, message)))
    task = Task(inputs=inputs([1, 2, 3]), type=LONG, budget=Budget(0.2), grace_seconds=20)

    async def release_when_stopping() -> None:
        while not first._stop_flag:  # noqa: ASYNC110 - the flag has no event
            await asyncio.sleep(0.01)
        release.set()

    result, _ = await asyncio.gather(Graph(first).run(task), release_when_stopping())
    assert result.pending["first"] == 2  # left in the mailbox, the stop request taken out
    assert [m.payload for _, m in seen if not m.is_shutdown] == [1, 2, 3, 1]  # 3 sends, 1 receive
    # The stop request taken out is seen leaving: sends and receives add up to what is left.
    assert [phase for phase, m in seen if m.is_shutdown] == ["send", "receive"]
    assert first.mailbox.observers != ()  # and the observer is back


async def test_budget_applies_to_one_off_runs() -> None:
    stuck = Stuck()
    task = Task(inputs=inputs([1]), budget=Budget(0.2), grace_seconds=0)
    result = await Graph(stuck).run(task)
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert result.cancelled == [stuck.id]


# -- failures ---------------------------------------------------------------------------


async def test_process_errors_do_not_kill_the_worker_and_go_to_dead_letters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Picky(Node):
        def process(self, payload: Any) -> Any:
            if payload % 3 == 0:
                raise ValueError(f"no multiples of three: {payload}")
            return payload

    dead = InMemoryChannel(name="dead")
    a, picky = Node(id="a"), Picky(id="picky", name="picky", dead_letter=dead)
    a >> picky
    with caplog.at_level(logging.ERROR):
        result = await Graph(a).run(Task(inputs=inputs(range(7))))
    assert result.status is RunStatus.COMPLETED
    assert result.outputs == [1, 2, 4, 5]
    assert result.processed["picky"] == 4
    assert result.failed == {"a": 0, "picky": 3}
    letters = []
    while not dead.empty():
        letters.append(dead.receive_nowait())
    assert [m.payload for m in letters] == [0, 3, 6]
    assert letters[0].metadata["error"] == "ValueError: no multiples of three: 0"
    assert letters[0].metadata["failed_node"] == "picky"
    assert letters[0].metadata["edge_id"] == "a->picky"
    assert sum("'picky'" in r.getMessage() for r in caplog.records) == 3


async def test_a_crashing_worker_fails_the_run_after_the_others_are_stopped() -> None:
    finished: list[str] = []

    class Crashes(Node):
        async def go(self) -> None:
            await self.mailbox.receive()
            raise RuntimeError("worker exploded")

    class Busy(Node):
        async def process(self, payload: Any) -> Any:
            await asyncio.sleep(0.2)
            finished.append("busy")
            return payload

    a, crash, busy = Node(id="a"), Crashes(id="crash"), Busy(id="busy")
    a >> crash
    a >> busy
    result = await Graph(a).run(Task(inputs=inputs([1]), type=LONG, grace_seconds=20))
    assert result.status is RunStatus.FAILED and not result.ok
    assert isinstance(result.error, RuntimeError)
    assert str(result.error) == "worker exploded"
    assert result.failed_node == "crash"
    assert finished == ["busy"]  # stopped gracefully, not cancelled
    assert result.cancelled == []
    assert result.processed["busy"] == 1


async def test_a_worker_crashing_while_stopping_fails_the_run() -> None:
    class BadStop(Node):
        async def go(self) -> None:
            await self.mailbox.receive()
            raise OSError("could not flush")

    result = await Graph(BadStop()).run(Task(type=LONG, budget=Budget(0.1)))
    assert result.status is RunStatus.FAILED
    assert isinstance(result.error, OSError)


# -- never hang, never leave a task ---------------------------------------------------------


async def test_cancelling_a_run_cancels_its_workers() -> None:
    stuck, after = Stuck(), Node()
    stuck >> after
    graph = Graph(stuck)
    run = asyncio.create_task(graph.run(Task(inputs=inputs([1]), type=LONG)))
    await stuck.started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert stuck.cancelled
    assert not graph.running
    assert stuck._binding is None and after._binding is None
    # the conftest fails this test if any worker task is still alive


async def test_a_start_node_that_returns_early_does_not_hang_the_run() -> None:
    class Quits(Node):
        async def go(self) -> None:
            return

    start, other = Quits(mailbox_maxsize=1), Node()
    start >> other
    result = await Graph(start).run(Task(inputs=inputs(range(5))))
    assert result.status is RunStatus.COMPLETED


async def test_a_stop_request_reaches_a_full_mailbox_once_there_is_room() -> None:
    handled: list[Any] = []

    class Drains(Node):
        """Ignores the stop flag once started: stops on a shutdown message only."""

        async def go(self) -> None:
            while True:
                message = await self.mailbox.receive()
                if message.is_shutdown:
                    return
                # Hold the first message until the graph stops: the mailbox fills up.
                while not handled and not self._stop_flag:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                handled.append(message.payload)

    node = Drains(mailbox_maxsize=2)
    task = Task(inputs=inputs(range(3)), type=LONG, budget=Budget(0.1), grace_seconds=20)
    result = await Graph(node).run(task)
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert result.cancelled == []
    assert handled == [0, 1, 2]
    assert node.mailbox.empty()


def test_task_inputs_accept_envelopes_of_either_build() -> None:
    from spark.graphs import Task
    from spark.nodes import _channels_py

    task = Task(inputs=[_channels_py.ChannelMessage(1), ChannelMessage(2)])
    assert [message.payload for message in task.messages()] == [1, 2]
