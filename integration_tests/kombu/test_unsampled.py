"""The unsampled fast path on kombu (issue 18), against the real broker: what a message of a
trace that is not sampled still carries and gets, and a broken fast path never reaching the
user's publish or callback."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context

from broker_harness import Recorder
from integration_tests.internal_faults import FAST_PATH_STEPS, fault_logged, inject
from integration_tests.kombu.conftest import Instrument, declare, drain
from integration_tests.unsampled_cases import (
    BAGGAGE,
    PATHS,
    SPAN_ID,
    TRACE_ID,
    TRACEPARENT,
    HookCalls,
    handler_view,
    take_path,
    unsampled_parent,
)
from otel_kombu import message_context
from otel_kombu._consume import MESSAGE_ATTR


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
        ({"n": n}, TRACEPARENT, BAGGAGE, TRACE_ID, False, "17", TRACE_ID) for n in (0, 1)
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


@pytest.mark.parametrize("path", PATHS)
def test_manual_ack_consumer_of_a_not_sampled_message_settles_from_its_record(
    path: str,
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A manual-ack consumer of messages whose trace was not sampled (no MeterProvider) runs
    each callback in that trace with its baggage (message_context() too, in the callback and
    after it), hooks never run, and each settle finds the delivery's record (its queue, its
    producer): an ack inside the callback, a reject without requeue after it. No span is
    recorded (settle_spans=True: each settle span is in the unsampled trace); nothing is left
    in the queue. The fast path and the general path give the same."""
    general = take_path(monkeypatch, path)
    hooks = HookCalls()
    instrument(meter_provider=None, settle_spans=True, **hooks.options())
    exchange, queue = entities
    declare(connection, exchange, queue)
    publish_unsampled(connection, exchange, {"x-app": "shop"})
    seen: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        with message_context(message):
            in_block = handler_view()
        seen.append((message, message.headers.get("traceparent"), handler_view(), in_block))
        if body == {"n": 0}:
            message.ack()

    with Consumer(connection, [queue], callbacks=[on_message]):
        drain(connection, lambda: len(seen) == 2)
        view = (TRACE_ID, False, "17")
        assert [entry[1:] for entry in seen] == [(TRACEPARENT, view, view)] * 2
        later = seen[1][0]
        record = getattr(later, MESSAGE_ATTR).delivery
        assert record.destination.queue == queue.name
        assert (record.creation.trace_id, record.creation.span_id) == (TRACE_ID, SPAN_ID)
        with message_context(later):
            assert handler_view() == view
        later.reject(requeue=False)
        # all settled: nothing unacknowledged comes back
        connection.default_channel.basic_recover(requeue=True)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=0.3)
        assert len(seen) == 2
    assert otel.spans() == []
    assert hooks.calls == []
    assert general == ([] if path == "fast" else ["start_consume"] * 2)
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"


def test_not_sampled_manual_ack_messages_are_counted_with_a_meter_provider(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """With a MeterProvider, not-sampled messages of a manual-ack consumer are still counted:
    each delivery's process duration and each ack's settle duration, with no span."""
    instrument()
    exchange, queue = entities
    declare(connection, exchange, queue)
    publish_unsampled(connection, exchange, {"x-app": "shop"})
    acked: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        message.ack()
        acked.append(body)

    with Consumer(connection, [queue], callbacks=[on_message]):
        drain(connection, lambda: len(acked) == 2)
    assert [value for _, value in otel.points("messaging.process.duration")] == [2]
    settles = [
        value
        for attributes, value in otel.points("messaging.client.operation.duration")
        if attributes.get("messaging.operation.name") == "ack"
    ]
    assert settles == [2]
    assert otel.spans() == []
