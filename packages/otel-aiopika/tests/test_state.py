"""Broker-free checks of the plugin's bookkeeping: channel resolution, delivery records, the publish view."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from broker_harness import Recorder
from otel_aiopika import _state
from otel_aiopika._publish import with_headers
from otel_aiopika._settle import _arguments
from otel_aiopika.instrumentor import AioPikaInstrumentor, _telemetry
from otel_messaging_core import InstrumentationOptions


class FakeUnderlay:
    """Stands in for an aiormq channel: a connection URL and nothing else."""

    is_closed = False

    class connection:  # noqa: N801 - mirrors aiormq's attribute
        class url:  # noqa: N801
            host = "mq.internal"
            port = 5672


def incoming(channel: Any, tag: int, no_ack: bool = False) -> aio_pika.IncomingMessage:
    properties = spec.Basic.Properties(headers={"k": "v"}, delivery_mode=1)
    delivered = DeliveredMessage(
        delivery=spec.Basic.Deliver(
            consumer_tag="c", delivery_tag=tag, exchange="", routing_key="orders"
        ),
        header=ContentHeader(0, 2, properties),
        body=b"{}",
        channel=channel,
    )
    return aio_pika.IncomingMessage(delivered, no_ack=no_ack)


def test_resolve_caches_per_channel_until_instrumentation_changes(otel: Recorder) -> None:
    """A channel's telemetry is looked up once, and again only after (un)instrumentation changed."""
    channel = FakeUnderlay()
    instrumentor = AioPikaInstrumentor()
    assert _state.resolve(channel) is None
    instrumentor.instrument(tracer_provider=otel.tracer_provider)
    try:
        state = _state.resolve(channel)
        assert state is not None
        assert _state.resolve(channel) is state
        assert state.destinations.get("publish", "", "q").attributes["server.address"] == (
            "mq.internal"
        )
    finally:
        instrumentor.uninstrument()
    assert _state.resolve(channel) is None


def test_settle_records_are_taken_singly_up_to_a_tag_or_all() -> None:
    """take() removes one record, every record up to a tag (multiple), or all (multiple with tag 0)."""
    telemetry = _telemetry(InstrumentationOptions())
    channel = FakeUnderlay()
    for tag in (3, 1, 2, 5):
        _state.track(incoming(channel, tag), telemetry, None, None, manual_ack=True)
    deliveries = _state.deliveries_of(channel, create=False)
    assert deliveries is not None
    assert len(deliveries.take(2, multiple=False)) == 1
    assert deliveries.take(2, multiple=False) == []
    assert len(deliveries.take(3, multiple=True)) == 2
    assert sorted(deliveries.records) == [5]
    assert len(deliveries.take(0, multiple=True)) == 1
    assert deliveries.records == {}


def test_records_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound the oldest records go: a consumer that never settles cannot grow memory."""
    monkeypatch.setattr(_state, "MAX_TRACKED", 3)
    monkeypatch.setattr(_state, "MAX_PULLED", 2)
    telemetry = _telemetry(InstrumentationOptions())
    channel = FakeUnderlay()
    context: Any = object()
    for tag in range(1, 7):
        _state.track(incoming(channel, tag), telemetry, None, context, manual_ack=tag <= 4)
    deliveries = _state.deliveries_of(channel, create=False)
    assert deliveries is not None
    assert sorted(deliveries.records) == [2, 3, 4]
    assert sorted(deliveries.pulled) == [5, 6]
    deliveries.clear()
    assert (deliveries.records, deliveries.pulled) == ({}, {})


@pytest.mark.parametrize(
    ("operation", "args", "kwargs", "expected"),
    [
        ("ack", (), {}, (False, True)),
        ("ack", (True,), {}, (True, True)),
        ("reject", (), {}, (False, False)),
        ("reject", (), {"requeue": True}, (False, True)),
        ("nack", (), {}, (False, True)),
        ("nack", (True, False), {}, (True, False)),
        ("nack", (), {"requeue": False}, (False, False)),
    ],
)
def test_settle_arguments_follow_aio_pikas_defaults(
    operation: str, args: tuple[Any, ...], kwargs: dict[str, Any], expected: tuple[bool, bool]
) -> None:
    """(multiple, requeue) of a settle call, with aio-pika's defaults (reject does not requeue)."""
    assert _arguments(operation, args, kwargs) == expected


def test_the_message_sent_is_a_view_with_other_headers() -> None:
    """The published view has the caller's fields and body and the new headers; the caller's message is untouched."""
    headers = {"x-app": "shop"}
    message = aio_pika.Message(b"order", headers=headers, message_id="m-1", priority=4)
    sent = with_headers(message, {**headers, "traceparent": "00-ab-cd-01"})
    assert isinstance(sent, aio_pika.Message)
    assert (sent.body, sent.message_id, sent.priority) == (b"order", "m-1", 4)
    assert dict(sent.headers) == {"x-app": "shop", "traceparent": "00-ab-cd-01"}
    assert sent.properties.headers == {"x-app": "shop", "traceparent": "00-ab-cd-01"}
    assert sent.properties.message_id == "m-1"
    assert headers == {"x-app": "shop"}
    assert dict(message.headers) == {"x-app": "shop"}
    assert "traceparent" not in (message.properties.headers or {})
    assert repr(sent) == repr(message)


class ClosedUnderlay(FakeUnderlay):
    """A channel that says it is closed: aio-pika's publish raises before any I/O."""

    is_closed = True


def test_an_exchange_kept_across_uninstrument_publishes_as_aio_pikas_own(otel: Recorder) -> None:
    """uninstrument() restores long-lived exchange objects (``channel.default_exchange``): no
    span, and aio-pika's own publish, for an exchange that published while instrumented."""
    import asyncio

    from aiormq.exceptions import ChannelInvalidStateError

    exchange = aio_pika.Exchange(ClosedUnderlay(), "orders")  # type: ignore[arg-type]
    instrumentor = AioPikaInstrumentor()
    instrumentor.instrument(tracer_provider=otel.tracer_provider)
    try:
        with pytest.raises(ChannelInvalidStateError):
            asyncio.run(exchange.publish(aio_pika.Message(b"{}"), "q"))
    finally:
        instrumentor.uninstrument()
    assert "publish" not in vars(exchange)
    with pytest.raises(ChannelInvalidStateError):
        asyncio.run(exchange.publish(aio_pika.Message(b"{}"), "q"))
    assert [span.name for span in otel.spans()] == ["publish orders"]
