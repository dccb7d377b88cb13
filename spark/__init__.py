"""spark-channels: an asyncio messaging core (channels, node mailboxes, graphs)."""

__version__ = "0.1.0"
