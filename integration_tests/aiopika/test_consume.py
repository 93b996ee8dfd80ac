"""Queue.consume callbacks: a process span per message, the callback running in its context."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context

from broker_harness import Broker, Recorder, span_summary
from integration_tests.aiopika.conftest import (
    Instrument,
    base_attributes,
    wait_for,
    wait_for_count,
)
from otel_aiopika import AioPikaInstrumentor


@pytest.mark.asyncio
async def test_callback_runs_inside_a_process_span_child_of_the_publish(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A consume callback gets a CONSUMER process span, child of (and linked to) the publish span; spans the callback makes are its children."""
    tracer = otel.tracer_provider.get_tracer("app")
    seen: list[Any] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        seen.append(trace.get_current_span().get_span_context())
        with tracer.start_as_current_span("handle order"):
            await asyncio.sleep(0)
        await message.ack()

    await queue.consume(handle)
    await channel.default_exchange.publish(
        aio_pika.Message(b"order", message_id="m-7", correlation_id="c-7"),
        routing_key=queue.name,
    )
    spans = await wait_for_count(otel, f"process {queue.name}", 1)
    spans = await wait_for(otel, lambda s: any(x.name == "handle order" for x in s))
    process = next(s for s in spans if s.name == f"process {queue.name}")
    summary = span_summary(process, spans)
    tag = summary["attributes"]["messaging.rabbitmq.message.delivery_tag"]
    assert summary == {
        "name": f"process {queue.name}",
        "kind": "CONSUMER",
        "parent": "publish amq.default",
        "links": ["publish amq.default"],
        "status": "UNSET",
        "attributes": {
            **base_attributes(rabbitmq, "process", queue.name),
            "messaging.rabbitmq.destination.routing_key": queue.name,
            "messaging.rabbitmq.message.delivery_tag": tag,
            "messaging.message.id": "m-7",
            "messaging.message.conversation_id": "c-7",
            "messaging.message.body.size": 5,
        },
        "events": [],
    }
    assert isinstance(tag, int)
    handler_span = next(s for s in spans if s.name == "handle order")
    assert span_summary(handler_span, spans)["parent"] == f"process {queue.name}"
    assert process.context is not None
    assert seen == [process.context]


@pytest.mark.asyncio
async def test_a_failing_callback_ends_its_span_as_error(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A callback that raises ends its process span ERROR with the exception recorded and error.type its qualified name."""

    class OrderRejected(Exception):
        pass

    async def handle(message: AbstractIncomingMessage) -> None:
        await message.ack()
        raise OrderRejected("no stock")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # aio-pika logs the callback's exception
        await queue.consume(handle)
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
        (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    summary = span_summary(process)
    assert summary["status"] == "ERROR"
    assert summary["events"] == ["exception"]
    assert summary["attributes"]["error.type"].endswith("OrderRejected")
    assert process.status.description == "OrderRejected: no stock"


@pytest.mark.asyncio
async def test_link_mode_starts_a_new_trace_linked_to_the_producer(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """With consumer_context="link" the process span starts its own trace and only links to the publish span."""
    instrument(consumer_context="link")
    done = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        await message.ack()
        done.set()

    await queue.consume(handle)
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    await asyncio.wait_for(done.wait(), 15)
    (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    publish = otel.named("publish amq.default")[0]
    assert process.parent is None
    assert process.context is not None
    assert publish.context is not None
    assert process.context.trace_id != publish.context.trace_id
    assert [link.context.span_id for link in process.links] == [publish.context.span_id]


@pytest.mark.asyncio
async def test_baggage_travels_and_is_current_in_the_handler(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
    unique: Callable[[str], str],
) -> None:
    """Baggage set by the producer is current in the handler, copied onto spans by baggage_attributes, and re-injected on the handler's own publish."""
    instrument(baggage_attributes=("order.id",))
    onward = await channel.declare_queue(unique("onward"), exclusive=True)
    seen: list[object] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        seen.append(baggage.get_baggage("order.id"))
        await channel.default_exchange.publish(aio_pika.Message(b"next"), routing_key=onward.name)
        await message.ack()

    await queue.consume(handle)
    token = otel_context.attach(baggage.set_baggage("order.id", "o-42"))
    try:
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    finally:
        otel_context.detach(token)
    (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    assert seen == ["o-42"]
    publishes = await wait_for_count(otel, "publish amq.default", 2)
    assert [p.attributes["order.id"] for p in publishes if p.attributes] == ["o-42", "o-42"]
    assert process.attributes is not None
    assert process.attributes["order.id"] == "o-42"
    forwarded = await onward.get(timeout=10, no_ack=True)
    assert forwarded is not None
    assert "order.id=o-42" in str(forwarded.headers["baggage"])


@pytest.mark.asyncio
async def test_a_plain_function_callback_is_traced(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A plain (non-async) callback, which aio-pika still accepts, runs inside its process span too."""
    seen: list[Any] = []

    def handle(message: AbstractIncomingMessage) -> None:
        seen.append(trace.get_current_span().get_span_context())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # aio-pika >= 9 deprecates these
        await queue.consume(handle, no_ack=True)
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    assert process.context is not None
    assert seen == [process.context]


@pytest.mark.asyncio
async def test_nothing_of_the_message_stays_current_after_the_callback(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Work the consumer's task does after a callback returns (here: the next callback's start) sees no span of the previous message."""
    parents: list[Any] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        parents.append(trace.get_current_span().get_span_context().span_id)

    await queue.consume(handle, no_ack=True)
    for _ in range(3):
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    spans = await wait_for_count(otel, f"process {queue.name}", 3)
    publishes = otel.named("publish amq.default")
    assert {s.parent.span_id for s in spans if s.parent} == {
        p.context.span_id for p in publishes if p.context
    }
    assert sorted(parents) == sorted(s.context.span_id for s in spans if s.context)
    assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.asyncio
async def test_queue_iterator_callback_is_not_a_consumer(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """The queue iterator's own buffering callback makes no process span: its messages get receive spans only."""
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    async with queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            break
    await wait_for_count(otel, f"receive {queue.name}", 1)
    assert otel.named(f"process {queue.name}") == []
