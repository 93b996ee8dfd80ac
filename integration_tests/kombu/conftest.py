"""Fixtures for otel-kombu against the real broker: an instrumentor that always uninstruments,
connections, and per-test exchanges and queues."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from broker_harness import Broker, Recorder
from otel_kombu import KombuInstrumentor

Instrument = Callable[..., KombuInstrumentor]


@pytest.fixture
def instrument(instrumentation: Callable[..., Instrument]) -> Instrument:
    """``instrument(**options)`` with the test's providers; uninstrumented after the test."""
    return instrumentation(KombuInstrumentor)


@pytest.fixture
def pin(otel: Recorder) -> Iterator[Callable[..., None]]:
    """``pin(connection, **options)``: instrument_connection, undone after the test."""
    pinned: list[Connection] = []

    def do(connection: Connection, **options: Any) -> None:
        options.setdefault("tracer_provider", otel.tracer_provider)
        options.setdefault("meter_provider", otel.meter_provider)
        KombuInstrumentor.instrument_connection(connection, **options)
        pinned.append(connection)

    yield do
    for connection in pinned:
        KombuInstrumentor.uninstrument_connection(connection)


@pytest.fixture
def traced(instrument: Instrument) -> KombuInstrumentor:
    """kombu instrumented with the default options."""
    return instrument()


def open_connection(url: str, **transport_options: Any) -> Connection:
    connection = Connection(url, connect_timeout=10, transport_options=transport_options)
    connection.connect()
    return connection


@pytest.fixture
def connection(rabbitmq: Broker) -> Iterator[Connection]:
    """A connected kombu Connection to the broker (pyamqp)."""
    conn = open_connection(rabbitmq.url)
    yield conn
    conn.release()


@pytest.fixture
def confirming(rabbitmq: Broker, unique: Callable[[str], str]) -> Iterator[Connection]:
    """A connection whose channels use publisher confirms, named so a test can close it."""
    conn = open_connection(
        rabbitmq.url,
        confirm_publish=True,
        client_properties={"connection_name": unique("conn")},
    )
    yield conn
    conn.release()


@pytest.fixture
def entities(unique: Callable[[str], str]) -> tuple[Exchange, Queue]:
    """A direct exchange and a queue bound to it with ``order.created``, both auto-deleted."""
    exchange = Exchange(unique("ex"), type="direct", durable=False, auto_delete=True)
    queue = Queue(
        unique("q"), exchange, routing_key="order.created", durable=False, auto_delete=True
    )
    return exchange, queue


def drain(connection: Connection, until: Callable[[], bool], timeout: float = 15.0) -> None:
    """``drain_events`` until ``until()`` holds (fails the test after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            pytest.fail(f"no delivery within {timeout} s")
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.5)


def fetch(connection: Connection, queue: Queue, timeout: float = 15.0) -> Any:
    """Pull one message with ``basic_get`` (polling), recording nothing; the kombu Message."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    bound = queue(connection.default_channel)
    deadline = time.monotonic() + timeout
    with suppress_instrumentation():
        while True:
            message = bound.get(no_ack=True)
            if message is not None:
                return message
            if time.monotonic() > deadline:
                pytest.fail(f"no message on {queue.name} within {timeout} s")
            time.sleep(0.05)


def declare(connection: Connection, *entities: Any) -> None:
    """Declare exchanges/queues (and their bindings) on the connection's default channel."""
    channel = connection.default_channel
    for entity in entities:
        entity(channel).declare()
