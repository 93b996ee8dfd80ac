"""kombu's other transports: the in-memory one and Redis (on this machine at 127.0.0.1:6379)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from broker_harness import Recorder, span_summary
from broker_harness.pytest_plugin import broker_required
from integration_tests.kombu.conftest import drain

pytestmark = pytest.mark.usefixtures("traced")

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_connection(request: pytest.FixtureRequest) -> Iterator[Connection]:
    """A kombu Connection on the local Redis (skips without one, fails under CI)."""
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    except OSError:
        message = "no Redis on 127.0.0.1:6379 (start one: redis-server --daemonize yes)"
        if broker_required(request.config):
            pytest.fail(message)
        pytest.skip(message)
    connection = Connection(REDIS_URL, connect_timeout=10)
    connection.connect()
    yield connection
    connection.release()


@pytest.fixture
def memory_connection() -> Iterator[Connection]:
    connection = Connection("memory://")
    yield connection
    connection.release()


def round_trip(connection: Connection, exchange: Exchange, queue: Queue) -> None:
    """Publish one message and handle it in a Consumer callback that rejects it (dropped)."""
    handled: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        handled.append(body)
        message.reject()

    with Consumer(connection, [queue], callbacks=[callback]):
        Producer(connection, exchange=exchange).publish(
            {"order": 1}, routing_key="order.created", message_id="m-1"
        )
        drain(connection, lambda: bool(handled))
    assert handled == [{"order": 1}]


def entities(unique: Callable[[str], str]) -> tuple[Exchange, Queue]:
    exchange = Exchange(unique("ex"), type="direct", durable=False, auto_delete=True)
    queue = Queue(unique("q"), exchange, routing_key="order.created", auto_delete=True)
    return exchange, queue


@pytest.mark.parametrize(
    ("transport", "server"),
    [
        ("memory", {}),
        ("redis", {"server.address": "127.0.0.1", "server.port": 6379}),
    ],
)
def test_transport_name_and_no_amqp_attributes(
    request: pytest.FixtureRequest,
    otel: Recorder,
    unique: Callable[[str], str],
    transport: str,
    server: dict[str, Any],
) -> None:
    """On memory:// and Redis the spans name the transport as messaging.system and leave out AMQP-only attributes."""
    connection = request.getfixturevalue(f"{transport}_connection")
    exchange, queue = entities(unique)
    round_trip(connection, exchange, queue)
    spans = otel.spans()
    common = {"messaging.system": transport, **server}
    by_name = {s.name: span_summary(s, spans) for s in spans}
    assert set(by_name) == {
        f"publish {exchange.name}",
        f"process {queue.name}",
        f"reject {queue.name}",
    }
    assert by_name[f"publish {exchange.name}"]["attributes"] == {
        **common,
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": f"{exchange.name}:order.created",
        "messaging.message.id": "m-1",
        "messaging.message.body.size": len(b'{"order": 1}'),
    }
    process = by_name[f"process {queue.name}"]
    assert process["parent"] == f"publish {exchange.name}"
    assert process["kind"] == "CONSUMER"
    assert process["attributes"] == {
        **common,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": f"{exchange.name}:order.created:{queue.name}",
        "messaging.message.id": "m-1",
        "messaging.message.body.size": len(b'{"order": 1}'),
    }
    reject = by_name[f"reject {queue.name}"]
    assert reject["status"] == "ERROR"
    assert reject["parent"] == f"process {queue.name}"
    assert reject["attributes"]["error.type"] == "rejected"
    assert reject["attributes"]["messaging.system"] == transport
    assert not any(key.startswith("messaging.rabbitmq.") for key in reject["attributes"])


def test_redis_simple_queue_receive(
    otel: Recorder,
    redis_connection: Connection,
    unique: Callable[[str], str],
) -> None:
    """SimpleQueue.get on Redis makes a receive span in the producer's trace."""
    simple = redis_connection.SimpleQueue(unique("simple"))
    try:
        simple.put({"order": 1})
        message = simple.get(timeout=10)
        message.ack()
    finally:
        simple.clear()
        simple.close()
    name = simple.queue.name
    (receive,) = otel.named(f"receive {name}")
    summary = span_summary(receive, otel.spans())
    assert summary["parent"] == f"publish {name}"
    assert summary["attributes"]["messaging.system"] == "redis"
    assert summary["attributes"]["messaging.destination.name"] == f"{name}:{name}"
