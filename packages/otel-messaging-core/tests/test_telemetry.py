"""Per-message operations of the core, without a broker: spans, links, status, metrics, hooks."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from broker_harness import Recorder
from broker_harness.otel import data_points
from otel_messaging_core.envelope import Envelope
from otel_messaging_core.options import InstrumentationOptions
from otel_messaging_core.telemetry import MessagingTelemetry


def make(otel: Recorder, **kwargs: Any) -> MessagingTelemetry:
    options = InstrumentationOptions.from_kwargs(
        {"tracer_provider": otel.tracer_provider, "meter_provider": otel.meter_provider, **kwargs},
        environ={},
    )
    return MessagingTelemetry(options, instrumentation_name="otel_test", version="0.1.0")


def publish(telemetry: MessagingTelemetry, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    destination = telemetry.destinations("mq.internal", 5672).get(
        "publish", "orders", "order.created"
    )
    op = telemetry.start_publish(
        destination, headers, message_id="m-1", correlation_id="c-1", body=b"{}"
    )
    op.end()
    return op.headers


def test_publish_span_and_injected_headers(otel: Recorder) -> None:
    """A publish makes one PRODUCER span with every attribute and injects its context into a copy."""
    telemetry = make(otel)
    caller_headers = {"x-app": "shop"}
    sent = publish(telemetry, caller_headers)
    (span,) = otel.spans()
    assert caller_headers == {"x-app": "shop"}
    assert span.name == "publish orders"
    assert span.kind is SpanKind.PRODUCER
    assert dict(span.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": "orders:order.created",
        "messaging.rabbitmq.destination.routing_key": "order.created",
        "messaging.message.id": "m-1",
        "messaging.message.conversation_id": "c-1",
        "messaging.message.body.size": 2,
        "server.address": "mq.internal",
        "server.port": 5672,
    }
    assert sent["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"
    ((attrs, count),) = otel.points("messaging.client.sent.messages")
    assert count == 1
    assert attrs["messaging.destination.name"] == "orders:order.created"
    ((_, histogram_count),) = otel.points("messaging.client.operation.duration")
    assert histogram_count == 1


def test_publish_positional_as_plugins_call_it(otel: Recorder) -> None:
    """The plugins' positional call (ids, body, size, raw, every one given) records what the
    keyword call does; a given size wins over the body's, an empty id is no id."""
    telemetry = make(otel)
    destination = telemetry.destinations("mq.internal", 5672).get(
        "publish", "orders", "order.created"
    )
    telemetry.start_publish(destination, None, "m-1", "c-1", b"{}", None, object()).end()
    telemetry.start_publish(
        destination, None, message_id="m-1", correlation_id="c-1", body=b"{}"
    ).end()
    telemetry.start_publish(destination, {"a": 1}, "", None, b"{}", 40, None).end()
    positional, keywords, sized = otel.spans()
    assert dict(positional.attributes or {}) == dict(keywords.attributes or {})
    attributes = dict(sized.attributes or {})
    assert attributes["messaging.message.body.size"] == 40
    assert "messaging.message.id" not in attributes
    assert "messaging.message.conversation_id" not in attributes


def test_consume_is_child_of_and_linked_to_the_producer(otel: Recorder) -> None:
    """A processed message's span is a child of its publish span, links to it, and is current in the handler."""
    telemetry = make(otel)
    sent = publish(telemetry)
    destination = telemetry.destinations("mq.internal", 5672).get(
        "process", "orders", "order.created", "srm"
    )
    op = telemetry.start_consume(destination, sent, delivery_tag=7, body=b"{}")
    op.activate()
    inside = trace.get_current_span().get_span_context()
    op.end()
    assert not trace.get_current_span().get_span_context().is_valid
    producer, consumer = otel.spans()
    assert consumer.name == "process srm"
    assert consumer.kind is SpanKind.CONSUMER
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    assert inside.span_id == consumer.context.span_id
    assert consumer.attributes["messaging.rabbitmq.message.delivery_tag"] == 7  # type: ignore[index]
    assert otel.points("messaging.process.duration")[0][1] == 1


def test_link_mode_starts_a_new_trace(otel: Recorder) -> None:
    """With consumer_context='link' the consumer is a root span linked to the producer."""
    telemetry = make(otel, consumer_context="link")
    sent = publish(telemetry)
    destination = telemetry.destinations().get("process", "orders", "order.created", "srm")
    telemetry.start_consume(destination, sent).end()
    producer, consumer = otel.spans()
    assert consumer.parent is None
    assert consumer.context.trace_id != producer.context.trace_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]


