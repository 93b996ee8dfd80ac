"""The queue iterator: a receive span per message, current while the loop body runs, and nothing left after."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context

from broker_harness import Broker, Recorder, span_summary
from integration_tests.aiopika.conftest import Instrument, base_attributes, wait_for_count
from otel_aiopika import AioPikaInstrumentor


def current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


async def publish_orders(channel: AbstractChannel, queue: AbstractQueue, count: int) -> None:
    for number in range(count):
        await channel.default_exchange.publish(
            aio_pika.Message(f"order {number}".encode(), message_id=f"m-{number}"),
            routing_key=queue.name,
        )


@pytest.mark.asyncio
async def test_loop_body_runs_in_each_message_receive_span(
    instrument: Instrument,
    otel: Recorder,
    rabbitmq: Broker,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Each message of `async for` gets a CLIENT receive span, child of its publish; the body's spans and its `message.process()` ack are children of that span."""
    instrument(settle_spans=True)
    tracer = otel.tracer_provider.get_tracer("app")
    await publish_orders(channel, queue, 2)
    current: list[int] = []
    async with queue.iterator() as messages:
        async for message in messages:
            current.append(current_span_id())
            async with message.process():
                with tracer.start_as_current_span("handle"):
                    await asyncio.sleep(0)
            if len(current) == 2:
                break
    assert current_span_id() == 0
    spans = otel.spans()
    receives = [s for s in spans if s.name == f"receive {queue.name}"]
    publishes = [s for s in spans if s.name == "publish amq.default"]
    assert [s.context.span_id for s in receives if s.context] == current
    for number, (receive, publish) in enumerate(zip(receives, publishes, strict=True)):
        summary = span_summary(receive, spans)
        tag = summary["attributes"]["messaging.rabbitmq.message.delivery_tag"]
        assert summary == {
            "name": f"receive {queue.name}",
            "kind": "CLIENT",
            "parent": "publish amq.default",
            "links": ["publish amq.default"],
            "status": "UNSET",
            "attributes": {
                **base_attributes(rabbitmq, "receive", queue.name),
                "messaging.rabbitmq.destination.routing_key": queue.name,
                "messaging.rabbitmq.message.delivery_tag": tag,
                "messaging.message.id": f"m-{number}",
                "messaging.message.body.size": 7,
            },
            "events": [],
        }
        assert receive.parent is not None
        assert publish.context is not None
        assert receive.parent.span_id == publish.context.span_id
    for name in ("handle", f"ack {queue.name}"):
        children = [s for s in spans if s.name == name]
        assert [s.parent.span_id for s in children if s.parent] == current


