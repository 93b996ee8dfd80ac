"""The instrumentor: idempotence, clean uninstrument, options, hooks, per-channel instrumentation."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import logging
from collections.abc import Callable
from typing import Any

import aio_pika
import aio_pika.exchange
import aio_pika.message
import aio_pika.queue
import aio_pika.robust_queue
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from opentelemetry.instrumentation.utils import suppress_instrumentation

from broker_harness import Recorder, span_summary
from integration_tests.aiopika.conftest import (
    Connect,
    Instrument,
    sent_under,
    traceparent_of,
    wait_for_count,
)
from otel_aiopika import AioPikaInstrumentor
from otel_messaging_core import Envelope

MODULES = (aio_pika.exchange, aio_pika.message, aio_pika.queue, aio_pika.robust_queue)


async def ack(message: AbstractIncomingMessage) -> None:
    await message.ack()


def class_attributes() -> dict[tuple[str, str], Any]:
    """Every attribute defined on every aio-pika class that the plugin could patch."""
    found: dict[tuple[str, str], Any] = {}
    for module in MODULES:
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for name, value in vars(cls).items():
                found[(f"{module.__name__}.{cls_name}", name)] = value
    return found


def test_uninstrument_restores_every_patched_attribute(otel: Recorder) -> None:
    """After uninstrument() every attribute of aio-pika's classes is the very object it was before instrument()."""
    before = class_attributes()
    instrumentor = AioPikaInstrumentor()
    instrumentor.instrument(tracer_provider=otel.tracer_provider)
    try:
        patched = {key for key, value in class_attributes().items() if before[key] is not value}
        assert {name for _cls, name in patched} >= {"publish", "consume", "get", "__anext__", "ack"}
    finally:
        instrumentor.uninstrument()
    after = class_attributes()
    assert after.keys() == before.keys()
    assert [key for key, value in after.items() if before[key] is not value] == []


