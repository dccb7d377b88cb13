"""Traces of a small graph with OpenTelemetry: a span per node and message.

    request (this script) -> parse -> enrich -> store

``instrument(graph)`` makes each node process every message in a span named
after the node, child of the context the message carries; the script sends
its inputs from inside a ``request`` span, so each input becomes one trace:
request, then parse, enrich and store, parent to child. One input makes
``enrich`` fail: its span ends with status ERROR and the exception recorded.

The SDK's ``ConsoleSpanExporter`` prints each span as it ends (one line
each, with a formatter); at the end the script prints the span trees.

Run it with ``python examples/tracing.py`` (needs ``opentelemetry-sdk``:
``pip install 'spark-channels[otel]' opentelemetry-sdk``).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from spark.graphs import Graph, Task
from spark.nodes import Node
from spark.nodes.channels import ChannelMessage
from spark.observability import inject, instrument


class Parse(Node):
    def process(self, payload: Any) -> Any:
        return {"order": payload}


class Enrich(Node):
    async def process(self, payload: Any) -> Any:
        await asyncio.sleep(0.001)  # pretend to look something up
        if payload["order"] == "broken":
            raise ValueError("no such order")
        return {**payload, "customer": "ada"}


class Store(Node):
    def process(self, payload: Any) -> Any:
        return f"stored {payload['order']} for {payload['customer']}"


def one_line(span: ReadableSpan) -> str:
    context = span.get_span_context()
    parent = trace.format_span_id(span.parent.span_id) if span.parent else "-" * 16
    status = span.status.status_code.name
    assert context is not None
    return (
        f"span ended: {span.name:<8} trace {trace.format_trace_id(context.trace_id)[:8]} "
        f"span {trace.format_span_id(context.span_id)} parent {parent} {status}\n"
    )


def print_trees(spans: list[ReadableSpan]) -> None:
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for span in sorted(spans, key=lambda span: span.start_time or 0):
        children[span.parent.span_id if span.parent else None].append(span)

    def show(span: ReadableSpan, depth: int) -> None:
        assert span.context is not None and span.end_time and span.start_time
        took = (span.end_time - span.start_time) / 1e6
        error = f"  ERROR {span.status.description}" if not span.status.is_ok else ""
        print(f"{'    ' * depth}{span.name} ({took:.2f} ms){error}")
        for child in children[span.context.span_id]:
            show(child, depth + 1)

    for root in children[None]:
        assert root.context is not None
        print(f"trace {trace.format_trace_id(root.context.trace_id)}")
        show(root, 1)


async def main() -> list[ReadableSpan]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line)))
    finished = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("example")

    parse = Parse(name="parse")
    parse >> Enrich(name="enrich") >> Store(name="store")
    graph = Graph(start=parse)
    instrument(graph, tracer_provider=provider)

    inputs = []
    for order in ("apple", "broken", "pear"):
        with tracer.start_as_current_span("request"):
            inputs.append(inject(ChannelMessage(order)))
    result = await graph.run(Task(inputs=inputs))
    print(f"status: {result.status}, outputs: {sorted(result.outputs)}")
    spans = list(finished.get_finished_spans())
    print_trees(spans)
    provider.shutdown()
    return spans


if __name__ == "__main__":
    asyncio.run(main())
