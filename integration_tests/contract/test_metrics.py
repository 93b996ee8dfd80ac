"""Every plugin's metrics: the four semconv instruments, as the SDK exported them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker_harness import Broker, Recorder
from integration_tests.contract.protocol import Client, Handling, Plugin


def test_publish_consume_pull_and_settle_record_the_four_instruments(
    instrument: Callable[..., Any],
    otel: Recorder,
    rabbitmq: Broker,
    plugin: Plugin,
    client: Client,
    queue: str,
    unique: Callable[[str], str],
) -> None:
    """Publishes count as sent and are timed; a pushed message counts as consumed with a process duration, a pulled one with a receive duration; an ack and a reject are timed, the reject with error.type rejected; destinations in their low-cardinality form."""
    instrument()
    exchange = unique("x")
    client.declare_exchange(exchange, queue, "order.created")
    push, pull = (
        plugin.path(next(i for i, p in plugin.paths.items() if p.mode == mode))
        for mode in ("push", "pull")
    )
    try:
        client.publish(exchange, "order.created")
        push.consume(queue, 1, Handling(settles=("ack",)))
        client.publish("", queue)
        pull.consume(queue, 1, Handling(settles=("reject",)))
    finally:
        push.close()
        pull.close()
    otel.wait_for_count(f"process {queue}", 1)
    routed, processed = f"{exchange}:order.created", f"{exchange}:order.created:{queue}"

    def point(operation: str, destination: str, **extra: str) -> dict[str, Any]:
        return {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": operation,
            "messaging.destination.name": destination,
            "server.address": rabbitmq.host,
            "server.port": rabbitmq.port,
            **extra,
        }

    def points(metric: str) -> list[tuple[dict[str, Any], Any]]:
        return sorted(otel.points(metric), key=lambda p: sorted(p[0].items()))

    def expected(*found: tuple[dict[str, Any], Any]) -> list[tuple[dict[str, Any], Any]]:
        return sorted(found, key=lambda p: sorted(p[0].items()))

    assert points("messaging.client.sent.messages") == expected(
        (point("publish", routed), 1), (point("publish", queue), 1)
    )
    assert points("messaging.client.consumed.messages") == expected(
        (point("process", processed), 1), (point("receive", queue), 1)
    )
    assert points("messaging.process.duration") == [(point("process", processed), 1)]
    assert points("messaging.client.operation.duration") == expected(
        (point("publish", routed), 1),
        (point("publish", queue), 1),
        (point("ack", processed), 1),
        (point("receive", queue), 1),
        (point("reject", queue, **{"error.type": "rejected"}), 1),
    )
