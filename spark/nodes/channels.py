"""Channels: asynchronous message passing between nodes.

The compiled build is used when it imports; the pure-Python build otherwise,
and always when the environment variable ``SPARK_NO_EXTENSIONS`` is set to a
non-empty value. ``IMPLEMENTATION`` says which one is active.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Literal

from ._bridge import QueueBridge
from ._broadcast_py import OnFull
from ._channel_base import (
    BaseChannel,
    ChannelClosed,
    ChannelStats,
    ObserverCallable,
    check_max_items,
    check_message,
)
from ._select_py import MergedChannel

__all__ = [
    "IMPLEMENTATION",
    "BaseChannel",
    "BroadcastChannel",
    "BroadcastSubscription",
    "ChannelClosed",
    "ChannelMessage",
    "ChannelStats",
    "ForwardingChannel",
    "InMemoryChannel",
    "MergedChannel",
    "ObserverCallable",
    "OnFull",
    "QueueBridge",
    "check_max_items",
    "check_message",
    "merge",
    "select",
]

NO_EXTENSIONS = bool(os.environ.get("SPARK_NO_EXTENSIONS")) or sys.implementation.name != "cpython"

IMPLEMENTATION: Literal["cython", "python"]

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._broadcast_py import BroadcastChannel, BroadcastSubscription
    from ._channels_py import ChannelMessage, ForwardingChannel, InMemoryChannel
    from ._select_py import merge, select

    IMPLEMENTATION = "python"
else:
    try:
        from ._channels_c import (  # type: ignore[import-not-found, unused-ignore]
            BroadcastChannel,
            BroadcastSubscription,
            ChannelMessage,
            ForwardingChannel,
            InMemoryChannel,
            merge,
            select,
        )
    except ImportError:
        from ._broadcast_py import BroadcastChannel, BroadcastSubscription
        from ._channels_py import ChannelMessage, ForwardingChannel, InMemoryChannel
        from ._select_py import merge, select

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"
