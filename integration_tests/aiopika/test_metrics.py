"""The four semconv messaging instruments, as the SDK exported them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from broker_harness import Broker, Recorder
from integration_tests.aiopika.conftest import wait_for_count
from otel_aiopika import AioPikaInstrumentor


@pytest.mark.asyncio
async def test_publish_consume_get_and_settle_record_the_four_instruments(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Publishes count as sent messages with their duration; pushed messages as consumed with a process duration; a get as consumed with an operation duration; an ack and a reject as settle durations, the reject with error.type."""
    handled = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        await message.ack()
        handled.set()

    for body in (b"1", b"2"):
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
    got = await queue.get(timeout=10)
    assert got is not None
    await got.reject()
    await queue.consume(handle)
    await asyncio.wait_for(handled.wait(), 15)
    await wait_for_count(otel, f"process {queue.name}", 1)

    server = {"server.address": rabbitmq.host, "server.port": rabbitmq.port}

    def attributes(operation: str, destination: str, **extra: str) -> dict[str, object]:
        return {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": operation,
            "messaging.destination.name": destination,
            **server,
            **extra,
        }

    publish = attributes("publish", queue.name)
    receive = attributes("receive", queue.name)
    process = attributes("process", queue.name)
    ack = attributes("ack", queue.name)
    reject = attributes("reject", queue.name, **{"error.type": "rejected"})
    assert otel.points("messaging.client.sent.messages") == [(publish, 2)]
    assert sorted(
        otel.points("messaging.client.consumed.messages"),
        key=lambda p: str(p[0]["messaging.operation.name"]),
    ) == [(process, 1), (receive, 1)]
    durations = otel.points("messaging.client.operation.duration")
    assert sorted(durations, key=lambda p: str(p[0]["messaging.operation.name"])) == [
        (ack, 1),
        (publish, 2),
        (receive, 1),
        (reject, 1),
    ]
    assert otel.points("messaging.process.duration") == [(process, 1)]


@pytest.mark.asyncio
async def test_a_failed_publish_is_counted_with_its_error_type(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    unique: Callable[[str], str],
) -> None:
    """A publish the broker returns as unroutable counts as sent with error.type=unroutable."""
    exchange = await channel.declare_exchange(unique("x"), auto_delete=True)
    await exchange.publish(aio_pika.Message(b"x"), "nowhere", mandatory=True)
    ((attributes, count),) = otel.points("messaging.client.sent.messages")
    assert count == 1
    assert attributes["error.type"] == "unroutable"
    assert attributes["messaging.destination.name"] == f"{exchange.name}:nowhere"
