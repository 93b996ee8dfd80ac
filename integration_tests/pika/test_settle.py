"""pika's own settle cases: the per-channel delivery records and the async adapters (the settle
spans every path makes are in integration_tests/contract)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Recorder, span_summary
from broker_harness.broker import close_connections
from integration_tests.pika.conftest import AsyncRun, Instrument
from otel_pika import PikaInstrumentor
from otel_pika._state import state_of


def deliveries(channel: BlockingChannel) -> int:
    state = state_of(channel._impl)
    return 0 if state is None else len(state.deliveries)


def test_every_settle_frees_its_delivery_record(
    instrument: Instrument, channel: BlockingChannel, queue: str
) -> None:
    """A manual-ack delivery is remembered until an ack, nack or reject settles it; ack(multiple=True) frees every record up to its tag."""
    instrument(settle_spans=True)
    for _ in range(6):
        channel.basic_publish("", queue, b"x")
    tags = [channel.basic_get(queue)[0].delivery_tag for _ in range(6)]
    assert deliveries(channel) == 6
    channel.basic_ack(tags[2], multiple=True)
    assert deliveries(channel) == 3
    channel.basic_nack(tags[3], requeue=False)
    channel.basic_reject(tags[4], requeue=False)
    channel.basic_nack(tags[5], requeue=True)
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

    async_run.consume_one(name, lambda ch, method: ch.basic_ack(method.delivery_tag))
    spans = otel.spans()
    (ack,) = otel.named(f"ack {name}")
    assert span_summary(ack, spans)["parent"] == f"process {name}"
    assert span_summary(ack, spans)["links"] == ["publish amq.default"]


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


@pytest.mark.usefixtures("instrumented")
@pytest.mark.slow
def test_records_are_freed_on_connection_loss(
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
