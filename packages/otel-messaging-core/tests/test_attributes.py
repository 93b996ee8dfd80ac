"""Naming rules: destination names, span names and the constant attributes, table-driven."""

from __future__ import annotations

import pytest

from broker_harness.otel import OPERATION_TYPES
from otel_messaging_core.attributes import (
    DestinationCache,
    build_destination,
    consume_destination_name,
    error_type_of,
    publish_destination_name,
)


@pytest.mark.parametrize(
    ("exchange", "routing_key", "queue", "expected"),
    [
        ("orders", "order.created", "", "orders:order.created"),
        ("", "orders", "", "orders"),
        ("orders", "", "", "orders"),
        ("", "", "", "amq.default"),
        ("", "amq.gen-Xa2", "", "amq.gen-Xa2"),
        ("orders", "order.created", "srm", "orders:order.created:srm"),
        ("", "srm", "srm", "srm"),
        ("orders", "srm", "srm", "orders:srm"),
        ("orders", "", "srm", "orders:srm"),
        ("", "", "srm", "srm"),
    ],
)
def test_destination_names(exchange: str, routing_key: str, queue: str, expected: str) -> None:
    """Destinations are exchange:routing_key:queue with empty parts dropped and a routing key equal
    to the queue kept once; a publish is named as a consume with no queue."""
    assert consume_destination_name(exchange, routing_key, queue) == expected
    if not queue:
        assert publish_destination_name(exchange, routing_key) == expected


@pytest.mark.parametrize(
    ("operation", "exchange", "routing_key", "queue", "span_name", "anonymous"),
    [
        ("publish", "orders", "order.created", "", "publish orders", False),
        ("publish", "", "srm", "", "publish amq.default", False),
        ("publish", "", "amq.gen-abc", "", "publish amq.default", True),
        ("process", "orders", "order.created", "srm", "process srm", False),
        ("receive", "", "amq.gen-JzTY20BRgKO", "amq.gen-JzTY20BRgKO", "receive amq.gen", True),
        ("ack", "", "srm", "srm", "ack srm", False),
        ("nack", "orders", "x", "amq.gen-1", "nack amq.gen", True),
        ("reject", "", "", "", "reject", False),
    ],
)
def test_span_names_stay_low_cardinality(
    operation: str, exchange: str, routing_key: str, queue: str, span_name: str, anonymous: bool
) -> None:
    """Span names use amq.default for the default exchange and amq.gen for server-named queues."""
    destination = build_destination(operation, exchange, routing_key, queue)
    assert destination.span_name == span_name
    assert destination.attributes.get("messaging.destination.anonymous", False) is anonymous


def test_attributes_of_a_consume_destination() -> None:
    """The constant attributes carry system, operation, destination, routing key and server."""
    destination = build_destination(
        "process", "orders", "order.created", "srm", server_address="mq.internal", server_port=5672
    )
    assert dict(destination.attributes) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "orders:order.created:srm",
        "messaging.rabbitmq.destination.routing_key": "order.created",
        "server.address": "mq.internal",
        "server.port": 5672,
    }
    assert dict(destination.metric_attributes) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "process",
        "messaging.destination.name": "orders:order.created:srm",
        "server.address": "mq.internal",
        "server.port": 5672,
    }


def test_metric_destination_collapses_server_named_queues() -> None:
    """Metric attributes name server-generated queues amq.gen so series do not grow per queue."""
    destination = build_destination("receive", "", "amq.gen-Q1", "amq.gen-Q1")
    assert destination.attributes["messaging.destination.name"] == "amq.gen-Q1"
    assert destination.metric_attributes["messaging.destination.name"] == "amq.gen"
    publish = build_destination("publish", "", "amq.gen-Q1", "")
    assert publish.metric_attributes["messaging.destination.name"] == "amq.gen"


@pytest.mark.parametrize(
    ("queue", "generated"),
    [
        ("amq_4eb1711592f94c76b7f305a4e2714ce4", True),  # aio-pika >= 9 robust queue
        ("amq_0x2709243818fed88940870129a1227ab", True),  # aio-pika 8 robust queue
        ("amq_orders", False),
        ("amq_4eb1711592f94c76b7f305a4e2714ce4.dlq", False),
        ("amq_0xZZ09243818fed88940870129a1227ab", False),
    ],
)
def test_queue_names_aio_pika_generates_count_as_server_named(queue: str, generated: bool) -> None:
    """A queue name aio-pika's robust channel generates is named amq.gen and marked anonymous, like a broker-named one."""
    destination = build_destination("process", "", queue, queue)
    assert destination.attributes.get("messaging.destination.anonymous", False) is generated
    assert destination.span_name == ("process amq.gen" if generated else f"process {queue}")
    metric_name = destination.metric_attributes["messaging.destination.name"]
    assert metric_name == ("amq.gen" if generated else queue)


