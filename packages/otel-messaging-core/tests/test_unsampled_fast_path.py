"""The unsampled fast path (issue 18): ``unsampled_publish`` / ``unsampled_consume`` send and
restore exactly what the general path would, and step aside whenever a span or a metric is due."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics._internal import _ProxyMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from broker_harness import Recorder
from otel_messaging_core import DeliveryLedger, records_nothing
from otel_messaging_core.options import InstrumentationOptions
from otel_messaging_core.telemetry import MessagingTelemetry

TRACE_ID = 0xABC
SPAN_ID = 0xDEF
UNSAMPLED = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"


def make(sampler: Any = None, **kwargs: Any) -> MessagingTelemetry:
    """Telemetry with a parent-based sampler and, unless given, no MeterProvider (nothing to count)."""
    provider = TracerProvider(sampler=sampler or ParentBased(TraceIdRatioBased(0.5)))
    options = InstrumentationOptions.from_kwargs(
        {"tracer_provider": provider, **kwargs}, environ={}
    )
    return MessagingTelemetry(options, instrumentation_name="t", version="0")


def parent_context(
    sampled: bool = False, base: otel_context.Context | None = None, **entries: str
) -> otel_context.Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else 0)
    span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=flags))
    context = trace.set_span_in_context(span, base)
    for name, value in entries.items():
        context = baggage.set_baggage(name, value, context)
    return context


def in_context(context: otel_context.Context, call: Any, *args: Any) -> Any:
    token = otel_context.attach(context)
    try:
        return call(*args)
    finally:
        otel_context.detach(token)


def general_headers(telemetry: MessagingTelemetry, headers: Any) -> Any:
    destination = telemetry.destinations().get("publish", "orders", "created")
    op = telemetry.start_publish(destination, headers)
    op.end()
    return op.headers


@pytest.mark.parametrize("headers", [None, {}, {"x-app": "shop"}])
def test_publish_in_an_unsampled_parent_sends_what_the_general_path_sends(headers: Any) -> None:
    """A publish inside a not-sampled parent passes on the parent's context (flags 00) and the
    baggage, in a copy of the caller's headers, exactly as start_publish does."""
    telemetry = make()
    caller = None if headers is None else dict(headers)
    context = parent_context(**{"order.id": "17"})
    sent = in_context(context, telemetry.unsampled_publish, headers)
    assert sent is not False
    assert sent is not headers
    assert sent["traceparent"] == UNSAMPLED
    assert sent["baggage"] == "order.id=17"
    assert sent == in_context(context, general_headers, telemetry, headers)
    assert headers == caller  # the caller's mapping is never written to


def test_publish_fast_path_steps_aside_when_a_span_or_a_metric_is_due(otel: Recorder) -> None:
    """No fast path for a sampled or absent parent, a sampler that may sample under an unsampled
    parent, a MeterProvider (the message is counted), or suppressed instrumentation."""
    assert in_context(parent_context(sampled=True), make().unsampled_publish, None) is False
    assert make().unsampled_publish(None) is False  # no parent: the sampler decides at our span
    always = make(
        ParentBased(
            ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON
        )
    )
    assert in_context(parent_context(), always.unsampled_publish, None) is False
    counted = make(meter_provider=otel.meter_provider)
    assert in_context(parent_context(), counted.unsampled_publish, None) is False
    with suppress_instrumentation():
        suppressed = parent_context(base=otel_context.get_current())
        assert in_context(suppressed, make().unsampled_publish, None) is False


def test_consume_of_a_not_sampled_message_gives_the_message_context() -> None:
    """A pushed message whose traceparent says not sampled gets its own context (trace and
    baggage) to run the handler in, with no span made."""
    telemetry = make()
    context = telemetry.unsampled_consume({"traceparent": UNSAMPLED, "baggage": "order.id=17"})
    assert context is not None
    span_context = trace.get_current_span(context).get_span_context()
    assert (span_context.trace_id, span_context.span_id) == (TRACE_ID, SPAN_ID)
    assert not span_context.trace_flags.sampled
    assert baggage.get_baggage("order.id", context) == "17"
    alone = telemetry.unsampled_consume(
        {"traceparent": UNSAMPLED, "x-app": "shop"}
    )  # read directly
    assert alone is not None
    assert trace.get_current_span(alone).get_span_context() == span_context
    assert baggage.get_all(alone) == {}


