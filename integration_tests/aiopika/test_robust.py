"""Robust connections: after the broker drops the connection and aio-pika reconnects, tracing goes on, once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aio_pika
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from broker_harness import Broker, Recorder, Traceparent, span_summary
from broker_harness.broker import close_connections
from integration_tests.aiopika.conftest import connection_url, wait_for
from otel_aiopika import AioPikaInstrumentor

pytestmark = pytest.mark.slow

# Bounds for what these tests wait on: the reconnect (every 0.5 s) and a message's delivery.
RESTORE_TIMEOUT = 60.0
DELIVERY_TIMEOUT = 30.0


@dataclass
class Robust:
    """A robust connection with a name of its own (so only it is dropped) that reconnects fast,
    a channel on it and an auto-deleted queue (gone with the connection, then restored)."""

    name: str
    connection: AbstractRobustConnection
    channel: aio_pika.abc.AbstractChannel
    queue: aio_pika.abc.AbstractQueue

    async def publish(self, body: bytes) -> None:
        """Publish ``body`` to the queue once the robust channel is usable again."""
        await publish_when_connected(self.channel, body, self.queue.name)

    async def drop(self) -> None:
        """Have the broker close the connection; back once it is restored."""
        await drop_and_await_restore(self.name, self.connection)


@pytest_asyncio.fixture
async def robust(
    instrumented: AioPikaInstrumentor, rabbitmq: Broker, unique: Callable[[str], str]
) -> AsyncIterator[Robust]:
    """The test's :class:`Robust`, opened once aio-pika is instrumented."""
    name = f"otel-aiopika-robust-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect_robust(
        connection_url(rabbitmq, name, reconnect_interval="0.5")
    )
    channel = await connection.channel()
    queue = await channel.declare_queue(unique("q"), auto_delete=True)
    yield Robust(name, connection, channel, queue)
    await asyncio.wait_for(connection.close(), 10)


async def try_publish(channel: aio_pika.abc.AbstractChannel, body: bytes, queue: str) -> bool:
    """One publish attempt; False when the robust channel is not usable yet."""
    try:
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue, timeout=5)
    except Exception:
        return False
    return True


async def publish_when_connected(
    channel: aio_pika.abc.AbstractChannel, body: bytes, queue: str
) -> None:
    """Publish once the robust channel is usable again (publishes fail while it reconnects)."""
    deadline = time.monotonic() + 60
    while not await try_publish(channel, body, queue):
        assert time.monotonic() < deadline, "the robust connection did not come back"
        await asyncio.sleep(0.2)


async def drop_and_await_restore(name: str, connection: AbstractRobustConnection) -> None:
    """Close the named connection from the broker's side (rabbitmqctl runs in a thread), then wait
    until the robust connection is back with its channels, queues and consumers restored.

    The robust channel can publish again before it has re-declared its queues; a message published
    in that gap finds no queue (the auto-delete queue went with the old connection) and the broker
    drops it. aio-pika (8.0 to 10.x) calls ``reconnect_callbacks`` once the restore is done.
    """
    restored = asyncio.Event()

    def on_reconnect(*_: object) -> None:
        restored.set()

    connection.reconnect_callbacks.add(on_reconnect)
    try:
        closed = await asyncio.to_thread(close_connections, name, "otel-aiopika robust test")
        assert closed == 1
        try:
            await asyncio.wait_for(restored.wait(), RESTORE_TIMEOUT)
        except asyncio.TimeoutError:
            pytest.fail(f"the robust connection was not restored within {RESTORE_TIMEOUT} s")
    finally:
        connection.reconnect_callbacks.discard(on_reconnect)


@pytest.mark.asyncio
async def test_restored_consumers_are_traced_exactly_once(otel: Recorder, robust: Robust) -> None:
    """A consumer the robust channel restores after the broker dropped the connection makes exactly one process span per message, in the message's trace."""
    queue = robust.queue
    handled: list[bytes] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        handled.append(message.body)
        await message.ack()

    await queue.consume(handle)
    await robust.publish(b"before")
    await wait_for(otel, lambda s: sum(x.name == f"process {queue.name}" for x in s) >= 1)

    await robust.drop()
    await robust.publish(b"after")
    await robust.publish(b"later")
    spans = await wait_for(
        otel,
        lambda s: sum(x.name == f"process {queue.name}" for x in s) >= 3,
        timeout=DELIVERY_TIMEOUT,
    )
    await asyncio.sleep(0.5)  # a second (double-wrapped) span would have ended by now
    spans = otel.spans()
    processes = [s for s in spans if s.name == f"process {queue.name}"]
    assert handled == [b"before", b"after", b"later"]
    assert len(processes) == 3
    publishes = [s for s in spans if s.name == "publish amq.default" and s.status.is_ok]
    for process in processes:
        summary = span_summary(process, spans)
        assert summary["parent"] == "publish amq.default"
        assert summary["links"] == ["publish amq.default"]
    assert {Traceparent.of(p) for p in publishes} >= {
        Traceparent.of(s.parent) for s in processes if s.parent
    }


@pytest.mark.asyncio
async def test_queue_iterator_keeps_tracing_across_a_reconnect(
    otel: Recorder, robust: Robust
) -> None:
    """An iterator on a robust queue that survives a dropped connection gives one receive span per message before and after."""
    queue = robust.queue
    await robust.publish(b"before")
    bodies: list[bytes] = []

    async def iterate() -> None:
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                bodies.append(message.body)
                if message.body == b"before":
                    await robust.drop()
                    await robust.publish(b"after")
                else:
                    break

    try:
        await asyncio.wait_for(iterate(), RESTORE_TIMEOUT + 2 * DELIVERY_TIMEOUT)
    except asyncio.TimeoutError:
        pytest.fail(f"the iterator stopped receiving after the reconnect; got {bodies}")
    assert bodies == [b"before", b"after"]
    receives = await wait_for(
        otel, lambda s: sum(x.name == f"receive {queue.name}" for x in s) >= 2
    )
    spans = [s for s in receives if s.name == f"receive {queue.name}"]
    assert len(spans) == 2
    assert all(span_summary(s, receives)["parent"] == "publish amq.default" for s in spans)
