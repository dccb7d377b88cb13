"""OpenTelemetry for spark: traces that follow messages through nodes, and channel metrics.

Install with ``pip install 'spark-channels[otel]'`` (it depends on
``opentelemetry-api`` only; bring the SDK or a distro to export anything).

* ``inject(message)`` / ``extract(message)`` carry a trace context in a
  message's metadata as W3C ``traceparent`` (and ``tracestate``): plain
  strings, which survive every channel, Redis included.
* ``instrument(graph_or_nodes)`` makes each node's default loop run
  ``process()`` in a span named after the node, child of the context the
  message carries, and stamp what it sends with that span's context.
* ``ChannelMetrics`` is a channel observer that records messages sent and
  received, queue depth and time in channel.

Nothing here is imported by ``spark.nodes`` or ``spark.graphs``: with
instrumentation off, OpenTelemetry is not loaded and nothing is paid.
"""

from __future__ import annotations

try:
    import opentelemetry.trace  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "spark.observability needs OpenTelemetry: pip install 'spark-channels[otel]'"
    ) from error

from ._metrics import ChannelMetrics
from ._propagation import TRACEPARENT, TRACESTATE, extract, inject
from ._tracing import NodeInstrumentation, instrument, uninstrument

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "ChannelMetrics",
    "NodeInstrumentation",
    "extract",
    "inject",
    "instrument",
    "uninstrument",
]
