"""kombu's instrumentor: instrument_connection() and its own option (the instrumentor's shared
behaviour is in integration_tests/contract)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kombu import Connection, Exchange, Producer, Queue

from broker_harness import Broker, Recorder
from integration_tests.contract.kombu_paths import patched_attributes
from integration_tests.kombu.conftest import Instrument, declare, fetch, open_connection
from otel_kombu import KombuInstrumentor


def publish_one(connection: Connection, entities: tuple[Exchange, Queue]) -> None:
    exchange, queue = entities
    declare(connection, queue)
    Producer(connection, exchange=exchange).publish({"n": 1}, routing_key="order.created")
    fetch(connection, queue)


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


def test_a_bad_skip_celery_messages_fails_at_instrument_time() -> None:
    """kombu's own option is checked as strictly as the shared ones: a wrong type is a
    TypeError, an unknown kind of Celery message a ValueError naming the kinds, and nothing is
    patched."""
    originals = patched_attributes()
    instrumentor = KombuInstrumentor()
    with pytest.raises(TypeError, match="skip_celery_messages"):
        instrumentor.instrument(skip_celery_messages=1)
    with pytest.raises(ValueError, match=r"skip_celery_messages.*accepted: tasks, control, events"):
        instrumentor.instrument(skip_celery_messages="yes")
    assert not instrumentor.is_instrumented_by_opentelemetry
    assert patched_attributes() == originals
