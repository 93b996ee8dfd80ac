"""Every plugin's metrics: the four semconv instruments, as the SDK exported them."""

from __future__ import annotations

from typing import Any

import pytest

from integration_tests.contract.case import Case
from integration_tests.contract.protocol import Handling


@pytest.mark.per_plugin
def test_publish_consume_pull_and_settle_record_the_four_instruments(case: Case) -> None:
    """Publishes count as sent and are timed; a pushed message counts as consumed with a process duration, a pulled one with a receive duration; an ack and a reject are timed, the reject with error.type rejected; destinations in their low-cardinality form."""
    queue = case.queue
    case.instrument()
    exchange = case.unique("x")
    case.client.declare_exchange(exchange, queue, "order.created")
    push, pull = case.plugin.first("push"), case.plugin.first("pull")
    try:
        case.client.publish(exchange, "order.created")
        push.consume(queue, 1, Handling(settles=("ack",)))
        case.publish()
        pull.consume(queue, 1, Handling(settles=("reject",)))
    finally:
        push.close()
        pull.close()
    case.span(f"process {queue}")
    routed, processed = f"{exchange}:order.created", f"{exchange}:order.created:{queue}"

    def point(operation: str, destination: str, **extra: str) -> dict[str, Any]:
        return {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": operation,
            "messaging.destination.name": destination,
            "server.address": case.broker.host,
            "server.port": case.broker.port,
            **extra,
        }

    def points(metric: str) -> list[tuple[dict[str, Any], Any]]:
        return sorted(case.otel.points(metric), key=lambda p: sorted(p[0].items()))

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
