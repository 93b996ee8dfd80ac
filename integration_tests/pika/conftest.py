"""Fixtures for otel-pika against the real broker: instrumentation, connections, an async runner."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Broker
from broker_harness.pytest_plugin import instrument_fixtures
from otel_pika import PikaInstrumentor

Instrument = Callable[..., PikaInstrumentor]


instrument, instrumented = instrument_fixtures(PikaInstrumentor, "pika")


def parameters(broker: Broker, name: str = "otel-pika-test") -> pika.URLParameters:
    params = pika.URLParameters(broker.url)
    params.client_properties = {"connection_name": name}
    return params


@pytest.fixture
def connect(rabbitmq: Broker) -> Iterator[Callable[..., BlockingConnection]]:
    """``connect()`` opens a BlockingConnection to the broker; every one is closed after the test."""
    opened: list[BlockingConnection] = []

    def open_connection(name: str = "otel-pika-test") -> BlockingConnection:
        connection = BlockingConnection(parameters(rabbitmq, name))
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        if connection.is_open:
            with contextlib.suppress(Exception):  # already dropped by a fault test
                connection.close()


@pytest.fixture
def channel(connect: Callable[..., BlockingConnection]) -> BlockingChannel:
    """A BlockingChannel on a fresh connection."""
    return connect().channel()


@pytest.fixture
def queue(channel: BlockingChannel, unique: Callable[[str], str]) -> str:
    """An exclusive queue on ``channel``'s connection, declared before anything is instrumented."""
    name = unique("q")
    channel.queue_declare(name, exclusive=True)
    return name


class AsyncRun:
    """Drive an async-adapter connection (SelectConnection or AsyncioConnection) in this thread.

    ``run(script)`` opens the connection and a channel, calls ``script(channel)``, and runs the
    I/O loop until ``done()`` is called (the connection is then closed) or the timeout passes
    (the run then fails). Exceptions raised by callbacks propagate out of ``run``.
    """

    def __init__(self, broker: Broker, adapter: str) -> None:
        self.broker = broker
        self.adapter = adapter
        self.connection: Any = None
        self.timed_out = False

    def done(self) -> None:
        connection = self.connection
        if connection is not None and connection.is_open:
            connection.close()

    def run(self, script: Callable[[Any], None], timeout: float = 20.0) -> None:
        params = parameters(self.broker, f"otel-pika-async-{uuid.uuid4().hex[:8]}")
        failure: list[BaseException] = []

        def on_open(connection: Any) -> None:
            connection.channel(on_open_callback=script)

        def on_open_error(_connection: Any, error: BaseException) -> None:
            failure.append(error)
            stop()

        def on_closed(_connection: Any, _reason: BaseException) -> None:
            stop()

        if self.adapter == "asyncio":
            loop = asyncio.new_event_loop()
            self.connection = AsyncioConnection(
                params,
                on_open_callback=on_open,
                on_open_error_callback=on_open_error,
                on_close_callback=on_closed,
                custom_ioloop=loop,
            )

            def stop() -> None:
                loop.stop()

            def start() -> None:
                loop.run_forever()

            call_later = loop.call_later
        else:
            self.connection = pika.SelectConnection(
                params,
                on_open_callback=on_open,
                on_open_error_callback=on_open_error,
                on_close_callback=on_closed,
            )
            ioloop = self.connection.ioloop

            def stop() -> None:
                ioloop.stop()

            def start() -> None:
                ioloop.start()

            call_later = ioloop.call_later

        def on_timeout() -> None:
            self.timed_out = True
            self.done()

        call_later(timeout, on_timeout)
        try:
            start()
        except BaseException:
            # a callback raised: close the connection cleanly, then let the test see the error
            if self.connection.is_open:
                self.connection.close()
                start()
            raise
        finally:
            if self.adapter == "asyncio":
                loop.close()
        if failure:
            raise failure[0]

    def consume_one(
        self,
        queue: str,
        handle: Callable[[Any, Any], None],
        setup: Callable[[Any], None] | None = None,
    ) -> None:
        """``run()`` a script that declares ``queue``, consumes it and publishes one message to it:
        ``handle(channel, method)`` runs in the consumer callback, then a ``queue.declare`` round
        trip (everything before it has reached the broker) ends the run. ``setup(channel)`` runs
        first."""

        def script(channel: Any) -> None:
            if setup is not None:
                setup(channel)

            def on_message(ch: Any, method: Any, *_: Any) -> None:
                handle(ch, method)
                ch.queue_declare(queue, exclusive=True, callback=lambda _f: self.done())

            def on_declared(_frame: Any) -> None:
                channel.basic_consume(queue, on_message)
                channel.basic_publish("", queue, b"x")

            channel.queue_declare(queue, exclusive=True, callback=on_declared)

        self.run(script)
        assert not self.timed_out, "the async script did not finish in time"


@pytest.fixture(params=["select", "asyncio"])
def async_run(request: pytest.FixtureRequest, rabbitmq: Broker) -> AsyncRun:
    """An :class:`AsyncRun` for SelectConnection and for AsyncioConnection."""
    return AsyncRun(rabbitmq, request.param)
