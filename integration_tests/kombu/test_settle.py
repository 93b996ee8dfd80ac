"""kombu's own settle case: acks of a no_ack consumer's messages (the settle spans every path
makes are in integration_tests/contract)."""

from __future__ import annotations

from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue

from broker_harness import Recorder
from integration_tests.kombu.conftest import Instrument, drain


def test_ack_on_a_no_ack_consumer_records_nothing(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """kombu ignores ack() for a no_ack consumer's message; so does the instrumentation (no span, no metric)."""
    instrument(settle_spans=True)
    exchange, queue = entities
    got: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        got.append(message)
        message.ack()

    with Consumer(connection, [queue], callbacks=[callback], no_ack=True):
        Producer(connection, exchange=exchange).publish({"n": 1}, routing_key="order.created")
        drain(connection, lambda: bool(got))
    assert sorted(s.name for s in otel.spans()) == [
        f"process {queue.name}",
        f"publish {exchange.name}",
    ]
    settles = [
        attrs
        for attrs, _ in otel.points("messaging.client.operation.duration")
        if attrs["messaging.operation.name"] == "ack"
    ]
    assert settles == []