def test_handler_exception_marks_error(otel: Recorder) -> None:
    """An exception passed to end() records it, sets ERROR and error.type, and counts it in metrics."""
    telemetry = make(otel)
    destination = telemetry.destinations().get("process", "", "srm", "srm")
    op = telemetry.start_consume(destination, {})
    op.end(KeyError("sku"))
    (span,) = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "KeyError"  # type: ignore[index]
    assert span.events[0].name == "exception"
    ((attrs, _),) = otel.points("messaging.process.duration")
    assert attrs["error.type"] == "KeyError"


def test_baggage_attributes_and_capture_headers(otel: Recorder) -> None:
    """Configured baggage entries and headers become attributes at span start."""
    telemetry = make(otel, baggage_attributes=("order.id",), capture_headers=("X-Tenant",))
    token = otel_context.attach(baggage.set_baggage("order.id", "17"))
    try:
        sent = publish(telemetry, {"x-tenant": b"acme"})
    finally:
        otel_context.detach(token)
    destination = telemetry.destinations().get("process", "orders", "order.created", "srm")
    op = telemetry.start_consume(destination, sent)
    op.activate()
    assert baggage.get_baggage("order.id") == "17"
    op.end()
    for span in otel.spans():
        assert span.attributes["order.id"] == "17"  # type: ignore[index]
        assert span.attributes["messaging.header.x-tenant"] == "acme"  # type: ignore[index]


