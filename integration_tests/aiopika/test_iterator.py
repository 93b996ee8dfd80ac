"""The queue iterator: nothing of a message stays current after the loop breaks, times out, runs
in another task or is closed from outside (the behaviour every path shares is in
integration_tests/contract)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from opentelemetry import trace

from broker_harness import Recorder, span_summary
from integration_tests.aiopika.conftest import wait_for_count

pytestmark = pytest.mark.usefixtures("instrumented")


def current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


async def publish_orders(channel: AbstractChannel, queue: AbstractQueue, count: int) -> None:
    for number in range(count):
        await channel.default_exchange.publish(
            aio_pika.Message(f"order {number}".encode(), message_id=f"m-{number}"),
            routing_key=queue.name,
        )


@pytest.mark.asyncio
async def test_nothing_is_current_after_the_loop_breaks_or_the_iterator_closes(
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
async def test_iterating_in_a_task_keeps_other_tasks_clean(
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
