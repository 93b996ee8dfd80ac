"""The unsampled fast path on pika (issue 18), against the real broker: what a message of a trace
that is not sampled still carries and gets, and the pass-through wrappers a BlockingChannel skips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from pika import BasicProperties
from pika.adapters.blocking_connection import BlockingChannel

from broker_harness import Recorder
from integration_tests.pika.conftest import AsyncRun, Instrument
from integration_tests.unsampled_cases import (
    TRACE_ID,
    ManualAck,
    QuietAck,
    check_carried,
    check_counted_without_spans,
    handler_view,
    handler_views,
    in_unsampled_trace,
)
from otel_pika import message_context
from otel_pika._state import ChannelState, state_of


def consume_acking(channel: BlockingChannel, queue: str, count: int) -> None:
    """Consume ``count`` messages from ``queue``, each acked in its callback."""

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        ch.basic_ack(method.delivery_tag)
        if method.delivery_tag == count:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()


def test_unsampled_publish_and_consume_carry_the_decision_without_spans(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Inside a trace that was not sampled (no MeterProvider: nothing to count), a publish sends
    the trace's traceparent with flags 00 and the baggage, the consumer's callback runs in that
    trace with that baggage, and no span is made; the caller's headers are left as they were."""
    instrument(meter_provider=None)
    headers = {"x-app": "shop"}
    properties = BasicProperties(headers=headers)
    with in_unsampled_trace():
        channel.basic_publish("", queue, b"x", properties)
        channel.basic_publish("", queue, b"y", properties)  # the second goes the bypassed way
    assert headers == {"x-app": "shop"}
    assert properties.headers is headers
    seen: list[tuple[Any, ...]] = []

    def on_message(ch: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
        seen.append((body, props.headers["traceparent"], props.headers["baggage"], handler_view()))
        if len(seen) == 2:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message, auto_ack=True)
    channel.start_consuming()
    check_carried(seen, [b"x", b"y"])
    assert trace.get_current_span().get_span_context().trace_id != TRACE_ID  # restored
    assert otel.spans() == []


def test_blocking_channel_skips_the_pass_through_wrappers_until_uninstrument(
    instrument: Instrument,
    otel: Recorder,
    channel: BlockingChannel,
    queue: str,
) -> None:
    """A BlockingChannel's underlying channel bypasses the class wrappers that only pass through
    for it (publish, delivery, ack), still with one span per publish and per delivery;
    uninstrument() takes the bypass back, so the channel object is as pika made it."""
    instrumentor = instrument()
    channel.basic_publish("", queue, b"x")
    channel.basic_publish("", queue, b"y")
    consume_acking(channel, queue, 2)
    impl = channel._impl
    assert {"basic_publish", "_on_deliver", "basic_ack"} <= set(vars(impl))
    assert [s.name for s in otel.spans()] == [
        "publish amq.default",
        "publish amq.default",
        f"process {queue}",
        f"process {queue}",
    ]
    instrumentor.uninstrument()
    assert not {"basic_publish", "_on_deliver", "basic_ack"} & set(vars(impl))
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
            with in_unsampled_trace():  # sends that trace, not sampled
                channel.basic_publish("", name, b"x", BasicProperties(headers={"x-app": "shop"}))

        channel.queue_declare(name, exclusive=True, callback=on_declared)

    async_run.run(script)
    assert seen == [(TRACE_ID, False)]
    assert trace.get_current_span().get_span_context().trace_id != TRACE_ID
    assert otel.spans() == []


def publish_three(channel: BlockingChannel, queue: str, bodies: bytes = b"abc") -> None:
    with in_unsampled_trace():
        for body in (bytes([b]) for b in bodies):
            channel.basic_publish("", queue, body, BasicProperties(headers={"x-app": "shop"}))


