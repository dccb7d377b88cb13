"""QueueBridge: the asyncio.Queue surface over a channel."""

from __future__ import annotations

import asyncio
import sys
import types
import unittest
from collections import deque
from typing import TypeVar

import pytest

from spark.nodes.channels import BaseChannel, ChannelClosed, QueueBridge


async def test_put_wraps_and_get_unwraps(impl):
    channel = impl.InMemoryChannel()
    queue = impl.QueueBridge(channel)
    await queue.put({"data": "value"})
    message = channel.receive_nowait()
    assert isinstance(message, impl.ChannelMessage) and message.payload == {"data": "value"}
    queue.put_nowait("again")
    assert await queue.get() == "again"


async def test_queue_errors_match_asyncio(impl):
    queue = impl.QueueBridge(impl.InMemoryChannel(maxsize=1))
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait(1)
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(2)
    assert queue.full() and not queue.empty() and queue.qsize() == 1 and queue.maxsize == 1
    assert queue.get_nowait() == 1
    assert queue.empty() and not queue.full()


async def test_get_waits_and_put_waits(impl):
    queue = impl.QueueBridge(impl.InMemoryChannel(maxsize=1))
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.put("a")
    assert await getter == "a"
    await queue.put("b")
    putter = asyncio.ensure_future(queue.put("c"))
    await asyncio.sleep(0)
    assert not putter.done()
    assert await queue.get() == "b"
    await putter
    assert await queue.get() == "c"


async def test_shutdown_message_yields_its_payload(impl):
    channel = impl.InMemoryChannel()
    queue = impl.QueueBridge(channel)
    await channel.send(impl.ChannelMessage(None, is_shutdown=True))
    assert await queue.get() is None


async def test_closed_channel_raises_channel_closed(impl):
    channel = impl.InMemoryChannel()
    queue = impl.QueueBridge(channel)
    queue.put_nowait("last")
    channel.close()
    with pytest.raises(ChannelClosed):
        await queue.put("refused")
    assert await queue.get() == "last"
    with pytest.raises(ChannelClosed):
        await queue.get()
    with pytest.raises(ChannelClosed):
        queue.get_nowait()


async def test_task_done_and_join(impl):
    queue = impl.QueueBridge(impl.InMemoryChannel())
    await queue.join()  # nothing put: returns at once
    for i in range(3):
        await queue.put(i)
    joiner = asyncio.ensure_future(queue.join())
    for _ in range(3):
        await queue.get()
        await asyncio.sleep(0)
        assert not joiner.done()
        queue.task_done()
    await asyncio.wait_for(joiner, 5)
    with pytest.raises(ValueError, match="task_done"):
        queue.task_done()


async def test_failed_put_is_not_counted(impl):
    channel = impl.InMemoryChannel()
    queue = impl.QueueBridge(channel)
    channel.close()
    with pytest.raises(ChannelClosed):
        await queue.put(1)
    with pytest.raises(ChannelClosed):
        queue.put_nowait(1)
    await asyncio.wait_for(queue.join(), 1)


def test_default_message_type_is_the_selected_build():
    from spark.nodes import channels

    queue = QueueBridge(channels.InMemoryChannel())
    queue.put_nowait(1)
    assert type(queue.channel.receive_nowait()) is channels.ChannelMessage


def test_refuses_what_is_not_a_channel():
    with pytest.raises(TypeError, match="wraps a channel"):
        QueueBridge(asyncio.Queue())


# -- CPython's own tests of asyncio.Queue, run on a bridge ------------------

