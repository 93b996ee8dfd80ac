"""Per-channel instrumentation: instrument_channel() alone and next to instrument() (the
instrumentor's shared behaviour is in integration_tests/contract)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
import aio_pika.exchange
import aio_pika.message
import aio_pika.queue
import aio_pika.robust_queue
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from broker_harness import Recorder, span_summary
from integration_tests.aiopika.conftest import Connect, Instrument, wait_for_count
from integration_tests.contract.aiopika_paths import class_attributes
from otel_aiopika import AioPikaInstrumentor


async def ack(message: AbstractIncomingMessage) -> None:
    await message.ack()


@pytest.mark.asyncio
async def test_instrument_channel_traces_that_channel_only(
    otel: Recorder,
    connection: AbstractConnection,
    robust: bool,
    unique: Callable[[str], str],
) -> None:
    """instrument_channel() traces one channel (its exchanges, queues and messages) with its own options and leaves the others and aio-pika's classes alone once undone."""
    before = class_attributes()
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
