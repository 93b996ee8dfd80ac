"""A small OTLP/HTTP receiver: what the services export, decoded into :mod:`.analysis` records.

Stdlib ``http.server`` on 127.0.0.1 (a free port), protobuf bodies (``application/x-protobuf``,
gzip-aware) decoded with ``opentelemetry-proto``. It accepts ``/v1/traces`` and ``/v1/metrics``,
answers ``/v1/logs`` with an empty success, and keeps everything in memory behind a lock. It is a
demo and test tool, not a collector: no JSON encoding, no retries asked for, no persistence.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from examples.order_flow.analysis import HistogramPoint, SpanEvent, SpanRecord, SumPoint

__all__ = ["Receiver", "decode_metrics", "decode_spans"]

_KINDS = {
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_STATUS = {
    Status.STATUS_CODE_UNSET: "UNSET",
    Status.STATUS_CODE_OK: "OK",
    Status.STATUS_CODE_ERROR: "ERROR",
}
_MAX_BODY = 64 * 1024 * 1024
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, which)


def attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP key-values as a dict."""
    return {kv.key: any_value(kv.value) for kv in pairs}


def _resource(resource_attributes: dict[str, Any]) -> tuple[str, str]:
    service = str(resource_attributes.get("service.name", "unknown_service"))
    instance = str(resource_attributes.get("service.instance.id", service))
    return service, instance


def _span_record(service: str, scope: str, span: Span) -> SpanRecord:
    return SpanRecord(
        service=service,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() or None,
        name=span.name,
        kind=_KINDS.get(span.kind, "UNSPECIFIED"),
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        status=_STATUS.get(span.status.code, "UNSET"),
        status_message=span.status.message,
        attributes=attributes(span.attributes),
        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
        events=tuple(SpanEvent(e.name, attributes(e.attributes)) for e in span.events),
        scope=scope,
    )


def decode_spans(request: ExportTraceServiceRequest) -> list[SpanRecord]:
    """The spans of one export request."""
    spans: list[SpanRecord] = []
    for resource_spans in request.resource_spans:
        service, _instance = _resource(attributes(resource_spans.resource.attributes))
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            spans.extend(_span_record(service, scope, span) for span in scope_spans.spans)
    return spans


def _histogram_points(service: str, instance: str, metric: Metric) -> Iterator[HistogramPoint]:
    cumulative = metric.histogram.aggregation_temporality == _CUMULATIVE
    for point in metric.histogram.data_points:
        yield HistogramPoint(
            service=service,
            instance=instance,
            metric=metric.name,
            attributes=attributes(point.attributes),
            start_ns=point.start_time_unix_nano,
            time_ns=point.time_unix_nano,
            count=point.count,
            sum=point.sum,
            bounds=tuple(point.explicit_bounds),
            bucket_counts=tuple(point.bucket_counts),
            cumulative=cumulative,
            min=point.min if point.HasField("min") else None,
            max=point.max if point.HasField("max") else None,
        )


def _sum_points(service: str, instance: str, metric: Metric) -> Iterator[SumPoint]:
    cumulative = metric.sum.aggregation_temporality == _CUMULATIVE
    for point in metric.sum.data_points:
        yield SumPoint(
            service=service,
            instance=instance,
            metric=metric.name,
            attributes=attributes(point.attributes),
            start_ns=point.start_time_unix_nano,
            time_ns=point.time_unix_nano,
            value=point.as_int if point.WhichOneof("value") == "as_int" else point.as_double,
            cumulative=cumulative,
        )


def decode_metrics(
    request: ExportMetricsServiceRequest,
) -> tuple[list[HistogramPoint], list[SumPoint]]:
    """The histogram and sum points of one export request (gauges and others are ignored)."""
    histograms: list[HistogramPoint] = []
    sums: list[SumPoint] = []
    for resource_metrics in request.resource_metrics:
        service, instance = _resource(attributes(resource_metrics.resource.attributes))
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                which = metric.WhichOneof("data")
                if which == "histogram":
                    histograms.extend(_histogram_points(service, instance, metric))
                elif which == "sum":
                    sums.extend(_sum_points(service, instance, metric))
    return histograms, sums


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: the exporters reuse their connection

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > _MAX_BODY:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"")
            return
        body = self.rfile.read(length)
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"")
                return
        except (OSError, EOFError, zlib.error):
            self._reply(HTTPStatus.BAD_REQUEST, b"")
            return
        if content_type not in ("application/x-protobuf", "application/protobuf", ""):
            self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"")  # OTLP/JSON is not supported
            return
        try:
            if path.endswith("/v1/traces"):
                traces = ExportTraceServiceRequest.FromString(body)
                self.server.receiver._add_spans(decode_spans(traces))
                self._reply(HTTPStatus.OK, ExportTraceServiceResponse().SerializeToString())
            elif path.endswith("/v1/metrics"):
                metrics = ExportMetricsServiceRequest.FromString(body)
                self.server.receiver._add_metrics(*decode_metrics(metrics))
                self._reply(HTTPStatus.OK, ExportMetricsServiceResponse().SerializeToString())
            elif path.endswith("/v1/logs"):
                self._reply(HTTPStatus.OK, b"")
            else:
                self._reply(HTTPStatus.NOT_FOUND, b"")
        except DecodeError:
            self.server.receiver._count_bad_request()
            self._reply(HTTPStatus.BAD_REQUEST, b"")

    def _reply(self, status: HTTPStatus, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo's terminal is for the report."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _Handler)


class Receiver:
    """``with Receiver() as receiver:`` serves OTLP/HTTP on ``receiver.endpoint`` until the block ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[SpanRecord] = []
        self._histograms: list[HistogramPoint] = []
        self._sums: list[SumPoint] = []
        self._requests = 0
        self._bad_requests = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Receiver:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="otlp-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes it (``/v1/traces`` etc. appended)."""
        if self._server is None:
            raise RuntimeError("the receiver is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- data -------------------------------------------------------------------------------

    def _add_spans(self, spans: list[SpanRecord]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self._requests += 1

    def _add_metrics(self, histograms: list[HistogramPoint], sums: list[SumPoint]) -> None:
        with self._lock:
            self._histograms.extend(histograms)
            self._sums.extend(sums)
            self._requests += 1

    def _count_bad_request(self) -> None:
        with self._lock:
            self._bad_requests += 1

    def spans(self) -> list[SpanRecord]:
        """Every span received so far, in arrival order."""
        with self._lock:
            return list(self._spans)

    def histograms(self) -> list[HistogramPoint]:
        with self._lock:
            return list(self._histograms)

    def sums(self) -> list[SumPoint]:
        with self._lock:
            return list(self._sums)

    @property
    def requests(self) -> int:
        """Export requests accepted (traces and metrics)."""
        with self._lock:
            return self._requests

    @property
    def bad_requests(self) -> int:
        """Requests whose body was not a valid OTLP protobuf."""
        with self._lock:
            return self._bad_requests
