"""Every private OpenTelemetry API use: its fast path is live on the installed versions (so a rename
fails here, not in a service), and its public fallback, forced, behaves the same."""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics._internal import _ProxyMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace import propagation as span_propagation

from broker_harness import Recorder
from broker_harness.otel import data_points
from otel_messaging_core import (
    DestinationCache,
    InstrumentationOptions,
    MessagingTelemetry,
    _private_api,
    propagation,
    sampling,
    telemetry,
)
from otel_messaging_core.metrics import MessagingMetrics

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331


class _Without(ModuleType):
    """A stand-in for an OpenTelemetry module that lacks some of its private names."""

    def __init__(self, real: ModuleType, *hidden: str) -> None:
        super().__init__(real.__name__)
        self._real = real
        self._hidden = hidden

    def __getattr__(self, name: str) -> Any:
        if name in self._hidden:
            raise AttributeError(name)
        return getattr(self._real, name)


@pytest.fixture
def fallback_copy() -> ModuleType:
    """A fresh copy of ``_private_api``, loaded while the OpenTelemetry modules it reads lack
    every private name it looks for (the real modules are untouched once it is loaded)."""
    import opentelemetry

    spec = importlib.util.find_spec("otel_messaging_core._private_api")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            opentelemetry,
            "context",
            _Without(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", "_RUNTIME_CONTEXT"),
        )
        patch.setattr(opentelemetry, "baggage", _Without(baggage, "_BAGGAGE_KEY"))
        patch.setattr(opentelemetry.trace, "propagation", _Without(span_propagation, "_SPAN_KEY"))
        spec.loader.exec_module(module)
    return module


# -- the current span's key -------------------------------------------------------------------------


def test_span_key_fast_path_is_live() -> None:
    """The installed opentelemetry-api still has ``trace.propagation._SPAN_KEY``, and it is used."""
    assert _private_api.FAST_PATHS["trace.propagation._SPAN_KEY"] is True
    assert _private_api.SPAN_KEY == span_propagation._SPAN_KEY
    assert _private_api.SPAN_KEY_FOUND


def test_span_key_fallback_reads_and_writes_spans(fallback_copy: ModuleType) -> None:
    """Without the private constant, the key comes from ``set_span_in_context``: a Context built
    with it holds the span for the public API, and a Context the API built is read with it."""
    assert fallback_copy.FAST_PATHS["trace.propagation._SPAN_KEY"] is False
    assert fallback_copy.SPAN_KEY_FOUND
    span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(1)))
    assert trace.get_current_span(Context({fallback_copy.SPAN_KEY: span})) is span
    assert trace.set_span_in_context(span, Context()).get(fallback_copy.SPAN_KEY) is span


# -- suppress_instrumentation --------------------------------------------------------------------


def test_suppress_key_fast_path_is_live() -> None:
    """The installed API still has ``context._SUPPRESS_INSTRUMENTATION_KEY``, and it is used."""
    assert _private_api.FAST_PATHS["context._SUPPRESS_INSTRUMENTATION_KEY"] is True
    assert _private_api.SUPPRESS_KEY == otel_context._SUPPRESS_INSTRUMENTATION_KEY


def test_suppress_key_fallback_sees_suppression(fallback_copy: ModuleType) -> None:
    """Without the private constant, the key comes from ``suppress_instrumentation()`` and is the
    one the SDK itself reads (not the legacy plain-text key)."""
    assert fallback_copy.FAST_PATHS["context._SUPPRESS_INSTRUMENTATION_KEY"] is False
    key = fallback_copy.SUPPRESS_KEY
    assert not otel_context.get_current().get(key)
    with suppress_instrumentation():
        assert otel_context.get_current().get(key) is True
    assert otel_context.get_current().get(key) is None
    assert key != "suppress_instrumentation"


