"""Per-channel instrumentation: instrument_channel() on blocking and async channels, alone and
next to instrument() (the instrumentor's shared behaviour is in integration_tests/contract)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Recorder
from integration_tests.contract.pika_paths import patched_attributes
from integration_tests.pika.conftest import AsyncRun
from otel_pika import PikaInstrumentor


def exchange_and_consume(channel: BlockingChannel, queue: str, count: int = 1) -> None:
    """Publish ``count`` messages and consume the first with a callback that acks it."""
    for _ in range(count):
        channel.basic_publish("", queue, b"x")

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()


def test_instrument_channel_traces_one_blocking_channel_only(
    otel: Recorder, connect: Callable[..., BlockingConnection], unique: Callable[[str], str]
) -> None:
    """instrument_channel() traces that channel with its own options and patches no class; uninstrument_channel() undoes it."""
    before = patched_attributes()
    connection = connect()
    channel, other = connection.channel(), connection.channel()
    queue = unique("q")
    channel.queue_declare(queue, exclusive=True)
    PikaInstrumentor.instrument_channel(
        channel,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        settle_spans=True,
    )
    assert patched_attributes() == before
    exchange_and_consume(channel, queue)
    other.basic_publish("", queue, b"untraced")
    assert other.basic_get(queue, auto_ack=True)[2] == b"untraced"
    assert [s.name for s in otel.spans()] == [
        "publish amq.default",
        f"ack {queue}",
        f"process {queue}",
    ]
    PikaInstrumentor.uninstrument_channel(channel)
    assert "basic_publish" not in channel.__dict__
    otel.clear()
    exchange_and_consume(channel, queue)
    assert otel.spans() == []


def test_instrument_channel_overrides_global_instrumentation_without_double_spans(
    instrumented: PikaInstrumentor, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """A channel with its own instrument_channel() options, in a globally instrumented process, gets one span per operation with its options."""
    PikaInstrumentor.instrument_channel(
        channel,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        consumer_context="link",
    )
    exchange_and_consume(channel, queue)
    publish, process = otel.spans()
    assert process.parent is None  # "link" from the channel's options
    assert process.links[0].context.span_id == publish.context.span_id
    PikaInstrumentor.uninstrument_channel(channel)
    otel.clear()
    exchange_and_consume(channel, queue)
    (_publish, process) = otel.spans()
    assert process.parent is not None  # the global options again


def test_instrument_channel_on_an_async_channel(
    otel: Recorder, async_run: AsyncRun, unique: Callable[[str], str]
) -> None:
    """instrument_channel() works on a pika.channel.Channel of the async adapters."""
    name = unique("q")

    def setup(channel: Any) -> None:
        PikaInstrumentor.instrument_channel(
            channel, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        )

    def handle(ch: Any, method: Any) -> None:
        ch.basic_ack(method.delivery_tag)
        PikaInstrumentor.uninstrument_channel(ch)
        ch.basic_publish("", name, b"untraced")

    async_run.consume_one(name, handle, setup)
    spans = otel.spans()
    assert [s.name for s in spans] == ["publish amq.default", f"process {name}"]
    assert spans[1].parent is not None
    assert spans[1].parent.span_id == spans[0].context.span_id
