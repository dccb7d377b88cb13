"""``NodeConfig``: the settings of one node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .channels import BaseChannel

__all__ = ["NodeConfig"]


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """The settings of a node; every field is optional.

    ``Node(**kwargs)`` fills these fields from its keyword arguments, so
    ``Node(name="parser", mailbox_maxsize=100)`` and
    ``Node(config=NodeConfig(name="parser", mailbox_maxsize=100))`` are the same.
    """

    id: str | None = None
    """The node's unique id; a random one (uuid4 hex) when not given."""
    name: str | None = None
    """A readable name for logs; derived from the class and the id when not given."""
    live: bool = False
    """Marks a node written as a continuous worker (long-running graphs).

    Informational: the graph's ``TaskType`` decides how a run proceeds."""
    mailbox_maxsize: int = 0
    """The bound of the default mailbox; 0 means unbounded. Unused when a mailbox is given."""
    dead_letter: BaseChannel[Any] | None = None
    """Where the default ``go()`` sends messages whose processing failed, with the error in
    their metadata; failed messages are only logged when it is ``None``."""

    def __post_init__(self) -> None:
        for field_name in ("id", "name"):
            value = getattr(self, field_name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(
                    f"NodeConfig.{field_name} must be a non-empty str or None, got {value!r}"
                )
        if not isinstance(self.live, bool):
            raise TypeError(f"NodeConfig.live must be a bool, got {type(self.live).__name__}")
        maxsize = self.mailbox_maxsize
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(
                f"NodeConfig.mailbox_maxsize must be an int, got {type(maxsize).__name__}"
            )
        if maxsize < 0:
            raise ValueError(
                f"NodeConfig.mailbox_maxsize must be >= 0 (0 means unbounded), got {maxsize}"
            )
        if self.dead_letter is not None and not isinstance(self.dead_letter, BaseChannel):
            raise TypeError(
                "NodeConfig.dead_letter must be a channel (a BaseChannel) or None, "
                f"got {type(self.dead_letter).__name__}"
            )
