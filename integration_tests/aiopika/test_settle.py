"""aio-pika's own settle cases: message.process(requeue=True) and the per-channel delivery records
(the settle spans every path makes are in integration_tests/contract)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from broker_harness import Recorder, span_summary
from integration_tests.aiopika.conftest import (
    Instrument,
    wait_for,
    wait_for_count,
)
from otel_aiopika._state import deliveries_of, message_channel


async def deliver(
    channel: AbstractChannel,
    queue: AbstractQueue,
    handle: Callable[[AbstractIncomingMessage], Any],
    count: int = 1,
) -> None:
    """Publish ``count`` messages and consume them with ``handle``."""
    await queue.consume(handle)
    for number in range(count):
        await channel.default_exchange.publish(
            aio_pika.Message(f"m{number}".encode()), routing_key=queue.name
        )


@pytest.mark.asyncio
async def test_process_context_with_requeue_records_the_exception_on_the_settle_span(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """With process(requeue=True) the message goes back to the queue; with settle_spans the reject span is ERROR with the exception's type, without settle_spans there is none (the process span has the error)."""
    instrument(settle_spans=True)

    class Retry(Exception):
        pass

    attempts: list[bool] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=True):
            attempts.append(message.redelivered or False)
            if len(attempts) == 1:
                raise Retry("later")

    await deliver(channel, queue, handle)
    spans = await wait_for(otel, lambda s: any(x.name == f"ack {queue.name}" for x in s))
    reject = span_summary(next(s for s in spans if s.name == f"reject {queue.name}"), spans)
    assert reject["status"] == "ERROR"
    assert reject["attributes"]["error.type"].endswith("Retry")
    assert reject["events"] == ["exception"]
    processes = [span_summary(s, spans) for s in spans if s.name == f"process {queue.name}"]
    assert [p["status"] for p in processes] == ["ERROR", "UNSET"]
    assert attempts == [False, True]


@pytest.mark.usefixtures("instrumented")
@pytest.mark.asyncio
async def test_requeueing_failure_without_settle_spans_makes_no_settle_span(
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Without settle_spans a failed process(requeue=True) block makes no settle span: the message is not lost, and its process span is the ERROR."""
    attempts: list[int] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=True):
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("later")

    await deliver(channel, queue, handle)
    spans = await wait_for_count(otel, f"process {queue.name}", 2)
    assert sorted(span_summary(s)["status"] for s in spans) == ["ERROR", "UNSET"]
    assert [s.name for s in otel.spans() if s.name.startswith(("ack", "nack", "reject"))] == []


@pytest.mark.usefixtures("instrumented")
@pytest.mark.asyncio
async def test_delivery_records_are_freed_on_settle_and_with_the_channel(
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Manual-ack deliveries are remembered until settled (ack(multiple=True) settles all up to its tag), and whatever is unsettled is dropped when the channel closes."""
    kept: list[AbstractIncomingMessage] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        kept.append(message)

    await deliver(channel, queue, handle, count=4)
    await wait_for_count(otel, f"process {queue.name}", 4)
    kept.sort(key=lambda m: m.delivery_tag or 0)
    records = deliveries_of(message_channel(kept[0]), create=False)
    assert records is not None
    assert sorted(records.records) == [m.delivery_tag for m in kept]
    await kept[0].ack()
    assert sorted(records.records) == [m.delivery_tag for m in kept[1:]]
    await kept[2].ack(multiple=True)
    assert sorted(records.records) == [kept[3].delivery_tag]
    await channel.close()
    assert await_records_cleared(records)


def await_records_cleared(records: Any) -> bool:
    return records.records == {} and records.pulled == {}
