"""otel-kombu without a broker: Celery message recognition, transport names, options, the memory transport."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from broker_harness import Recorder, span_summary
from otel_kombu import KombuInstrumentor
from otel_kombu._binding import system_of
from otel_kombu._celery import is_celery_message
from otel_kombu.instrumentor import SKIP_CELERY_MESSAGES_ENV


@pytest.mark.parametrize(
    ("headers", "exchange", "expected"),
    [
        ({"task": "app.add", "id": "6b1c", "lang": "py"}, "", True),
        ({"task": "app.add"}, "orders", False),
        ({}, "celeryev", True),
        (None, "celery.pidbox", True),
        (None, "reply.celery.pidbox", True),
        ({b"task": b"x", b"id": b"y"}, "orders", False),
        ({"traceparent": "00-…"}, "orders", False),
    ],
)
def test_celery_messages_are_recognised(
    headers: dict[Any, Any] | None, exchange: str, expected: bool
) -> None:
    """Task protocol 2 headers, the event exchange and pidbox exchanges mark Celery's own messages."""
    assert is_celery_message(headers, exchange) is expected


@pytest.mark.parametrize(
    ("url", "system"),
    [
        ("amqp://guest:guest@mq.internal:5672//", "rabbitmq"),
        ("pyamqp://mq.internal", "rabbitmq"),
        ("memory://", "memory"),
        ("filesystem://", "filesystem"),
    ],
)
def test_messaging_system_per_transport(url: str, system: str) -> None:
    """AMQP transports are 'rabbitmq'; every other transport is named after itself."""
    assert system_of(Connection(url)) == system


def test_unknown_keyword_is_a_type_error() -> None:
    """A misspelt keyword fails instrument() instead of being ignored."""
    instrumentor = KombuInstrumentor()
    with pytest.raises(TypeError, match="settle_span"):
        instrumentor.instrument(settle_span=True)
    assert not instrumentor.is_instrumented_by_opentelemetry


def test_the_unknown_keyword_error_lists_kombus_own_keyword() -> None:
    """The TypeError for a misspelt keyword names every accepted keyword, skip_celery_messages
    included."""
    with pytest.raises(TypeError, match=r"accepted: .*skip_celery_messages"):
        KombuInstrumentor().instrument(skip_celery=True)


def test_a_bad_variable_leaves_kombu_instrumented(
    otel: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES value is one ERROR naming it; instrument()
    goes on with the default (Celery's messages traced)."""
    monkeypatch.setenv(SKIP_CELERY_MESSAGES_ENV, "sometimes")
    instrumentor = KombuInstrumentor()
    with caplog.at_level(logging.ERROR, logger="otel_messaging_core"):
        instrumentor.instrument(
            tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        )
    try:
        assert instrumentor.is_instrumented_by_opentelemetry
        with Connection("memory://") as connection:
            task = memory_round_trip(connection, {"task": "app.add", "id": "6b1c"})
    finally:
        instrumentor.uninstrument()
    assert "traceparent" in task.headers
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert SKIP_CELERY_MESSAGES_ENV in error
    assert "'sometimes'" in error


def memory_round_trip(connection: Connection, headers: dict[str, Any] | None = None) -> Any:
    exchange = Exchange("orders", type="direct")
    queue = Queue("srm", exchange, routing_key="order.created")
    got: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        got.append(message)
        message.ack()

    with Consumer(connection, [queue], callbacks=[callback]):
        Producer(connection, exchange=exchange).publish(
            {"order": 1}, routing_key="order.created", headers=headers
        )
        connection.drain_events(timeout=5)
    return got[0]


def test_memory_transport_round_trip(traced: KombuInstrumentor, otel: Recorder) -> None:
    """On memory:// the publish and process spans are linked and name the 'memory' system, no server."""
    with Connection("memory://") as connection:
        memory_round_trip(connection)
    spans = otel.spans()
    process = span_summary(otel.named("process srm")[0], spans)
    assert process["parent"] == "publish orders"
    assert process["attributes"] == {
        "messaging.system": "memory",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "orders:order.created:srm",
        "messaging.message.body.size": len(b'{"order": 1}'),
    }


def test_skip_celery_messages_from_the_environment(
    otel: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES=true leaves task messages untraced, others traced."""
    monkeypatch.setenv(SKIP_CELERY_MESSAGES_ENV, "true")
    instrumentor = KombuInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    try:
        with Connection("memory://") as connection:
            task = memory_round_trip(connection, {"task": "app.add", "id": "6b1c"})
            plain = memory_round_trip(connection, {"x-origin": "shop"})
    finally:
        instrumentor.uninstrument()
    assert "traceparent" not in task.headers
    assert "traceparent" in plain.headers
    assert sorted(s.name for s in otel.spans()) == ["process srm", "publish orders"]


def test_instrument_connection_on_memory(otel: Recorder) -> None:
    """instrument_connection records its own connection only, and undoing it leaves kombu as it was."""
    mine, other = Connection("memory://"), Connection("memory://")
    KombuInstrumentor.instrument_connection(
        mine, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    try:
        memory_round_trip(mine)
        assert sorted(s.name for s in otel.spans()) == ["process srm", "publish orders"]
        otel.clear()
        memory_round_trip(other)
        assert otel.spans() == []
    finally:
        KombuInstrumentor.uninstrument_connection(mine)
        mine.release()
        other.release()
    assert not hasattr(Producer.publish, "__wrapped__")


def test_inner_publish_called_with_keywords(traced: KombuInstrumentor, otel: Recorder) -> None:
    """Code that calls Producer._publish with keywords (not kombu's positional call) is traced the same."""
    with Connection("memory://") as connection:
        exchange = Exchange("orders", type="direct")
        queue = Queue("srm", exchange, routing_key="order.created")
        queue(connection.default_channel).declare()
        headers: dict[str, Any] = {"x-origin": "shop"}
        Producer(connection)._publish(
            body=b"{}",
            priority=0,
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
            properties={"message_id": "m-1"},
            routing_key="order.created",
            mandatory=False,
            immediate=False,
            exchange="orders",
            declare=[],
        )
        message = queue(connection.default_channel).get()
    (span,) = otel.named("publish orders")
    assert headers == {"x-origin": "shop"}
    assert message.headers["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"
