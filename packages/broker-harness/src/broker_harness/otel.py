"""What the OpenTelemetry SDK exported, in a form tests can compare as whole dicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["Recorder", "span_summary"]


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
        data = self.reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        if data is None:
            return found
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != metric:
                        continue
                    for point in m.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = getattr(point, "count", None)
                        found.append((dict(point.attributes or {}), value))
        return found

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


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
