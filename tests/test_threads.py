"""Other threads send into and receive from a loop's channel (both builds, both loops)."""

from __future__ import annotations

import asyncio
import math
import os
import random
import threading
import time
from typing import Any

import pytest
from conftest import LOOPS, settle

from spark.nodes._threads import ThreadWaiter
from spark.nodes.channels import BaseChannel, ChannelClosed

SHORT = 0.05  # seconds: a timeout that is meant to expire


def start_thread(target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


async def join(*threads: threading.Thread) -> None:
    for thread in threads:
        await asyncio.to_thread(thread.join, 60)
        assert not thread.is_alive(), "a thread did not finish"


def wait_for(condition: Any, seconds: float = 10) -> None:
    """Block this thread until ``condition()`` holds (another thread makes it so)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for another thread"
        time.sleep(0.001)


async def until(condition: Any, seconds: float = 10) -> None:
    """Let the loop run until ``condition()`` holds (another thread makes it so)."""
    deadline = time.monotonic() + seconds
    await settle()
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for another thread"
        await asyncio.sleep(0.001)


class Outcome:
    """What a call made in another thread returned or raised."""

    def __init__(self, call: Any, *args: Any, **kwargs: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = start_thread(self._run, call, args, kwargs)

    def _run(self, call: Any, args: Any, kwargs: Any) -> None:
        try:
            self.value = call(*args, **kwargs)
        except BaseException as error:
            self.error = error
        finally:
            self.done.set()


# -- the basics ---------------------------------------------------------------


async def test_blocking_send_from_a_thread_reaches_a_waiting_task_in_order(impl):
    channel = impl.InMemoryChannel()
    receiver = asyncio.ensure_future(channel.receive())
    await settle()

    def produce():
        for i in range(100):
            channel.blocking_send(impl.ChannelMessage(i))

    thread = start_thread(produce)
    first = await receiver
    rest = [(await channel.receive()).payload for _ in range(99)]
    await join(thread)
    assert [first.payload, *rest] == list(range(100))
    assert channel.stats().sent == channel.stats().received == 100


async def test_blocking_receive_in_a_thread_gets_what_tasks_send_in_order(impl):
    channel = impl.InMemoryChannel(maxsize=4)
    got = Outcome(lambda: [channel.blocking_receive().payload for _ in range(50)])
    for i in range(50):
        await channel.send(impl.ChannelMessage(i))
    await join(got.thread)
    assert got.error is None and got.value == list(range(50))


async def test_nowait_methods_work_from_a_thread(impl):
    channel = impl.InMemoryChannel(maxsize=2)

    def use():
        channel.send_nowait(impl.ChannelMessage("a"))
        channel.send_nowait(impl.ChannelMessage("b"))
        with pytest.raises(asyncio.QueueFull):
            channel.send_nowait(impl.ChannelMessage("c"))
        taken = channel.receive_nowait().payload
        return taken

    outcome = Outcome(use)
    await join(outcome.thread)
    assert outcome.error is None and outcome.value == "a"
    assert channel.receive_nowait().payload == "b"
    empty = Outcome(channel.receive_nowait)
    await join(empty.thread)
    assert isinstance(empty.error, asyncio.QueueEmpty)


async def test_blocking_calls_on_a_loop_thread_raise_runtime_error_at_once(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    with pytest.raises(RuntimeError, match="to_thread"):
        channel.blocking_receive()
    with pytest.raises(RuntimeError, match=r"await channel\.send"):
        channel.blocking_send(impl.ChannelMessage(1))
    assert channel.qsize() == 0 and channel.stats().sent == 0


async def test_timeout_is_checked(impl):
    channel = impl.InMemoryChannel()

    def check():
        for bad, error in [
            ("1", TypeError),
            (True, TypeError),
            (-1, ValueError),
            (math.nan, ValueError),
        ]:
            with pytest.raises(error, match="timeout"):
                channel.blocking_receive(timeout=bad)
            with pytest.raises(error, match="timeout"):
                channel.blocking_send(impl.ChannelMessage(0), timeout=bad)

    outcome = Outcome(check)
    await join(outcome.thread)
    assert outcome.error is None
    assert channel.qsize() == 0


async def test_blocking_send_of_a_non_message_raises_type_error(impl):
    channel = impl.InMemoryChannel()
    outcome = Outcome(channel.blocking_send, "payload")
    await join(outcome.thread)
    assert isinstance(outcome.error, TypeError) and "ChannelMessage(payload=" in str(outcome.error)


# -- timeouts take and send nothing -------------------------------------------


async def test_blocking_receive_timeout_takes_nothing(impl):
    channel = impl.InMemoryChannel()
    late = Outcome(channel.blocking_receive, SHORT)
    await join(late.thread)
    assert isinstance(late.error, TimeoutError)
    channel.send_nowait(impl.ChannelMessage("kept"))
    assert (await channel.receive()).payload == "kept"  # nobody else was promised it
    assert channel.stats().receivers_waiting == 0


async def test_blocking_send_timeout_sends_nothing(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage("first"))
    late = Outcome(channel.blocking_send, impl.ChannelMessage("late"), SHORT)
    await join(late.thread)
    assert isinstance(late.error, TimeoutError)
    assert (await channel.receive()).payload == "first"
    assert channel.empty() and channel.stats().senders_waiting == 0
    assert channel.stats().sent == 1


async def test_zero_timeout_fails_at_once_when_it_would_wait(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    outcome = Outcome(channel.blocking_receive, 0)
    await join(outcome.thread)
    assert isinstance(outcome.error, TimeoutError)
    channel.send_nowait(impl.ChannelMessage(1))
    outcome = Outcome(channel.blocking_receive, 0)
    await join(outcome.thread)
    assert outcome.value.payload == 1


# -- close --------------------------------------------------------------------


async def test_close_wakes_blocked_threads(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    receiver_channel = impl.InMemoryChannel()
    receiving = Outcome(receiver_channel.blocking_receive)
    channel.send_nowait(impl.ChannelMessage("queued"))
    sending = Outcome(channel.blocking_send, impl.ChannelMessage("blocked"))
    await until(lambda: channel.stats().senders_waiting == 1)
    await until(lambda: receiver_channel.stats().receivers_waiting == 1)
    channel.close()
    receiver_channel.close()
    await join(receiving.thread, sending.thread)
    assert isinstance(receiving.error, ChannelClosed)
    assert isinstance(sending.error, ChannelClosed)
    assert [m.payload for m in await channel.receive_many(10)] == [
        "queued"
    ]  # "blocked" was not sent


async def test_blocked_thread_drains_then_gets_channel_closed(impl):
    channel = impl.InMemoryChannel()
    channel.send_nowait(impl.ChannelMessage(1))
    channel.close()

    def drain():
        taken = [channel.blocking_receive().payload]
        with pytest.raises(ChannelClosed):
            channel.blocking_receive()
        with pytest.raises(ChannelClosed):
            channel.blocking_send(impl.ChannelMessage(2))
        return taken

    outcome = Outcome(drain)
    await join(outcome.thread)
    assert outcome.error is None and outcome.value == [1]


async def test_close_from_a_thread_wakes_blocked_tasks(impl):
    full = impl.InMemoryChannel(maxsize=1)
    full.send_nowait(impl.ChannelMessage(0))
    empty = impl.InMemoryChannel()
    sender = asyncio.ensure_future(full.send(impl.ChannelMessage(1)))
    receiver = asyncio.ensure_future(empty.receive())
    await settle()
    await join(start_thread(full.close), start_thread(empty.close))
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(sender, 5)
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(receiver, 5)
    assert [m.payload for m in await full.receive_many(5)] == [0]


# -- cancellation of tasks woken by threads ------------------------------------


async def test_a_task_cancelled_after_a_thread_promised_it_a_message_hands_it_on(impl):
    channel = impl.InMemoryChannel()
    first = asyncio.ensure_future(channel.receive())
    second = asyncio.ensure_future(channel.receive())
    await settle()
    start_thread(channel.send_nowait, impl.ChannelMessage("only")).join(30)  # the loop waits
    first.cancel()  # before the loop ran the wake-up the thread asked for
    await asyncio.sleep(0.01)
    assert first.cancelled()
    assert (await asyncio.wait_for(second, 5)).payload == "only"
    assert channel.empty() and channel.stats().received == 1


async def test_a_sender_cancelled_after_a_thread_freed_room_hands_it_on(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage(0))
    first = asyncio.ensure_future(channel.send(impl.ChannelMessage("cancelled")))
    second = asyncio.ensure_future(channel.send(impl.ChannelMessage("sent")))
    await settle()
    taken = Outcome(channel.receive_nowait)
    taken.thread.join(30)  # the loop waits: the freed slot is promised, not yet delivered
    first.cancel()
    await asyncio.wait_for(second, 5)
    assert first.cancelled()
    assert taken.value.payload == 0
    assert [m.payload for m in await channel.receive_many(5)] == ["sent"]


def interrupt_after_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocked threads are interrupted (KeyboardInterrupt) right after they are woken."""
    original = ThreadWaiter.wait

    def interrupted(self: ThreadWaiter, deadline: float | None) -> None:
        original(self, deadline)
        raise KeyboardInterrupt

    monkeypatch.setattr(ThreadWaiter, "wait", interrupted)


async def test_a_thread_interrupted_after_a_promise_of_a_message_hands_it_on(impl, monkeypatch):
    interrupt_after_waiting(monkeypatch)
    channel = impl.InMemoryChannel()
    interrupted = Outcome(channel.blocking_receive)
    await until(lambda: channel.stats().receivers_waiting == 1)
    task = asyncio.ensure_future(channel.receive())
    await settle()
    channel.send_nowait(impl.ChannelMessage("x"))  # promised to the thread first
    await join(interrupted.thread)
    assert isinstance(interrupted.error, KeyboardInterrupt)
    assert (await asyncio.wait_for(task, 5)).payload == "x"
    assert channel.stats().received == 1


async def test_a_thread_interrupted_after_a_promise_of_room_hands_it_on(impl, monkeypatch):
    interrupt_after_waiting(monkeypatch)
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage(0))
    interrupted = Outcome(channel.blocking_send, impl.ChannelMessage("lost"))
    await until(lambda: channel.stats().senders_waiting == 1)
    task = asyncio.ensure_future(channel.send(impl.ChannelMessage("sent")))
    await settle()
    assert (await channel.receive()).payload == 0  # the room goes to the thread first
    await join(interrupted.thread)
    assert isinstance(interrupted.error, KeyboardInterrupt)
    await asyncio.wait_for(task, 5)
    assert [m.payload for m in await channel.receive_many(5)] == ["sent"]