QUEUE_TEST_CASES = (
    "QueueBasicTests",
    "QueueGetTests",
    "QueuePutTests",
    "QueueJoinTests",
    "QueueShutdownTests",  # Python 3.13+
)


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="3.10's suite binds the queue's loop through asyncio internals (_get_loop)",
)
def test_cpython_asyncio_queue_suite_passes_on_a_bridge(impl, monkeypatch):
    """All of it but ``test_float_maxsize``: a channel's bound is an int."""
    suite_module = pytest.importorskip("test.test_asyncio.test_queues")
    payload = TypeVar("payload")

    class Queue(QueueBridge[payload]):  # named so, as the suite's reprs expect
        def __init__(self, maxsize: int = 0) -> None:
            super().__init__(
                impl.InMemoryChannel(maxsize=maxsize), message_type=impl.ChannelMessage
            )

    bridged_asyncio = types.ModuleType("asyncio")
    bridged_asyncio.__dict__.update(vars(asyncio))
    bridged_asyncio.Queue = Queue
    monkeypatch.setattr(suite_module, "asyncio", bridged_asyncio)
    suite = unittest.TestSuite()
    for name in QUEUE_TEST_CASES:
        case = getattr(suite_module, name, None)
        if case is None:
            continue
        if hasattr(case, "q_class"):
            monkeypatch.setattr(case, "q_class", Queue)
        suite.addTests(unittest.TestLoader().loadTestsFromTestCase(case))
    outcome = unittest.TestResult()
    suite.run(outcome)
    failed = {
        test.id().rsplit(".", 1)[-1]: trace for test, trace in outcome.failures + outcome.errors
    }
    assert set(failed) <= {"test_float_maxsize"}, "\n".join(failed.values())
    assert outcome.testsRun >= 30 and not outcome.skipped


async def test_shutdown_fails_puts_and_then_gets_once_drained(impl):
    queue = impl.QueueBridge(impl.InMemoryChannel(maxsize=1))
    queue.put_nowait("kept")
    blocked_put = asyncio.ensure_future(queue.put("refused"))
    await asyncio.sleep(0)
    assert len(queue._putters) == 1
    queue.shutdown()
    with pytest.raises(ChannelClosed) as refused:
        await blocked_put
    if sys.version_info >= (3, 13):
        assert isinstance(refused.value, asyncio.QueueShutDown)
    assert queue._putters == deque() and "shutdown" in repr(queue)
    with pytest.raises(ChannelClosed):
        queue.put_nowait("late")
    assert await queue.get() == "kept"
    with pytest.raises(ChannelClosed):
        await queue.get()
    queue.task_done()
    await asyncio.wait_for(queue.join(), 1)


async def test_immediate_shutdown_drops_what_is_queued_and_counts_it_done(impl):
    queue = impl.QueueBridge(impl.InMemoryChannel())
    for item in range(3):
        queue.put_nowait(item)
    assert queue.get_nowait() == 0
    queue.shutdown(immediate=True)
    assert queue.qsize() == 0
    queue.task_done()  # the one taken; the two dropped count as done
    await asyncio.wait_for(queue.join(), 1)
    with pytest.raises(ValueError):
        queue.task_done()


async def test_waiting_gets_are_listed_while_they_wait(impl):
    queue = impl.QueueBridge(impl.InMemoryChannel())
    getters = [asyncio.ensure_future(queue.get()) for _ in range(2)]
    await asyncio.sleep(0)
    assert len(queue._getters) == 2 and "_getters[2]" in repr(queue)
    getters[0].cancel()
    await asyncio.sleep(0)
    queue.put_nowait("x")
    assert await getters[1] == "x"
    assert len(queue._getters) == 0 and getters[0].cancelled()


async def test_a_channel_that_cannot_say_it_is_empty_still_bridges(impl):
    class Minimal(BaseChannel):
        def __init__(self) -> None:
            super().__init__()
            self.items: deque = deque()

        async def send(self, message):
            self.items.append(message)

        async def receive(self):
            return self.items.popleft()

    queue = QueueBridge(Minimal(), message_type=impl.ChannelMessage)
    await queue.put(1)
    assert await queue.get() == 1


async def test_immediate_shutdown_fails_gets_already_promised_a_message(impl):
    queue = impl.QueueBridge(impl.InMemoryChannel())
    getters = [asyncio.ensure_future(queue.get()) for _ in range(2)]
    await asyncio.sleep(0)
    for item in "abc":
        queue.put_nowait(item)  # a and b are promised to the blocked gets
    queue.shutdown(immediate=True)
    outcomes = await asyncio.gather(*getters, return_exceptions=True)
    assert all(isinstance(outcome, ChannelClosed) for outcome in outcomes), outcomes
    assert queue._unfinished_tasks == 0 and queue.qsize() == 0
    await asyncio.wait_for(queue.join(), 1)
