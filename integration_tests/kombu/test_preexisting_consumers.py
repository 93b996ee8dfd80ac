"""Consumers already consuming when ``instrument()`` runs (a startup hook that runs after the
consumers start) are traced from their next message on, on RabbitMQ (pyamqp) and on a virtual
transport, and a channel opened before ``instrument()`` still reports returned messages."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import pytest
from kombu import Connection, Exchange, Queue
from opentelemetry import trace
from opentelemetry.trace import SpanContext

from broker_harness import Recorder, span_summary
from integration_tests.kombu.conftest import Instrument, declare, drain
from integration_tests.kombu.test_transports import redis_connection  # noqa: F401 - a fixture


def consuming(connection: Connection, queue: Queue, got: list[tuple[Any, SpanContext]]) -> Any:
    """A Consumer on ``queue`` that records each body with the span current in its callback."""

    def on_message(body: Any, message: Any) -> None:
        got.append((body, trace.get_current_span().get_span_context()))
        message.ack()

    consumer = kombu.Consumer(connection, [queue], callbacks=[on_message])
    consumer.consume()
    return consumer


def one_before_one_after(
    connection: Connection, exchange: Exchange, queue: Queue, instrument: Instrument
) -> tuple[list[tuple[Any, SpanContext]], kombu.Consumer, kombu.Producer]:
    """A Consumer of ``queue`` that starts consuming before instrument(): message 0 is drained
    before instrument(), message 1 after. What the callback got, the consumer and its producer."""
    got: list[tuple[Any, SpanContext]] = []
    consumer = consuming(connection, queue, got)
    producer = connection.Producer()
    producer.publish({"n": 0}, exchange=exchange, routing_key="order.created")
    drain(connection, lambda: len(got) == 1)
    instrument()
    producer.publish({"n": 1}, exchange=exchange, routing_key="order.created")
    drain(connection, lambda: len(got) == 2)
    return got, consumer, producer


def test_a_consumer_consuming_before_instrument_is_traced_from_its_next_message(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
    unique: Callable[[str], str],
) -> None:
    """A Consumer that started consuming before instrument() gets one process span per message
    from the next drain on, its callback runs inside it, and it stays traced after it consumes
    again."""
    exchange, _ = entities
    # not auto-deleted: the consumer cancels and consumes again (expires when unused)
    queue = Queue(unique("q"), exchange, routing_key="order.created", durable=False, expires=60)
    declare(connection, exchange, queue)
    got, consumer, producer = one_before_one_after(connection, exchange, queue, instrument)
    consumer.cancel()
    consumer.consume()
    producer.publish({"n": 2}, exchange=exchange, routing_key="order.created")
    drain(connection, lambda: len(got) == 3)
    consumer.cancel()
    queue(connection.default_channel).delete()
    spans = otel.spans()
    processes = [s for s in spans if s.name == f"process {queue.name}"]
    assert [body for body, _ in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert not got[0][1].is_valid
    assert [context for _, context in got[1:]] == [p.context for p in processes]
    assert {span_summary(p, spans)["parent"] for p in processes} == {f"publish {exchange.name}"}


def test_a_mixin_style_loop_picks_up_instrument_mid_flight(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """A consumer loop draining the connection (as ConsumerMixin does) when instrument() is
    called between two drains traces the messages of the drains after it."""
    exchange, queue = entities
    declare(connection, exchange, queue)
    got: list[tuple[Any, SpanContext]] = []
    consumer = consuming(connection, queue, got)
    producer = connection.Producer()
    for n in range(3):
        if n == 1:
            instrument(settle_spans=True)
        producer.publish({"n": n}, exchange=exchange, routing_key="order.created")
        drain(connection, lambda n=n: len(got) == n + 1)  # type: ignore[misc]
    consumer.cancel()
    assert [context.is_valid for _, context in got] == [False, True, True]
    assert len(otel.named(f"process {queue.name}")) == 2
    assert len(otel.named(f"ack {queue.name}")) == 2


@pytest.fixture
def memory_connection() -> Iterator[Connection]:
    """A kombu Connection on the in-process memory transport (a virtual transport)."""
    connection = Connection("memory://")
    connection.connect()
    yield connection
    connection.release()


def test_a_virtual_transport_consumer_consuming_before_instrument_is_traced(
    instrument: Instrument,
    otel: Recorder,
    memory_connection: Connection,
    unique: Callable[[str], str],
) -> None:
    """On a virtual transport (memory), a Consumer that started consuming before instrument()
    is traced from its next message on."""
    exchange = Exchange(unique("ex"), type="direct")
    queue = Queue(unique("q"), exchange, routing_key="order.created")
    declare(memory_connection, exchange, queue)
    got, consumer, _producer = one_before_one_after(memory_connection, exchange, queue, instrument)
    consumer.cancel()
    (process,) = otel.named(f"process {queue.name}")
    assert not got[0][1].is_valid
    assert got[1][1] == process.context
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "memory"


def test_a_channel_opened_before_instrument_reports_returned_messages(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    unique: Callable[[str], str],
) -> None:
    """A mandatory publish returned by the broker on a channel opened before instrument() (no
    confirms) ends in an ERROR span with error.type unroutable once the connection drains."""
    lost = Exchange(unique("nowhere"), type="direct", durable=False, auto_delete=True)
    declare(connection, lost)
    producer = connection.Producer()  # its channel opens here, before instrument()
    returned: list[Any] = []
    producer.on_return = lambda *args: returned.append(args)
    instrument()
    producer.publish({"n": 1}, exchange=lost, routing_key="none", mandatory=True)
    deadline = time.monotonic() + 10
    while not otel.named(f"publish {lost.name}") or not [
        s for s in otel.spans() if (s.attributes or {}).get("error.type") == "unroutable"
    ]:
        assert time.monotonic() < deadline, "no unroutable span"
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.2)
    errors = [s for s in otel.spans() if (s.attributes or {}).get("error.type") == "unroutable"]
    assert len(errors) == 1
    assert errors[0].name == f"publish {lost.name}"


@pytest.mark.parametrize("transport", ["pyamqp", "redis"])
def test_an_event_loop_consumer_consuming_before_instrument_is_traced(
    transport: str,
    request: pytest.FixtureRequest,
    instrument: Instrument,
    otel: Recorder,
    entities: tuple[Exchange, Queue],
) -> None:
    """A Consumer driven by kombu's event loop (as Celery's worker drives its consumers, without
    Connection.drain_events), consuming before instrument(), is traced from the message after
    the first one it gets once instrumented, on RabbitMQ and on Redis."""
    from kombu.asynchronous import Hub

    connection: Connection = request.getfixturevalue(
        "connection" if transport == "pyamqp" else "redis_connection"
    )
    exchange, queue = entities
    declare(connection, exchange, queue)
    got: list[tuple[Any, SpanContext]] = []
    consumer = consuming(connection, queue, got)
    hub = Hub()
    connection.register_with_event_loop(hub)
    producer = connection.Producer()

    def run_until(count: int) -> None:
        deadline = time.monotonic() + 10
        while len(got) < count:
            assert time.monotonic() < deadline, "no delivery"
            hub.run_once()

    try:
        producer.publish({"n": 0}, exchange=exchange, routing_key="order.created")
        run_until(1)
        instrument()
        for n in (1, 2):
            producer.publish({"n": n}, exchange=exchange, routing_key="order.created")
            run_until(n + 1)
        consumer.cancel()
    finally:
        hub.close()
    (process,) = otel.named(f"process {queue.name}")
    assert [context.is_valid for _, context in got] == [False, False, True]
    assert got[2][1] == process.context


def test_preexisting_consumers_follow_uninstrument_and_instrument_again(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """A Consumer consuming before instrument() is untraced again after uninstrument() and
    traced again from its next message after a second instrument()."""
    exchange, queue = entities
    declare(connection, exchange, queue)
    got: list[tuple[Any, SpanContext]] = []
    consumer = consuming(connection, queue, got)
    producer = connection.Producer()

    def one(n: int) -> bool:
        producer.publish({"n": n}, exchange=exchange, routing_key="order.created")
        drain(connection, lambda: len(got) == n + 1)
        return got[n][1].is_valid

    instrumentor = instrument()
    assert one(0)
    instrumentor.uninstrument()
    assert not one(1)
    instrument()
    assert one(2)
    consumer.cancel()
    assert len(otel.named(f"process {queue.name}")) == 2
