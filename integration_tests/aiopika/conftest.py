"""Fixtures for otel-aiopika against the real broker: instrumentation, connections, async polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from opentelemetry.sdk.trace import ReadableSpan
from yarl import URL

from broker_harness import Broker, Recorder, span_summary
from broker_harness.pytest_plugin import instrument_fixtures
from otel_aiopika import AioPikaInstrumentor

Instrument = Callable[..., AioPikaInstrumentor]
Connect = Callable[..., Awaitable[AbstractConnection]]


instrument, instrumented = instrument_fixtures(AioPikaInstrumentor, "aio-pika")


def connection_url(broker: Broker, name: str | None = None, **query: str) -> str:
    """The broker URL naming the connection (``name``: aiormq sends it as connection_name, which
    rabbitmqctl shows; aio-pika < 10 ignores ``client_properties`` next to a URL)."""
    name = name or f"otel-aiopika-test-{uuid.uuid4().hex[:8]}"
    return str(URL(broker.url).update_query(name=name, **query))


@pytest_asyncio.fixture
async def connect(rabbitmq: Broker) -> AsyncIterator[Connect]:
    """``await connect(robust=..., name=...)`` opens a named connection; all are closed after the test."""
    opened: list[AbstractConnection] = []

    async def open_connection(
        robust: bool = False, name: str | None = None, **query: str
    ) -> AbstractConnection:
        factory = aio_pika.connect_robust if robust else aio_pika.connect
        connection = await factory(connection_url(rabbitmq, name, **query))
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        with contextlib.suppress(Exception):  # already dropped by a fault test
            await asyncio.wait_for(connection.close(), 10)


@pytest.fixture(params=["plain", "robust"])
def robust(request: pytest.FixtureRequest) -> bool:
    """Run the test on a plain and on a robust connection."""
    return bool(request.param == "robust")


@pytest_asyncio.fixture
async def connection(connect: Connect, robust: bool) -> AbstractConnection:
    """A plain or a robust connection (the test runs on both), closed after the test."""
    return await connect(robust=robust)


@pytest_asyncio.fixture
async def plain_connection(connect: Connect) -> AbstractConnection:
    """A plain connection, closed after the test."""
    return await connect()


@pytest_asyncio.fixture
async def channel(connection: AbstractConnection) -> AbstractChannel:
    """A channel (publisher confirms on, aio-pika's default) on a plain or robust connection."""
    return await connection.channel()


@pytest_asyncio.fixture
async def queue(channel: AbstractChannel, unique: Callable[[str], str]) -> AbstractQueue:
    """An exclusive queue on ``channel``."""
    return await channel.declare_queue(unique("q"), exclusive=True)


async def wait_for(
    otel: Recorder,
    predicate: Callable[[list[ReadableSpan]], bool],
    timeout: float = 15.0,
) -> list[ReadableSpan]:
    """Poll (yielding to the event loop) until ``predicate(spans)`` holds; the spans."""
    deadline = time.monotonic() + timeout
    while True:
        spans = otel.spans()
        if predicate(spans) or time.monotonic() > deadline:
            return spans
        await asyncio.sleep(0.01)


async def wait_for_count(
    otel: Recorder, name: str, count: int, timeout: float = 15.0
) -> list[ReadableSpan]:
    """Poll until at least ``count`` spans called ``name`` ended; those spans."""
    await wait_for(otel, lambda spans: sum(s.name == name for s in spans) >= count, timeout)
    return otel.named(name)


def check_error_span(span: ReadableSpan, error_type: str) -> None:
    """``span`` ended ERROR with ``error_type``, the exception recorded as its only event."""
    summary = span_summary(span)
    assert summary["status"] == "ERROR", summary
    assert summary["attributes"]["error.type"] == error_type, summary
    assert summary["events"] == ["exception"], summary
