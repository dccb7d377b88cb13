"""A trace context in a message's metadata: W3C ``traceparent`` and ``tracestate``."""

from __future__ import annotations

from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "extract",
    "inject",
    "parent_context",
    "span_headers",
    "trace_headers",
]

TRACEPARENT = "traceparent"
"""The metadata key of the W3C trace context: version, trace id, parent span id, flags."""
TRACESTATE = "tracestate"
"""The metadata key of the vendor-specific W3C trace state; present only when not empty."""

_PROPAGATOR = TraceContextTextMapPropagator()

M = TypeVar("M")


def _metadata_of(message: Any) -> dict[str, Any]:
    metadata = getattr(message, "metadata", None)
    if not isinstance(metadata, dict):
        raise TypeError(
            "inject() and extract() take a ChannelMessage (with a dict as metadata), "
            f"got {type(message).__name__}"
        )
    return metadata


def trace_headers(context: Context | None = None) -> dict[str, str]:
    """The ``traceparent`` (and ``tracestate``) of ``context``, by default the current one.

    Empty when the context holds no valid span (no tracing SDK, or no span
    started).
    """
    return span_headers(trace.get_current_span(context).get_span_context())


def span_headers(span_context: trace.SpanContext) -> dict[str, str]:
    """``span_context`` as W3C trace context headers (what the W3C propagator injects).

    Empty for an invalid span context.
    """
    if not span_context.is_valid:
        return {}
    headers = {
        TRACEPARENT: f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{span_context.trace_flags:02x}"
    }
    if span_context.trace_state:
        headers[TRACESTATE] = span_context.trace_state.to_header()
    return headers


def inject(message: M, context: Context | None = None) -> M:
    """Put ``context`` (by default the current one) into ``message``'s metadata; return it.

    Sets ``traceparent``, and ``tracestate`` when the span carries one. With
    no valid span in the context, the metadata is left as it is.
    """
    metadata = _metadata_of(message)
    metadata.update(trace_headers(context))
    return message


def extract(message: Any, context: Context | None = None) -> Context:
    """The trace context carried by ``message``'s metadata, on top of ``context``.

    ``context`` defaults to an empty one: what is returned then holds the
    message's remote span as parent, or no span when the metadata has no
    valid ``traceparent``. Use it as ``tracer.start_as_current_span(name,
    context=extract(message))``.
    """
    return _PROPAGATOR.extract(_metadata_of(message), context)


def parent_context(message: Any) -> Context | None:
    """The context a span handling ``message`` starts in: the message's, or None for the current.

    None when the metadata carries no valid ``traceparent``.
    """
    metadata = getattr(message, "metadata", None)
    if not metadata or TRACEPARENT not in metadata or not isinstance(metadata, dict):
        return None
    context = _PROPAGATOR.extract(metadata)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context
