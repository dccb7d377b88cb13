"""``ProcessLocal``: what reports to this process's OpenTelemetry providers."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

L = TypeVar("L", bound="ProcessLocal")


class ProcessLocal:
    """Shared, not copied, by ``copy.copy``/``copy.deepcopy``; refuses to be pickled.

    A copied channel or node keeps reporting through the same instance;
    another process must make its own. ``NOT_PICKLED`` says what to do.
    """

    NOT_PICKLED: ClassVar[str]

    def __deepcopy__(self: L, memo: dict[int, Any]) -> L:
        return self

    def __copy__(self: L) -> L:
        return self

    def __reduce__(self) -> Any:
        raise TypeError(self.NOT_PICKLED)
