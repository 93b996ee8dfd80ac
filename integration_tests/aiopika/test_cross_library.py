"""Across client libraries: a plain pika producer's message continues its trace in an aio-pika consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from broker_harness import Broker, Recorder
from integration_tests.aiopika.conftest import Connect, wait_for_count
from otel_aiopika import AioPikaInstrumentor

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def publish_with_pika(broker: Broker, queue: str, headers: dict[str, object]) -> None:
    """Publish with a plain, uninstrumented pika BlockingConnection."""
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        channel = connection.channel()
        channel.basic_publish("", queue, b"from pika", pika.BasicProperties(headers=headers))
    finally:
        connection.close()


@pytest.mark.asyncio
async def test_bytes_traceparent_from_pika_is_continued(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    connect: Connect,
    robust: bool,
    unique: Callable[[str], str],
) -> None:
    """A pika producer sending traceparent as bytes (as producers in other languages do) is the parent of the aio-pika consumer's process span."""
    connection = await connect(robust=robust)
    channel = await connection.channel()
    queue = await channel.declare_queue(unique("q"), auto_delete=True)
    handled = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        await message.ack()
        handled.set()

    await queue.consume(handle)
    headers: dict[str, object] = {
        "traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01".encode(),
        "x-garbage": b"\xff\xfe",
    }
    await asyncio.to_thread(publish_with_pika, rabbitmq, queue.name, headers)
    await asyncio.wait_for(handled.wait(), 15)
    (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    assert process.context is not None
    assert process.parent is not None
    assert f"{process.context.trace_id:032x}" == TRACE_ID
    assert f"{process.parent.span_id:016x}" == SPAN_ID
    assert [f"{link.context.span_id:016x}" for link in process.links] == [SPAN_ID]


@pytest.mark.asyncio
async def test_garbage_trace_headers_never_break_the_consumer(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    connect: Connect,
    unique: Callable[[str], str],
) -> None:
    """Unreadable trace headers (an int traceparent, invalid UTF-8 baggage) still deliver the message, in a new trace."""
    connection = await connect()
    channel = await connection.channel()
    queue = await channel.declare_queue(unique("q"), auto_delete=True)
    handled = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        await message.ack()
        handled.set()

    await queue.consume(handle)
    headers: dict[str, object] = {"traceparent": 12345, "baggage": b"\xff=\xfe"}
    await asyncio.to_thread(publish_with_pika, rabbitmq, queue.name, headers)
    await asyncio.wait_for(handled.wait(), 15)
    (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    assert process.parent is None
    assert process.links == ()
