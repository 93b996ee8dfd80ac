"""Producer.publish against the real broker: one PRODUCER span per call, context in a copy of the headers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from amqp.exceptions import MessageNacked
from kombu import Connection, Exchange, Producer, Queue
from kombu.compression import compress
from kombu.serialization import dumps

from broker_harness import Broker, Recorder, span_summary
from broker_harness.broker import close_connections
from integration_tests.kombu.conftest import (
    Instrument,
    declare,
    drain,
    fetch,
    open_connection,
    traceparent_span_id,
)
from otel_kombu import KombuInstrumentor

SERVER = {"server.address": "127.0.0.1", "server.port": 5672}


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


def test_publish_to_an_exchange(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """A publish to a named exchange is one PRODUCER span with every attribute; its context rides in the message."""
    exchange, queue = entities
    declare(connection, queue)
    headers = {"x-origin": "shop"}
    body = {"order": 1}
    Producer(connection).publish(
        body,
        exchange=exchange,
        routing_key="order.created",
        headers=headers,
        message_id="m-1",
        correlation_id="c-1",
    )
    (span,) = otel.spans()
    assert span_summary(span) == {
        "name": f"publish {exchange.name}",
        "kind": "PRODUCER",
        "parent": None,
        "links": [],
        "status": "UNSET",
        "attributes": {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": "publish",
            "messaging.operation.type": "send",
            "messaging.destination.name": f"{exchange.name}:order.created",
            "messaging.rabbitmq.destination.routing_key": "order.created",
            "messaging.message.id": "m-1",
            "messaging.message.conversation_id": "c-1",
            "messaging.message.body.size": sent_size(body),
            **SERVER,
        },
        "events": [],
    }
    assert headers == {"x-origin": "shop"}, "the caller's headers dict is never changed"
    message = fetch(connection, queue)
    assert message.headers["x-origin"] == "shop"
    assert traceparent_span_id(message.headers) == span.context.span_id
    assert message.decode() == body


def test_publish_to_the_default_exchange(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    unique: Callable[[str], str],
) -> None:
    """A publish to the default exchange is named amq.default and keeps the routing key (the queue)."""
    queue = Queue(unique("q"), durable=False, auto_delete=True)
    declare(connection, queue)
    Producer(connection).publish(b"raw", routing_key=queue.name, content_type="application/x-raw")
    (span,) = otel.spans()
    assert span.name == "publish amq.default"
    assert dict(span.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue.name,
        "messaging.rabbitmq.destination.routing_key": queue.name,
        "messaging.message.body.size": 3,
        **SERVER,
    }
    assert traceparent_span_id(fetch(connection, queue).headers) == span.context.span_id


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
    traced: KombuInstrumentor,
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
    assert traceparent_span_id(message.headers) == span.context.span_id


@pytest.mark.slow
def test_retry_after_a_lost_connection_is_one_span(
    traced: KombuInstrumentor,
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
    assert traceparent_span_id(message.headers) == span.context.span_id
    ((_, sent),) = otel.points("messaging.client.sent.messages")
    assert sent == 2, "the first publish, and the retried one counted once"


def test_unroutable_with_on_return_is_an_error(
    traced: KombuInstrumentor,
    otel: Recorder,
    confirming: Connection,
    unique: Callable[[str], str],
) -> None:
    """A mandatory publish the broker returns (confirm mode) ends ERROR unroutable; on_return still gets it."""
    exchange = Exchange(unique("ex"), type="direct", durable=False, auto_delete=True)
    returned: list[Any] = []

    def on_return(exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        returned.append(message)

    producer = Producer(confirming, exchange=exchange, on_return=on_return)
    producer.publish({"order": 1}, routing_key="nowhere", mandatory=True)
    (span,) = otel.spans()
    assert span_summary(span)["status"] == "ERROR"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "unroutable"
    assert len(returned) == 1
    assert traceparent_span_id(returned[0].headers) == span.context.span_id
    ((attrs, _),) = otel.points("messaging.client.sent.messages")
    assert attrs["error.type"] == "unroutable"


def test_unroutable_without_confirms_is_recorded_when_returned(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    unique: Callable[[str], str],
) -> None:
    """Without confirms the return arrives after publish ended: an ERROR unroutable span under the publish records it."""
    exchange = Exchange(unique("ex"), type="direct", durable=False, auto_delete=True)
    returned: list[Any] = []

    def on_return(exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        returned.append(message)

    producer = Producer(connection, exchange=exchange, on_return=on_return)
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
        "attributes": {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": "publish",
            "messaging.operation.type": "send",
            "messaging.destination.name": f"{exchange.name}:nowhere",
            "messaging.rabbitmq.destination.routing_key": "nowhere",
            "messaging.message.id": "m-1",
            "messaging.message.body.size": sent_size({"order": 1}),
            "error.type": "unroutable",
            **SERVER,
        },
        "events": [],
    }
    assert spans[1].parent is not None
    assert spans[1].parent.span_id == publish.context.span_id
    ((_, sent),) = otel.points("messaging.client.sent.messages")
    assert sent == 1, "the return is not a second send"


def test_unroutable_without_handler_raises_the_same_exception(
    traced: KombuInstrumentor,
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


def test_broker_nack_is_an_error(
    traced: KombuInstrumentor,
    otel: Recorder,
    confirming: Connection,
    unique: Callable[[str], str],
) -> None:
    """A publish the broker nacks in confirm mode raises MessageNacked and ends ERROR broker_nack."""
    queue = Queue(
        unique("full"),
        durable=False,
        auto_delete=True,
        queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    declare(confirming, queue)
    producer = Producer(confirming)
    producer.publish({"n": 1}, routing_key=queue.name)
    with pytest.raises(MessageNacked) as raised:
        producer.publish({"n": 2}, routing_key=queue.name)
    accepted, nacked = otel.spans()
    assert accepted.status.status_code.name == "UNSET"
    assert nacked.status.status_code.name == "ERROR"
    assert nacked.attributes is not None
    assert nacked.attributes["error.type"] == "broker_nack"
    assert nacked.events[0].attributes is not None
    assert nacked.events[0].attributes["exception.type"] == qualified_name(raised.value)
    points = sorted(
        (attrs.get("error.type", ""), count)
        for attrs, count in otel.points("messaging.client.sent.messages")
    )
    assert points == [("", 1), ("broker_nack", 1)]


def test_publish_hook_sees_the_sent_headers_and_a_raising_hook_is_harmless(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """publish_hook gets the span and the envelope (headers as sent); one that raises is logged and the message still goes."""
    seen: list[Any] = []

    def hook(span: Any, envelope: Any) -> None:
        seen.append(envelope)
        raise RuntimeError("hook bug")

    instrument(publish_hook=hook)
    exchange, queue = entities
    declare(connection, queue)
    producer = Producer(connection, exchange=exchange)
    with caplog.at_level(logging.WARNING, logger="otel_messaging_core"):
        producer.publish({"order": 1}, routing_key="order.created", message_id="m-1")
        producer.publish({"order": 2}, routing_key="order.created", message_id="m-2")
    assert [e.message_id for e in seen] == ["m-1", "m-2"]
    first = seen[0]
    assert (first.exchange, first.routing_key) == (exchange.name, "order.created")
    assert "traceparent" in first.headers
    assert first.raw["message_id"] == "m-1"
    warnings = [
        r for r in caplog.records if r.levelname == "WARNING" and "raised" in r.getMessage()
    ]
    assert len(warnings) == 1, "a failing hook is logged once"
    assert fetch(connection, queue).decode() == {"order": 1}
    assert fetch(connection, queue).decode() == {"order": 2}
    assert len(otel.spans()) == 2


def test_simple_queue_put_is_a_publish(
    traced: KombuInstrumentor,
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
