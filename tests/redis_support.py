"""What the Redis tests share: servers to talk to, and a way to skip without them.

``redis_server()`` backs a session fixture. It yields the URL of
``SPARK_REDIS_URL`` when that is set; otherwise it starts a throwaway
``redis-server`` on 127.0.0.1 (free port, no persistence) and stops it by
PID afterwards. ``redis_cluster()`` does the same for a 3-master Redis
Cluster (``SPARK_REDIS_CLUSTER_URL``, or three local servers joined with
``redis-cli --cluster create``). Without ``redis-server`` (or without the
``redis`` extra) the tests are skipped, unless ``SPARK_REQUIRE_REDIS`` is
set, which makes that a failure (CI sets it).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

REQUIRE_REDIS = bool(os.environ.get("SPARK_REQUIRE_REDIS"))
EXTERNAL_URL = os.environ.get("SPARK_REDIS_URL") or None
EXTERNAL_CLUSTER_URL = os.environ.get("SPARK_REDIS_CLUSTER_URL") or None
CLUSTER_URLS: set[str] = set()
"""The URLs ``redis_cluster()`` handed out: ``admin_client()`` makes cluster clients for them."""


def unavailable(reason: str) -> None:
    """Skip the test, or fail it when Redis is required."""
    if REQUIRE_REDIS:
        pytest.fail(f"SPARK_REQUIRE_REDIS is set but {reason}", pytrace=False)
    pytest.skip(reason)


def require_extra() -> None:
    """Skip (or fail) a whole module when the ``redis`` extra is not installed."""
    missing = [name for name in ("redis", "msgspec") if importlib.util.find_spec(name) is None]
    if missing:
        reason = (
            f"{' and '.join(missing)} not installed; "
            "install the extra: pip install 'spark-channels[redis]'"
        )
        if REQUIRE_REDIS:
            raise RuntimeError(f"SPARK_REQUIRE_REDIS is set but {reason}")
        pytest.skip(reason, allow_module_level=True)


def redis_server() -> Iterator[str]:
    """The URL of a Redis server for the session's tests."""
    if EXTERNAL_URL is not None:
        yield EXTERNAL_URL
        return
    from spark.backends._redis_server import LocalRedisServer, ServerUnavailable

    server = LocalRedisServer()
    try:
        server.start()
    except ServerUnavailable as error:
        unavailable(
            f"no Redis server for the tests ({error}); install redis-server "
            "(apt-get install redis-server) or point SPARK_REDIS_URL at one"
        )
    try:
        yield server.url
    finally:
        server.stop()


def redis_cluster() -> Iterator[str]:
    """The URL of a node of a Redis Cluster (3 masters) for the session's tests."""
    if EXTERNAL_CLUSTER_URL is not None:
        CLUSTER_URLS.add(EXTERNAL_CLUSTER_URL)
        yield EXTERNAL_CLUSTER_URL
        return
    from spark.backends._redis_server import LocalRedisCluster, ServerUnavailable

    cluster = LocalRedisCluster()
    try:
        cluster.start()
    except ServerUnavailable as error:
        unavailable(
            f"no Redis Cluster for the tests ({error}); install redis-server and "
            "redis-tools, or point SPARK_REDIS_CLUSTER_URL at one"
        )
    CLUSTER_URLS.add(cluster.url)
    try:
        yield cluster.url
    finally:
        cluster.stop()


def admin_client(url: str) -> Any:
    """A client to look at what the channel did: a ``RedisCluster`` for a cluster URL."""
    from redis.asyncio import Redis, RedisCluster

    if url.split("?")[0] in CLUSTER_URLS:
        return RedisCluster.from_url(url)
    return Redis.from_url(url)


def unique(prefix: str = "t") -> str:
    """A stream name no other test uses, so tests never see each other's entries."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
