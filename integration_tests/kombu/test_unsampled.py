"""The unsampled fast path on kombu (issue 18), against the real broker: what a message of a
trace that is not sampled still carries and gets, and a broken fast path never reaching the
user's publish or callback."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from broker_harness import Recorder
from integration_tests.internal_faults import FAST_PATH_STEPS, fault_logged, inject
from integration_tests.kombu.conftest import Instrument, declare, drain
from otel_kombu import message_context

TRACE_ID = 0x5EED
SPAN_ID = 0xF00D
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"


def unsampled_parent() -> otel_context.Context:
    span = NonRecordingSpan(
        SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(0))
    )
    return baggage.set_baggage("order.id", "17", trace.set_span_in_context(span))


def publish_unsampled(connection: Connection, exchange: Exchange, headers: Any) -> None:
    producer = Producer(connection, exchange=exchange)
    token = otel_context.attach(unsampled_parent())
    try:
        producer.publish({"n": 0}, routing_key="order.created", headers=headers)
        producer.publish({"n": 1}, routing_key="order.created", headers=headers, retry=True)
    finally:
        otel_context.detach(token)


def consume_no_ack(connection: Connection, queue: Queue) -> list[tuple[Any, ...]]:
    seen: list[tuple[Any, ...]] = []

    def on_message(body: Any, message: Any) -> None:
        span_context = trace.get_current_span().get_span_context()
        with message_context(message):
            in_block = trace.get_current_span().get_span_context().trace_id
        seen.append(
            (
                body,
                message.headers.get("traceparent"),
                message.headers.get("baggage"),
                span_context.trace_id,
                span_context.trace_flags.sampled,
                baggage.get_baggage("order.id"),
                in_block,
            )
        )

    with Consumer(connection, [queue], callbacks=[on_message], no_ack=True):
        drain(connection, lambda: len(seen) == 2)
    return seen


def test_unsampled_publish_and_consume_carry_the_decision_without_spans(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """Inside a trace that was not sampled (no MeterProvider: nothing to count), a publish (plain
    and retrying) sends the trace's traceparent with flags 00 and the baggage, a no_ack
    consumer's callback runs in that trace with that baggage (message_context() too), and no
    span is made; the caller's headers are left as they were, nothing stays current."""
    instrument(meter_provider=None)
    exchange, queue = entities
    declare(connection, exchange, queue)
    headers = {"x-app": "shop"}
    publish_unsampled(connection, exchange, headers)
    assert headers == {"x-app": "shop"}
    seen = consume_no_ack(connection, queue)
    assert seen == [
        ({"n": n}, TRACEPARENT, "order.id=17", TRACE_ID, False, "17", TRACE_ID) for n in (0, 1)
    ]
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"
    assert otel.spans() == []


@pytest.mark.parametrize("step", FAST_PATH_STEPS)
def test_a_broken_fast_path_never_reaches_the_user(
    step: str,
    instrument: Instrument,
    connection: Connection,
    entities: tuple[Exchange, Queue],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a fast-path step raising, an unsampled publish and a no_ack consumer behave as
    uninstrumented kombu: every message delivered once with the caller's headers and body, the
    callback runs; the fault is logged and nothing stays current."""
    caplog.set_level(logging.DEBUG, logger="otel_messaging_core")
    inject(monkeypatch, step)
    instrument(meter_provider=None)
    exchange, queue = entities
    declare(connection, exchange, queue)
    headers = {"x-app": "shop"}
    publish_unsampled(connection, exchange, headers)
    assert headers == {"x-app": "shop"}
    seen = consume_no_ack(connection, queue)
    assert [entry[0] for entry in seen] == [{"n": 0}, {"n": 1}]
    assert fault_logged(caplog, step)
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"