@pytest.mark.parametrize("loop_kind", list(LOOPS))
def test_a_loop_closed_before_it_delivered_a_wakeup_lets_the_message_go_on(impl, loop_kind):
    channel = impl.InMemoryChannel()
    loop = LOOPS[loop_kind]()
    waiting = loop.create_task(channel.receive())
    loop.run_until_complete(asyncio.sleep(0.01))  # the task waits on the channel
    start_thread(channel.send_nowait, impl.ChannelMessage("m")).join(30)  # promised to the task
    waiting.cancel()
    loop.close()  # before it ran the delivery, or the cancellation
    taken = Outcome(channel.blocking_receive, 5)
    taken.thread.join(30)
    assert taken.error is None and taken.value.payload == "m"
    assert channel.stats().received == 1


# -- wake-ups ---------------------------------------------------------------------


def count_wakeups(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The calls channels make to the running loop's ``call_soon_threadsafe`` from now on."""
    loop = asyncio.get_running_loop()
    calls: list[Any] = []
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(getattr(callback, "__self__", None), BaseChannel):
            calls.append(callback)
        return original(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    return calls


async def test_a_thread_does_not_wake_the_loop_when_no_task_waits(impl, monkeypatch):
    calls = count_wakeups(monkeypatch)
    channel = impl.InMemoryChannel()
    await channel.send(impl.ChannelMessage("owner"))
    assert (await channel.receive()).payload == "owner"  # a task has used the channel

    def produce():
        for i in range(200):
            channel.send_nowait(impl.ChannelMessage(i))

    await join(start_thread(produce))
    assert calls == []
    assert [m.payload for m in await channel.receive_many(500)] == list(range(200))


async def test_messages_sent_while_the_loop_is_busy_cost_one_wakeup(impl, monkeypatch):
    calls = count_wakeups(monkeypatch)
    channel = impl.InMemoryChannel()
    receiver = asyncio.ensure_future(channel.receive())
    await settle()
    thread = start_thread(lambda: [channel.send_nowait(impl.ChannelMessage(i)) for i in range(100)])
    thread.join(30)  # the loop is busy (blocked here) while the thread sends all of them
    assert not thread.is_alive()
    assert (await asyncio.wait_for(receiver, 5)).payload == 0
    assert len(calls) == 1
    assert [m.payload for m in await channel.receive_many(500)] == list(range(1, 100))


# -- observers ------------------------------------------------------------------


async def test_observers_see_thread_side_sends_and_receives(impl):
    seen: list[tuple[Any, str, bool]] = []
    done = asyncio.Event()

    def observer(message, channel, phase):
        seen.append((message.payload, phase, threading.current_thread() is main))

    async def async_observer(message, channel, phase):
        seen.append((message.payload, f"async {phase}", threading.current_thread() is main))
        if phase == "receive":
            done.set()

    main = threading.current_thread()
    channel = impl.InMemoryChannel(observers=[observer, async_observer])
    channel.send_nowait(impl.ChannelMessage(0))  # the loop is known once a task has waited
    await channel.receive()
    await asyncio.wait_for(done.wait(), 5)
    seen.clear()
    done.clear()

    def use():
        channel.blocking_send(impl.ChannelMessage(1))
        channel.blocking_receive()

    await join(start_thread(use))
    await asyncio.wait_for(done.wait(), 5)
    assert (1, "send", False) in seen and (1, "receive", False) in seen  # called in the thread
    assert (1, "async send", True) in seen and (1, "async receive", True) in seen  # on the loop


# -- maxsize and fairness across threads ----------------------------------------


async def test_maxsize_holds_with_producer_threads_and_tasks(impl):
    channel = impl.InMemoryChannel(maxsize=3)
    sizes: list[int] = []

    def produce(base):
        for i in range(500):
            channel.blocking_send(impl.ChannelMessage(base + i))

    async def produce_async():
        for i in range(500):
            await channel.send(impl.ChannelMessage(10_000 + i))

    threads = [start_thread(produce, 1000 * k) for k in range(1, 4)]
    task = asyncio.ensure_future(produce_async())
    got = []
    for _ in range(2000):
        sizes.append(channel.qsize())
        got.append((await channel.receive()).payload)
        if len(got) % 7 == 0:
            await asyncio.sleep(0)
    await join(*threads)
    await task
    assert max(sizes) <= 3 and channel.stats().peak_size <= 3
    assert sorted(got) == sorted(
        [1000 * k + i for k in range(1, 4) for i in range(500)] + [10_000 + i for i in range(500)]
    )
    for base in (1000, 2000, 3000, 10_000):
        mine = [p for p in got if base <= p < base + 500]
        assert mine == sorted(mine)


async def test_blocked_threads_and_tasks_are_served_in_the_order_they_blocked(impl):
    channel = impl.InMemoryChannel()
    first = Outcome(channel.blocking_receive)
    await until(lambda: channel.stats().receivers_waiting == 1)
    task = asyncio.ensure_future(channel.receive())
    await settle()
    second = Outcome(channel.blocking_receive)
    await until(lambda: channel.stats().receivers_waiting == 3)
    channel.send_nowait(impl.ChannelMessage("a"))
    await join(first.thread)
    assert first.value.payload == "a" and not task.done() and not second.done.is_set()
    channel.send_nowait(impl.ChannelMessage("b"))
    assert (await task).payload == "b" and not second.done.is_set()
    channel.send_nowait(impl.ChannelMessage("c"))
    await join(second.thread)
    assert second.value.payload == "c"


# -- the rest of the API with threads -----------------------------------------------


async def test_select_and_nodes_take_what_threads_send(impl):
    left, right = impl.InMemoryChannel(), impl.InMemoryChannel()
    waiting = asyncio.ensure_future(impl.select(left, right))
    await settle()
    await join(start_thread(right.blocking_send, impl.ChannelMessage("r")))
    channel, message = await asyncio.wait_for(waiting, 5)
    assert channel is right and message.payload == "r"
    assert left.empty() and right.empty()


def between_scan_and_wait(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Run ``action`` in a thread when select next makes its future: after it scanned."""
    loop = asyncio.get_running_loop()
    original = loop.create_future
    armed = [True]

    def create_future() -> asyncio.Future[Any]:
        if armed.pop() if armed else False:
            start_thread(action).join(30)
        return original()

    monkeypatch.setattr(loop, "create_future", create_future)


async def test_select_takes_a_message_a_thread_sent_after_it_scanned(impl, monkeypatch):
    left, right = impl.InMemoryChannel(), impl.InMemoryChannel()
    between_scan_and_wait(monkeypatch, lambda: left.send_nowait(impl.ChannelMessage("late")))
    selecting = asyncio.ensure_future(impl.select(left, right))  # (no future made before it)
    await until(selecting.done, seconds=2)
    channel, message = selecting.result()
    assert channel is left and message.payload == "late"
    assert left.stats().receivers_waiting == right.stats().receivers_waiting == 0


async def test_select_ends_when_threads_close_every_channel_after_it_scanned(impl, monkeypatch):
    left, right = impl.InMemoryChannel(), impl.InMemoryChannel()
    between_scan_and_wait(monkeypatch, lambda: (left.close(), right.close()))
    selecting = asyncio.ensure_future(impl.select(left, right))
    await until(selecting.done, seconds=2)
    with pytest.raises(ChannelClosed, match="every channel"):
        selecting.result()


async def test_a_broadcast_subscription_is_received_from_a_thread(impl):
    broadcast = impl.BroadcastChannel(maxsize=2)
    subscription = broadcast.subscribe()
    got = Outcome(lambda: [subscription.blocking_receive(5).payload for _ in range(20)])
    for i in range(20):
        await broadcast.send(impl.ChannelMessage(i))
    await join(got.thread)
    assert got.error is None and got.value == list(range(20))
    refused = Outcome(subscription.blocking_send, impl.ChannelMessage(0))
    await join(refused.thread)
    assert isinstance(refused.error, NotImplementedError)


async def test_a_node_processes_what_a_thread_puts_in_its_mailbox(node_build):
    from spark.nodes import Node

    seen: list[Any] = []

    class Collect(Node):
        async def process(self, payload):
            seen.append(payload)

    node = Collect()
    worker = asyncio.ensure_future(node.go())
    await settle()

    def feed():
        for i in range(300):
            node.mailbox.blocking_send(node_build.ChannelMessage(i))

    await join(start_thread(feed))
    await until(lambda: len(seen) == 300)
    node.mailbox.close()
    await asyncio.wait_for(worker, 5)
    assert seen == list(range(300))


# -- where a channel is made, and the moment it is shared -----------------------------


@pytest.mark.parametrize("loop_kind", list(LOOPS))
def test_a_channel_made_before_its_loop_runs_serves_its_tasks(impl, loop_kind):
    channel = impl.InMemoryChannel(maxsize=4)  # made outside any loop, as at import time
    channel.send_nowait(impl.ChannelMessage("before"))

    async def use() -> list[Any]:
        await channel.send(impl.ChannelMessage("task"))
        return [(await channel.receive()).payload for _ in range(2)]

    loop = LOOPS[loop_kind]()
    try:
        assert loop.run_until_complete(use()) == ["before", "task"]
    finally:
        loop.close()
    if impl.name == "python":
        assert not channel._shared and channel._loop is loop  # its tasks took the lock-free paths


@pytest.mark.timeout_s(120)
@pytest.mark.parametrize("loop_kind", list(LOOPS))
def test_a_channel_made_in_one_thread_and_used_by_a_loop_in_another_loses_nothing(impl, loop_kind):
    per_producer = 20_000
    channel = impl.InMemoryChannel(maxsize=16)  # made here; its tasks run on another thread
    received: list[tuple[str, int]] = []

    async def tasks() -> None:
        async def produce() -> None:
            for i in range(per_producer):
                await channel.send(impl.ChannelMessage(("task", i)))

        producer = asyncio.ensure_future(produce())
        for _ in range(2 * per_producer):
            received.append((await channel.receive()).payload)
        await producer

    loop = LOOPS[loop_kind]()
    worker = start_thread(loop.run_until_complete, tasks())
    for i in range(per_producer):  # the creator keeps using it meanwhile
        channel.blocking_send(impl.ChannelMessage(("creator", i)))
    worker.join(100)
    assert not worker.is_alive(), "the loop's tasks did not finish"
    loop.close()
    for who in ("task", "creator"):
        assert [i for w, i in received if w == who] == list(range(per_producer))
    assert channel.stats().received == 2 * per_producer


def _pure_only(impl: Any) -> None:
    if impl.name != "python":
        pytest.skip("the compiled build's sections are C: Python code cannot pause one")


async def test_a_thread_waits_for_a_lock_free_section_under_way_before_it_shares(impl):
    _pure_only(impl)
    order: list[str] = []

    class Pausing(impl.InMemoryChannel):  # type: ignore[name-defined, misc]
        __slots__ = ()

        def _wake_receivers(self) -> None:  # inside send()'s lock-free section
            sharer = Outcome(self.send_nowait, impl.ChannelMessage("thread"))
            sharer.thread.join(0.2)  # a thread that went ahead would be done by now
            order.append("thread waited" if not sharer.done.is_set() else "thread went ahead")
            super()._wake_receivers()
            order.append("section ended")

    channel = Pausing()
    receiving = asyncio.ensure_future(channel.receive())
    await settle()  # parked: the send below wakes it from its lock-free section
    await channel.send(impl.ChannelMessage("task"))
    assert (await asyncio.wait_for(receiving, 5)).payload == "task"
    await until(lambda: channel.qsize() == 1)
    assert order == ["thread waited", "section ended"]
    assert channel._shared
    assert (await channel.receive()).payload == "thread"
    assert channel.stats().sent == channel.stats().received == 2


async def test_a_task_of_another_threads_loop_wakes_a_waiting_task(impl, loop_name):
    channel = impl.InMemoryChannel()  # made here: this loop's tasks take its fast paths
    other = LOOPS[loop_name]()
    runner = start_thread(other.run_forever)
    try:
        receiving = asyncio.ensure_future(channel.receive())
        await settle()  # it waits
        sent = asyncio.run_coroutine_threadsafe(channel.send(impl.ChannelMessage("m")), other)
        assert (await asyncio.wait_for(receiving, 5)).payload == "m"  # woken through this loop
        sent.result(5)
    finally:
        other.call_soon_threadsafe(other.stop)
        runner.join(30)
        other.close()


@pytest.mark.timeout_s(120)
async def test_tasks_of_another_threads_loop_receive_all_this_loop_sends(impl, loop_name):
    count = 20_000
    channel = impl.InMemoryChannel(maxsize=8)
    other = LOOPS[loop_name]()
    runner = start_thread(other.run_forever)

    async def consume() -> list[Any]:
        return [(await channel.receive()).payload for _ in range(count)]

    try:
        consumed = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(consume(), other))
        for i in range(count):
            await channel.send(impl.ChannelMessage(i))
        assert await asyncio.wait_for(consumed, 60) == list(range(count))
    finally:
        other.call_soon_threadsafe(other.stop)
        runner.join(30)
        other.close()
    stats = channel.stats()
    assert stats.sent == stats.received == count and stats.peak_size <= 8


@pytest.mark.parametrize("loop_kind", list(LOOPS))
def test_the_channel_used_inside_a_lock_free_section_while_a_thread_shares_it(impl, loop_kind):
    """A signal handler or a finalizer may use the channel in the middle of a section."""
    _pure_only(impl)

    class Interrupted(impl.InMemoryChannel):  # type: ignore[name-defined, misc]
        __slots__ = ()

        def _wake_receivers(self) -> None:  # inside send()'s lock-free section
            if self._shared:
                return super()._wake_receivers()  # not this test's section
            start_thread(self.send_nowait, impl.ChannelMessage("thread"))  # shares it
            wait_for(lambda: self._shared)
            time.sleep(0.05)  # the sharing thread waits for this section now
            self.send_nowait(impl.ChannelMessage("handler"))  # as Node.stop() from a handler
            super()._wake_receivers()

    received: list[Any] = []

    async def owner() -> None:
        channel = Interrupted()
        receiving = asyncio.ensure_future(channel.receive())
        await settle()
        await channel.send(impl.ChannelMessage("task"))
        received.append((await receiving).payload)
        await until(lambda: channel.qsize() == 2)
        received.extend(m.payload for m in await channel.receive_many(5))

    loop = LOOPS[loop_kind]()
    thread = start_thread(loop.run_until_complete, owner())  # joined with a timeout below
    thread.join(20)
    assert not thread.is_alive(), "the owner's thread and the sharing thread deadlocked"
    loop.close()
    assert received == ["task", "handler", "thread"]


def _shared_and_locked(impl: Any) -> Any:
    """A shared pure channel whose lock this thread holds."""
    channel = impl.InMemoryChannel()
    start_thread(channel.send_nowait, impl.ChannelMessage("shares it")).join(30)
    assert channel._shared
    assert channel._enter()  # a locked section, left with channel._leave(True)
    return channel


def test_threads_waiting_for_a_channels_lock_take_it_in_turn(impl):
    _pure_only(impl)
    channel = _shared_and_locked(impl)
    inside: list[str] = []

    def section(name: str) -> None:
        assert channel._enter()
        inside.append(name)  # one at a time: nobody else is inside now
        assert len(inside) == 1, inside
        time.sleep(0.01)
        inside.pop()
        channel._leave(True)

    waiting = [start_thread(section, name) for name in "abcd"]
    wait_for(lambda: len(channel._lock_waiters) == 4)  # all wait, on gates of their own
    channel._leave(True)
    for thread in waiting:
        thread.join(30)
        assert not thread.is_alive(), "a thread never got the lock"
    assert not channel._lock_waiters and channel._lock.acquire(False)


def test_a_thread_interrupted_while_waiting_for_the_lock_passes_its_turn_on(impl, monkeypatch):
    _pure_only(impl)
    from spark.nodes import _threads

    class InterruptedGate:
        """A gate whose waiter is interrupted just as a release opens it."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.closed = False

        def acquire(self, *args: Any) -> bool:
            self.lock.acquire()  # closes it, then waits until a release opens it
            if not self.closed:
                self.closed = True
                return True
            raise KeyboardInterrupt

        def release(self) -> None:
            self.lock.release()

    channel = _shared_and_locked(impl)
    monkeypatch.setattr(_threads, "Lock", InterruptedGate)
    interrupted = Outcome(_threads.wait_for_lock, channel)
    wait_for(lambda: len(channel._lock_waiters) == 1)
    monkeypatch.undo()
    second = Outcome(_threads.wait_for_lock, channel)  # queued behind the interrupted one
    wait_for(lambda: len(channel._lock_waiters) == 2)
    channel._leave(True)  # opens the first gate: the interrupted thread hands its turn on
    second.done.wait(10)
    assert isinstance(interrupted.error, KeyboardInterrupt)
    assert second.done.is_set() and second.error is None  # it took the lock
    assert not channel._lock_waiters


# -- stress: many threads, random timeouts and cancellations, a close midway -------

THREADS = 4
# 100,000 each in `make test`; the wheel runs on other versions take fewer.
PER_THREAD = int(os.environ.get("SPARK_THREAD_STRESS_MESSAGES", "100000"))
TIMEOUTS = (None, 0, 0.0001, 0.001)


@pytest.mark.timeout_s(300)
async def test_producer_threads_into_one_task_lose_and_duplicate_nothing(impl):
    channel = impl.InMemoryChannel(maxsize=64)
    sent: list[list[int]] = [[] for _ in range(THREADS)]  # what each thread's sends delivered
    timeouts = [0] * THREADS
    closing_at = THREADS * PER_THREAD // 2

    def produce(k: int) -> None:
        rng = random.Random(k)
        for i in range(PER_THREAD):
            while True:
                try:
                    channel.blocking_send(impl.ChannelMessage((k, i)), timeout=rng.choice(TIMEOUTS))
                    break
                except TimeoutError:
                    timeouts[k] += 1  # not sent: send it again
                except ChannelClosed:
                    return
            sent[k].append(i)

    rng = random.Random(99)
    received: list[list[int]] = [[] for _ in range(THREADS)]
    count = cancelled = 0
    waiting = asyncio.ensure_future(channel.receive())  # one cancelled for sure, while it waits
    await settle()
    cancelled += waiting.cancel()
    threads = [start_thread(produce, k) for k in range(THREADS)]
    while True:
        if count == closing_at:
            channel.close()
        if count == closing_at // 2:
            await asyncio.sleep(0.05)  # the channel fills up: producers time out
        receiving = asyncio.ensure_future(channel.receive())
        if rng.random() < 0.3:
            await asyncio.sleep(0)
            cancelled += receiving.cancel()  # still waiting (maybe woken): it takes nothing
        try:
            message = await receiving
        except asyncio.CancelledError:
            continue
        except ChannelClosed:
            break
        k, i = message.payload
        received[k].append(i)
        count += 1
    await join(*threads)
    assert cancelled > 0 and sum(timeouts) > 0, (cancelled, timeouts)  # both kinds happened
    for k in range(THREADS):
        assert received[k] == sent[k]  # nothing lost, duplicated or reordered
    assert count >= closing_at
    stats = channel.stats()
    assert stats.sent == stats.received == count and stats.peak_size <= 64


@pytest.mark.timeout_s(300)
async def test_one_task_into_consumer_threads_loses_and_duplicates_nothing(impl):
    channel = impl.InMemoryChannel(maxsize=64)
    received: list[list[int]] = [[] for _ in range(THREADS)]
    timeouts = [0] * THREADS

    def consume(k: int) -> None:
        rng = random.Random(k)
        while True:
            try:
                message = channel.blocking_receive(timeout=rng.choice(TIMEOUTS))
            except TimeoutError:
                timeouts[k] += 1
                continue
            except ChannelClosed:
                return
            received[k].append(message.payload)

    rng = random.Random(7)
    sent: list[int] = []
    cancelled = 0
    total = THREADS * PER_THREAD
    for i in range(64):  # full: the next send waits, and is cancelled
        channel.send_nowait(impl.ChannelMessage(i))
        sent.append(i)
    i = 64
    waiting = asyncio.ensure_future(channel.send(impl.ChannelMessage(i)))
    await settle()
    cancelled += waiting.cancel()
    threads = [start_thread(consume, k) for k in range(THREADS)]
    while i < total:
        if i == total // 2 and len(sent) == i:
            await asyncio.sleep(0.01)  # let the consumers run dry and time out
        sending = asyncio.ensure_future(channel.send(impl.ChannelMessage(i)))
        if rng.random() < 0.3:
            await asyncio.sleep(0)
            cancelled += sending.cancel()  # still blocked (maybe woken): it sends nothing
        try:
            await sending
        except asyncio.CancelledError:
            continue  # not sent: send it again
        sent.append(i)
        i += 1
        if i == total * 3 // 4:
            break
    channel.close()  # midway: the consumers drain what is queued, then stop
    await join(*threads)
    assert cancelled > 0 and sum(timeouts) > 0, (cancelled, timeouts)
    everything = sorted(p for taken in received for p in taken)
    assert everything == sent  # nothing lost or duplicated
    for taken in received:
        assert taken == sorted(taken)  # each thread got them in send order
