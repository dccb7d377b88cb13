"""QueueBridge: the asyncio.Queue surface over a channel."""

from __future__ import annotations

import asyncio

import pytest

from spark.nodes.channels import ChannelClosed, QueueBridge


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
