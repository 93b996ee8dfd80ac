"""otel-kombu with a trace not sampled upstream (issue 18), against the real broker: what its
messages carry (plain and retrying publishes) and what their consumers get, and a fast path that
breaks never reaching the user's publish or callback."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from broker_harness import Recorder
from integration_tests.conftest import Fault
from integration_tests.internal_faults import FAST_PATH_STEPS
from integration_tests.kombu.conftest import Instrument, declare, drain
from integration_tests.unsampled_cases import (
    SPAN_ID,
    TRACE_ID,
    VIEW,
    ManualAck,
    QuietAck,
    check_carried,
    check_counted_without_spans,
    check_nothing_current,
    handler_view,
    handler_views,
    in_unsampled_trace,
)
from otel_kombu import message_context
from otel_kombu._consume import MESSAGE_ATTR


def publish_unsampled(connection: Connection, entities: tuple[Exchange, Queue]) -> Queue:
    """Declare ``entities`` and publish two messages to them inside the unsampled trace, the
    second with ``retry=True``; the caller's headers are left as they were. Returns the queue."""
    exchange, queue = entities
    declare(connection, exchange, queue)
    headers = {"x-app": "shop"}
    producer = Producer(connection, exchange=exchange)
    with in_unsampled_trace():
        producer.publish({"n": 0}, routing_key="order.created", headers=headers)
        producer.publish({"n": 1}, routing_key="order.created", headers=headers, retry=True)
    assert headers == {"x-app": "shop"}
    return queue


def consume_no_ack(connection: Connection, queue: Queue) -> list[tuple[Any, ...]]:
    """Both messages consumed with no_ack: each one's body, traceparent and baggage headers,
    handler_view() in its callback, and handler_view() inside message_context()."""
    seen: list[tuple[Any, ...]] = []

    def on_message(body: Any, message: Any) -> None:
        headers = message.headers
        views = handler_views(message_context, message)
        seen.append((body, headers.get("traceparent"), headers.get("baggage"), *views))

    with Consumer(connection, [queue], callbacks=[on_message], no_ack=True):
        drain(connection, lambda: len(seen) == 2)
    return seen


def check_nothing_redelivered(connection: Connection, seen: list[Any]) -> None:
    """With every delivery settled, basic_recover(requeue=True) brings nothing back: the
    consumer's callback saw no message beyond the two it had."""
    connection.default_channel.basic_recover(requeue=True)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.3)
    assert len(seen) == 2, seen


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
    seen = consume_no_ack(connection, publish_unsampled(connection, entities))
    check_carried([entry[:4] for entry in seen], [{"n": 0}, {"n": 1}])
    assert [entry[4] for entry in seen] == [VIEW, VIEW]  # in message_context()
    check_nothing_current()
    assert otel.spans() == []


@pytest.mark.parametrize("fault", FAST_PATH_STEPS, indirect=True)
def test_a_broken_fast_path_never_reaches_the_user(
    fault: Fault, instrument: Instrument, connection: Connection, entities: tuple[Exchange, Queue]
) -> None:
    """With a fast-path step raising, an unsampled publish and a no_ack consumer behave as
    uninstrumented kombu: every message delivered once with the caller's headers and body, the
    callback runs; the fault is logged and nothing stays current."""
    instrument(meter_provider=None)
    seen = consume_no_ack(connection, publish_unsampled(connection, entities))
    assert [entry[0] for entry in seen] == [{"n": 0}, {"n": 1}]
    fault.check_logged()
    check_nothing_current()


def test_manual_ack_consumer_of_a_not_sampled_message_settles_from_its_record(
    manual_ack: ManualAck, otel: Recorder, connection: Connection, entities: tuple[Exchange, Queue]
) -> None:
    """What every plugin's manual-ack consumer gives (ManualAck), on kombu: an ack inside the
    callback, a reject without requeue after it, each finding the delivery's record (its queue,
    its producer), message_context() in the trace after the callback too. No span is recorded
    (settle_spans=True: each settle span is in the unsampled trace); nothing is redelivered."""
    queue = publish_unsampled(connection, entities)
    seen: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        seen.append(
            (message, message.headers.get("traceparent"), *handler_views(message_context, message))
        )
        if body == {"n": 0}:
            message.ack()

    with Consumer(connection, [queue], callbacks=[on_message]):
        drain(connection, lambda: len(seen) == 2)
        manual_ack.check_callbacks([entry[1:] for entry in seen], 2)
        later = seen[1][0]
        record = getattr(later, MESSAGE_ATTR).delivery
        assert record.destination.queue == queue.name
        assert (record.creation.trace_id, record.creation.span_id) == (TRACE_ID, SPAN_ID)
        with message_context(later):
            assert handler_view() == VIEW
        later.reject(requeue=False)
        # all settled: nothing unacknowledged comes back
        check_nothing_redelivered(connection, seen)
    assert otel.spans() == []
    manual_ack.check_quiet(2)


def test_manual_acks_with_nothing_to_record_start_nothing(
    quiet_ack: QuietAck, otel: Recorder, connection: Connection, entities: tuple[Exchange, Queue]
) -> None:
    """What every plugin's quiet ack gives (QuietAck), on kombu (whose records stay on the
    messages): the ack inside the callback starts nothing; a reject without requeue after it
    still starts its settle from the delivery's record (no span: it is in the unsampled
    trace); message_context() stays in the trace; nothing is redelivered."""
    queue = publish_unsampled(connection, entities)
    seen: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        seen.append(message)
        if body == {"n": 0}:
            message.ack()

    with Consumer(connection, [queue], callbacks=[on_message]):
        drain(connection, lambda: len(seen) == 2)
        quiet_ack.check_acks_started_nothing()
        later = seen[1]
        with message_context(seen[0]):
            assert handler_view() == VIEW
        later.reject(requeue=False)
        assert quiet_ack.started == ["reject"], quiet_ack.started
        check_nothing_redelivered(connection, seen)
    assert otel.spans() == []
    quiet_ack.check_quiet(2)


def test_not_sampled_manual_ack_messages_are_counted_with_a_meter_provider(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """Not-sampled messages are still counted with a MeterProvider (check_counted_without_spans)
    on kombu: two (one published with retry=True), each acked in its callback."""
    instrument()
    queue = publish_unsampled(connection, entities)
    acked: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        message.ack()
        acked.append(body)

    with Consumer(connection, [queue], callbacks=[on_message]):
        drain(connection, lambda: len(acked) == 2)
    check_counted_without_spans(otel, 2)