@pytest.mark.asyncio
async def test_the_receive_span_covers_the_body_and_ends_at_the_next_message(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A message's receive span is still open while its body runs and has ended when the loop asks for the next message."""
    await publish_orders(channel, queue, 2)
    ended_during_body: list[int] = []
    async with queue.iterator(no_ack=True) as messages:
        async for _message in messages:
            ended_during_body.append(len(otel.named(f"receive {queue.name}")))
            await asyncio.sleep(0.01)
            if len(ended_during_body) == 2:
                break
    assert ended_during_body == [0, 1]
    first, second = otel.named(f"receive {queue.name}")
    assert first.end_time is not None
    assert second.start_time is not None
    assert first.end_time <= second.start_time


@pytest.mark.asyncio
async def test_nothing_is_current_after_the_loop_breaks_or_the_iterator_closes(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """After `break` out of `async with queue.iterator()` the caller's own span is current again and the last receive span has ended."""
    tracer = otel.tracer_provider.get_tracer("app")
    await publish_orders(channel, queue, 1)
    with tracer.start_as_current_span("worker") as worker:
        async with queue.iterator() as messages:
            async for message in messages:
                assert current_span_id() != worker.get_span_context().span_id
                await message.ack()
                break
        assert trace.get_current_span() is worker
        after = tracer.start_span("later work")
        after.end()
    (receive,) = otel.named(f"receive {queue.name}")
    spans = otel.spans()
    assert span_summary(receive, spans)["parent"] == "worker"
    assert span_summary(receive, spans)["links"] == ["publish amq.default"]
    assert span_summary(otel.named("later work")[0], spans)["parent"] == "worker"


@pytest.mark.asyncio
async def test_nothing_is_current_after_the_loop_ends_by_timeout(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """When the iterator's timeout ends the loop, the last message's span has ended and nothing of it is current."""
    await publish_orders(channel, queue, 1)
    inside: list[int] = []

    async def loop() -> None:
        async with queue.iterator(timeout=1, no_ack=True) as messages:
            async for _message in messages:
                await asyncio.sleep(0)
                inside.append(current_span_id())

    with pytest.raises(asyncio.TimeoutError):
        await loop()
    assert len(inside) == 1
    assert inside != [0]
    assert current_span_id() == 0
    await wait_for_count(otel, f"receive {queue.name}", 1)


@pytest.mark.asyncio
async def test_an_exception_in_the_body_ends_the_span_as_error_and_restores_the_context(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """An exception leaving the loop body ends the receive span ERROR, message.process() rejects the message (an ERROR reject span), and nothing stays current."""

    class Broken(Exception):
        pass

    await publish_orders(channel, queue, 1)

    async def loop() -> None:
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    raise Broken("bad order")

    with pytest.raises(Broken):
        await loop()
    assert current_span_id() == 0
    spans = otel.spans()
    receive = next(s for s in spans if s.name == f"receive {queue.name}")
    summary = span_summary(receive, spans)
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"].endswith("Broken")
    assert summary["events"] == ["exception"]
    reject = span_summary(next(s for s in spans if s.name == f"reject {queue.name}"), spans)
    assert reject["status"] == "ERROR"
    assert reject["parent"] == f"receive {queue.name}"
    assert reject["attributes"]["error.type"] == "rejected"


@pytest.mark.asyncio
async def test_iterator_messages_carry_baggage_into_the_body(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """The producer's baggage is current in the loop body and gone after it."""
    token = otel_context.attach(baggage.set_baggage("order.id", "o-9"))
    try:
        await publish_orders(channel, queue, 1)
    finally:
        otel_context.detach(token)
    seen: list[object] = []
    async with queue.iterator(no_ack=True) as messages:
        async for _message in messages:
            seen.append(baggage.get_baggage("order.id"))
            break
    assert seen == ["o-9"]
    assert baggage.get_baggage("order.id") is None


@pytest.mark.asyncio
async def test_iterating_in_a_task_keeps_other_tasks_clean(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
    unique: Callable[[str], str],
) -> None:
    """A consumer loop running in its own task never puts its message's context into another task, even when the iterator is closed from outside."""
    await publish_orders(channel, queue, 1)
    inside = asyncio.Event()
    release = asyncio.Event()
    seen_after_close: list[int] = []
    after_loop: list[int] = []
    iterator = queue.iterator(no_ack=True)

    async def consume() -> None:
        async with iterator as messages:
            async for _message in messages:
                inside.set()
                await release.wait()
                break
        after_loop.append(current_span_id())

    task = asyncio.create_task(consume())
    await asyncio.wait_for(inside.wait(), 15)
    assert current_span_id() == 0
    await iterator.close()  # from this task, while the loop body waits
    seen_after_close.append(current_span_id())
    release.set()
    await asyncio.wait_for(task, 15)
    assert seen_after_close == [0]
    assert after_loop == [0]
    await wait_for_count(otel, f"receive {queue.name}", 1)
    assert current_span_id() == 0


@pytest.mark.asyncio
async def test_plain_async_for_over_the_queue_is_traced(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """`async for message in queue` (the iterator without `async with`) makes the same receive spans."""
    await publish_orders(channel, queue, 2)
    ids: list[Any] = []
    iterator = queue.iterator()
    async for message in iterator:
        ids.append(current_span_id())
        await message.ack()
        if len(ids) == 2:
            break
    await iterator.close()
    assert current_span_id() == 0
    receives = otel.named(f"receive {queue.name}")
    assert [s.context.span_id for s in receives if s.context] == ids
