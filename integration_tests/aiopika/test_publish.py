"""Publish spans: one per Exchange.publish, the context in a copy, and what the broker answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from broker_harness import Broker, Recorder, span_summary
from integration_tests.aiopika.conftest import Connect, base_attributes, sent_under, traceparent_of
from otel_aiopika import AioPikaInstrumentor


@pytest.mark.asyncio
async def test_default_exchange_publish_makes_one_span_and_leaves_the_message_alone(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """channel.default_exchange.publish gives exactly one PRODUCER span; the caller's Message and its headers dict stay unchanged and the broker gets a copy carrying the span's context."""
    headers: dict[str, aio_pika.abc.HeadersType] = {"x-app": "shop"}  # type: ignore[dict-item]
    message = aio_pika.Message(b"order", headers=headers, message_id="m-1", correlation_id="c-1")
    before = message.headers
    await channel.default_exchange.publish(message, routing_key=queue.name)

    (span,) = otel.spans()
    assert span_summary(span) == {
        "name": "publish amq.default",
        "kind": "PRODUCER",
        "parent": None,
        "links": [],
        "status": "UNSET",
        "attributes": {
            **base_attributes(rabbitmq, "publish", queue.name),
            "messaging.rabbitmq.destination.routing_key": queue.name,
            "messaging.message.id": "m-1",
            "messaging.message.conversation_id": "c-1",
            "messaging.message.body.size": 5,
        },
        "events": [],
    }
    assert message.headers is before
    assert dict(message.headers) == {"x-app": "shop"}
    assert headers == {"x-app": "shop"}
    received = await queue.get(timeout=10, no_ack=True)
    assert received is not None
    assert received.body == b"order"
    assert received.headers["x-app"] in ("shop", b"shop")
    assert sent_under(received.headers) == traceparent_of(span)


@pytest.mark.asyncio
async def test_named_exchange_publish_is_a_child_of_the_current_span(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    channel: AbstractChannel,
    unique: Callable[[str], str],
) -> None:
    """A publish to a named exchange inside a span is its child, named after the exchange, with destination exchange:routing_key."""
    exchange = await channel.declare_exchange(unique("x"), "topic", auto_delete=True)
    queue = await channel.declare_queue(unique("q"), exclusive=True)
    await queue.bind(exchange, "order.*")
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("checkout"):
        await exchange.publish(aio_pika.Message(b"{}"), "order.created")
    spans = otel.spans()
    publish = next(s for s in spans if s.name != "checkout")
    summary = span_summary(publish, spans)
    assert summary["name"] == f"publish {exchange.name}"
    assert summary["parent"] == "checkout"
    assert summary["attributes"] == {
        **base_attributes(rabbitmq, "publish", f"{exchange.name}:order.created"),
        "messaging.rabbitmq.destination.routing_key": "order.created",
        "messaging.message.body.size": 2,
    }
    received = await queue.get(timeout=10, no_ack=True)
    assert received is not None
    assert sent_under(received.headers) == traceparent_of(publish)


@pytest.mark.asyncio
async def test_a_message_published_twice_gets_the_context_of_each_publish(
    instrumented: AioPikaInstrumentor,
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
    assert [sent_under(m.headers) for m in got if m is not None] == [
        traceparent_of(first),
        traceparent_of(second),
    ]


@pytest.mark.asyncio
async def test_a_received_message_can_be_published_again(
    instrumented: AioPikaInstrumentor,
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
    assert sent_under(forwarded.headers) == traceparent_of(republish)


@pytest.mark.asyncio
async def test_broker_nack_marks_the_publish_span_and_reaches_the_caller(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    unique: Callable[[str], str],
) -> None:
    """A publish the broker nacks (a full queue that rejects publishes) ends ERROR with error.type broker_nack, and aio-pika's DeliveryError reaches the caller as it is."""
    queue = await channel.declare_queue(
        unique("full"),
        exclusive=True,
        arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    await channel.default_exchange.publish(aio_pika.Message(b"1"), routing_key=queue.name)
    with pytest.raises(aiormq.exceptions.DeliveryError) as raised:
        await channel.default_exchange.publish(aio_pika.Message(b"2"), routing_key=queue.name)
    assert type(raised.value) is aiormq.exceptions.DeliveryError
    assert isinstance(raised.value.frame, aiormq.spec.Basic.Nack)
    ok, nacked = otel.spans()
    assert span_summary(ok)["status"] == "UNSET"
    summary = span_summary(nacked)
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"] == "broker_nack"
    assert summary["events"] == ["exception"]
    assert nacked.events[0].attributes is not None
    assert nacked.events[0].attributes["exception.type"].endswith("DeliveryError")


@pytest.mark.asyncio
async def test_unroutable_mandatory_publish_returned_as_the_result_is_an_error(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    unique: Callable[[str], str],
) -> None:
    """A mandatory publish the broker cannot route, returned as publish()'s result (on_return_raises=False, the default), ends ERROR with error.type unroutable."""
    exchange = await channel.declare_exchange(unique("x"), "direct", auto_delete=True)
    result = await exchange.publish(aio_pika.Message(b"lost"), "nowhere", mandatory=True)
    assert isinstance(result, aiormq.abc.DeliveredMessage)
    (span,) = otel.spans()
    summary = span_summary(span)
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"] == "unroutable"
    assert span.status.description is not None
    assert "NO_ROUTE" in span.status.description


@pytest.mark.asyncio
async def test_unroutable_publish_raising_publish_error_is_an_error(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    connect: Connect,
    robust: bool,
    unique: Callable[[str], str],
) -> None:
    """With on_return_raises=True the returned message raises PublishError, which reaches the caller unchanged; the span ends ERROR with error.type unroutable."""
    connection = await connect(robust=robust)
    channel = await connection.channel(on_return_raises=True)
    exchange = await channel.declare_exchange(unique("x"), "direct", auto_delete=True)
    with pytest.raises(aiormq.exceptions.PublishError) as raised:
        await exchange.publish(aio_pika.Message(b"lost"), "nowhere", mandatory=True)
    assert type(raised.value) is aiormq.exceptions.PublishError
    (span,) = otel.spans()
    summary = span_summary(span)
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"] == "unroutable"
    assert summary["events"] == ["exception"]


@pytest.mark.asyncio
async def test_publish_failing_in_the_client_records_the_exception(
    instrumented: AioPikaInstrumentor,
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
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    connect: Connect,
    robust: bool,
    unique: Callable[[str], str],
) -> None:
    """On a channel without publisher confirms a publish still makes one PRODUCER span whose context the message carries."""
    connection = await connect(robust=robust)
    channel = await connection.channel(publisher_confirms=False)
    queue = await channel.declare_queue(unique("q"), exclusive=True)
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    (span,) = otel.spans()
    assert span_summary(span)["status"] == "UNSET"
    received = await queue.get(timeout=10, no_ack=True)
    assert received is not None
    assert sent_under(received.headers) == traceparent_of(span)


@pytest.mark.asyncio
async def test_unroutable_publish_without_confirms_has_an_ok_span(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    connect: Connect,
    unique: Callable[[str], str],
) -> None:
    """Without publisher confirms nothing tells the client a mandatory message was returned (aiormq drops the return), so the span ends OK: the documented limit."""
    connection = await connect()
    channel = await connection.channel(publisher_confirms=False)
    exchange = await channel.declare_exchange(unique("x"), "direct", auto_delete=True)
    assert await exchange.publish(aio_pika.Message(b"lost"), "nowhere", mandatory=True) is None
    await asyncio.sleep(0.3)
    (span,) = otel.spans()
    assert span_summary(span)["status"] == "UNSET"
