"""The four semconv messaging instruments, from a real publish, process, pull and settle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue

from broker_harness import Recorder
from integration_tests.kombu.conftest import drain
from otel_kombu import KombuInstrumentor

SERVER = {"server.address": "127.0.0.1", "server.port": 5672, "messaging.system": "rabbitmq"}


def test_four_instruments(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
    unique: Callable[[str], str],
) -> None:
    """Publish, process, receive and settle record sent/consumed counters and both duration histograms."""
    exchange, queue = entities
    handled: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        handled.append(body)
        message.ack()

    with Consumer(connection, [queue], callbacks=[callback]):
        Producer(connection, exchange=exchange).publish({"n": 1}, routing_key="order.created")
        drain(connection, lambda: bool(handled))
    simple = connection.SimpleQueue(
        unique("simple"),
        queue_opts={"durable": False, "auto_delete": True},
        exchange_opts={"durable": False, "auto_delete": True},
    )
    try:
        simple.put({"n": 2})
        simple.get(timeout=10).reject()
    finally:
        simple.close()
    pulled = simple.queue.name
    publish_to = f"{exchange.name}:order.created"
    processed_from = f"{exchange.name}:order.created:{queue.name}"

    def key(point: tuple[dict[str, Any], Any]) -> str:
        return f"{point[0]['messaging.operation.name']} {point[0]['messaging.destination.name']}"

    def points(metric: str) -> list[tuple[dict[str, Any], Any]]:
        return sorted(otel.points(metric), key=key)

    assert points("messaging.client.sent.messages") == sorted(
        [
            (
                {
                    **SERVER,
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": publish_to,
                },
                1,
            ),
            (
                {
                    **SERVER,
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": f"{pulled}:{pulled}",
                },
                1,
            ),
        ],
        key=key,
    )
    assert points("messaging.client.consumed.messages") == sorted(
        [
            (
                {
                    **SERVER,
                    "messaging.operation.name": "process",
                    "messaging.destination.name": processed_from,
                },
                1,
            ),
            (
                {
                    **SERVER,
                    "messaging.operation.name": "receive",
                    "messaging.destination.name": f"{pulled}:{pulled}",
                },
                1,
            ),
        ],
        key=key,
    )
    assert points("messaging.process.duration") == [
        (
            {
                **SERVER,
                "messaging.operation.name": "process",
                "messaging.destination.name": processed_from,
            },
            1,
        )
    ]
    durations = {
        key(p): (p[0].get("error.type"), p[1])
        for p in otel.points("messaging.client.operation.duration")
    }
    assert durations == {
        f"publish {publish_to}": (None, 1),
        f"publish {pulled}:{pulled}": (None, 1),
        f"ack {processed_from}": (None, 1),
        f"receive {pulled}:{pulled}": (None, 1),
        f"reject {pulled}:{pulled}": ("rejected", 1),
    }