@pytest.mark.parametrize("flags", ["00", "02"])
def test_consume_fast_path_takes_what_the_sdk_writes_for_a_trace_it_does_not_sample(
    flags: str,
) -> None:
    """opentelemetry-sdk 1.4x starts every trace with W3C level 2's random-trace-id flag, so a
    not-sampled message from it carries flags 02, not 00: it takes the fast path all the same,
    with the same context the general path would make current (flags kept as sent)."""
    sdk = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    with sdk.get_tracer("shop").start_as_current_span("checkout"):
        written: dict[str, str] = {}
        propagate.inject(written)
    assert not int(written["traceparent"][-2:], 16) & 1  # what the SDK wrote is not sampled
    headers = {"traceparent": f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-{flags}"}
    context = make().unsampled_consume(headers)
    assert context is not None
    span_context = trace.get_current_span(context).get_span_context()
    assert (span_context.trace_id, span_context.span_id) == (TRACE_ID, SPAN_ID)
    assert int(span_context.trace_flags) == int(flags, 16)
    assert make().unsampled_consume(dict(written)) is not None
    sampled = {"traceparent": f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-03"}
    assert make().unsampled_consume(sampled) is None  # sampled (with the random flag)


def test_consume_fast_path_steps_aside_when_a_span_or_a_metric_is_due(otel: Recorder) -> None:
    """The general path takes a sampled, absent or odd traceparent, link mode, a span already
    current, a sampler that may sample anyway, a MeterProvider, and suppressed instrumentation."""
    headers = {"traceparent": UNSAMPLED}
    telemetry = make()
    assert telemetry.unsampled_consume({"traceparent": UNSAMPLED[:-2] + "01"}) is None
    assert telemetry.unsampled_consume(None) is None
    assert telemetry.unsampled_consume({"traceparent": UNSAMPLED.encode()}) is None
    assert telemetry.unsampled_consume({"traceparent": "00-zz-00"}) is None
    assert make(consumer_context="link").unsampled_consume(headers) is None
    assert in_context(parent_context(), telemetry.unsampled_consume, headers) is None
    always = make(
        ParentBased(
            ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON
        )
    )
    assert always.unsampled_consume(headers) is None
    assert make(meter_provider=otel.meter_provider).unsampled_consume(headers) is None
    with suppress_instrumentation():
        assert telemetry.unsampled_consume(headers) is None


def general_delivery(telemetry: MessagingTelemetry, headers: Any, tag: int) -> Any:
    destination = telemetry.destinations().get("process", "orders", "created", "orders.q")
    op = telemetry.start_consume(destination, headers, delivery_tag=tag, track_delivery=True)
    op.end()
    return op


@pytest.mark.parametrize(
    "headers", [{"traceparent": UNSAMPLED}, {"traceparent": UNSAMPLED, "baggage": "order.id=17"}]
)
def test_manual_ack_record_is_the_general_paths(headers: Any) -> None:
    """A manual-ack delivery on the fast path keeps the settle record start_consume keeps for a
    not-sampled message (destination, tag, producer link, parent), so its ack/nack/reject
    settles the same; the kept operation (kombu) has the same context and records nothing."""
    telemetry = make(baggage_attributes=["order.id"])
    context = telemetry.unsampled_consume(headers)
    assert context is not None
    destination = telemetry.destinations().get("process", "orders", "created", "orders.q")
    fast = telemetry.unsampled_delivery(context, destination, 7)
    general = general_delivery(telemetry, headers, 7)
    assert not general.has_span
    expected = general.delivery
    assert (
        fast.destination,
        fast.delivery_tag,
        fast.creation,
        fast.span_context,
        fast.baggage,
    ) == (
        expected.destination,
        expected.delivery_tag,
        expected.creation,
        expected.span_context,
        expected.baggage,
    )
    tracked = telemetry.unsampled_tracked(context, destination, 7)
    assert tracked.context is context
    assert not tracked.has_span
    assert tracked.delivery is not None
    assert tracked.delivery.span_context == expected.span_context
    tracked.end()  # nothing to end, nothing to count


def test_settle_with_nothing_to_record_starts_nothing(otel: Recorder) -> None:
    """An ack, or a requeue, without settle spans and without a MeterProvider records nothing
    (whatever the message's trace), so it starts nothing; a settle that drops the message, a
    settle span or a MeterProvider still take the general path."""
    telemetry = make(tracer_provider=otel.tracer_provider)
    destination = telemetry.destinations().get("process", "orders", "created", "orders.q")
    for operation, requeue in (("ack", True), ("nack", True), ("reject", True)):
        op = telemetry.start_settle(operation, [None], requeue=requeue, fallback=destination)
        assert op.span is None
        assert records_nothing(op)  # a plugin skips its with block
        op.end()
    lost = telemetry.start_settle("reject", [None], requeue=False, fallback=destination)
    assert lost.span is not None
    assert not records_nothing(lost)
    lost.end()
    spans = make(tracer_provider=otel.tracer_provider, settle_spans=True)
    with_span = spans.start_settle("ack", [None], fallback=destination)
    assert with_span.span is not None
    assert not records_nothing(with_span)
    with_span.end()
    counted = make(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    counted_ack = counted.start_settle("ack", [None], fallback=destination)
    assert not records_nothing(counted_ack)
    counted_ack.end()
    assert [value for _, value in otel.points("messaging.client.operation.duration")] == [1]
    assert [s.name for s in otel.spans()] == ["reject orders.q", "ack orders.q"]


def test_quiet_settle_is_what_start_settle_records_nothing_for(otel: Recorder) -> None:
    """quiet_settle() is true exactly when an ack records nothing (no settle spans, no
    MeterProvider), and turns false as soon as a global MeterProvider is set."""
    quiet = make(tracer_provider=otel.tracer_provider)
    destination = quiet.destinations().get("process", "orders", "created", "orders.q")
    assert quiet.quiet_settle()
    assert records_nothing(quiet.start_settle("ack", [None], fallback=destination))
    spans = make(tracer_provider=otel.tracer_provider, settle_spans=True)
    counted = make(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    for loud in (spans, counted):
        assert not loud.quiet_settle()
        loud_ack = loud.start_settle("ack", [None], fallback=destination)
        assert not records_nothing(loud_ack)
        loud_ack.end()
    provider = _ProxyMeterProvider()  # the API's global one before the SDK's is set
    later = make(tracer_provider=otel.tracer_provider, meter_provider=provider)
    assert later.quiet_settle()
    provider.on_set_meter_provider(MeterProvider())
    assert not later.quiet_settle()


def test_ledger_forget_removes_what_take_returns() -> None:
    """forget(tag, multiple) leaves the ledger as take(tag, multiple) does: one record, every
    record up to the tag (in any order), or with tag 0 all of them; an unknown tag is no error."""
    for tag, multiple in ((2, False), (9, False), (4, True), (0, True)):
        taken: DeliveryLedger[str] = DeliveryLedger()
        forgotten: DeliveryLedger[str] = DeliveryLedger()
        for ledger in (taken, forgotten):
            for n in (3, 1, 2, 5, 4, 6):
                ledger.track(n, f"d{n}")
        taken.take(tag, multiple)
        forgotten.forget(tag, multiple)
        assert forgotten == taken, (tag, multiple)


def test_ledger_bound_drops_the_oldest_record_as_a_plugin_that_tracks_without_the_call() -> None:
    """Past its limit the ledger drops its oldest record (the first kept, not the lowest tag);
    a plugin that keeps ``ledger[tag] = record`` itself and calls drop_oldest() past the limit
    ends with the same ledger as track()."""
    tracked: DeliveryLedger[str] = DeliveryLedger(limit=3)
    inlined: DeliveryLedger[str] = DeliveryLedger(limit=3)
    for n in (3, 1, 2, 5, 4):
        tracked.track(n, f"d{n}")
        inlined[n] = f"d{n}"
        if len(inlined) > inlined.limit:
            inlined.drop_oldest()
    assert list(tracked.items()) == [(2, "d2"), (5, "d5"), (4, "d4")]
    assert list(inlined.items()) == list(tracked.items())


def test_a_publish_records_nothing_only_when_its_end_has_nothing_to_do(otel: Recorder) -> None:
    """A publish that starts a trace its sampler does not sample, with no MeterProvider, ends
    with nothing to record (a plugin may drop it); sampled, counted or inside a not-sampled
    parent with a MeterProvider, it has something to end."""

    def started(telemetry: MessagingTelemetry) -> Any:
        destination = telemetry.destinations().get("publish", "orders", "created")
        return telemetry.start_publish(destination, None)

    never = make(ParentBased(TraceIdRatioBased(0)))
    op = started(never)
    assert records_nothing(op)
    assert op.headers is not None
    assert not int(op.headers["traceparent"][-2:], 16) & 1  # not sampled
    assert not records_nothing(started(make(ParentBased(ALWAYS_ON))))
    counted = make(ParentBased(TraceIdRatioBased(0)), meter_provider=otel.meter_provider)
    assert not records_nothing(started(counted))
    assert not records_nothing(in_context(parent_context(), started, counted))
