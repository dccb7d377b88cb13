"""Observers: phases, order, awaitables, failures, runtime registration."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import warnings

import pytest

from spark.nodes.channels import ChannelClosed


def recorder(log, tag="obs"):
    def observer(message, channel, phase):
        log.append((tag, phase, message.payload, channel.name))

    return observer


async def test_send_then_receive_phases(impl):
    phases = []
    channel = impl.InMemoryChannel(name="observed", observers=[recorder(phases)])
    await channel.send(impl.ChannelMessage({"test": True}))
    await channel.receive()
    assert phases == [
        ("obs", "send", {"test": True}, "observed"),
        ("obs", "receive", {"test": True}, "observed"),
    ]


async def test_nowait_paths_report_inline(impl):
    phases = []
    channel = impl.InMemoryChannel(observers=[recorder(phases)])
    channel.send_nowait(impl.ChannelMessage(1))
    assert phases[-1][1] == "send"
    await channel.receive()
    channel.send_nowait(impl.ChannelMessage(2))
    channel.receive_nowait()
    assert [phase for _, phase, _, _ in phases] == ["send", "receive", "send", "receive"]


async def test_observer_sees_the_channel_itself(impl):
    seen = []
    channel = impl.InMemoryChannel(observers=[lambda m, c, p: seen.append(c)])
    await channel.send(impl.ChannelMessage(1))
    assert seen == [channel]


async def test_observers_run_in_registration_order(impl):
    log = []
    channel = impl.InMemoryChannel(observers=[recorder(log, "a"), recorder(log, "b")])
    channel.add_observer(recorder(log, "c"))
    await channel.send(impl.ChannelMessage(1))
    assert [tag for tag, *_ in log] == ["a", "b", "c"]


class CallableRecorder:
    """An observer that is an instance with __call__ (no vectorcall of its own)."""

    def __init__(self, log):
        self.log = log

    def __call__(self, message, channel, phase):
        self.log.append(("instance", phase))

    def method(self, message, channel, phase):
        self.log.append(("method", phase))


async def test_any_callable_can_observe(impl, caplog):
    log = []
    holder = CallableRecorder(log)

    def failing(message, channel, phase, extra):
        raise ValueError(extra)

    observers = [
        holder,
        holder.method,
        functools.partial(lambda tag, m, c, p: log.append((tag, p)), "partial"),
        functools.partial(failing, extra="boom"),
        CallableRecorder.method.__get__(holder),
    ]
    channel = impl.InMemoryChannel(observers=observers)
    with caplog.at_level(logging.ERROR, logger="spark.channels"):
        await channel.send(impl.ChannelMessage(1))
        channel.receive_nowait()
    assert log == [
        (tag, phase)
        for phase in ("send", "receive")
        for tag in ("instance", "method", "partial", "method")
    ]
    assert [r.exc_info[1].args for r in caplog.records] == [("boom",), ("boom",)]


async def test_async_observer_is_awaited_inside_send_and_receive(impl):
    log = []

    async def slow(message, channel, phase):
        await asyncio.sleep(0)
        log.append(("async", phase))

    channel = impl.InMemoryChannel(observers=[slow, recorder(log, "sync")])
    await channel.send(impl.ChannelMessage(1))
    assert log == [("async", "send"), ("sync", "send", 1, channel.name)]
    await channel.receive()
    assert log[2:] == [("async", "receive"), ("sync", "receive", 1, channel.name)]


async def test_async_observer_from_nowait_is_scheduled_and_kept_alive(impl):
    done = asyncio.Event()
    log = []

    async def observer(message, channel, phase):
        await asyncio.sleep(0.01)
        log.append(phase)
        if len(log) == 2:
            done.set()

    channel = impl.InMemoryChannel(observers=[observer])
    channel.send_nowait(impl.ChannelMessage(1))
    channel.receive_nowait()
    assert log == []
    gc.collect()  # the scheduled tasks must survive without a reference of ours
    await asyncio.wait_for(done.wait(), 5)
    assert log == ["send", "receive"]


def test_async_observer_without_a_loop_is_closed_with_a_warning(impl):
    started = []

    async def observer(message, channel, phase):
        started.append(phase)

    channel = impl.InMemoryChannel(name="no-loop", observers=[observer])
    with pytest.warns(RuntimeWarning, match="no-loop"):
        channel.send_nowait(impl.ChannelMessage(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" would be raised here
        gc.collect()
    with pytest.warns(RuntimeWarning, match="'receive'"):
        assert channel.receive_nowait().payload == 1
    assert started == []


async def test_failing_observer_is_logged_and_later_observers_run(impl, caplog):
    log = []

    def failing(message, channel, phase):
        raise RuntimeError("observer error!")

    channel = impl.InMemoryChannel(name="fragile", observers=[failing, recorder(log)])
    with caplog.at_level(logging.ERROR, logger="spark.channels"):
        await channel.send(impl.ChannelMessage(1))
        channel.send_nowait(impl.ChannelMessage(2))
        assert (await channel.receive()).payload == 1
        assert channel.receive_nowait().payload == 2
    assert [phase for _, phase, _, _ in log] == ["send", "send", "receive", "receive"]
    records = [r for r in caplog.records if r.name == "spark.channels"]
    assert len(records) == 4
    assert all("fragile" in r.getMessage() for r in records)
    assert [("'send'" in r.getMessage()) for r in records] == [True, True, False, False]
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in records)


async def test_failing_async_observer_is_logged(impl, caplog):
    async def failing(message, channel, phase):
        raise ValueError("async observer error")

    channel = impl.InMemoryChannel(name="async-fragile", observers=[failing])
    with caplog.at_level(logging.ERROR, logger="spark.channels"):
        await channel.send(impl.ChannelMessage(1))
        channel.send_nowait(impl.ChannelMessage(2))
        for _ in range(5):
            await asyncio.sleep(0)
    records = [r for r in caplog.records if r.name == "spark.channels"]
    assert len(records) == 2
    assert all("async-fragile" in r.getMessage() for r in records)
    assert all(isinstance(r.exc_info[1], ValueError) for r in records)
    assert channel.qsize() == 2


async def test_base_exceptions_from_observers_are_not_swallowed(impl):
    def interrupting(message, channel, phase):
        raise KeyboardInterrupt

    channel = impl.InMemoryChannel(observers=[interrupting])
    with pytest.raises(KeyboardInterrupt):
        channel.send_nowait(impl.ChannelMessage(1))


async def test_add_and_remove_observers_at_runtime(impl):
    log = []
    first, second = recorder(log, "first"), recorder(log, "second")
    channel = impl.InMemoryChannel(observers=[first])
    channel.add_observer(second)
    assert channel.observers == (first, second)
    await channel.send(impl.ChannelMessage(1))
    channel.remove_observer(first)
    await channel.send(impl.ChannelMessage(2))
    assert [(tag, payload) for tag, _, payload, _ in log] == [
        ("first", 1),
        ("second", 1),
        ("second", 2),
    ]
    with pytest.raises(ValueError, match="not an observer"):
        channel.remove_observer(first)
    with pytest.raises(TypeError, match="callable"):
        channel.add_observer("not callable")


async def test_observer_removing_itself_during_notification(impl):
    log = []
    channel = impl.InMemoryChannel()

    def once(message, channel_, phase):
        log.append("once")
        channel_.remove_observer(once)

    channel.add_observer(once)
    channel.add_observer(recorder(log, "after"))
    channel.send_nowait(impl.ChannelMessage(1))
    channel.send_nowait(impl.ChannelMessage(2))
    assert [entry if entry == "once" else entry[0] for entry in log] == ["once", "after", "after"]


async def test_observers_changed_by_an_async_observer_apply_from_the_next_message(impl):
    calls = []

    async def nothing():
        return None

    def late(message, channel, phase):
        calls.append(("late", phase))

    def leaving(message, channel, phase):
        calls.append(("leaving", phase))
        channel.remove_observer(leaving)
        channel.add_observer(late)
        return nothing()

    def staying(message, channel, phase):
        calls.append(("staying", phase))

    channel = impl.InMemoryChannel(observers=[leaving, staying])
    await channel.send(impl.ChannelMessage(1))
    assert calls == [("leaving", "send"), ("staying", "send")]
    await channel.receive()
    assert calls[2:] == [("staying", "receive"), ("late", "receive")]


async def test_failed_send_nowait_reports_nothing(impl):
    log = []
    channel = impl.InMemoryChannel(maxsize=1, observers=[recorder(log)])
    channel.send_nowait(impl.ChannelMessage(1))
    with pytest.raises(asyncio.QueueFull):
        channel.send_nowait(impl.ChannelMessage(2))
    channel.close()
    with pytest.raises(ChannelClosed):
        channel.send_nowait(impl.ChannelMessage(3))
    assert len(log) == 1


class Later:
    """An awaitable that is not a coroutine: it waits for one turn of the loop."""

    def __init__(self, log, tag):
        self.log, self.tag = log, tag

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        self.log.append(self.tag)


async def test_every_kind_of_awaitable_an_observer_returns_is_awaited_in_order(impl):
    log = []
    loop = asyncio.get_running_loop()

    async def coroutine(message, channel, phase):
        await asyncio.sleep(0)
        log.append(("coroutine", phase))

    def future(message, channel, phase):
        done = loop.create_future()
        loop.call_soon(done.set_result, None)
        done.add_done_callback(lambda _: log.append(("future", phase)))
        return done

    def custom(message, channel, phase):
        return Later(log, ("custom", phase))

    channel = impl.InMemoryChannel(observers=[coroutine, future, custom, recorder(log, "sync")])
    await channel.send(impl.ChannelMessage(1))
    assert log == [
        ("coroutine", "send"),
        ("future", "send"),
        ("custom", "send"),
        ("sync", "send", 1, channel.name),
    ]
    del log[:]
    assert (await channel.receive()).payload == 1
    assert [entry[:2] for entry in log] == [
        ("coroutine", "receive"),
        ("future", "receive"),
        ("custom", "receive"),
        ("sync", "receive"),
    ]


async def test_a_broken_awaitable_from_an_observer_is_logged_and_the_rest_run(impl, caplog):
    log = []

    class Broken:
        def __await__(self):
            raise TypeError("not really awaitable")

    async def fails_later(message, channel, phase):
        await asyncio.sleep(0)
        raise ValueError("after a suspension")

    channel = impl.InMemoryChannel(
        name="broken",
        observers=[lambda m, c, p: Broken(), fails_later, recorder(log, "after")],
    )
    with caplog.at_level(logging.ERROR, logger="spark.channels"):
        await channel.send(impl.ChannelMessage(1))
    errors = [r.exc_info[1] for r in caplog.records if r.name == "spark.channels"]
    assert [type(error) for error in errors] == [TypeError, ValueError]
    assert log == [("after", "send", 1, "broken")]


async def test_cancelling_a_send_while_an_async_observer_waits(impl):
    log = []
    gate = asyncio.Event()

    async def waits(message, channel, phase):
        log.append("waiting")
        await gate.wait()
        log.append("never")

    channel = impl.InMemoryChannel(observers=[waits, recorder(log, "after")])
    sender = asyncio.ensure_future(channel.send(impl.ChannelMessage(1)))
    await asyncio.sleep(0)
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender
    assert log == ["waiting"]  # later observers were not told
    assert channel.qsize() == 1  # the message was enqueued before the observers ran


async def test_an_observer_that_absorbs_a_cancellation_lets_the_rest_run(impl):
    log = []
    gate = asyncio.Event()

    async def absorbs(message, channel, phase):
        try:
            await gate.wait()
        except asyncio.CancelledError:
            log.append("absorbed")

    channel = impl.InMemoryChannel(observers=[absorbs, recorder(log, "after")])
    sender = asyncio.ensure_future(channel.send(impl.ChannelMessage(1)))
    await asyncio.sleep(0)
    sender.cancel()
    await sender  # the observer ate the cancellation: send finishes normally
    assert log == ["absorbed", ("after", "send", 1, channel.name)]


async def test_a_base_exception_from_a_sync_observer_after_an_async_one_ends_only_that_call(impl):
    # The send that was notifying fails; the channel, and the next operations
    # (the compiled build reuses its operation objects), are unaffected.
    calls = []
    raised = []

    async def first(message, channel, phase):
        await asyncio.sleep(0)
        calls.append(("async", phase, message.payload))

    def second(message, channel, phase):
        calls.append(("sync", phase, message.payload))
        if not raised:
            raised.append(True)
            raise asyncio.CancelledError("from an observer")

    channel = impl.InMemoryChannel(observers=[first, second])
    with pytest.raises(asyncio.CancelledError):
        await channel.send(impl.ChannelMessage("first"))
    channel.remove_observer(first)
    channel.remove_observer(second)
    await channel.send(impl.ChannelMessage("second"))
    channel.add_observer(first)
    channel.add_observer(second)
    batch = await channel.receive_many(10)
    assert [m.payload for m in batch] == ["first", "second"]
    assert calls[2:] == [
        ("async", "receive", "first"),
        ("sync", "receive", "first"),
        ("async", "receive", "second"),
        ("sync", "receive", "second"),
    ]
