"""The instrumentor itself: instrument twice, uninstrument, one connection only, options, entry point."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import pytest
import wrapt
from kombu import Connection, Exchange, Producer, Queue
from opentelemetry.instrumentation.utils import suppress_instrumentation

from broker_harness import Broker, Recorder
from integration_tests.kombu.conftest import Instrument, declare, fetch, open_connection
from otel_kombu import KombuInstrumentor
from otel_kombu.instrumentor import PATCHES


def patched_attributes() -> dict[tuple[str, str, str], Any]:
    """Every attribute in the patch list, as found in its class's own ``__dict__``."""
    found = {}
    for patch in PATCHES:
        owner = getattr(importlib.import_module(patch.module), patch.owner)
        found[(patch.module, patch.owner, patch.attribute)] = owner.__dict__[patch.attribute]
    return found


def publish_one(connection: Connection, entities: tuple[Exchange, Queue]) -> None:
    exchange, queue = entities
    declare(connection, queue)
    Producer(connection, exchange=exchange).publish({"n": 1}, routing_key="order.created")
    fetch(connection, queue)


def test_instrument_twice_gives_one_span(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """A second instrument() is a no-op: still one span per publish, not two."""
    instrument()
    instrument()
    publish_one(connection, entities)
    assert len(otel.named(f"publish {entities[0].name}")) == 1


def test_uninstrument_restores_every_original(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """uninstrument() puts back the very objects it replaced, and nothing is recorded afterwards."""
    originals = patched_attributes()
    assert not any(isinstance(v, wrapt.ObjectProxy) for v in originals.values())
    instrumentor = instrument()
    wrapped = patched_attributes()
    assert all(isinstance(v, wrapt.FunctionWrapper) for v in wrapped.values())
    instrumentor.uninstrument()
    restored = patched_attributes()
    assert all(restored[key] is originals[key] for key in originals)
    publish_one(connection, entities)
    assert otel.spans() == []


def test_instrument_connection_records_that_connection_only(
    pin: Callable[..., None],
    otel: Recorder,
    rabbitmq: Broker,
    connection: Connection,
    unique: Callable[[str], str],
) -> None:
    """instrument_connection() records its connection with its own options; others stay untraced; undo restores all."""
    originals = patched_attributes()
    other = open_connection(rabbitmq.url)
    try:
        pin(connection, settle_spans=True)
        mine = Exchange(unique("mine"), type="direct", durable=False, auto_delete=True)
        theirs = Exchange(unique("theirs"), type="direct", durable=False, auto_delete=True)
        publish_one(
            connection,
            (mine, Queue(unique("q1"), mine, routing_key="order.created", auto_delete=True)),
        )
        publish_one(
            other,
            (theirs, Queue(unique("q2"), theirs, routing_key="order.created", auto_delete=True)),
        )
        assert [s.name for s in otel.spans()] == [f"publish {mine.name}"]
    finally:
        other.release()
    KombuInstrumentor.uninstrument_connection(connection)
    restored = patched_attributes()
    assert all(restored[key] is originals[key] for key in originals)


def test_instrument_connection_wins_over_global_options(
    instrument: Instrument,
    pin: Callable[..., None],
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """A connection instrumented on its own uses its own providers even when instrument() is active too."""
    mine = Recorder()
    try:
        instrument()
        pin(connection, tracer_provider=mine.tracer_provider, meter_provider=mine.meter_provider)
        publish_one(connection, entities)
        assert otel.spans() == []
        assert [s.name for s in mine.spans()] == [f"publish {entities[0].name}"]
    finally:
        mine.shutdown()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"consumer_contex": "link"}, TypeError),
        ({"skip_celery_messages": "yes"}, TypeError),
        ({"consumer_context": "child"}, ValueError),
    ],
)
def test_bad_options_fail_at_instrument_time(
    options: dict[str, Any], error: type[Exception]
) -> None:
    """A misspelt keyword or a wrong value is an error when instrumenting, and nothing is patched."""
    originals = patched_attributes()
    instrumentor = KombuInstrumentor()
    with pytest.raises(error):
        instrumentor.instrument(**options)
    assert not instrumentor.is_instrumented_by_opentelemetry
    assert patched_attributes() == originals


def test_entry_point_loads_the_instrumentor() -> None:
    """The opentelemetry_instrumentor entry point otel_kombu names KombuInstrumentor (opentelemetry-instrument uses it)."""
    (point,) = entry_points(group="opentelemetry_instrumentor", name="otel_kombu")
    assert point.load() is KombuInstrumentor


def test_suppressed_publish_still_injects_context(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """Under suppress_instrumentation() no span is recorded, but the current context still rides along."""
    exchange, queue = entities
    declare(connection, queue)
    tracer = otel.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request, suppress_instrumentation():
        Producer(connection, exchange=exchange).publish({"n": 1}, routing_key="order.created")
    message = fetch(connection, queue)
    assert [s.name for s in otel.spans()] == ["request"]
    assert (
        message.headers["traceparent"].split("-")[2] == f"{request.get_span_context().span_id:016x}"
    )
