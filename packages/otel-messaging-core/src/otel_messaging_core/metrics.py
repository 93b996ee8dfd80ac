"""The four semantic-convention messaging instruments, created once per instrumentor."""

from __future__ import annotations

from typing import Callable, Final, Mapping

from opentelemetry.metrics import Histogram, Meter, MeterProvider, get_meter
from opentelemetry.semconv._incubating.metrics import messaging_metrics as _mm
from opentelemetry.util.types import AttributeValue

from otel_messaging_core._private_api import REAL_INSTRUMENT, proxy_instrument
from otel_messaging_core.attributes import ERROR_TYPE

__all__ = ["DURATION_BUCKETS", "MessagingMetrics"]

# The boundaries the messaging semantic conventions recommend for both duration histograms.
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

Attributes = Mapping[str, AttributeValue]
Recorder = Callable[["MessagingMetrics", Attributes, float, "str | None"], None]


def _duration_histogram(meter: Meter, name: str, description: str) -> Histogram:
    """A histogram in seconds that advises DURATION_BUCKETS where the API takes the advice.

    opentelemetry-api < 1.30 has no ``explicit_bucket_boundaries_advisory``: there the SDK's default
    buckets apply unless the application's MeterProvider has a View that sets DURATION_BUCKETS
    (docs/versions.md shows one).
    """
    try:
        return meter.create_histogram(
            name,
            unit="s",
            description=description,
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
    except TypeError:  # opentelemetry-api < 1.30: the keyword does not exist yet
        return meter.create_histogram(name, unit="s", description=description)


def _recorder(counter: str | None, histogram: str, doc: str) -> Recorder:
    """One recording method of :class:`MessagingMetrics`: count on ``counter`` (when given) and
    time on ``histogram``, with ``error.type`` added on failure.

    Instruments of the API's proxy meter provider (no global provider set yet) forward to a real
    instrument once one is set; until then every call would be thrown away, so the method returns
    early (one attribute check instead of two calls).
    """

    def record(
        self: MessagingMetrics,
        attributes: Attributes,
        duration: float,
        error_type: str | None = None,
    ) -> None:
        proxy = self._proxy
        if proxy is not None and getattr(proxy, REAL_INSTRUMENT) is None:
            return  # no MeterProvider set (yet): nothing would be recorded
        attrs = attributes if error_type is None else {**attributes, ERROR_TYPE: error_type}
        if counter is not None:
            getattr(self, counter).add(1, attrs)
        getattr(self, histogram).record(duration, attrs)

    record.__doc__ = doc
    return record


class MessagingMetrics:
    """``messaging.client.sent.messages``, ``messaging.client.consumed.messages``,
    ``messaging.client.operation.duration`` and ``messaging.process.duration``.

    Attribute dicts come precomputed from :class:`~otel_messaging_core.attributes.Destination`
    (low-cardinality names), so recording costs no formatting.
    """

    __slots__ = ("_consumed", "_operation_duration", "_process_duration", "_proxy", "_sent")

    def __init__(
        self,
        instrumentation_name: str,
        version: str,
        meter_provider: MeterProvider | None = None,
        schema_url: str | None = None,
    ) -> None:
        meter = get_meter(instrumentation_name, version, meter_provider, schema_url=schema_url)
        self._sent = meter.create_counter(
            _mm.MESSAGING_CLIENT_SENT_MESSAGES,
            unit="{message}",
            description="Number of messages producer attempted to send to the broker.",
        )
        self._consumed = meter.create_counter(
            _mm.MESSAGING_CLIENT_CONSUMED_MESSAGES,
            unit="{message}",
            description="Number of messages that were delivered to the application.",
        )
        self._operation_duration = _duration_histogram(
            meter,
            _mm.MESSAGING_CLIENT_OPERATION_DURATION,
            "Duration of messaging operation initiated by a producer or consumer client.",
        )
        self._process_duration = _duration_histogram(
            meter, _mm.MESSAGING_PROCESS_DURATION, "Duration of processing operation."
        )
        # a proxy instrument: the recording methods return early until a provider is set
        self._proxy = proxy_instrument(self._sent)

    @property
    def idle(self) -> bool:
        """True while nothing would be recorded (no MeterProvider set yet): an operation that
        makes no span then needs no timing either."""
        return self._proxy is not None and getattr(self._proxy, REAL_INSTRUMENT) is None

    published = _recorder(
        "_sent", "_operation_duration", "One publish attempt and how long the client call took."
    )
    received = _recorder(
        "_consumed",
        "_operation_duration",
        "One message pulled (``receive``) and how long the pull or its handling took.",
    )
    processed = _recorder(
        "_consumed",
        "_process_duration",
        "One pushed message handed to the application and how long its handler ran.",
    )
    settled = _recorder(None, "_operation_duration", "One ack, nack or reject call.")
