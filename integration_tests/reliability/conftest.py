"""Fixtures of the reliability tests: every plugin's instrumentor, named connections, a span
counter that finds spans left open, and a watch on our own error log."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Broker, Recorder
from integration_tests.contract.plain import connection_name

Instrument = Callable[..., Any]

# The loggers of the core and the plugins: an "instrumentation error" there is a bug of ours.
OUR_LOGGERS = ("otel_messaging_core", "otel_pika", "otel_aiopika", "otel_kombu")


class SpanCounter(SpanProcessor):
    """Counts spans started and ended, and remembers which are still open (a leak detector)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = 0
        self.ended = 0
        self._open: dict[int, str] = {}
        self.names: list[str] = []  # in the order they started

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        with self._lock:
            self.started += 1
            self.names.append(span.name)
            self._open[span.context.span_id] = span.name

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self.ended += 1
            self._open.pop(span.context.span_id, None)

    def open_spans(self) -> list[str]:
        """Names of the spans started and not ended yet."""
        with self._lock:
            return sorted(self._open.values())


@pytest.fixture
def counter(otel: Recorder) -> SpanCounter:
    """A :class:`SpanCounter` on the test's tracer provider."""
    found = SpanCounter()
    otel.tracer_provider.add_span_processor(found)
    return found


class InternalErrors:
    """Log records of our own failures (the guard's "instrumentation error", failing hooks)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog

    def records(self) -> list[str]:
        return [
            f"{r.name}: {r.getMessage()}"
            for r in self._caplog.records
            if r.name.split(".")[0] in OUR_LOGGERS
            and (r.levelno >= logging.WARNING or "instrumentation error" in r.getMessage())
        ]


@pytest.fixture
def internal_errors(caplog: pytest.LogCaptureFixture) -> Iterator[InternalErrors]:
    """Captures our loggers down to DEBUG (repeated internal errors are logged at debug level);
    the test fails if any of our code logged an error of its own."""
    for name in OUR_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    watch = InternalErrors(caplog)
    yield watch
    assert watch.records() == [], "our code logged errors of its own"


@pytest.fixture
def instrument_pika(instrumentation: Callable[..., Instrument]) -> Instrument:
    """``instrument_pika(**options)``: otel-pika with the test's providers, undone after the test."""
    from otel_pika import PikaInstrumentor

    return instrumentation(PikaInstrumentor)


@pytest.fixture
def instrument_aiopika(instrumentation: Callable[..., Instrument]) -> Instrument:
    """``instrument_aiopika(**options)``: otel-aiopika with the test's providers, undone after the test."""
    from otel_aiopika import AioPikaInstrumentor

    return instrumentation(AioPikaInstrumentor)


@pytest.fixture
def instrument_kombu(instrumentation: Callable[..., Instrument]) -> Instrument:
    """``instrument_kombu(**options)``: otel-kombu with the test's providers, undone after the test."""
    from otel_kombu import KombuInstrumentor

    return instrumentation(KombuInstrumentor)


def pika_parameters(url: str, name: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": name}
    return params


def ack_one(channel: BlockingChannel, queue: str, handle: Callable[[], None] | None = None) -> None:
    """Consume ``queue`` on a BlockingChannel until a message comes: ``handle`` runs in its
    callback, then the message is acked and consuming stops."""

    def on_message(ch: BlockingChannel, method: Any, _p: Any, _body: bytes) -> None:
        if handle is not None:
            handle()
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()


@pytest.fixture
def pika_connect(rabbitmq: Broker) -> Iterator[Callable[..., BlockingConnection]]:
    """``pika_connect(name=None, url=None)``: a named BlockingConnection, closed after the test."""
    opened: list[BlockingConnection] = []

    def open_connection(name: str | None = None, url: str | None = None) -> BlockingConnection:
        connection = BlockingConnection(
            pika_parameters(url or rabbitmq.url, name or connection_name())
        )
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        with contextlib.suppress(Exception):  # already dropped by a fault test
            if connection.is_open:
                connection.close()


@pytest.fixture
def shared_queue(rabbitmq: Broker, unique: Callable[[str], str]) -> Iterator[str]:
    """A named queue that outlives any one connection (producers, consumers, a connection the
    broker drops); expires unused, deleted after the test."""
    name = unique("q")
    connection = BlockingConnection(pika_parameters(rabbitmq.url, connection_name("setup")))
    connection.channel().queue_declare(name, arguments={"x-expires": 120_000})
    connection.close()
    yield name
    connection = BlockingConnection(pika_parameters(rabbitmq.url, connection_name("setup")))
    with contextlib.suppress(Exception):
        connection.channel().queue_delete(name)
    connection.close()


@pytest.fixture
def local_broker(rabbitmq: Broker) -> Broker:
    """The broker, when rabbitmqctl on this machine administers it (fault and user tests)."""
    if not rabbitmq.local:
        pytest.skip("needs the local broker and rabbitmqctl (closing connections, adding a user)")
    return rabbitmq
