"""The unsampled fast path on pika (issue 18), against the real broker: what a message of a trace
that is not sampled still carries and gets, and the pass-through wrappers a BlockingChannel skips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from pika import BasicProperties
from pika.adapters.blocking_connection import BlockingChannel

from broker_harness import Recorder
from integration_tests.pika.conftest import AsyncRun, Instrument

TRACE_ID = 0x5EED
SPAN_ID = 0xF00D


def unsampled_parent() -> otel_context.Context:
    span = NonRecordingSpan(
        SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(0))
    )
    return baggage.set_baggage("order.id", "17", trace.set_span_in_context(span))


def test_unsampled_publish_and_consume_carry_the_decision_without_spans(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Inside a trace that was not sampled (no MeterProvider: nothing to count), a publish sends
    the trace's traceparent with flags 00 and the baggage, the consumer's callback runs in that
    trace with that baggage, and no span is made; the caller's headers are left as they were."""
    instrument(meter_provider=None)
    headers = {"x-app": "shop"}
    properties = BasicProperties(headers=headers)
    token = otel_context.attach(unsampled_parent())
    try:
        channel.basic_publish("", queue, b"x", properties)
        channel.basic_publish("", queue, b"y", properties)  # the second goes the bypassed way
    finally:
        otel_context.detach(token)
    assert headers == {"x-app": "shop"}
    assert properties.headers is headers
    seen: list[tuple[Any, ...]] = []

    def on_message(ch: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
        span_context = trace.get_current_span().get_span_context()
        seen.append(
            (body, props.headers["traceparent"], props.headers["baggage"], span_context.trace_id)
        )
        seen.append((baggage.get_baggage("order.id"), span_context.trace_flags.sampled))
        if len(seen) == 4:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message, auto_ack=True)
    channel.start_consuming()
    traceparent = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"
    assert seen == [
        (b"x", traceparent, "order.id=17", TRACE_ID),
        ("17", False),
        (b"y", traceparent, "order.id=17", TRACE_ID),
        ("17", False),
    ]
    assert trace.get_current_span().get_span_context().trace_id != TRACE_ID  # restored
    assert otel.spans() == []


def test_blocking_channel_skips_the_pass_through_wrappers_until_uninstrument(
    instrument: Instrument,
    otel: Recorder,
    channel: BlockingChannel,
    queue: str,
) -> None:
    """A BlockingChannel's underlying channel bypasses the class wrappers that only pass through
    for it, still with one span per publish and per delivery; uninstrument() takes the bypass
    back, so the channel object is as pika made it."""
    instrumentor = instrument()
    channel.basic_publish("", queue, b"x")
    channel.basic_publish("", queue, b"y")

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        if method.delivery_tag == 2:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message, auto_ack=True)
    channel.start_consuming()
    impl = channel._impl
    assert {"basic_publish", "_on_deliver"} <= set(vars(impl))
    assert [s.name for s in otel.spans()] == [
        "publish amq.default",
        "publish amq.default",
        f"process {queue}",
        f"process {queue}",
    ]
    instrumentor.uninstrument()
    assert not {"basic_publish", "_on_deliver"} & set(vars(impl))
    otel.clear()
    channel.basic_publish("", queue, b"z")
    assert channel.basic_get(queue, auto_ack=True)[2] == b"z"
    assert otel.spans() == []


def test_async_adapter_consumer_of_a_not_sampled_message_runs_in_its_trace(
    instrument: Instrument, otel: Recorder, async_run: AsyncRun, unique: Callable[[str], str]
) -> None:
    """On SelectConnection and AsyncioConnection, a message published inside a trace that was not
    sampled reaches its consumer callback in that trace, with no span on either side and the
    previous context back afterwards."""
    instrument(meter_provider=None)
    name = unique("q")
    seen: list[tuple[int, bool]] = []

    def script(channel: Any) -> None:
        def on_message(ch: Any, method: Any, *_: Any) -> None:
            span_context = trace.get_current_span().get_span_context()
            seen.append((span_context.trace_id, span_context.trace_flags.sampled))
            async_run.done()

        def on_declared(_frame: Any) -> None:
            channel.basic_consume(name, on_message, auto_ack=True)
            token = otel_context.attach(unsampled_parent())  # sends that trace, not sampled
            try:
                channel.basic_publish("", name, b"x", BasicProperties(headers={"x-app": "shop"}))
            finally:
                otel_context.detach(token)

        channel.queue_declare(name, exclusive=True, callback=on_declared)

    async_run.run(script)
    assert seen == [(TRACE_ID, False)]
    assert trace.get_current_span().get_span_context().trace_id != TRACE_ID
    assert otel.spans() == []
