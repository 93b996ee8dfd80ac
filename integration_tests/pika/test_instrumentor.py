"""instrument()/uninstrument(), per-channel instrumentation, options, hooks and suppression."""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import pika
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.channel import Channel

from broker_harness import Recorder
from integration_tests.pika.conftest import AsyncRun, Instrument
from otel_messaging_core import Envelope
from otel_pika import PikaInstrumentor

PATCHED = {
    Channel: (
        "basic_publish",
        "_on_return",
        "basic_consume",
        "_on_deliver",
        "basic_get",
        "basic_ack",
        "basic_nack",
        "basic_reject",
    ),
    BlockingChannel: (
        "basic_publish",
        "_dispatch_events",
        "consume",
        "cancel",
        "basic_get",
        "basic_ack",
        "basic_nack",
        "basic_reject",
    ),
}


def originals() -> dict[tuple[type, str], object]:
    return {
        (owner, name): owner.__dict__[name] for owner, names in PATCHED.items() for name in names
    }


def exchange_and_consume(channel: BlockingChannel, queue: str, count: int = 1) -> None:
    """Publish ``count`` messages and consume them with a callback, a get and the generator."""
    for _ in range(count):
        channel.basic_publish("", queue, b"x")

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()


def test_instrument_twice_gives_one_span(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Calling instrument() a second time changes nothing: still one span per publish and per message."""
    instrument()
    instrument()
    exchange_and_consume(channel, queue)
    assert [s.name for s in otel.spans()] == ["publish amq.default", f"process {queue}"]


def test_uninstrument_restores_every_patched_attribute_and_silences_existing_channels(
    otel: Recorder, connect: Callable[..., BlockingConnection], unique: Callable[[str], str]
) -> None:
    """uninstrument() puts back the very function objects it replaced, and channels that were traced stop producing spans."""
    before = originals()
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    try:
        assert all(
            owner.__dict__[name] is not original for (owner, name), original in before.items()
        )
        channel = connect().channel()
        queue = unique("q")
        channel.queue_declare(queue, exclusive=True)
        exchange_and_consume(channel, queue)
        assert len(otel.spans()) == 2
    finally:
        instrumentor.uninstrument()
    assert originals() == before
    assert all(owner.__dict__[name] is original for (owner, name), original in before.items())
    otel.clear()
    exchange_and_consume(channel, queue)  # the consumer's traced callback is still registered
    channel.basic_publish("", queue, b"x")
    channel.basic_get(queue, auto_ack=True)
    assert otel.spans() == []
    assert otel.points("messaging.client.sent.messages")[0][1] == 1


def test_raising_hooks_break_nothing(
    instrument: Instrument,
    otel: Recorder,
    channel: BlockingChannel,
    queue: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A publish_hook or consume_hook that raises is logged, and the publish and the handler go on."""

    def broken(span: trace.Span, envelope: Envelope) -> None:
        raise ValueError("hook bug")

    instrument(publish_hook=broken, consume_hook=broken)
    handled: list[bytes] = []

    def on_message(ch: BlockingChannel, method: Any, _properties: Any, body: bytes) -> None:
        handled.append(body)
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    with caplog.at_level(logging.WARNING):
        channel.basic_publish("", queue, b"still sent")
        channel.basic_consume(queue, on_message)
        channel.start_consuming()
    assert handled == [b"still sent"]
    assert [s.status.status_code for s in otel.spans()] == [trace.StatusCode.UNSET] * 2
    assert "hook bug" in caplog.text


def test_hooks_receive_the_shared_envelope(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """publish_hook and consume_hook get the span and an Envelope with the message's fields and pika's properties as raw."""
    seen: list[tuple[str, Envelope]] = []

    def publish_hook(span: trace.Span, envelope: Envelope) -> None:
        span.set_attribute("app.hook", "publish")
        seen.append(("publish", envelope))

    def consume_hook(span: trace.Span, envelope: Envelope) -> None:
        seen.append(("consume", envelope))

    instrument(publish_hook=publish_hook, consume_hook=consume_hook)
    properties = pika.BasicProperties(message_id="m-1", correlation_id="c-1", headers={"k": "v"})
    channel.basic_publish("", queue, b"body", properties)
    _method, received, _body = channel.basic_get(queue, auto_ack=True)
    (_, sent), (_, got) = seen
    assert (sent.exchange, sent.routing_key, sent.body, sent.message_id, sent.correlation_id) == (
        "",
        queue,
        b"body",
        "m-1",
        "c-1",
    )
    assert sent.headers["k"] == "v"
    assert "traceparent" in sent.headers
    assert sent.raw is properties
    assert (got.queue, got.delivery_tag, got.redelivered, got.body) == (queue, 1, False, b"body")
    assert got.raw is received
    assert otel.named("publish amq.default")[0].attributes["app.hook"] == "publish"  # type: ignore[index]


def test_unknown_keyword_is_a_type_error_and_patches_nothing() -> None:
    """A misspelt option fails at instrument() time, before anything is patched."""
    before = originals()
    with pytest.raises(TypeError, match="settle_span"):
        PikaInstrumentor().instrument(settle_span=True)
    assert originals() == before
    with pytest.raises(ValueError, match="consumer_context"):
        PikaInstrumentor.instrument_channel(object(), consumer_context="child")


def test_entry_point_is_registered() -> None:
    """opentelemetry-instrument finds the instrumentor under the otel_pika entry point."""
    (found,) = [
        e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "otel_pika"
    ]
    assert found.load() is PikaInstrumentor


def test_suppressed_publish_injects_but_records_nothing(
    instrumented: PikaInstrumentor, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Inside suppress_instrumentation() no span is made, yet the current context still rides in the headers."""
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("request") as request, suppress_instrumentation():
        channel.basic_publish("", queue, b"x")
    _method, properties, _body = channel.basic_get(queue, auto_ack=True)
    assert [s.name for s in otel.spans()] == ["request", f"receive {queue}"]
    traceparent = properties.headers["traceparent"]
    assert traceparent.split("-")[2] == f"{request.get_span_context().span_id:016x}"


def test_instrument_channel_traces_one_blocking_channel_only(
    otel: Recorder, connect: Callable[..., BlockingConnection], unique: Callable[[str], str]
) -> None:
    """instrument_channel() traces that channel with its own options and patches no class; uninstrument_channel() undoes it."""
    before = originals()
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
    assert originals() == before
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

    def script(channel: Any) -> None:
        PikaInstrumentor.instrument_channel(
            channel, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        )

        def on_message(ch: Any, method: Any, *_: Any) -> None:
            ch.basic_ack(method.delivery_tag)
            PikaInstrumentor.uninstrument_channel(ch)
            ch.basic_publish("", name, b"untraced")
            ch.queue_declare(name, exclusive=True, callback=lambda _f: async_run.done())

        def on_declared(_frame: Any) -> None:
            channel.basic_consume(name, on_message)
            channel.basic_publish("", name, b"x")

        channel.queue_declare(name, exclusive=True, callback=on_declared)

    async_run.run(script)
    spans = otel.spans()
    assert [s.name for s in spans] == ["publish amq.default", f"process {name}"]
    assert spans[1].parent is not None
    assert spans[1].parent.span_id == spans[0].context.span_id
