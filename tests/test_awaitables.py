"""What send()/receive() return: awaitables that act like coroutines on both builds.

The compiled build returns its own awaitable instead of a coroutine; these
tests hold both builds to the same contract: nothing happens until the
awaitable is first awaited, it can be awaited once, and it works wherever
asyncio accepts a coroutine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle

import pytest

from spark.nodes.channels import ChannelClosed


async def test_nothing_happens_until_awaited(impl):
    channel = impl.InMemoryChannel(maxsize=1)
    channel.send_nowait(impl.ChannelMessage("first"))
    receive = channel.receive()  # created, never awaited
    send = channel.send(impl.ChannelMessage("second"))
    assert channel.qsize() == 1 and channel.stats().receivers_waiting == 0
    receive.close()
    send.close()
    assert channel.receive_nowait().payload == "first"
    assert channel.stats().sent == 1


async def test_checks_happen_when_awaited(impl):
    channel = impl.InMemoryChannel()
    send = channel.send(impl.ChannelMessage(1))
    channel.close()
    with pytest.raises(ChannelClosed):
        await send
    forwarder = impl.ForwardingChannel(impl.InMemoryChannel())
    pending = forwarder.send(impl.ChannelMessage(1))
    forwarder.close()
    with pytest.raises(ChannelClosed):
        await pending
    bad = impl.InMemoryChannel().send("raw")
    with pytest.raises(TypeError, match="ChannelMessage"):
        await bad


async def test_an_awaitable_is_awaited_once(impl):
    channel = impl.InMemoryChannel()
    channel.send_nowait(impl.ChannelMessage(1))
    receive = channel.receive()
    await receive
    with pytest.raises(RuntimeError):
        await receive


async def test_asyncio_takes_them_as_coroutines(impl):
    channel = impl.InMemoryChannel()
    pending = channel.receive()
    assert asyncio.iscoroutine(pending)
    task = asyncio.create_task(pending)
    await asyncio.sleep(0)
    channel.send_nowait(impl.ChannelMessage("via task"))
    assert (await task).payload == "via task"
    gathered = await asyncio.gather(
        channel.send(impl.ChannelMessage(1)), channel.send(impl.ChannelMessage(2))
    )
    assert gathered == [None, None]
    assert [m.payload for m in await channel.receive_many(5)] == [1, 2]


async def test_wait_for_timeout_leaves_no_waiter_and_no_lost_message(impl):
    channel = impl.InMemoryChannel()
    for _ in range(3):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(channel.receive(), 0.01)
    assert channel.stats().receivers_waiting == 0
    channel.send_nowait(impl.ChannelMessage("kept"))
    assert (await asyncio.wait_for(channel.receive(), 1)).payload == "kept"


async def test_cancelling_a_task_that_never_started_takes_nothing(impl):
    channel = impl.InMemoryChannel()
    channel.send_nowait(impl.ChannelMessage("kept"))
    task = asyncio.ensure_future(channel.receive())
    task.cancel()  # before it ever ran
    with pytest.raises(asyncio.CancelledError):
        await task
    assert channel.receive_nowait().payload == "kept"


async def test_throw_into_a_blocked_receive_takes_nothing(impl):
    channel = impl.InMemoryChannel()
    receive = channel.receive()
    assert receive.send(None) is not None  # suspends on a future
    assert channel.stats().receivers_waiting == 1
    with pytest.raises(KeyError):
        receive.throw(KeyError("boom"))
    assert channel.stats().receivers_waiting == 0
    channel.send_nowait(impl.ChannelMessage(1))
    assert channel.receive_nowait().payload == 1


async def test_many_pending_awaitables_of_one_channel(impl):
    channel = impl.InMemoryChannel()
    receivers = [channel.receive() for _ in range(5)]  # all outstanding at once
    tasks = [asyncio.ensure_future(r) for r in receivers]
    await asyncio.sleep(0)
    for i in range(5):
        channel.send_nowait(impl.ChannelMessage(i))
    assert [(await t).payload for t in tasks] == [0, 1, 2, 3, 4]


def test_dataclass_helpers_work_on_the_envelope(impl):
    message = impl.ChannelMessage({"a": 1}, {"trace_id": "t"})
    assert [f.name for f in dataclasses.fields(message)] == [
        "payload",
        "metadata",
        "ack",
        "is_shutdown",
    ]
    assert dataclasses.is_dataclass(message)
    replaced = dataclasses.replace(message, payload=2)
    assert type(replaced) is type(message) and replaced.payload == 2
    assert replaced.metadata == {"trace_id": "t"}
    assert dataclasses.asdict(message) == {
        "payload": {"a": 1},
        "metadata": {"trace_id": "t"},
        "ack": None,
        "is_shutdown": False,
    }


def test_envelope_is_unhashable_like_a_dataclass(impl):
    with pytest.raises(TypeError):
        hash(impl.ChannelMessage(1))


def test_envelope_can_be_subclassed_and_sent(impl):
    class Traced(impl.ChannelMessage):
        pass

    channel = impl.InMemoryChannel()
    message = Traced(1)
    channel.send_nowait(message)
    assert channel.receive_nowait() is message
    assert pickle.loads(pickle.dumps(impl.ChannelMessage(1))) == impl.ChannelMessage(1)


def test_none_metadata_is_an_empty_dict(impl):
    message = impl.ChannelMessage(1, None)
    assert message.metadata == {} and type(message.metadata) is dict
    assert impl.ChannelMessage(2).metadata is not impl.ChannelMessage(3).metadata
    forwarded = impl.InMemoryChannel()
    impl.ForwardingChannel(forwarded, metadata_defaults={"a": 1}).send_nowait(message)
    assert forwarded.receive_nowait().metadata == {"a": 1}


def test_match_args(impl):
    match impl.ChannelMessage("p", {"k": 1}):
        case impl.ChannelMessage(payload, metadata):
            assert (payload, metadata) == ("p", {"k": 1})
        case _:
            pytest.fail("ChannelMessage did not match positionally")
