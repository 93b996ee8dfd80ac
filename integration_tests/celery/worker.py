"""The app a test's Celery worker runs: ``celery -A integration_tests.celery.worker worker ...``.

It sets up an SDK whose spans go through a ``BatchSpanProcessor`` to the JSON-lines file named by
``OTEL_TEST_SPANS`` (appended with one ``write`` per batch, so the worker's children, after a
fork, write to it too), and whose metric points are written to ``<file>.metrics`` when the worker
shuts down. ``OTEL_TEST_INSTRUMENT`` says where ``instrument()`` is called:

``parent``
    at import, in the process Celery starts (before a prefork pool forks): the pattern the guide
    tells users to follow;
``worker_process_init``
    in each pool child, from Celery's ``worker_process_init`` signal: the pattern
    opentelemetry-instrumentation-celery's README shows for prefork;
``opentelemetry-instrument``
    nowhere here: the worker runs under ``opentelemetry-instrument``, which instrumented every
    installed instrumentor (both of these) with the global providers; this module sets them.

Both instrument Celery (opentelemetry-instrumentation-celery) and kombu (ours); our options come
from the usual variables (``OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES``, ...). The worker writes
``<file>.ready`` once it consumes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import signals
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from integration_tests.celery.tasks import make_app
from otel_kombu import KombuInstrumentor

SPANS = Path(os.environ["OTEL_TEST_SPANS"])
MODE = os.environ.get("OTEL_TEST_INSTRUMENT", "parent")


def span_record(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
        "pid": os.getpid(),
    }


class FileSpanExporter(SpanExporter):
    """Appends each span as one JSON line; safe across processes (one O_APPEND write per batch)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


metrics = InMemoryMetricReader()


def providers() -> tuple[TracerProvider, MeterProvider]:
    tracer_provider = TracerProvider()
    # as users set it up: a batch processor, made in the parent, which the SDK restarts in each
    # forked child (os.register_at_fork); a short delay so that tests wait little
    tracer_provider.add_span_processor(
        BatchSpanProcessor(FileSpanExporter(SPANS), schedule_delay_millis=50)
    )
    return tracer_provider, MeterProvider(metric_readers=[metrics])


def instrument() -> None:
    tracer_provider, meter_provider = providers()
    CeleryInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    KombuInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)


if MODE == "parent":
    instrument()
elif MODE == "opentelemetry-instrument":
    # the instrumentors were instrumented by opentelemetry-instrument before this module was
    # imported, with the global (proxy) providers: these become the real ones
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace

    tracer_provider, meter_provider = providers()
    trace.set_tracer_provider(tracer_provider)
    otel_metrics.set_meter_provider(meter_provider)
elif MODE == "worker_process_init":

    @signals.worker_process_init.connect(weak=False)
    def _in_child(**_: Any) -> None:
        instrument()


app = make_app(os.environ["OTEL_TEST_BROKER"], os.environ["OTEL_TEST_QUEUE"])


@signals.worker_ready.connect(weak=False)
def _ready(**_: Any) -> None:
    Path(f"{SPANS}.ready").write_text(str(os.getpid()))


@signals.worker_shutdown.connect(weak=False)
def _dump_metrics(**_: Any) -> None:
    data = metrics.get_metrics_data()
    points = [
        {"metric": metric.name, "attributes": dict(point.attributes or {})}
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]
    Path(f"{SPANS}.metrics").write_text("".join(json.dumps(p) + "\n" for p in points))
