"""kombu's own publish cases: serializers and compression, retries after a lost connection,
returns, SimpleQueue.put (the shared publish behaviour is in integration_tests/contract)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue
from kombu.compression import compress
from kombu.serialization import dumps

from broker_harness import Broker, Recorder, Traceparent, messaging_attributes, span_summary
from broker_harness.broker import close_connections
from integration_tests.kombu.conftest import (
    declare,
    drain,
    fetch,
    open_connection,
)

pytestmark = pytest.mark.usefixtures("traced")


def qualified_name(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def sent_size(body: Any, serializer: str | None = None, compression: str | None = None) -> int:
    """The size of the body kombu puts on the wire."""
    if isinstance(body, bytes):
        data = body
    else:
        _, _, data = dumps(body, serializer=serializer or "json")
    if compression:
        data, _ = compress(data, compression)
    return len(data)


@pytest.mark.parametrize(
    ("body", "serializer", "compression"),
    [
        ({"sku": "A-1", "qty": 2}, "json", None),
        ({"sku": "A-1", "qty": 2}, "json", "zlib"),
        ({"sku": "A-1"}, "pickle", "bzip2"),
        (b"\x00\x01 binary", None, "zlib"),
    ],
)
def test_serializers_compression_and_declare(
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
    body: Any,
    serializer: str | None,
    compression: str | None,
) -> None:
    """With declare=, any serializer and compression, one span reports the size kombu sends; headers stay the caller's."""
    exchange, queue = entities
    headers = {"x-origin": "shop"}
    extra: dict[str, Any] = (
        {"content_type": "application/octet-stream"} if serializer is None else {}
    )
    Producer(connection).publish(
        body,
        exchange=exchange,
        routing_key="order.created",
        declare=[queue],
        serializer=serializer,
        compression=compression,
        headers=headers,
        **extra,
    )
    (span,) = otel.spans()
    assert span.name == f"publish {exchange.name}"
    assert span.attributes is not None
    assert span.attributes["messaging.message.body.size"] == sent_size(
        body, serializer, compression
    )
    assert headers == {"x-origin": "shop"}, "not even kombu's compression header lands in it"
    message = fetch(connection, queue)
    message.accept = {"application/json", "application/x-python-serialize", "application/data"}
    assert (message.body if serializer is None else message.decode()) == body
    assert Traceparent.in_headers(message.headers) == Traceparent.of(span)


@pytest.mark.slow
def test_retry_after_a_lost_connection_is_one_span(
    otel: Recorder,
    confirming: Connection,
    rabbitmq: Broker,
    entities: tuple[Exchange, Queue],
) -> None:
    """publish(retry=True) that reconnects after the broker dropped the connection is still one span, one send."""
    if not rabbitmq.local:
        pytest.skip("closing a connection from the broker side needs rabbitmqctl")
    exchange, queue = entities
    declare(confirming, queue)
    # auto_declare=False: kombu 5.5 itself fails to re-declare the producer's exchange on retry
    producer = Producer(confirming, exchange=exchange, auto_declare=False)
    producer.publish({"n": 0}, routing_key="order.created")
    fetch(confirming, queue)
    otel.clear()
    dropped = confirming.connection
    name = confirming.transport_options["client_properties"]["connection_name"]
    deadline = time.monotonic() + 30
    while not close_connections(name):
        assert time.monotonic() < deadline, "the broker never listed the connection"
        time.sleep(0.5)
    producer.publish(
        {"n": 1},
        routing_key="order.created",
        retry=True,
        retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.2},
    )
    assert confirming.connection is not dropped, "kombu reconnected and published again"
    (span,) = otel.spans()
    assert span.name == f"publish {exchange.name}"
    assert span.status.status_code.name == "UNSET"
    message = fetch(confirming, queue)
    assert message.decode() == {"n": 1}
    assert Traceparent.in_headers(message.headers) == Traceparent.of(span)
    ((_, sent),) = otel.points("messaging.client.sent.messages")
    assert sent == 2, "the first publish, and the retried one counted once"