def test_telemetry_honours_suppression_through_the_fallback_key(
    fallback_copy: ModuleType, otel: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the fallback key, a publish inside ``suppress_instrumentation()`` makes no span."""
    monkeypatch.setattr(telemetry, "SUPPRESS_KEY", fallback_copy.SUPPRESS_KEY)
    tel = _telemetry(otel)
    destination = DestinationCache().get("publish", "shop", "order.created")
    with suppress_instrumentation():
        tel.start_publish(destination, None).end()
    assert otel.spans() == []


# -- baggage ----------------------------------------------------------------------------------------


def test_baggage_key_fast_path_is_live() -> None:
    """The installed API still has ``baggage._BAGGAGE_KEY``, and it is used."""
    assert _private_api.FAST_PATHS["baggage._BAGGAGE_KEY"] is True
    assert _private_api.BAGGAGE_KEY == baggage._BAGGAGE_KEY


def test_baggage_key_fallback_finds_the_entries(fallback_copy: ModuleType) -> None:
    """Without the private constant, the key ``set_baggage`` writes is found and holds the entries."""
    assert fallback_copy.FAST_PATHS["baggage._BAGGAGE_KEY"] is False
    ctx = baggage.set_baggage("order.id", "42", Context())
    assert ctx.get(fallback_copy.BAGGAGE_KEY) == {"order.id": "42"}
    assert not Context().get(fallback_copy.BAGGAGE_KEY)


def test_inject_without_the_baggage_key_still_carries_baggage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no baggage key at all, the fast inject asks ``baggage.get_all`` and writes the same."""
    monkeypatch.setattr(propagation, "BAGGAGE_KEY", None)
    span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(1)))
    ctx = baggage.set_baggage("order.id", "42", Context())
    fast: dict[str, Any] = {}
    propagation.inject_span(fast, span, ctx)
    slow: dict[str, Any] = {}
    propagate.inject(slow, context=trace.set_span_in_context(span, ctx))
    assert fast == slow
    assert fast["baggage"] == "order.id=42"


# -- attach / detach --------------------------------------------------------------------------------


def test_runtime_context_fast_path_is_live() -> None:
    """The installed API still has ``context._RUNTIME_CONTEXT``, the default contextvars one: its
    ContextVar's own set/reset/get are used, and they act as the API's attach/detach/get_current."""
    assert _private_api.FAST_PATHS["context._RUNTIME_CONTEXT.attach"] is True
    assert _private_api.FAST_PATHS["context._RUNTIME_CONTEXT.detach"] is True
    assert _private_api.FAST_PATHS["context._RUNTIME_CONTEXT.get_current"] is True
    var = otel_context._RUNTIME_CONTEXT._current_context  # type: ignore[attr-defined]
    assert _private_api.attach == var.set
    assert _private_api.detach == var.reset
    assert _private_api.get_current == var.get
    before = otel_context.get_current()
    assert _private_api.get_current() is before
    ctx = baggage.set_baggage("order.id", "42", Context())
    token = _private_api.attach(ctx)
    assert otel_context.get_current() is ctx
    assert _private_api.get_current() is ctx
    _private_api.detach(token)
    assert otel_context.get_current() is before
    token = otel_context.attach(ctx)  # the API's own attach is seen too
    assert _private_api.get_current() is ctx
    otel_context.detach(token)


def test_runtime_context_fallback_attaches_and_restores(fallback_copy: ModuleType) -> None:
    """Without the runtime context, the public attach/detach make a context current and restore."""
    assert fallback_copy.attach is otel_context.attach
    assert fallback_copy.detach is otel_context.detach
    before = otel_context.get_current()
    ctx = baggage.set_baggage("order.id", "42", Context())
    token = fallback_copy.attach(ctx)
    assert baggage.get_baggage("order.id") == "42"
    fallback_copy.detach(token)
    assert otel_context.get_current() == before


# -- the composite propagator -----------------------------------------------------------------------


def test_composite_members_fast_path_is_live() -> None:
    """The default global propagator's members can be read, so the fast extract and inject run."""
    members = _private_api.composite_members(propagate.get_global_textmap())
    assert members is not None
    assert [type(m).__name__ for m in members] == [
        "TraceContextTextMapPropagator",
        "W3CBaggagePropagator",
    ]
    assert propagation._is_default(propagate.get_global_textmap())


