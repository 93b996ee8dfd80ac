"""The demo's OTLP/HTTP receiver decodes what the SDK's own OTLP/HTTP exporters send."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from examples.order_flow.analysis import merge_histograms, percentile, sum_total
from examples.order_flow.receiver import Receiver

RESOURCE = Resource.create({"service.name": "svc-a", "service.instance.id": "svc-a-1"})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_spans_arrive_decoded(receiver: Receiver, compression: Compression) -> None:
    """Spans exported over OTLP/HTTP (plain or gzip) arrive with ids, parent, links, status, attributes and events."""
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(
        SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", compression=compression)
        )
    )
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("publish shop", kind=SpanKind.PRODUCER) as producer:
        producer.set_attribute("order.id", "17")
        producer.set_attribute("numbers", [1, 2])
    with tracer.start_as_current_span(
        "process orders", kind=SpanKind.CONSUMER, links=[Link(producer.get_span_context())]
    ) as consumer:
        consumer.record_exception(ValueError("bad file"), attributes={"file.bytes": 3})
        consumer.set_status(Status(StatusCode.ERROR, "boom"))
        consumer.set_attribute("error.type", "rejected")
    provider.shutdown()

    spans = {s.name: s for s in receiver.spans()}
    assert set(spans) == {"publish shop", "process orders"}
    publish, process = spans["publish shop"], spans["process orders"]
    pctx = producer.get_span_context()
    assert publish.span_id == f"{pctx.span_id:016x}"
    assert publish.trace_id == f"{pctx.trace_id:032x}"
    assert publish.parent_span_id is None
    assert (publish.service, publish.kind, publish.status, publish.scope) == (
        "svc-a",
        "PRODUCER",
        "UNSET",
        "test",
    )
    assert publish.attributes == {"order.id": "17", "numbers": (1, 2)}
    assert process.links == ((publish.trace_id, publish.span_id),)
    assert (process.kind, process.status, process.status_message, process.error_type) == (
        "CONSUMER",
        "ERROR",
        "boom",
        "rejected",
    )
    assert process.event_names == ("exception",)
    assert process.exception is not None
    assert (process.exception["exception.message"], process.exception["file.bytes"]) == (
        "bad file",
        3,
    )
    assert str(process.exception["exception.type"]).endswith("ValueError")
    assert publish.events == ()
    assert publish.exception is None
    assert process.end_ns >= process.start_ns > 0


def test_metrics_arrive_decoded(receiver: Receiver) -> None:
    """Counters and histograms exported over OTLP/HTTP arrive with buckets, min/max and service."""
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(
            endpoint=f"{receiver.endpoint}/v1/metrics", compression=Compression.Gzip
        ),
        export_interval_millis=60_000,
    )
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    meter = provider.get_meter("test")
    counter = meter.create_counter("messaging.client.consumed.messages")
    histogram = meter.create_histogram(
        "messaging.process.duration", unit="s", explicit_bucket_boundaries_advisory=[0.05, 0.1]
    )
    for value in (0.02, 0.06, 0.07, 0.2):
        counter.add(1, {"messaging.destination.name": "jobs"})
        histogram.record(value, {"messaging.destination.name": "jobs"})
    provider.force_flush()
    counter.add(1, {"messaging.destination.name": "jobs"})  # a second, cumulative export
    provider.shutdown()

    assert sum_total(receiver.sums(), "messaging.client.consumed.messages", service="svc-a") == 5
    merged = merge_histograms(
        receiver.histograms(),
        "messaging.process.duration",
        where={"messaging.destination.name": "jobs"},
    )
    assert merged is not None
    assert (merged.bounds, merged.bucket_counts, merged.count) == ((0.05, 0.1), (1, 2, 1), 4)
    assert (merged.min, merged.max) == (0.02, 0.2)
    assert percentile(merged, 0.5) == pytest.approx(0.075)


def test_bad_bodies_are_refused(receiver: Receiver) -> None:
    """A body that is not OTLP protobuf gets 400 and nothing is recorded; JSON gets 415."""

    def post(body: bytes, content_type: str, encoding: str | None = None) -> int:
        request = urllib.request.Request(
            f"{receiver.endpoint}/v1/traces",
            data=body,
            headers={
                "Content-Type": content_type,
                **({"Content-Encoding": encoding} if encoding else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    assert post(b"\xff\xff\xff", "application/x-protobuf") == 400
    assert post(b"not gzip", "application/x-protobuf", "gzip") == 400
    assert post(b"{}", "application/json") == 415
    assert post(gzip.compress(b""), "application/x-protobuf", "gzip") == 200  # an empty request
    assert receiver.spans() == []
    assert receiver.bad_requests == 1
