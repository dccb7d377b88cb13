"""The pure build's BroadcastChannel and select, under one name for the scenarios."""

from spark.nodes._broadcast_py import BroadcastChannel
from spark.nodes._select_py import select

__all__ = ["BroadcastChannel", "select"]
