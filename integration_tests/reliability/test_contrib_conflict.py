"""Our plugin next to the opentelemetry-python-contrib package for the same library.

Both may end up active in one process (``opentelemetry-bootstrap`` installs the contrib package,
``opentelemetry-instrument`` loads every installed instrumentor, in no fixed order). Whichever
is instrumented first, a warning must name the conflict and no message may get two publish
spans (nor two consumer spans): our plugin turns the contrib instrumentor off while it is
instrumented (see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingConnection

from broker_harness import Broker, Recorder
from integration_tests.reliability.conftest import Instrument, ack_one, connection_name

CONTRIB = {
    "pika": ("opentelemetry.instrumentation.pika", "PikaInstrumentor"),
    "aiopika": ("opentelemetry.instrumentation.aio_pika", "AioPikaInstrumentor"),
}
DISTRIBUTIONS = {
    "pika": ("otel-pika", "opentelemetry-instrumentation-pika"),
    "aiopika": ("otel-aiopika", "opentelemetry-instrumentation-aio-pika"),
}


@pytest.fixture
def contrib(request: pytest.FixtureRequest, otel: Recorder) -> Iterator[Callable[[str], Any]]:
    """``contrib("pika")``: the contrib instrumentor (skips when it is not installed); after the
    test it is uninstrumented."""
    used: list[Any] = []

    def get(library: str) -> Any:
        module_name, class_name = CONTRIB[library]
        module = pytest.importorskip(module_name, reason=f"{module_name} is not installed")
        instrumentor = getattr(module, class_name)()
        used.append(instrumentor)
        return instrumentor

    yield get
    for instrumentor in used:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def instrument_both(first: str, theirs: Any, ours: Callable[[], Any], otel: Recorder) -> None:
    """Instrument with contrib's instrumentor ``theirs`` and with ours, ``first`` first."""
    providers = {"tracer_provider": otel.tracer_provider}
    if first == "contrib":
        theirs.instrument(**providers)
        ours()
    else:
        ours()
        theirs.instrument(**providers)


def conflict_warnings(caplog: pytest.LogCaptureFixture, library: str) -> list[str]:
    ours, theirs = DISTRIBUTIONS[library]
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and ours in r.getMessage() and theirs in r.getMessage()
    ]


@pytest.mark.parametrize("first", ["contrib", "ours"])
def test_pika_next_to_opentelemetry_instrumentation_pika(
    first: str,
    contrib: Callable[[str], Any],
    instrument_pika: Instrument,
    otel: Recorder,
    caplog: pytest.LogCaptureFixture,
    rabbitmq: Broker,
    unique: Callable[[str], str],
) -> None:
    """With opentelemetry-instrumentation-pika also instrumented (before or after ours), a warning names both and each message gets one publish and one process span, ours."""
    caplog.set_level(logging.WARNING)
    instrument_both(first, contrib("pika"), instrument_pika, otel)
    assert conflict_warnings(caplog, "pika") != []

    connection = BlockingConnection(pika.URLParameters(rabbitmq.url))
    try:
        channel = connection.channel()
        queue = unique("q")
        channel.queue_declare(queue, exclusive=True)
        headers = {"x-order": "17"}
        channel.basic_publish("", queue, b"order 17", pika.BasicProperties(headers=headers))
        assert headers == {"x-order": "17"}, "the caller's headers were changed"
        ack_one(channel, queue)
    finally:
        connection.close()
    names = sorted(s.name for s in otel.spans())
    assert names == sorted(["publish amq.default", f"process {queue}"])
    scopes = {s.instrumentation_scope.name for s in otel.spans() if s.instrumentation_scope}
    assert scopes == {"otel_pika"}


@pytest.mark.parametrize("first", ["contrib", "ours"])
def test_aiopika_next_to_opentelemetry_instrumentation_aio_pika(
    first: str,
    contrib: Callable[[str], Any],
    instrument_aiopika: Instrument,
    otel: Recorder,
    caplog: pytest.LogCaptureFixture,
    rabbitmq: Broker,
) -> None:
    """With opentelemetry-instrumentation-aio-pika also instrumented (before or after ours), a warning names both and each message gets one publish and one process span, ours."""
    import aio_pika
    from yarl import URL

    caplog.set_level(logging.WARNING)
    instrument_both(first, contrib("aiopika"), instrument_aiopika, otel)
    assert conflict_warnings(caplog, "aiopika") != []
    headers = {"x-order": "17"}

    async def run() -> str:
        url = str(URL(rabbitmq.url).update_query(name=connection_name()))
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True)
            got = asyncio.Event()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                await message.ack()
                got.set()

            await queue.consume(on_message)
            await channel.default_exchange.publish(
                aio_pika.Message(b"order 17", headers=headers), queue.name
            )
            await asyncio.wait_for(got.wait(), 10)
        finally:
            await connection.close()
        return "amq.gen"

    queue_label = asyncio.run(run())
    assert headers == {"x-order": "17"}, "the caller's headers were changed"
    names = sorted(s.name for s in otel.spans())
    assert names == sorted(["publish amq.default", f"process {queue_label}"])
    scopes = {s.instrumentation_scope.name for s in otel.spans() if s.instrumentation_scope}
    assert scopes == {"otel_aiopika"}