@pytest.mark.asyncio
async def test_instrument_twice_gives_one_span(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """instrument() a second time changes nothing: a publish and its consumer still make one span each."""
    instrumentor = instrument()
    instrumentor.instrument(tracer_provider=otel.tracer_provider)
    await queue.consume(ack)
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    await wait_for_count(otel, f"process {queue.name}", 1)
    await asyncio.sleep(0.2)
    assert sorted(s.name for s in otel.spans()) == ["process " + queue.name, "publish amq.default"]


@pytest.mark.asyncio
async def test_uninstrument_stops_tracing_existing_consumers(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A consumer registered while instrumented makes no spans once uninstrument() ran, and still gets its messages."""
    instrumentor = instrument()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(message: AbstractIncomingMessage) -> None:
        await got.put(message.body)
        await message.ack()

    await queue.consume(handle)
    instrumentor.uninstrument()
    await channel.default_exchange.publish(aio_pika.Message(b"quiet"), routing_key=queue.name)
    assert await asyncio.wait_for(got.get(), 15) == b"quiet"
    assert otel.spans() == []


@pytest.mark.asyncio
async def test_hooks_see_the_envelope_and_a_raising_hook_is_harmless(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """publish_hook and consume_hook get (span, envelope) for every message; hooks that raise are logged once and never stop the message."""
    seen: list[tuple[str, Envelope]] = []

    def publish_hook(span: Any, envelope: Envelope) -> None:
        seen.append(("publish", envelope))
        span.set_attribute("app.hooked", True)
        raise RuntimeError("publish hook bug")

    def consume_hook(span: Any, envelope: Envelope) -> None:
        seen.append(("consume", envelope))
        raise RuntimeError("consume hook bug")

    instrument(publish_hook=publish_hook, consume_hook=consume_hook)
    handled: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(message: AbstractIncomingMessage) -> None:
        await handled.put(message.body)
        await message.ack()

    await queue.consume(handle)
    with caplog.at_level(logging.WARNING, logger="otel_messaging_core"):
        for body in (b"one", b"two"):
            await channel.default_exchange.publish(
                aio_pika.Message(body, headers={"x-k": "v"}, message_id=body.decode()),
                routing_key=queue.name,
            )
        assert [await asyncio.wait_for(handled.get(), 15) for _ in range(2)] == [b"one", b"two"]
        await wait_for_count(otel, f"process {queue.name}", 2)
    warnings = [r for r in caplog.records if "hook" in r.getMessage()]
    assert len(warnings) == 2  # once per hook, not per message
    publishes = [e for kind, e in seen if kind == "publish"]
    consumes = [e for kind, e in seen if kind == "consume"]
    assert [e.message_id for e in publishes] == ["one", "two"]
    assert publishes[0].exchange == ""
    assert publishes[0].routing_key == queue.name
    assert publishes[0].headers["x-k"] == "v"
    assert "traceparent" in publishes[0].headers
    assert isinstance(publishes[0].raw, aio_pika.Message)
    assert [e.body for e in consumes] == [b"one", b"two"]
    assert consumes[0].queue == queue.name
    assert consumes[0].delivery_tag is not None
    assert consumes[0].redelivered is False
    assert isinstance(consumes[0].raw, aio_pika.IncomingMessage)
    assert all(
        s.attributes and s.attributes.get("app.hooked") for s in otel.named("publish amq.default")
    )


@pytest.mark.asyncio
async def test_capture_headers_copies_named_headers_to_attributes(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """capture_headers copies the named headers onto publish and process spans as messaging.header.<name>."""
    instrument(capture_headers=("x-tenant",))
    await queue.consume(ack)
    await channel.default_exchange.publish(
        aio_pika.Message(b"x", headers={"x-tenant": "acme", "x-other": "no"}),
        routing_key=queue.name,
    )
    (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    for span in (process, otel.named("publish amq.default")[0]):
        assert span.attributes is not None
        assert span.attributes["messaging.header.x-tenant"] == "acme"
        assert "messaging.header.x-other" not in span.attributes


@pytest.mark.asyncio
async def test_suppressed_instrumentation_makes_no_span_but_still_propagates(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Inside suppress_instrumentation() a publish makes no span and the message still carries the current context."""
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("outer") as outer, suppress_instrumentation():
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    spans = otel.spans()
    assert [s.name for s in spans] == ["outer"]
    message = await queue.get(timeout=10, no_ack=True)
    assert message is not None
    assert sent_under(message.headers) == traceparent_of(spans[0])
    assert outer.get_span_context().span_id == spans[0].context.span_id  # type: ignore[union-attr]


def test_options_are_validated_before_anything_is_patched(otel: Recorder) -> None:
    """An unknown keyword is a TypeError and a bad consumer_context a ValueError, and nothing stays patched."""
    before = class_attributes()
    with pytest.raises(TypeError, match="settle_span"):
        AioPikaInstrumentor().instrument(settle_span=True)
    with pytest.raises(ValueError, match="consumer_context"):
        AioPikaInstrumentor().instrument(consumer_context="child")
    with pytest.raises(TypeError, match="capture_headers"):
        AioPikaInstrumentor.instrument_channel(object(), capture_headers=(1,))
    after = class_attributes()
    assert [key for key, value in after.items() if before[key] is not value] == []


def test_the_entry_point_loads_the_instrumentor() -> None:
    """The distribution registers otel_aiopika in the opentelemetry_instrumentor group."""
    (entry,) = [
        e
        for e in importlib.metadata.entry_points(group="opentelemetry_instrumentor")
        if e.name == "otel_aiopika"
    ]
    assert entry.load() is AioPikaInstrumentor


@pytest.mark.asyncio
async def test_instrument_channel_traces_that_channel_only(
    otel: Recorder,
    connect: Connect,
    robust: bool,
    unique: Callable[[str], str],
) -> None:
    """instrument_channel() traces one channel (its exchanges, queues and messages) with its own options and leaves the others and aio-pika's classes alone once undone."""
    before = class_attributes()
    connection = await connect(robust=robust)
    traced = await connection.channel()
    plain = await connection.channel()
    queue = await traced.declare_queue(unique("q"), exclusive=True)
    other = await plain.declare_queue(unique("other"), exclusive=True)
    AioPikaInstrumentor.instrument_channel(
        traced, tracer_provider=otel.tracer_provider, settle_spans=True
    )
    try:
        await queue.consume(ack)
        await traced.default_exchange.publish(aio_pika.Message(b"a"), routing_key=queue.name)
        await plain.default_exchange.publish(aio_pika.Message(b"b"), routing_key=other.name)
        got = await other.get(timeout=10)
        assert got is not None
        await got.ack()
        await wait_for_count(otel, f"ack {queue.name}", 1)
        assert sorted(s.name for s in otel.spans()) == sorted(
            ["publish amq.default", f"process {queue.name}", f"ack {queue.name}"]
        )
    finally:
        AioPikaInstrumentor.uninstrument_channel(traced)
    otel.clear()
    await traced.default_exchange.publish(aio_pika.Message(b"c"), routing_key=queue.name)
    await asyncio.sleep(0.2)
    assert otel.spans() == []
    assert [k for k, v in class_attributes().items() if before[k] is not v] == []


@pytest.mark.asyncio
async def test_instrument_channel_overrides_the_global_options_for_its_channel(
    instrument: Instrument,
    otel: Recorder,
    connect: Connect,
    unique: Callable[[str], str],
) -> None:
    """A channel given to instrument_channel() reports to its own tracer provider while others use the global instrumentation; undone, it goes back to the global one."""
    instrument()
    own = Recorder()
    connection = await connect(robust=True)
    special = await connection.channel()
    ordinary = await connection.channel()
    queue = await special.declare_queue(unique("q"), exclusive=True)
    AioPikaInstrumentor.instrument_channel(special, tracer_provider=own.tracer_provider)
    try:
        await special.default_exchange.publish(aio_pika.Message(b"a"), routing_key=queue.name)
        await ordinary.default_exchange.publish(aio_pika.Message(b"b"), routing_key=queue.name)
        assert [s.name for s in own.spans()] == ["publish amq.default"]
        assert [s.name for s in otel.spans()] == ["publish amq.default"]
        AioPikaInstrumentor.uninstrument_channel(special)
        await special.default_exchange.publish(aio_pika.Message(b"c"), routing_key=queue.name)
        assert len(otel.spans()) == 2
        assert len(own.spans()) == 1
        assert span_summary(otel.spans()[1])["name"] == "publish amq.default"
    finally:
        own.shutdown()
