"""The receive buffer of ``RedisStreamChannel``: compiled along with the channel core.

The compiled ``StreamBuffer`` is used when the channel core is (see
``spark.nodes.channels.IMPLEMENTATION``: not with ``SPARK_NO_EXTENSIONS``)
and it imports; the pure one otherwise. ``IMPLEMENTATION`` says which.
"""

from __future__ import annotations

from typing import Literal

from ..nodes.channels import IMPLEMENTATION as _CORE

__all__ = ["IMPLEMENTATION", "EntryAck", "StreamBuffer"]

IMPLEMENTATION: Literal["cython", "python"] = "python"

from ._stream_py import EntryAck, StreamBuffer  # noqa: E402

if _CORE == "cython":
    try:
        from ._stream_c import (  # type: ignore[import-not-found, no-redef, unused-ignore]
            EntryAck,
            StreamBuffer,
        )
    except ImportError:
        pass
    else:
        IMPLEMENTATION = "cython"