def _returning_producer(
    connection: Connection, unique: Callable[[str], str]
) -> tuple[Producer, list[Any]]:
    """A producer on a new auto-delete exchange and the list its ``on_return`` fills."""
    exchange = Exchange(unique("ex"), type="direct", durable=False, auto_delete=True)
    returned: list[Any] = []

    def on_return(exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        returned.append(message)

    return Producer(connection, exchange=exchange, on_return=on_return), returned


def test_unroutable_with_on_return_is_an_error(
    otel: Recorder,
    confirming: Connection,
    unique: Callable[[str], str],
) -> None:
    """A mandatory publish the broker returns (confirm mode) ends ERROR unroutable; on_return still gets it."""
    producer, returned = _returning_producer(confirming, unique)
    producer.publish({"order": 1}, routing_key="nowhere", mandatory=True)
    (span,) = otel.spans()
    assert span_summary(span)["status"] == "ERROR"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "unroutable"
    assert len(returned) == 1
    assert Traceparent.in_headers(returned[0].headers) == Traceparent.of(span)
    ((attrs, _),) = otel.points("messaging.client.sent.messages")
    assert attrs["error.type"] == "unroutable"


def test_unroutable_without_confirms_is_recorded_when_returned(
    otel: Recorder,
    rabbitmq: Broker,
    connection: Connection,
    unique: Callable[[str], str],
) -> None:
    """Without confirms the return arrives after publish ended: an ERROR unroutable span under the publish records it."""
    producer, returned = _returning_producer(connection, unique)
    exchange = producer.exchange
    producer.publish({"order": 1}, routing_key="nowhere", mandatory=True, message_id="m-1")
    (publish,) = otel.spans()
    assert publish.status.status_code.name == "UNSET", "the broker had not answered yet"
    drain(connection, lambda: bool(returned))
    spans = otel.spans()
    assert len(spans) == 2
    assert span_summary(spans[1], spans) == {
        "name": f"publish {exchange.name}",
        "kind": "PRODUCER",
        "parent": f"publish {exchange.name}",
        "links": [],
        "status": "ERROR",
        "attributes": messaging_attributes(
            rabbitmq,
            "publish",
            f"{exchange.name}:nowhere",
            "nowhere",
            **{
                "messaging.message.id": "m-1",
                "messaging.message.body.size": sent_size({"order": 1}),
                "error.type": "unroutable",
            },
        ),
        "events": [],
    }
    assert spans[1].parent is not None
    assert spans[1].parent.span_id == publish.context.span_id
    ((_, sent),) = otel.points("messaging.client.sent.messages")
    assert sent == 1, "the return is not a second send"


def test_unroutable_without_handler_raises_the_same_exception(
    otel: Recorder,
    confirming: Connection,
    unique: Callable[[str], str],
) -> None:
    """Without on_return amqp raises the return from publish; the span records that very exception."""
    exchange = Exchange(unique("ex"), type="direct", durable=False, auto_delete=True)
    producer = Producer(confirming, exchange=exchange)
    with pytest.raises(Exception) as raised:
        producer.publish({"order": 1}, routing_key="nowhere", mandatory=True)
    (span,) = otel.spans()
    assert span.status.status_code.name == "ERROR"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "unroutable"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == qualified_name(raised.value)


def test_simple_queue_put_is_a_publish(
    otel: Recorder,
    rabbitmq: Broker,
    unique: Callable[[str], str],
) -> None:
    """SimpleQueue.put publishes through Producer.publish: one PRODUCER span on the queue's own exchange."""
    connection = open_connection(rabbitmq.url)
    try:
        name = unique("simple")
        simple = connection.SimpleQueue(
            name,
            queue_opts={"auto_delete": True, "durable": False},
            exchange_opts={"durable": False, "auto_delete": True},
        )
        simple.put({"order": 1})
        (span,) = otel.spans()
        assert span.name == f"publish {name}"
        assert span.attributes is not None
        assert span.attributes["messaging.destination.name"] == f"{name}:{name}"
        simple.close()
    finally:
        connection.release()
