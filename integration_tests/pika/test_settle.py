"""Settle: ack / nack / reject spans, multiple=True, and the per-channel delivery records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Broker, Recorder, span_summary
from broker_harness.broker import close_connections
from integration_tests.pika.conftest import AsyncRun, Instrument
from otel_pika import PikaInstrumentor
from otel_pika._state import state_of


def deliveries(channel: BlockingChannel) -> int:
    state = state_of(channel._impl)
    return 0 if state is None else len(state.deliveries)


def test_ack_is_quiet_but_a_message_dropped_by_nack_or_reject_is_an_error_span(
    instrumented: PikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    channel: BlockingChannel,
    queue: str,
) -> None:
    """By default an ack makes no span, while nack/reject without requeue always make an ERROR span linked to the producer."""
    for n in range(3):
        channel.basic_publish("", queue, b"%d" % n)
    handled: list[int] = []

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        tag = method.delivery_tag
        handled.append(tag)
        if tag == 1:
            ch.basic_ack(tag)
        elif tag == 2:
            ch.basic_nack(tag, requeue=False)
        else:
            ch.basic_reject(tag, requeue=False)
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    assert handled == [1, 2, 3]
    spans = otel.spans()
    assert otel.named(f"ack {queue}") == []
    (nack,) = otel.named(f"nack {queue}")
    (reject,) = otel.named(f"reject {queue}")
    summary = span_summary(nack, spans)
    assert summary == {
        "name": f"nack {queue}",
        "kind": "CLIENT",
        "parent": f"process {queue}",
        "links": ["publish amq.default"],
        "status": "ERROR",
        "attributes": {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": "nack",
            "messaging.operation.type": "settle",
            "messaging.destination.name": queue,
            "messaging.rabbitmq.destination.routing_key": queue,
            "messaging.rabbitmq.message.delivery_tag": 2,
            "server.address": rabbitmq.host,
            "server.port": rabbitmq.port,
            "error.type": "rejected",
        },
        "events": [],
    }
    assert span_summary(reject, spans)["attributes"]["error.type"] == "rejected"
    assert reject.links[0].context.span_id == otel.named("publish amq.default")[2].context.span_id
    assert deliveries(channel) == 0


def test_settle_spans_and_multiple_settle_every_delivery_up_to_the_tag(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """With settle_spans=True every ack gets a span; ack(multiple=True) settles all tracked deliveries up to its tag in one span with a link each."""
    instrument(settle_spans=True)
    for n in range(4):
        channel.basic_publish("", queue, b"%d" % n)
    for _ in range(3):
        method, _properties, _body = channel.basic_get(queue)
    assert deliveries(channel) == 3
    channel.basic_ack(method.delivery_tag, multiple=True)
    assert deliveries(channel) == 0
    spans = otel.spans()
    (ack,) = otel.named(f"ack {queue}")
    summary = span_summary(ack, spans)
    assert summary["status"] == "UNSET"
    assert summary["links"] == ["publish amq.default"] * 3
    assert summary["attributes"]["messaging.batch.message_count"] == 3
    assert summary["attributes"]["messaging.rabbitmq.message.delivery_tag"] == 3

    method, _properties, _body = channel.basic_get(queue)
    channel.basic_nack(method.delivery_tag, requeue=True)
    (nack,) = otel.named(f"nack {queue}")
    # settled outside any span: the delivery's own receive span is the parent
    assert span_summary(nack, otel.spans())["parent"] == f"receive {queue}"
    assert nack.attributes["messaging.rabbitmq.message.delivery_tag"] == 4  # type: ignore[index]
    assert deliveries(channel) == 0


def test_auto_ack_consumers_keep_no_records(
    instrumented: PikaInstrumentor, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """auto_ack deliveries (callback, generator and get) keep nothing per message."""
    for _ in range(2):
        channel.basic_publish("", queue, b"x")
    channel.basic_get(queue, auto_ack=True)
    for _message in channel.consume(queue, auto_ack=True):
        break
    channel.cancel()
    channel.basic_publish("", queue, b"x")
    channel.basic_consume(queue, lambda ch, *_: ch.stop_consuming(), auto_ack=True)
    channel.start_consuming()
    assert len(otel.named(f"receive {queue}")) == 2
    assert len(otel.named(f"process {queue}")) == 1
    assert deliveries(channel) == 0


def test_async_settle_spans(
    instrument: Instrument, otel: Recorder, async_run: AsyncRun, unique: Callable[[str], str]
) -> None:
    """On the async adapters an ack inside the callback is a settle span under the process span."""
    instrument(settle_spans=True)
    name = unique("q")

    def script(channel: Any) -> None:
        def on_message(ch: Any, method: Any, *_: Any) -> None:
            ch.basic_ack(method.delivery_tag)
            ch.queue_declare(name, exclusive=True, callback=lambda _f: async_run.done())

        def on_declared(_frame: Any) -> None:
            channel.basic_consume(name, on_message)
            channel.basic_publish("", name, b"x")

        channel.queue_declare(name, exclusive=True, callback=on_declared)

    async_run.run(script)
    spans = otel.spans()
    (ack,) = otel.named(f"ack {name}")
    assert span_summary(ack, spans)["parent"] == f"process {name}"
    assert span_summary(ack, spans)["links"] == ["publish amq.default"]


def test_reject_of_a_delivery_seen_before_instrumentation_is_still_an_error_span(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """A delivery pulled before instrument() and then rejected without requeue still leaves an ERROR span."""
    channel.basic_publish("", queue, b"x")
    method, _properties, _body = channel.basic_get(queue)
    instrument()
    channel.basic_reject(method.delivery_tag, requeue=False)
    (reject,) = otel.named("reject")
    assert reject.attributes["error.type"] == "rejected"  # type: ignore[index]
    assert reject.attributes["messaging.rabbitmq.message.delivery_tag"] == 1  # type: ignore[index]


def test_records_are_freed_when_the_channel_closes(
    instrumented: PikaInstrumentor, channel: BlockingChannel, queue: str
) -> None:
    """Unsettled delivery records go away when their channel closes."""
    for _ in range(3):
        channel.basic_publish("", queue, b"x")
        channel.basic_get(queue)
    impl = channel._impl
    assert deliveries(channel) == 3
    channel.close()
    state = state_of(impl)
    assert state is not None
    assert state.deliveries == {}


@pytest.mark.slow
def test_records_are_freed_on_connection_loss(
    instrumented: PikaInstrumentor,
    connect: Callable[..., BlockingConnection],
    unique: Callable[[str], str],
) -> None:
    """Unsettled delivery records go away when the broker drops the connection."""
    name = unique("conn")
    connection = connect(name)
    channel = connection.channel()
    queue = unique("q")
    channel.queue_declare(queue, exclusive=True)
    for _ in range(3):
        channel.basic_publish("", queue, b"x")
        channel.basic_get(queue)
    assert deliveries(channel) == 3
    assert close_connections(name) == 1
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        connection.process_data_events(time_limit=30)
    assert state_of(channel._impl).deliveries == {}  # type: ignore[union-attr]


@pytest.mark.slow
def test_no_growth_over_100k_manually_acked_messages(
    otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Over 100,000 manually acked messages the per-channel records stay within the prefetch window and end empty."""
    total = 100_000
    body = b"x" * 16
    for _ in range(total):
        channel.basic_publish("", queue, body)
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(
        tracer_provider=TracerProvider(sampler=ALWAYS_OFF), meter_provider=otel.meter_provider
    )
    try:
        channel.basic_qos(prefetch_count=500)
        largest = 0
        seen = 0

        def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
            nonlocal largest, seen
            seen += 1
            largest = max(largest, deliveries(ch))
            ch.basic_ack(method.delivery_tag)
            if seen == total:
                ch.stop_consuming()

        channel.basic_consume(queue, on_message)
        channel.start_consuming()
    finally:
        instrumentor.uninstrument()
    assert seen == total
    assert largest == 1  # each delivery is acked inside its own callback
    assert deliveries(channel) == 0
    consumed = sum(v for _a, v in otel.points("messaging.client.consumed.messages"))
    assert consumed == total