def consume_acking_the_first(
    channel: BlockingChannel,
    queue: str,
    count: int,
    observe: Callable[[Any, bytes], None] | None = None,
) -> tuple[list[int], ChannelState]:
    """Consume ``count`` messages, acking only the first (body ``a``) in its callback
    (``observe(properties, body)`` sees each); the delivery tags, and the channel's state, whose
    ledger then holds every delivery but the first."""
    tags: list[int] = []

    def on_message(ch: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
        if observe is not None:
            observe(props, body)
        tags.append(method.delivery_tag)
        if body == b"a":
            ch.basic_ack(method.delivery_tag)
        if len(tags) == count:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    state = state_of(channel._impl)
    assert state is not None
    assert sorted(state.deliveries) == tags[1:]
    return tags, state


def test_manual_ack_consumer_of_a_not_sampled_message_settles_from_its_record(
    manual_ack: ManualAck, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """What every plugin's manual-ack consumer gives (ManualAck), on a BlockingChannel: one
    basic_ack inside the callback, then basic_ack(multiple=True) outside it for the other two
    leaves no delivery recorded and nothing to redeliver, with one settle span for the two."""
    publish_three(channel, queue)
    seen: list[Any] = []
    tags, state = consume_acking_the_first(
        channel,
        queue,
        3,
        lambda props, body: seen.append(
            (body, props.headers["traceparent"], *handler_views(message_context, props))
        ),
    )
    assert [entry[0] for entry in seen] == [b"a", b"b", b"c"]
    manual_ack.check_callbacks([entry[1:] for entry in seen], 3)
    channel.basic_ack(tags[2], multiple=True)
    assert len(state.deliveries) == 0
    manual_ack.check_multiple_ack_span(otel.spans(), queue)
    assert channel.basic_get(queue, auto_ack=True) == (None, None, None)  # all settled
    manual_ack.check_quiet(3)


def test_manual_acks_with_nothing_to_record_forget_their_records(
    quiet_ack: QuietAck, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """What every plugin's quiet ack gives (QuietAck), on a BlockingChannel: basic_ack inside
    the callback and basic_ack(multiple=True) after it forget their deliveries and start
    nothing; basic_nack(multiple=True, requeue=False) of the other two is the ERROR span
    linking both; nothing is left recorded or to redeliver."""
    publish_three(channel, queue, b"abcde")
    tags, state = consume_acking_the_first(channel, queue, 5)
    channel.basic_ack(tags[2], multiple=True)
    assert sorted(state.deliveries) == tags[3:]
    quiet_ack.check_acks_started_nothing()
    channel.basic_nack(tags[4], multiple=True, requeue=False)
    assert len(state.deliveries) == 0
    quiet_ack.check_dropped_span(otel.spans(), queue, "nack", 2)
    assert channel.basic_get(queue, auto_ack=True) == (None, None, None)  # all settled
    quiet_ack.check_quiet(5)


def test_fast_path_records_keep_the_ledger_bound_and_settle_as_the_general_path(
    quiet_ack: QuietAck,
    otel: Recorder,
    channel: BlockingChannel,
    queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the ledger's bound the oldest record of a not-sampled manual-ack delivery is
    dropped, on either path; basic_nack(multiple=True, requeue=False) outside the callback then
    finds the records kept: one ERROR span naming the queue and linking their producers."""
    case = quiet_ack
    publish_three(channel, queue, b"abcd")
    state = state_of(channel._impl)
    assert state is not None
    monkeypatch.setattr(state.deliveries, "limit", 2)
    tags: list[int] = []

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        tags.append(method.delivery_tag)
        if len(tags) == 4:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    assert sorted(state.deliveries) == tags[2:]
    channel.basic_nack(0, multiple=True, requeue=False)
    assert len(state.deliveries) == 0
    case.check_dropped_span(otel.spans(), queue, "nack", 2)
    assert channel.basic_get(queue, auto_ack=True) == (None, None, None)  # all settled
    case.check_quiet(4)


def test_not_sampled_manual_ack_messages_are_counted_with_a_meter_provider(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Not-sampled messages are still counted with a MeterProvider (check_counted_without_spans)
    on pika: three, each acked in its BlockingChannel callback."""
    instrument()
    publish_three(channel, queue)
    consume_acking(channel, queue, 3)
    check_counted_without_spans(otel, 3)
