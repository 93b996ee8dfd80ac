"""The unsampled fast path on pika (issue 18), against the real broker: what a message of a trace
that is not sampled still carries and gets, and the pass-through wrappers a BlockingChannel skips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from pika import BasicProperties
from pika.adapters.blocking_connection import BlockingChannel

from broker_harness import Recorder
from integration_tests.pika.conftest import AsyncRun, Instrument
from integration_tests.unsampled_cases import (
    BAGGAGE,
    PATHS,
    SPAN_ID,
    TRACE_ID,
    TRACEPARENT,
    HookCalls,
    handler_view,
    in_unsampled_trace,
    links_of,
    take_path,
    unsampled_parent,
)
from otel_pika import message_context
from otel_pika._state import state_of


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
    assert seen == [
        (b"x", TRACEPARENT, BAGGAGE, TRACE_ID),
        ("17", False),
        (b"y", TRACEPARENT, BAGGAGE, TRACE_ID),
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
    for it (publish, delivery, ack), still with one span per publish and per delivery;
    uninstrument() takes the bypass back, so the channel object is as pika made it."""
    instrumentor = instrument()
    channel.basic_publish("", queue, b"x")
    channel.basic_publish("", queue, b"y")

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        ch.basic_ack(method.delivery_tag)
        if method.delivery_tag == 2:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
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


def publish_three(channel: BlockingChannel, queue: str) -> None:
    with in_unsampled_trace():
        for body in (b"a", b"b", b"c"):
            channel.basic_publish("", queue, body, BasicProperties(headers={"x-app": "shop"}))


@pytest.mark.parametrize("path", PATHS)
def test_manual_ack_consumer_of_a_not_sampled_message_settles_from_its_record(
    path: str,
    instrument: Instrument,
    otel: Recorder,
    channel: BlockingChannel,
    queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A manual-ack consumer of messages whose trace was not sampled (no MeterProvider) runs
    each callback in that trace with its baggage (message_context() too), hooks never run, and
    every ack settles its delivery: one inside the callback, then ack(multiple=True) outside it
    for the other two, whose settle span (settle_spans=True; a new trace, so the sampler keeps
    it) links both producers and names the queue. Nothing else is recorded; nothing redelivered.
    The fast path and the general path give the same."""
    general = take_path(monkeypatch, path)
    hooks = HookCalls()
    instrument(meter_provider=None, settle_spans=True, **hooks.options())
    publish_three(channel, queue)
    seen: list[Any] = []
    tags: list[int] = []

    def on_message(ch: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
        with message_context(props):
            in_block = handler_view()
        seen.append((body, props.headers["traceparent"], handler_view(), in_block))
        tags.append(method.delivery_tag)
        if body == b"a":
            ch.basic_ack(method.delivery_tag)
        if len(tags) == 3:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    view = (TRACE_ID, False, "17")
    assert seen == [(body, TRACEPARENT, view, view) for body in (b"a", b"b", b"c")]
    state = state_of(channel._impl)
    assert state is not None
    assert sorted(state.deliveries) == tags[1:]
    channel.basic_ack(tags[2], multiple=True)
    assert len(state.deliveries) == 0
    (ack,) = otel.spans()
    assert ack.name == f"ack {queue}"
    assert ack.parent is None
    assert links_of(ack) == [(TRACE_ID, SPAN_ID)] * 2
    assert ack.attributes is not None
    assert ack.attributes["messaging.batch.message_count"] == 2
    assert channel.basic_get(queue, auto_ack=True) == (None, None, None)  # all settled
    assert hooks.calls == []
    assert general == ([] if path == "fast" else ["start_consume"] * 3)
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"


def test_not_sampled_manual_ack_messages_are_counted_with_a_meter_provider(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """With a MeterProvider, not-sampled messages of a manual-ack consumer are still counted:
    each delivery's process duration and each ack's settle duration, with no span."""
    instrument()
    publish_three(channel, queue)

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        ch.basic_ack(method.delivery_tag)
        if method.delivery_tag == 3:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    assert [value for _, value in otel.points("messaging.process.duration")] == [3]
    settles = [
        value
        for attributes, value in otel.points("messaging.client.operation.duration")
        if attributes.get("messaging.operation.name") == "ack"
    ]
    assert settles == [3]
    assert otel.spans() == []
