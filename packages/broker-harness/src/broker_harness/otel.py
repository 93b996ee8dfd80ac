"""What the OpenTelemetry SDK exported, in a form tests can compare as whole dicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanContext

from broker_harness.broker import Broker

__all__ = [
    "Recorder",
    "Traceparent",
    "data_points",
    "header_text",
    "messaging_attributes",
    "span_summary",
]

#: the semconv operation type of each operation name
OPERATION_TYPES = {"publish": "send", "process": "process", "receive": "receive"} | dict.fromkeys(
    ("ack", "nack", "reject"), "settle"
)


@dataclass
class Recorder:
    """A tracer and a meter provider of their own, recording in memory; pass them to ``instrument()``."""

    tracer_provider: TracerProvider = field(default_factory=TracerProvider)
    meter_provider: MeterProvider = field(init=False)
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)

    def __post_init__(self) -> None:
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        """Every finished span so far, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        """The finished spans called ``name``."""
        return [s for s in self.spans() if s.name == name]

    def wait_for(
        self, predicate: Callable[[list[ReadableSpan]], bool], timeout: float = 10.0
    ) -> list[ReadableSpan]:
        """Poll until ``predicate(spans)`` holds (spans end on other threads/tasks); the spans."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.01)

    def wait_for_count(self, name: str, count: int, timeout: float = 10.0) -> list[ReadableSpan]:
        """Poll until at least ``count`` spans called ``name`` ended; those spans."""
        self.wait_for(lambda spans: sum(s.name == name for s in spans) >= count, timeout)
        return self.named(name)

    def clear(self) -> None:
        self.exporter.clear()

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        """``(attributes, value)`` of every data point of ``metric``; histograms give their count."""
        found: list[tuple[dict[str, Any], Any]] = []
        for point in data_points(self.reader, metric):
            value = getattr(point, "value", None)
            if value is None:
                value = getattr(point, "count", None)
            found.append((dict(point.attributes or {}), value))
        return found

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def data_points(reader: InMemoryMetricReader, metric: str) -> list[Any]:
    """Every data point of ``metric`` the reader collects now (the SDK's point objects)."""
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == metric
        for point in m.data.data_points
    ]


def span_summary(span: ReadableSpan, spans: Sequence[ReadableSpan] = ()) -> dict[str, Any]:
    """One span as a plain dict; parent and links named by span name when found in ``spans``."""
    by_id = {s.context.span_id: s.name for s in spans if s.context is not None}

    def name_of(span_id: int) -> Any:
        return by_id.get(span_id, f"{span_id:016x}")

    return {
        "name": span.name,
        "kind": span.kind.name,
        "parent": name_of(span.parent.span_id) if span.parent is not None else None,
        "links": [name_of(link.context.span_id) for link in span.links],
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [e.name for e in span.events],
    }


def messaging_attributes(
    broker: Broker, operation: str, destination: str, routing_key: str = "", **extra: Any
) -> dict[str, Any]:
    """The attributes every ``operation`` span on ``destination`` has (SPEC's list), plus ``extra``
    (dotted names as keywords: ``**{"messaging.message.id": "m-1"}``)."""
    found: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": operation,
        "messaging.operation.type": OPERATION_TYPES[operation],
        "messaging.destination.name": destination,
        "server.address": broker.host,
        "server.port": broker.port,
    }
    if routing_key:
        found["messaging.rabbitmq.destination.routing_key"] = routing_key
    found.update(extra)
    return found


def header_text(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """A header's value as text: clients hand AMQP long strings over as ``str`` or ``bytes``."""
    value = (headers or {}).get(name)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return None if value is None else str(value)


@dataclass(frozen=True)
class Traceparent:
    """The trace id, parent span id and sampled flag of a W3C ``traceparent``."""

    trace_id: int
    span_id: int
    sampled: bool

    @classmethod
    def of(cls, span: ReadableSpan | Span | SpanContext) -> Traceparent:
        """What a message published under ``span`` (or that span context) carries."""
        context = span if isinstance(span, SpanContext) else span.get_span_context()
        assert context is not None
        return cls(context.trace_id, context.span_id, context.trace_flags.sampled)

    @classmethod
    def in_headers(cls, headers: Mapping[str, Any] | None) -> Traceparent:
        """The ``traceparent`` header of a received message (``str`` or ``bytes``)."""
        text = header_text(headers, "traceparent")
        assert text is not None, f"no traceparent in {headers!r}"
        _version, trace_id, span_id, flags = text.split("-")
        return cls(int(trace_id, 16), int(span_id, 16), bool(int(flags, 16) & 1))
