"""What the Redis tests share: a server to talk to, and a way to skip without one.

``redis_server()`` backs a session fixture. It yields the URL of
``SPARK_REDIS_URL`` when that is set; otherwise it starts a throwaway
``redis-server`` on 127.0.0.1 (free port, no persistence) and stops it by
PID afterwards. Without ``redis-server`` (or without the ``redis`` extra) the
tests are skipped, unless ``SPARK_REQUIRE_REDIS`` is set, which makes that a
failure (CI sets it).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator

import pytest

REQUIRE_REDIS = bool(os.environ.get("SPARK_REQUIRE_REDIS"))
EXTERNAL_URL = os.environ.get("SPARK_REDIS_URL") or None


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


def unique(prefix: str = "t") -> str:
    """A stream name no other test uses, so tests never see each other's entries."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
