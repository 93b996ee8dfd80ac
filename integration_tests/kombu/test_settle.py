"""Message.ack / reject / requeue against the real broker, per SPEC's settle rules."""

from __future__ import annotations

from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue

from broker_harness import Recorder, span_summary
from integration_tests.kombu.conftest import Instrument, drain
from otel_kombu import KombuInstrumentor


def consume_one(
    connection: Connection, entities: tuple[Exchange, Queue], settle: Any = None
) -> Any:
    """Publish one message and consume it; ``settle(message)`` runs inside the handler. The Message."""
    exchange, queue = entities
    got: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        got.append(message)
        if settle is not None:
            settle(message)

    with Consumer(connection, [queue], callbacks=[callback]):
        Producer(connection, exchange=exchange).publish({"n": 1}, routing_key="order.created")
        drain(connection, lambda: bool(got))
    return got[0]


def test_reject_without_requeue_is_always_an_error_span(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """A reject without requeue drops the message: an ERROR settle span even with settle_spans off."""
    consume_one(connection, entities, lambda m: m.reject())
    exchange, queue = entities
    spans = otel.spans()
    (reject,) = otel.named(f"reject {queue.name}")
    assert span_summary(reject, spans) == {
        "name": f"reject {queue.name}",
        "kind": "CLIENT",
        "parent": f"process {queue.name}",
        "links": [f"publish {exchange.name}"],
        "status": "ERROR",
        "attributes": {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": "reject",
            "messaging.operation.type": "settle",
            "messaging.destination.name": f"{exchange.name}:order.created:{queue.name}",
            "messaging.rabbitmq.destination.routing_key": "order.created",
            "messaging.rabbitmq.message.delivery_tag": 1,
            "server.address": "127.0.0.1",
            "server.port": 5672,
            "error.type": "rejected",
        },
        "events": [],
    }
    ((attrs, count),) = [
        point
        for point in otel.points("messaging.client.operation.duration")
        if point[0]["messaging.operation.name"] == "reject"
    ]
    assert count == 1
    assert attrs["error.type"] == "rejected"


def test_ack_and_requeue_record_metrics_but_no_span_by_default(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """Without settle_spans an ack or a requeue adds no span, only its duration metric."""
    exchange, queue = entities
    seen: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        seen.append(message.delivery_info["redelivered"])
        if not message.delivery_info["redelivered"]:
            message.requeue()
        else:
            message.ack()

    with Consumer(connection, [queue], callbacks=[callback]):
        Producer(connection, exchange=exchange).publish({"n": 1}, routing_key="order.created")
        drain(connection, lambda: len(seen) == 2)
    assert seen == [False, True]
    assert sorted(s.name for s in otel.spans()) == [
        f"process {queue.name}",
        f"process {queue.name}",
        f"publish {exchange.name}",
    ]
    settles = sorted(
        attrs["messaging.operation.name"]
        for attrs, _ in otel.points("messaging.client.operation.duration")
        if attrs["messaging.operation.name"] in {"ack", "reject"}
    )
    assert settles == ["ack", "reject"]


def test_settle_spans_option(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """With settle_spans=True an ack and a requeue get CLIENT spans linked to the message's creation."""
    instrument(settle_spans=True)
    exchange, queue = entities
    seen: list[bool] = []

    def callback(body: Any, message: Any) -> None:
        seen.append(True)
        if len(seen) == 1:
            message.requeue()
        else:
            message.ack()

    with Consumer(connection, [queue], callbacks=[callback]):
        Producer(connection, exchange=exchange).publish({"n": 1}, routing_key="order.created")
        drain(connection, lambda: len(seen) == 2)
    spans = otel.spans()
    (requeue,) = otel.named(f"reject {queue.name}")
    (ack,) = otel.named(f"ack {queue.name}")
    for span in (requeue, ack):
        summary = span_summary(span, spans)
        assert summary["kind"] == "CLIENT"
        assert summary["status"] == "UNSET"
        assert summary["parent"] == f"process {queue.name}"
        assert summary["links"] == [f"publish {exchange.name}"]
    assert ack.attributes is not None
    assert ack.attributes["messaging.rabbitmq.message.delivery_tag"] == 2


def test_ack_after_the_handler_stays_in_the_message_trace(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """An ack made after the handler returned (the delivery kept on the Message) is a child of its process span."""
    instrument(settle_spans=True)
    message = consume_one(connection, entities)
    message.ack()
    _, queue = entities
    (ack,) = otel.named(f"ack {queue.name}")
    assert span_summary(ack, otel.spans())["parent"] == f"process {queue.name}"


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
