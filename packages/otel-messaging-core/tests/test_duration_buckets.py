"""The duration histograms on every supported OpenTelemetry release: the semantic conventions'
bucket boundaries where the API can advise them, and through the View docs/versions.md gives."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from otel_messaging_core.metrics import DURATION_BUCKETS, MessagingMetrics

# opentelemetry-api 1.30 added the keyword; the packages declare opentelemetry-api>=1.29.
ADVISORY = (
    "explicit_bucket_boundaries_advisory" in inspect.signature(Meter.create_histogram).parameters
)
DURATIONS = ("messaging.client.operation.duration", "messaging.process.duration")


def exported(views: Sequence[View] = ()) -> dict[str, HistogramDataPoint]:
    """Record one publish and one processed message; the duration points the SDK exports."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], views=views)
    metrics = MessagingMetrics("otel_test", "0.0.0", provider)
    attributes = {"messaging.system": "rabbitmq", "messaging.destination.name": "orders"}
    metrics.published(attributes, 0.02)
    metrics.processed(attributes, 0.3)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    points = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name in DURATIONS:
                    (point,) = metric.data.data_points
                    assert isinstance(point, HistogramDataPoint)
                    points[metric.name] = point
    return points


def test_duration_histograms_are_recorded_with_the_advised_buckets_where_the_api_has_the_keyword() -> (
    None
):
    """Both duration histograms record on every supported API; their buckets are the semconv ones exactly when the API can advise buckets (>= 1.30)."""
    points = exported()
    assert sorted(points) == sorted(DURATIONS)
    assert all(point.count == 1 for point in points.values())
    assert {name: tuple(p.explicit_bounds) == DURATION_BUCKETS for name, p in points.items()} == {
        name: ADVISORY for name in DURATIONS
    }


def test_the_documented_view_gives_the_semconv_buckets_on_every_supported_sdk() -> None:
    """The View from docs/versions.md sets the recommended boundaries, also where the API cannot advise them."""
    view = View(
        instrument_name="messaging.*.duration",
        aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS),
    )
    points = exported([view])
    assert {name: tuple(p.explicit_bounds) for name, p in points.items()} == {
        name: DURATION_BUCKETS for name in DURATIONS
    }
