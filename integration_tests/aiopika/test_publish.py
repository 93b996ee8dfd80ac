"""aio-pika's own publish cases: a Message published twice or again after it was received, the
broker's returns, a closed channel, channels without confirms (the shared publish behaviour is
in integration_tests/contract)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from broker_harness import Recorder, Traceparent, span_summary
from integration_tests.aiopika.conftest import check_error_span

pytestmark = pytest.mark.usefixtures("instrumented")


@pytest.mark.asyncio
async def test_a_message_published_twice_gets_the_context_of_each_publish(
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Publishing one Message object twice sends each copy with its own publish span's context; the Message never holds a traceparent."""
    message = aio_pika.Message(b"again")
    await channel.default_exchange.publish(message, routing_key=queue.name)
    await channel.default_exchange.publish(message, routing_key=queue.name)
    assert "traceparent" not in message.headers
    first, second = otel.spans()
    got = [await queue.get(timeout=10, no_ack=True) for _ in range(2)]
    assert [Traceparent.in_headers(m.headers) for m in got if m is not None] == [
        Traceparent.of(first),
        Traceparent.of(second),
    ]


@pytest.mark.asyncio
async def test_a_received_message_can_be_published_again(
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
    unique: Callable[[str], str],
) -> None:
    """An IncomingMessage (locked once acked) published again goes out with the new publish's context, its own headers untouched."""
    await channel.default_exchange.publish(
        aio_pika.Message(b"fwd", headers={"k": "v"}), routing_key=queue.name
    )
    incoming = await queue.get(timeout=10)
    assert incoming is not None
    await incoming.ack()
    original = dict(incoming.headers)
    target = await channel.declare_queue(unique("q2"), exclusive=True)
    await channel.default_exchange.publish(incoming, routing_key=target.name)
    assert dict(incoming.headers) == original
    republish = otel.spans()[-1]
    forwarded = await target.get(timeout=10, no_ack=True)
    assert forwarded is not None
    assert forwarded.body == b"fwd"
    assert Traceparent.in_headers(forwarded.headers) == Traceparent.of(republish)


@pytest.mark.asyncio
async def test_unroutable_mandatory_publish_returned_as_the_result_is_an_error(
    otel: Recorder,
    channel: AbstractChannel,
    unique: Callable[[str], str],
) -> None:
    """A mandatory publish the broker cannot route, returned as publish()'s result (on_return_raises=False, the default), ends ERROR with error.type unroutable and is counted as sent with that error.type."""
    exchange = await channel.declare_exchange(unique("x"), "direct", auto_delete=True)
    result = await exchange.publish(aio_pika.Message(b"lost"), "nowhere", mandatory=True)
    assert isinstance(result, aiormq.abc.DeliveredMessage)
    (span,) = otel.spans()
    summary = span_summary(span)
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"] == "unroutable"
    assert span.status.description is not None
    assert "NO_ROUTE" in span.status.description
    ((attributes, count),) = otel.points("messaging.client.sent.messages")
    assert count == 1
    assert attributes["error.type"] == "unroutable"
    assert attributes["messaging.destination.name"] == f"{exchange.name}:nowhere"


@pytest.mark.asyncio
async def test_unroutable_publish_raising_publish_error_is_an_error(
    otel: Recorder,
    connection: AbstractConnection,
    robust: bool,
    unique: Callable[[str], str],
) -> None:
    """With on_return_raises=True the returned message raises PublishError, which reaches the caller unchanged; the span ends ERROR with error.type unroutable."""
    channel = await connection.channel(on_return_raises=True)
    exchange = await channel.declare_exchange(unique("x"), "direct", auto_delete=True)
    with pytest.raises(aiormq.exceptions.PublishError) as raised:
        await exchange.publish(aio_pika.Message(b"lost"), "nowhere", mandatory=True)
    assert type(raised.value) is aiormq.exceptions.PublishError
    (span,) = otel.spans()
    check_error_span(span, "unroutable")


@pytest.mark.asyncio
async def test_publish_failing_in_the_client_records_the_exception(
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A publish aio-pika refuses (the channel is closed) ends ERROR with the exception's type, and that very exception reaches the caller."""
    exchange = channel.default_exchange
    await channel.close()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError) as raised:
        await exchange.publish(aio_pika.Message(b"x"), queue.name)
    (span,) = otel.spans()
    summary = span_summary(span)
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"] == "aiormq.exceptions.ChannelInvalidStateError"
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.message"] == str(raised.value)


@pytest.mark.asyncio
async def test_publish_without_publisher_confirms_makes_one_span(
    otel: Recorder,
    connection: AbstractConnection,
    robust: bool,
    unique: Callable[[str], str],
) -> None:
    """On a channel without publisher confirms a publish still makes one PRODUCER span whose context the message carries."""
    channel = await connection.channel(publisher_confirms=False)
    queue = await channel.declare_queue(unique("q"), exclusive=True)
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    (span,) = otel.spans()
    assert span_summary(span)["status"] == "UNSET"
    received = await queue.get(timeout=10, no_ack=True)
    assert received is not None
    assert Traceparent.in_headers(received.headers) == Traceparent.of(span)


@pytest.mark.asyncio
async def test_unroutable_publish_without_confirms_has_an_ok_span(
    otel: Recorder,
    plain_connection: AbstractConnection,
    unique: Callable[[str], str],
) -> None:
    """Without publisher confirms nothing tells the client a mandatory message was returned (aiormq drops the return), so the span ends OK: the documented limit."""
    channel = await plain_connection.channel(publisher_confirms=False)
    exchange = await channel.declare_exchange(unique("x"), "direct", auto_delete=True)
    assert await exchange.publish(aio_pika.Message(b"lost"), "nowhere", mandatory=True) is None
    await asyncio.sleep(0.3)
    (span,) = otel.spans()
    assert span_summary(span)["status"] == "UNSET"