def test_hooks_get_the_envelope_and_a_raising_hook_is_harmless(
    otel: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Hooks receive span and Envelope; a hook that raises is logged and the operation completes."""
    seen: list[Envelope] = []

    def publish_hook(span: trace.Span, envelope: Envelope) -> None:
        seen.append(envelope)
        span.set_attribute("app.hooked", True)

    def consume_hook(span: trace.Span, envelope: Envelope) -> None:
        raise RuntimeError("hook bug")

    telemetry = make(otel, publish_hook=publish_hook, consume_hook=consume_hook)
    with caplog.at_level(logging.WARNING):
        sent = publish(telemetry, {"x": 1})
        destination = telemetry.destinations().get("process", "orders", "order.created", "srm")
        telemetry.start_consume(destination, sent, body=b"{}").end()
    (envelope,) = seen
    assert envelope.exchange == "orders"
    assert envelope.routing_key == "order.created"
    assert envelope.body == b"{}"
    assert "traceparent" in envelope.headers
    with pytest.raises(TypeError):
        envelope.headers["x"] = 2  # type: ignore[index]
    assert otel.spans()[0].attributes["app.hooked"] is True  # type: ignore[index]
    assert len(otel.spans()) == 2
    assert "hook bug" in caplog.text


def test_settle_rules(otel: Recorder) -> None:
    """Ack makes no span by default; reject without requeue is always an ERROR span linked to the producer."""
    telemetry = make(otel)
    sent = publish(telemetry)
    destination = telemetry.destinations().get("process", "orders", "order.created", "srm")
    op = telemetry.start_consume(destination, sent, delivery_tag=1, track_delivery=True)
    op.end()
    telemetry.start_settle("ack", [op.delivery]).end()
    telemetry.start_settle("nack", [op.delivery], requeue=True).end()
    assert [s.name for s in otel.spans()] == ["publish orders", "process srm"]
    telemetry.start_settle("reject", [op.delivery], requeue=False).end()
    producer, consumer, reject = otel.spans()
    assert reject.name == "reject srm"
    assert reject.kind is SpanKind.CLIENT
    assert reject.status.status_code is StatusCode.ERROR
    assert reject.attributes["error.type"] == "rejected"  # type: ignore[index]
    assert reject.attributes["messaging.operation.type"] == "settle"  # type: ignore[index]
    assert [link.context.span_id for link in reject.links] == [producer.context.span_id]
    # settled outside the handler: it stays in the delivery's trace, under its consume span
    assert reject.parent is not None
    assert reject.parent.span_id == consumer.context.span_id


def test_settle_caused_by_an_exception_records_it(otel: Recorder) -> None:
    """A settle made because the handler raised records that exception: ERROR, rejected when dropped, else its type; the metric keeps the settle's own outcome."""
    telemetry = make(otel, settle_spans=True)
    destination = telemetry.destinations().get("process", "orders", "order.created", "srm")
    failure = KeyError("sku")
    for requeue in (False, True):
        op = telemetry.start_consume(
            destination, publish(telemetry), delivery_tag=1, track_delivery=True
        )
        op.end()
        telemetry.start_settle("reject", [op.delivery], requeue=requeue).end(cause=failure)
    dropped, requeued = [s for s in otel.spans() if s.name == "reject srm"]
    for span, error_type in ((dropped, "rejected"), (requeued, "KeyError")):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == error_type  # type: ignore[index]
        assert [e.name for e in span.events] == ["exception"]
        assert span.events[0].attributes["exception.type"] == "KeyError"  # type: ignore[index]
    settled = otel.points("messaging.client.operation.duration")
    reject_points = [
        a.get("error.type") for a, _ in settled if a["messaging.operation.name"] == "reject"
    ]
    assert sorted(reject_points, key=str) == [None, "rejected"]


def test_settle_spans_option_and_multiple(otel: Recorder) -> None:
    """settle_spans=True gives every ack a span; several deliveries give one span with a link each."""
    telemetry = make(otel, settle_spans=True)
    destination = telemetry.destinations().get("process", "orders", "order.created", "srm")
    deliveries = []
    for tag in (1, 2, 3):
        op = telemetry.start_consume(
            destination, publish(telemetry), delivery_tag=tag, track_delivery=True
        )
        op.end()
        deliveries.append(op.delivery)
    telemetry.start_settle("ack", deliveries, delivery_tag=3).end()
    ack = otel.spans()[-1]
    assert ack.name == "ack srm"
    assert ack.attributes["messaging.batch.message_count"] == 3  # type: ignore[index]
    assert ack.attributes["messaging.rabbitmq.message.delivery_tag"] == 3  # type: ignore[index]
    assert len(ack.links) == 3


def test_suppressed_publish_injects_but_records_nothing(otel: Recorder) -> None:
    """Inside suppress_instrumentation() no span or metric is made, yet the current context is injected."""
    telemetry = make(otel)
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("request") as request, suppress_instrumentation():
        sent = publish(telemetry)
    assert [s.name for s in otel.spans()] == ["request"]
    assert sent["traceparent"].split("-")[2] == f"{request.get_span_context().span_id:016x}"
    assert otel.points("messaging.client.sent.messages") == []


def test_unsampled_message_skips_hooks_but_still_propagates(otel: Recorder) -> None:
    """An unsampled publish calls no hook but still injects a not-sampled traceparent."""
    calls: list[object] = []
    options = InstrumentationOptions.from_kwargs(
        {
            "tracer_provider": TracerProvider(sampler=ALWAYS_OFF),
            "publish_hook": lambda *a: calls.append(a),
        },
        environ={},
    )
    telemetry = MessagingTelemetry(options, instrumentation_name="t", version="0")
    sent = publish(telemetry)
    assert calls == []
    flags = int(sent["traceparent"].rsplit("-", 1)[1], 16)
    assert flags & 0x01 == 0  # the sampled bit is clear


def test_internal_failure_never_raises(otel: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    """A bug in our own code (here: a broken destination) is logged and a usable no-op is returned."""
    telemetry = make(otel)
    with caplog.at_level(logging.WARNING):
        op = telemetry.start_publish(None, {"a": 1})  # type: ignore[arg-type]
        op.end()
        consume = telemetry.start_consume(None, {"a": 1})  # type: ignore[arg-type]
        consume.activate()
        consume.end()
    assert op.headers == {"a": 1}
    assert "instrumentation error" in caplog.text


def test_receive_started_earlier_covers_the_pull(otel: Recorder) -> None:
    """A receive span given the pull's start time begins then, and its duration metric covers the wait."""
    telemetry = make(otel)
    sent = publish(telemetry)
    otel.clear()
    destination = telemetry.destinations("mq.internal", 5672).get(
        "receive", "orders", "order.created", "srm"
    )
    started = time.perf_counter() - 0.25  # the pull began a quarter of a second ago
    op = telemetry.start_consume(destination, sent, started=started)
    op.end()
    (span,) = otel.spans()
    assert span.kind is SpanKind.CLIENT
    assert span.end_time is not None
    assert span.start_time is not None
    assert span.end_time - span.start_time >= 200_000_000
    sums = [
        point.sum
        for point in data_points(otel.reader, "messaging.client.operation.duration")
        if point.attributes and point.attributes.get("messaging.operation.name") == "receive"
    ]
    assert len(sums) == 1
    assert sums[0] >= 0.2


def _unsampled_parent() -> dict[str, str]:
    return {"traceparent": f"00-{0xABC:032x}-{0xDEF:016x}-00", "baggage": "order.id=17"}


def test_unsampled_trace_makes_no_span_but_carries_on(otel: Recorder) -> None:
    """With a parent-based sampler, a message of an unsampled trace makes no span, yet its handler
    runs in that trace (baggage too), a publish from it passes the trace on, and both are counted."""
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    provider.add_span_processor(otel.tracer_provider._active_span_processor)
    telemetry = MessagingTelemetry(
        InstrumentationOptions.from_kwargs(
            {"tracer_provider": provider, "meter_provider": otel.meter_provider}, environ={}
        ),
        instrumentation_name="t",
        version="0",
    )
    consume_destination = telemetry.destinations().get("process", "", "srm", "srm")
    op = telemetry.start_consume(consume_destination, _unsampled_parent(), track_delivery=True)
    op.activate()
    assert trace.get_current_span().get_span_context().trace_id == 0xABC
    assert baggage.get_baggage("order.id") == "17"
    sent = publish(telemetry)
    op.end()
    assert otel.spans() == []
    assert sent["traceparent"] == f"00-{0xABC:032x}-{0xDEF:016x}-00"
    assert sent["baggage"] == "order.id=17"
    assert otel.points("messaging.client.sent.messages")[0][1] == 1
    assert otel.points("messaging.client.consumed.messages")[0][1] == 1
    telemetry.start_settle("reject", [op.delivery], requeue=False).end()
    assert otel.spans() == []  # the reject span is a child of the unsampled trace: dropped too


def test_other_samplers_are_always_asked(otel: Recorder) -> None:
    """A sampler that may sample under an unsampled parent is asked, so its spans still appear."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    provider = TracerProvider(
        sampler=ParentBased(
            ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON
        )
    )
    provider.add_span_processor(otel.tracer_provider._active_span_processor)
    telemetry = MessagingTelemetry(
        InstrumentationOptions.from_kwargs({"tracer_provider": provider}, environ={}),
        instrumentation_name="t",
        version="0",
    )
    destination = telemetry.destinations().get("process", "", "srm", "srm")
    telemetry.start_consume(destination, _unsampled_parent()).end()
    (span,) = otel.spans()
    assert span.context.trace_id == 0xABC


def test_settle_spans_carry_baggage_attributes(otel: Recorder) -> None:
    """A settle span carries the message's baggage_attributes, even when settled after its handler."""
    telemetry = make(otel, baggage_attributes=("order.id",), settle_spans=True)
    token = otel_context.attach(baggage.set_baggage("order.id", "17"))
    try:
        sent = publish(telemetry)
    finally:
        otel_context.detach(token)
    destination = telemetry.destinations().get("process", "orders", "order.created", "srm")
    op = telemetry.start_consume(destination, sent, delivery_tag=1, track_delivery=True)
    op.end()
    telemetry.start_settle("reject", [op.delivery], requeue=False).end()
    reject = otel.spans()[-1]
    assert reject.name == "reject srm"
    assert reject.attributes["order.id"] == "17"  # type: ignore[index]


def test_where_nothing_is_added_the_callers_headers_are_sent(otel: Recorder) -> None:
    """A publish that adds nothing (suppressed with nothing current, or no tracing configured)
    hands back the caller's own headers object, ``None`` included: never an empty dict."""
    telemetry = make(otel)
    destination = telemetry.destinations().get("publish", "orders", "order.created")
    caller: dict[str, Any] = {"x-app": "shop"}
    with suppress_instrumentation():
        assert telemetry.start_publish(destination, None).headers is None
        assert telemetry.start_publish(destination, caller).headers is caller
    untraced = MessagingTelemetry(
        InstrumentationOptions(tracer_provider=trace.NoOpTracerProvider()),
        instrumentation_name="otel_test",
        version="0",
    )
    op = untraced.start_publish(destination, None)
    op.end()
    assert op.headers is None
    assert caller == {"x-app": "shop"}


def test_a_publish_that_fails_to_start_sends_the_callers_headers(
    otel: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """When our own code fails before the publish, the caller's headers go out as they were."""
    telemetry = make(otel)
    with caplog.at_level(logging.CRITICAL):
        assert telemetry.start_publish(None, None).headers is None  # type: ignore[arg-type]


def test_captured_header_values_are_capped_and_marked(otel: Recorder) -> None:
    """A captured header longer than capture_headers_max_length keeps its first characters and
    ends with the truncation mark; shorter ones are kept whole."""
    from otel_messaging_core.telemetry import TRUNCATED_MARK

    telemetry = make(otel, capture_headers="x-big, x-small", capture_headers_max_length=16)
    publish(telemetry, {"x-big": "a" * 20_000, "x-small": "b" * 16})
    (span,) = otel.spans()
    assert span.attributes["messaging.header.x-big"] == "a" * 16 + TRUNCATED_MARK  # type: ignore[index]
    assert span.attributes["messaging.header.x-small"] == "b" * 16  # type: ignore[index]
    assert TRUNCATED_MARK == "...[truncated]"