NODE = "3f2b8c1e-1234-4abc-9def-0123456789ab"


@pytest.mark.parametrize(
    ("exchange", "routing_key", "queue", "span_name", "metric_destination"),
    [
        # a Celery worker's gossip queue: one per worker start
        ("celeryev", "worker.heartbeat", f"celeryev.{NODE}", "process celeryev.{uuid}",
         "celeryev:worker.heartbeat:celeryev.{uuid}"),
        # a pidbox reply queue (celery inspect, app.control.ping) and the reply sent to it
        ("reply.celery.pidbox", NODE, f"{NODE}.reply.celery.pidbox",
         "process {uuid}.reply.celery.pidbox", "reply.celery.pidbox:{uuid}:{uuid}.reply.celery.pidbox"),
        ("reply.celery.pidbox", NODE, "", "publish reply.celery.pidbox", "reply.celery.pidbox:{uuid}"),
        # a worker's remote-control queue: one per worker host
        ("celery.pidbox", "", "celery@worker-7d9f.example.com.celery.pidbox",
         "process {node}.celery.pidbox", "celery.pidbox:{node}.celery.pidbox"),
        # Celery's rpc:// result queue, named after the client
        ("", NODE.upper(), NODE.upper(), "process {uuid}", "{uuid}"),
        # names without a UUID stay as they are
        ("orders", "order-17", "srm-2", "process srm-2", "orders:order-17:srm-2"),
        ("celery.pidbox", "", "a@b.pidbox", "process a@b.pidbox", "celery.pidbox:a@b.pidbox"),
    ],
)  # fmt: skip
def test_per_process_names_collapse_in_span_names_and_metrics(
    exchange: str, routing_key: str, queue: str, span_name: str, metric_destination: str
) -> None:
    """A name holding a UUID (or a pidbox node queue) keeps one span name and one metric series
    across worker restarts; the span attribute keeps the real name."""
    operation = "process" if queue else "publish"
    destination = build_destination(operation, exchange, routing_key, queue)
    assert destination.span_name == span_name
    assert destination.metric_attributes["messaging.destination.name"] == metric_destination
    real = (
        consume_destination_name(exchange, routing_key, queue)
        if queue
        else publish_destination_name(exchange, routing_key)
    )
    assert destination.attributes["messaging.destination.name"] == real
    assert "messaging.destination.anonymous" not in destination.attributes


def test_operation_types() -> None:
    """Each operation name maps to its semconv operation type."""
    types = {
        op: build_destination(op, "x", "y", "z").attributes["messaging.operation.type"]
        for op in ("publish", "process", "receive", "ack", "nack", "reject")
    }
    assert types == OPERATION_TYPES  # the harness's table, written apart from the core's


def test_other_transports_leave_out_amqp_attributes() -> None:
    """On a non-AMQP transport (kombu on Redis) the system is the transport and rabbitmq.* is absent."""
    destination = build_destination("publish", "tasks", "celery", "", system="redis")
    assert destination.attributes["messaging.system"] == "redis"
    assert not any(k.startswith("messaging.rabbitmq.") for k in destination.attributes)


def test_cache_returns_the_same_destination_and_stays_bounded() -> None:
    """The cache builds a destination once and never holds more than maxsize entries."""
    cache = DestinationCache(maxsize=4)
    first = cache.get("publish", "orders", "a")
    assert cache.get("publish", "orders", "a") is first
    for i in range(10):
        cache.get("publish", "orders", f"key-{i}")
    assert len(cache._entries) <= 4


def test_error_type_names() -> None:
    """error.type is the exception's class name, fully qualified outside builtins."""
    assert error_type_of(ValueError("x")) == "ValueError"

    class CorruptFile(Exception):
        pass

    assert error_type_of(CorruptFile()) == f"{__name__}.test_error_type_names.<locals>.CorruptFile"
