"""RedisStreamChannel on a Redis Cluster: the routing, and what only a cluster gets wrong.

Every test of test_redis_channel.py already runs on a 3-master cluster as
well as on one server; these check how the channel finds the cluster and
which node holds what.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis_support import require_extra, unique

require_extra()

from redis.asyncio import Redis, RedisCluster  # noqa: E402
from redis.crc import key_slot  # noqa: E402
from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: E402
from redis.exceptions import RedisClusterException  # noqa: E402

from spark.backends._redis_connection import UNREACHABLE  # noqa: E402
from spark.backends._redis_server import LocalRedisCluster  # noqa: E402
from spark.backends.redis import MessagesNotWritten, RedisStreamChannel  # noqa: E402
from spark.nodes.channels import ChannelMessage  # noqa: E402

CANNOT_CONNECT = (RedisConnectionError, RedisClusterException)


class Topology:
    """Which master serves which key, as a cluster client sees it."""

    def __init__(self, url: str) -> None:
        self.client = RedisCluster.from_url(url)

    async def __aenter__(self) -> Topology:
        await self.client.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.aclose()

    def masters(self) -> list[int]:
        return sorted(node.port for node in self.client.get_primaries())

    def owner(self, key: str) -> int:
        return int(self.client.get_node_from_key(key).port)

    def name_served_by(self, port: int) -> str:
        """A fresh channel name whose keys the master on ``port`` serves."""
        while True:
            name = unique()
            if self.owner(f"spark:stream:{{{name}}}") == port:
                return name


def node_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}"


async def test_the_url_of_any_node_reaches_every_slot(cluster_url: str) -> None:
    async with Topology(cluster_url) as topology:
        ports = topology.masters()
        assert len(ports) == 3
        names = {port: topology.name_served_by(port) for port in ports}
    for via in ports:
        for served_by, name in names.items():
            async with RedisStreamChannel(
                name, url=node_url(via), group="g", consumer=f"via-{via}", block=0.05
            ) as ch:
                await ch.send(ChannelMessage((via, served_by)))
                message = await asyncio.wait_for(ch.receive(), 5)
                assert message.payload == [via, served_by]
                assert message.ack is not None
                await message.ack()
                assert (await ch.backlog()).pending == 0
    for served_by, name in names.items():
        # The entries are on the master that serves the name, and nowhere else.
        for port in ports:
            node = Redis.from_url(node_url(port))
            try:
                key = f"spark:stream:{{{name}}}"
                if port == served_by:
                    assert await node.execute_command("EXISTS", key) == 1
                else:  # a node that does not serve the slot holds nothing in it
                    slot = key_slot(key.encode())
                    assert await node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            finally:
                await node.aclose()


async def test_cluster_true_skips_asking(cluster_url: str) -> None:
    name = unique()
    ch = RedisStreamChannel(name, url=cluster_url, group="g", cluster=True, block=0.05)
    assert ch._redis.cluster is True  # known before any command
    async with ch:
        await ch.send(ChannelMessage("told"))
        assert (await asyncio.wait_for(ch.receive(), 5)).payload == "told"


async def test_a_shared_cluster_client_keeps_its_reply_parsing(cluster_url: str) -> None:
    client = RedisCluster.from_url(cluster_url)
    name = unique()
    try:
        async with RedisStreamChannel(name, client=client, group="g", block=0.05) as ch:
            await ch.send(ChannelMessage("raw inside"))
            assert (await asyncio.wait_for(ch.receive(), 5)).payload == "raw inside"
            # The user's own calls still get redis-py's parsed replies.
            entries = await client.xrange(ch.key)
            assert isinstance(entries[0][1], dict)
            pending = await client.xpending(ch.key, "g")
            assert pending["pending"] == 1
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_plain_client_on_a_cluster_node_is_refused(cluster_url: str) -> None:
    client = Redis.from_url(cluster_url)
    try:
        with pytest.raises(TypeError, match=r"pass a redis\.asyncio\.RedisCluster"):
            async with RedisStreamChannel(unique(), client=client, group="g"):
                pytest.fail("entered with a plain client on a cluster node")
        ch = RedisStreamChannel(unique(), client=client, group="g")
        with pytest.raises(TypeError, match=r"pass a redis\.asyncio\.RedisCluster"):
            await ch.send(ChannelMessage("misrouted"))
        await ch.aclose()
        assert await client.ping()  # left open
    finally:
        await client.aclose()


async def test_a_cluster_client_that_cannot_be_made_is_a_clear_error(
    cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spark.backends import _redis_connection

    def refuse(url: str, **options: object) -> None:
        raise RedisClusterException("Unix domain socket is not supported in cluster mode")

    monkeypatch.setattr(_redis_connection.RedisCluster, "from_url", refuse)
    ch = RedisStreamChannel(unique(), url=cluster_url, group="g")
    with pytest.raises(ValueError, match="no cluster client can be made"):
        await asyncio.wait_for(ch.send(ChannelMessage("x")), 5)
    with pytest.raises(ValueError, match="no cluster client can be made"):
        await asyncio.wait_for(ch.backlog(), 5)  # the same again, not some other error
    pool = ch._redis._pool
    assert pool is not None  # kept until a cluster client exists
    await asyncio.wait_for(ch.aclose(), 5)


def test_keys_share_one_slot_whatever_the_name() -> None:
    url = "redis://127.0.0.1:1"
    for name in ("orders", "a{b", "x}y", "{}", "a}{b"):
        ch = RedisStreamChannel(name, url=url, group="g")
        assert key_slot(ch.key.encode()) == key_slot(ch.dead_letter_key.encode()), name
    same = RedisStreamChannel("one", url=url, group="g", key_prefix="app{7}:")
    other = RedisStreamChannel("two", url=url, group="g", key_prefix="app{7}:")
    assert key_slot(same.key.encode()) == key_slot(other.key.encode())
    for name, prefix in (("}x", "spark:"), ("orders", "a{"), ("orders", "{:")):
        with pytest.raises(ValueError, match="different Redis Cluster slots"):
            RedisStreamChannel(name, url=url, group="g", key_prefix=prefix)


def test_cluster_and_client_must_agree() -> None:
    url = "redis://127.0.0.1:1"
    with pytest.raises(TypeError, match="cluster=True needs"):
        RedisStreamChannel("s", group="g", client=Redis.from_url(url), cluster=True)
    with pytest.raises(TypeError, match="cluster=False"):
        RedisStreamChannel("s", group="g", client=RedisCluster.from_url(url), cluster=False)
    with pytest.raises(TypeError, match="cluster must be"):
        RedisStreamChannel("s", group="g", url=url, cluster="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Redis or redis\.asyncio\.RedisCluster"):
        RedisStreamChannel("s", group="g", client=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStreamChannel("s", group="g", client=RedisCluster.from_url(url, decode_responses=True))
    with pytest.raises(ValueError, match="socket_timeout"):
        RedisStreamChannel("s", group="g", url=f"{url}?socket_timeout=1", cluster=True, block=2)


def test_a_cluster_client_that_would_parse_replies_is_refused() -> None:
    client = RedisCluster.from_url("redis://127.0.0.1:1")
    client.response_callbacks["xreadgroup"] = lambda reply, **options: reply
    with pytest.raises(TypeError, match="pass url= instead of client="):
        RedisStreamChannel("s", group="g", client=client)


async def test_an_unreachable_cluster_fails_fast() -> None:
    url = "redis://127.0.0.1:1"
    started = time.monotonic()
    with pytest.raises(CANNOT_CONNECT):
        async with RedisStreamChannel("s", group="g", url=url, cluster=True):
            pytest.fail("entered a cluster that is not there")
    assert time.monotonic() - started < 5
    ch = RedisStreamChannel("s", group="g", url=url, cluster=True, retry_timeout=0.3)
    with pytest.raises(CANNOT_CONNECT):
        await asyncio.wait_for(ch.send(ChannelMessage(1)), 5)
    ch.send_nowait(ChannelMessage(2))
    with pytest.raises(MessagesNotWritten, match="1 message"):
        await asyncio.wait_for(ch.aclose(), 5)


@pytest.mark.timeout_s(60)
async def test_a_master_going_down_fails_fast_and_loses_nothing_silently() -> None:
    """Its slots are not served any more: sends fail after retry_timeout, and say so."""
    cluster = LocalRedisCluster()
    await asyncio.to_thread(cluster.start)
    try:
        name = unique()
        async with RedisStreamChannel(
            name, url=cluster.url, group="g", retry_timeout=1.0, block=0.05
        ) as ch:
            await ch.send(ChannelMessage("before"))
            async with Topology(cluster.url) as topology:
                served_by = topology.owner(ch.key)
            victim = next(server for server in cluster.servers if server.port == served_by)
            await asyncio.to_thread(victim.stop)
            started = time.monotonic()
            with pytest.raises(Exception) as raised:
                await asyncio.wait_for(ch.send(ChannelMessage("lost")), 30)
            assert isinstance(raised.value, UNREACHABLE), raised.value
            assert time.monotonic() - started < 20
            for number in range(3):
                ch.send_nowait(ChannelMessage(number))
            with pytest.raises(MessagesNotWritten, match="3 message"):
                await asyncio.wait_for(ch.flush(), 30)
    finally:
        await asyncio.to_thread(cluster.stop)


def test_local_cluster_is_stopped_by_pid() -> None:
    cluster = LocalRedisCluster()
    cluster.start()
    processes = [server.process for server in cluster.servers]
    try:
        assert len(processes) == 3 and all(p is not None and p.poll() is None for p in processes)
    finally:
        cluster.stop()
    assert all(p is not None and p.poll() is not None for p in processes)
    assert cluster.servers == []
