"""How ``RedisStreamChannel`` talks to Redis: one server or a cluster, replies unparsed.

The channel reads every reply raw, the same whatever redis-py version,
protocol (RESP2 or RESP3) or topology is in use:

* with one server, through a private ``Redis`` client on the pool (the
  caller's, or one made from the URL) whose reply callbacks are removed;
* with a Redis Cluster, through a ``RedisCluster`` (the caller's, or one made
  from the URL). Its reply callbacks are looked up by exact command name, so
  the channel names its commands in lower case, which no callback is
  registered under; the routing (by key, EVAL/EVALSHA by their KEYS) and the
  redirections are the client's.

A URL names a node, not a topology: unless told (``cluster=``), the first
command asks the server (``INFO cluster``) and a cluster node gets a cluster
client.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["UNREACHABLE", "RedisConnection"]

UNREACHABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,  # a master is down and its slots are not served yet
    TryAgainError,  # a slot is being migrated
    RedisClusterException,  # no startup node reachable, slots not covered
)
"""Errors that mean Redis cannot be reached right now: worth retrying, for a while."""

# The commands the channel sends and reads raw (named in lower case, see above).
RAW_COMMANDS = (
    "eval", "evalsha", "xack", "xadd", "xautoclaim", "xclaim", "xgroup", "xinfo",
    "xlen", "xpending", "xrange", "xreadgroup",
)  # fmt: skip

_SHA: dict[str, str] = {}


def _socket_timeout(connection_kwargs: Mapping[str, Any]) -> float | None:
    """The read timeout of connections made with these arguments: set, or the class default."""
    if "socket_timeout" in connection_kwargs:
        value = connection_kwargs["socket_timeout"]
    else:
        value = None
        for cls in connection_kwargs.get("connection_class", Connection).__mro__:
            try:
                parameters = inspect.signature(vars(cls).get("__init__", object)).parameters
            except (TypeError, ValueError):
                continue
            if "socket_timeout" in parameters:
                value = parameters["socket_timeout"].default
                break
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class RedisConnection:
    """One channel's way to Redis; see the module docstring.

    ``block`` is the longest a command may wait on the server (a blocking
    XREADGROUP): the connections' read timeout must be longer.
    """

    def __init__(
        self,
        *,
        url: str | None,
        client: Redis | RedisCluster | None,
        connection_options: Mapping[str, Any] | None,
        cluster: bool | None,
        block: float,
    ) -> None:
        if (url is None) == (client is None):
            raise TypeError("pass exactly one of url= and client=")
        if cluster is not None and not isinstance(cluster, bool):
            raise TypeError(f"cluster must be True, False or None, got {cluster!r}")
        self._block = block
        self._owned = client is None
        self._url = url
        self._options = dict(connection_options or {})
        self._options["decode_responses"] = False
        self._pool: ConnectionPool | None = None
        self._cluster_client: RedisCluster | None = None
        if isinstance(client, RedisCluster):
            if cluster is False:
                raise TypeError("cluster=False, but client is a RedisCluster")
            if connection_options:
                raise TypeError("connection_options apply to url=, not to a shared client")
            self._use_cluster(client)
        elif isinstance(client, Redis):
            if cluster:
                raise TypeError(
                    "cluster=True needs client= to be a redis.asyncio.RedisCluster (or url=)"
                )
            if connection_options:
                raise TypeError("connection_options apply to url=, not to a shared client")
            self._use_pool(client.connection_pool)
        elif client is not None:
            raise TypeError(
                "client must be a redis.asyncio.Redis or redis.asyncio.RedisCluster, "
                f"got {type(client).__name__}"
            )
        elif not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        elif cluster:
            self._use_cluster(RedisCluster.from_url(url, **self._options))
        else:
            self._use_pool(ConnectionPool.from_url(url, **self._options))
        self.cluster: bool | None = True if self._cluster_client is not None else cluster
        """Whether Redis is a cluster; ``None`` until the first command found out."""
        self.execute: Callable[..., Awaitable[Any]] = (
            self._first_execute if self.cluster is None else self._client.execute_command
        )
        """Send one command (its name in lower case) and return the raw reply."""
        self._detecting = asyncio.Lock()

    @property
    def _client(self) -> Redis | RedisCluster:
        return self._cluster_client if self._cluster_client is not None else self._redis

    def _use_pool(self, pool: ConnectionPool) -> None:
        self._check_options(pool.connection_kwargs)
        self._pool = pool
        # A private client on the pool: its reply callbacks can go.
        self._redis = Redis(connection_pool=pool)
        self._redis.response_callbacks.clear()

    def _use_cluster(self, client: RedisCluster) -> None:
        self._check_options(client.get_connection_kwargs())
        parsed = [name for name in RAW_COMMANDS if name in client.response_callbacks]
        if parsed and not self._owned:
            raise TypeError(
                f"this redis-py parses the replies of {', '.join(parsed)} on a shared "
                "RedisCluster, which the channel reads raw; pass url= instead of client="
            )
        for name in parsed:
            del client.response_callbacks[name]
        self._cluster_client = client

    def _check_options(self, connection_kwargs: Mapping[str, Any]) -> None:
        if connection_kwargs.get("decode_responses"):
            raise ValueError("the channel needs a client without decode_responses=True")
        timeout = _socket_timeout(connection_kwargs)
        if timeout is not None and self._block >= timeout:
            raise ValueError(
                f"block ({self._block} s) must be shorter than the connection's "
                f"socket_timeout ({timeout} s)"
            )

    async def _first_execute(self, *args: Any) -> Any:
        await self.connect()
        return await self.execute(*args)

    async def connect(self) -> None:
        """Find out, once, whether Redis is a cluster (see the module docstring)."""
        if self.cluster is None:
            async with self._detecting:
                if self.cluster is None:
                    await self._detect()

    async def _detect(self) -> None:
        """Ask the server whether it is a cluster node; switch to a cluster client if so."""
        execute: Callable[..., Awaitable[Any]] = self._redis.execute_command
        try:
            info = await execute("INFO", "cluster")
        except ResponseError:  # INFO refused (ACL, renamed): taken as a single server
            info = b""
        if b"cluster_enabled:1" not in bytes(info or b""):
            self.cluster = False
            self.execute = execute
            return
        if not self._owned:
            raise TypeError(
                "client is a redis.asyncio.Redis connected to a Redis Cluster node; "
                "pass a redis.asyncio.RedisCluster, or url="
            )
        assert self._url is not None and self._pool is not None
        try:
            cluster_client = RedisCluster.from_url(self._url, **self._options)
        except (RedisClusterException, TypeError) as error:
            raise ValueError(
                f"the server is a Redis Cluster node, but no cluster client can be made "
                f"from this url: {error}"
            ) from error
        self._use_cluster(cluster_client)
        pool, self._pool = self._pool, None
        await pool.disconnect()
        self.cluster = True
        self.execute = self._client.execute_command

    async def pipeline(self) -> Any:
        """A pipeline without a transaction; its commands must touch one slot."""
        await self.connect()
        return self._client.pipeline(transaction=False)

    async def run_script(self, script: str, keys: tuple[str, ...], *args: Any) -> Any:
        """Run a Lua script (EVALSHA, or EVAL the first time a server sees it)."""
        sha = _SHA.get(script)
        if sha is None:
            sha = _SHA[script] = hashlib.sha1(script.encode()).hexdigest()
        try:
            return await self.execute("evalsha", sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.execute("eval", script, len(keys), *keys, *args)

    async def ping(self) -> None:
        """Check that Redis (every node of a cluster) answers; raise its error if not."""
        await self.connect()
        ping: Callable[..., Awaitable[Any]] = self._client.execute_command
        await ping("PING")

    async def close(self) -> None:
        """Release the connections this object opened; a shared client is left open."""
        if not self._owned:
            return
        if self._cluster_client is not None:
            await self._cluster_client.aclose()
        if self._pool is not None:
            await self._pool.disconnect()
