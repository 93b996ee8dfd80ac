"""aio-pika's own consume cases: plain-function callbacks and the queue iterator's buffering
callback (the behaviour every path shares is in integration_tests/contract)."""

from __future__ import annotations

import warnings
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from opentelemetry import trace

from broker_harness import Recorder
from integration_tests.aiopika.conftest import (
    check_error_span,
    wait_for_count,
)

pytestmark = pytest.mark.usefixtures("instrumented")


@pytest.mark.asyncio
async def test_a_plain_function_callback_is_traced(
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
async def test_a_plain_function_callback_that_raises_ends_its_span_as_error(
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A plain callback's exception ends its process span ERROR with that exception recorded."""

    def handle(message: AbstractIncomingMessage) -> None:
        raise ValueError("bad order")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # aio-pika >= 9 deprecates these
        await queue.consume(handle, no_ack=True)
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    (process,) = await wait_for_count(otel, f"process {queue.name}", 1)
    check_error_span(process, "ValueError")


@pytest.mark.asyncio
async def test_queue_iterator_callback_is_not_a_consumer(
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
