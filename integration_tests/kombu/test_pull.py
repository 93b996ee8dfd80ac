"""kombu's own pulls: a receive span that covers the wait, SimpleBuffer, Queue.get and get_nowait
(SimpleQueue.get and message_context() are in integration_tests/contract)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue
from opentelemetry import trace

from broker_harness import Broker, Recorder, span_summary
from integration_tests.kombu.conftest import declare

pytestmark = pytest.mark.usefixtures("traced")


@pytest.fixture
def simple(connection: Connection, unique: Callable[[str], str]) -> Iterator[Any]:
    queue = connection.SimpleQueue(
        unique("simple"),
        queue_opts={"durable": False, "auto_delete": True},
        exchange_opts={"durable": False, "auto_delete": True},
    )
    yield queue
    queue.close()


def test_receive_span_covers_the_wait(otel: Recorder, rabbitmq: Broker, simple: Any) -> None:
    """A blocking get that waits for its message has a receive span that starts when the wait began."""
    published_at: list[int] = []

    def publish_later() -> None:
        time.sleep(0.5)
        with Connection(rabbitmq.url, connect_timeout=10) as other:
            published_at.append(time.time_ns())
            Producer(other).publish(
                {"late": True},
                exchange=simple.queue.exchange.name,
                routing_key=simple.queue.routing_key,
            )

    publisher = threading.Thread(target=publish_later)
    publisher.start()
    try:
        message = simple.get(timeout=15)
    finally:
        publisher.join()
    (receive,) = otel.named(f"receive {simple.queue.name}")
    assert receive.start_time is not None
    assert receive.start_time < published_at[0], "the span began before the message existed"
    ((_, waits),) = [
        (attrs, count)
        for attrs, count in otel.points("messaging.client.operation.duration")
        if attrs["messaging.operation.name"] == "receive"
    ]
    assert waits == 1
    message.ack()


def test_simple_buffer_get(
    otel: Recorder,
    connection: Connection,
    unique: Callable[[str], str],
) -> None:
    """SimpleBuffer.get (no acks) makes a receive span too."""
    buffer = connection.SimpleBuffer(unique("buffer"))
    try:
        buffer.put({"order": 1})
        message = buffer.get(timeout=10)
        assert message.decode() == {"order": 1}
    finally:
        buffer.close()
    (receive,) = otel.named(f"receive {buffer.queue.name}")
    assert receive.kind is trace.SpanKind.CLIENT
    assert span_summary(receive, otel.spans())["parent"] == f"publish {buffer.queue.name}"


def test_queue_get_and_get_nowait(
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
    simple: Any,
) -> None:
    """Queue.get (basic_get) and SimpleQueue.get_nowait each make one receive span per message; an empty pull none."""
    exchange, queue = entities
    declare(connection, queue)
    bound = queue(connection.default_channel)
    assert bound.get() is None
    Producer(connection, exchange=exchange).publish({"n": 1}, routing_key="order.created")
    simple.put({"n": 2})
    deadline = time.monotonic() + 10
    message = None
    while message is None and time.monotonic() < deadline:
        message = bound.get()
    assert message is not None
    message.ack()
    while time.monotonic() < deadline:
        try:
            pulled = simple.get_nowait()
            break
        except simple.Empty:
            time.sleep(0.05)
    pulled.ack()
    (from_queue,) = otel.named(f"receive {queue.name}")
    assert span_summary(from_queue, otel.spans())["parent"] == f"publish {exchange.name}"
    assert from_queue.attributes is not None
    assert (
        from_queue.attributes["messaging.destination.name"]
        == f"{exchange.name}:order.created:{queue.name}"
    )
    assert len(otel.named(f"receive {simple.queue.name}")) == 1
    assert [
        attrs["messaging.operation.name"]
        for attrs, _ in otel.points("messaging.client.consumed.messages")
    ] == [
        "receive",
        "receive",
    ]
