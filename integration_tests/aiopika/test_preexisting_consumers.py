"""Consumers registered with ``Queue.consume`` before ``instrument()`` (a startup hook that runs
after the consumers start) are traced from their next message on, once, on plain and robust
channels, and stop being traced when instrumentation is removed."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from opentelemetry import trace
from opentelemetry.trace import SpanContext

from broker_harness import Recorder, span_summary
from integration_tests.aiopika.conftest import Instrument, wait_for_count
from otel_aiopika import AioPikaInstrumentor


def handler(got: asyncio.Queue[tuple[bytes, SpanContext]], ack: bool = True) -> Any:
    async def on_message(message: AbstractIncomingMessage) -> None:
        if ack:
            await message.ack()
        got.put_nowait((message.body, trace.get_current_span().get_span_context()))

    return on_message


async def publish(channel: AbstractChannel, queue: AbstractQueue, body: bytes) -> None:
    await channel.default_exchange.publish(aio_pika.Message(body), queue.name)


@pytest.mark.asyncio
async def test_a_consumer_registered_before_instrument_is_traced_from_its_next_message(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """queue.consume(handler) then instrument(): the next message's handler runs inside one
    process span, child of the publish and named after the queue."""
    got: asyncio.Queue[tuple[bytes, SpanContext]] = asyncio.Queue()
    await queue.consume(handler(got))
    await publish(channel, queue, b"before")
    body, context = await asyncio.wait_for(got.get(), 10)
    assert (body, context.is_valid) == (b"before", False)

    instrument()
    await publish(channel, queue, b"after")
    body, context = await asyncio.wait_for(got.get(), 10)
    (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    assert body == b"after"
    assert context == process.context
    spans = otel.spans()
    assert span_summary(process, spans)["parent"] == "publish amq.default"
    assert [s.name for s in spans].count(f"process {queue.name}") == 1


@pytest.mark.asyncio
async def test_preexisting_consumers_follow_uninstrument_and_instrument_again(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A consumer registered before instrument() is untraced again after uninstrument() and
    traced again, once per message, after a second instrument()."""
    got: asyncio.Queue[tuple[bytes, SpanContext]] = asyncio.Queue()
    await queue.consume(handler(got))
    instrumentor = instrument()
    await publish(channel, queue, b"1")
    assert (await asyncio.wait_for(got.get(), 10))[1].is_valid
    instrumentor.uninstrument()
    await publish(channel, queue, b"2")
    assert not (await asyncio.wait_for(got.get(), 10))[1].is_valid
    instrument()
    await publish(channel, queue, b"3")
    body, context = await asyncio.wait_for(got.get(), 10)
    assert (body, context.is_valid) == (b"3", True)
    processes = await wait_for_count(otel, f"process {queue.name}", 2)
    assert len(processes) == 2


@pytest.mark.asyncio
async def test_instrument_channel_after_consume_traces_the_existing_consumer(
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """instrument_channel() on a channel whose consumer is already registered traces that
    consumer with the channel's own options."""
    got: asyncio.Queue[tuple[bytes, SpanContext]] = asyncio.Queue()
    await queue.consume(handler(got))
    AioPikaInstrumentor.instrument_channel(
        channel,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        consumer_context="link",
    )
    try:
        await publish(channel, queue, b"x")
        _body, context = await asyncio.wait_for(got.get(), 10)
        (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    finally:
        AioPikaInstrumentor.uninstrument_channel(channel)
    assert context == process.context
    summary = span_summary(process, otel.spans())
    assert summary["parent"] is None  # "link" mode: a new trace
    assert summary["links"] == ["publish amq.default"]


@pytest.mark.asyncio
async def test_a_preexisting_no_ack_consumer_is_traced(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A no_ack consumer registered before instrument() is traced too."""
    got: asyncio.Queue[tuple[bytes, SpanContext]] = asyncio.Queue()
    await queue.consume(handler(got, ack=False), no_ack=True)
    instrument()
    await publish(channel, queue, b"x")
    _body, context = await asyncio.wait_for(got.get(), 10)
    (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    assert context == process.context
    assert process.attributes is not None
    assert process.attributes["messaging.destination.name"] == queue.name