def test_composite_members_fallback_takes_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the members cannot be read, extraction and injection go through the propagators and
    give the same context and headers."""
    headers = {"traceparent": f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01", "baggage": "order.id=42"}
    expected = propagation.extract_context(headers)
    monkeypatch.setattr(propagation, "composite_members", lambda _textmap: None)
    monkeypatch.setattr(propagation, "_default_textmap", None)

    def no_fast_path(_headers: Any) -> None:
        raise AssertionError("the fast path ran")

    monkeypatch.setattr(propagation, "_fast_extract", no_fast_path)
    ctx = propagation.extract_context(headers)
    assert (
        trace.get_current_span(ctx).get_span_context()
        == trace.get_current_span(expected).get_span_context()
    )
    assert baggage.get_all(ctx) == baggage.get_all(expected)
    carrier: dict[str, Any] = {}
    propagation.inject_span(carrier, trace.get_current_span(ctx), ctx)
    assert carrier == {"traceparent": headers["traceparent"], "baggage": "order.id=42"}


# -- the sampler shortcut ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "drops"),
    [
        (ParentBased(ALWAYS_ON), True),
        (ParentBased(TraceIdRatioBased(0.1)), True),
        (ALWAYS_OFF, True),
        (ALWAYS_ON, False),
        (TraceIdRatioBased(0.5), False),
        (ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON), False),
    ],
)
def test_sampler_description_fast_path_is_live(sampler: Any, drops: bool) -> None:
    """The installed SDK's samplers describe themselves in the format the shortcut reads."""
    assert _private_api.sampler_drops_unsampled(sampler) is drops


def test_sampler_fallback_asks_the_sampler(otel: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """When descriptions cannot be read, a publish under a not-sampled parent asks the sampler:
    no span is exported and the message still carries the parent's trace, not sampled."""
    monkeypatch.setattr(sampling, "sampler_drops_unsampled", lambda _sampler: False)
    tel = _telemetry(otel)
    parent = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(0)))
    destination = DestinationCache().get("publish", "shop", "order.created")
    token = otel_context.attach(trace.set_span_in_context(parent))
    try:
        op = tel.start_publish(destination, None)
    finally:
        otel_context.detach(token)
    op.end()
    assert otel.spans() == []
    version, trace_id, _span_id, flags = op.headers["traceparent"].split("-")
    assert (version, int(trace_id, 16), flags) == ("00", TRACE_ID, "00")


def test_a_sampler_whose_description_raises_is_asked() -> None:
    """A custom sampler whose get_description() raises is asked span by span, never an error."""

    class Broken:
        def get_description(self) -> str:
            raise RuntimeError("bug in a custom sampler")

    assert _private_api.sampler_drops_unsampled(Broken()) is False
    assert _private_api.sampler_drops_unsampled(None) is False


# -- the metrics proxy --------------------------------------------------------------------------------


def test_proxy_instrument_fast_path_is_live() -> None:
    """An instrument of the API's proxy meter shows whether a real instrument backs it yet."""
    provider = _ProxyMeterProvider()
    counter = provider.get_meter("probe").create_counter("probe")
    proxy = _private_api.proxy_instrument(counter)
    assert proxy is counter
    assert getattr(proxy, _private_api.REAL_INSTRUMENT) is None
    provider.on_set_meter_provider(MeterProvider())
    assert getattr(proxy, _private_api.REAL_INSTRUMENT) is not None
    real = MeterProvider().get_meter("probe").create_counter("probe")
    assert _private_api.proxy_instrument(real) is None


def test_proxy_fallback_records_once_a_provider_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the proxy's state cannot be read, measurements go to the API: dropped while nothing
    backs the proxy, recorded once a MeterProvider is set."""
    from otel_messaging_core import metrics

    monkeypatch.setattr(metrics, "proxy_instrument", lambda _instrument: None)
    provider = _ProxyMeterProvider()
    recorded = MessagingMetrics("otel_test", "0", provider)
    attributes = {"messaging.system": "rabbitmq", "messaging.operation.name": "publish"}
    recorded.published(attributes, 0.001)  # nothing backs it yet: dropped, no error
    reader = InMemoryMetricReader()
    provider.on_set_meter_provider(MeterProvider(metric_readers=[reader]))
    recorded.published(attributes, 0.001)
    sent = [point.value for point in data_points(reader, "messaging.client.sent.messages")]
    assert sent == [1]


def _telemetry(otel: Recorder) -> MessagingTelemetry:
    options = InstrumentationOptions(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    return MessagingTelemetry(options, instrumentation_name="otel_test", version="0")


def test_sdk_tracer_provider_exposes_its_sampler() -> None:
    """The sampler shortcut finds the SDK provider's sampler through its public ``sampler``."""
    assert TracerProvider(sampler=ALWAYS_OFF).sampler is ALWAYS_OFF
