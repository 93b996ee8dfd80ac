"""Settle spans: ack / nack / reject and the outcome of message.process(), per settle_spans."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from broker_harness import Broker, Recorder, span_summary
from integration_tests.aiopika.conftest import (
    Connect,
    Instrument,
    base_attributes,
    wait_for,
    wait_for_count,
)
from otel_aiopika import AioPikaInstrumentor
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
async def test_by_default_only_a_settle_that_loses_the_message_makes_a_span(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Without settle_spans, ack and requeueing nack make no span; reject() and nack(requeue=False) make ERROR spans (error.type rejected) under the process span, linked to the producer."""
    calls = iter(["ack", "nack", "reject", "nack-drop"])

    async def handle(message: AbstractIncomingMessage) -> None:
        call = next(calls)
        if call == "ack":
            await message.ack()
        elif call == "nack":
            await message.nack()  # requeue=True: the broker delivers it again
        elif call == "reject":
            await message.reject()  # aio-pika's default: requeue=False
        else:
            await message.nack(requeue=False)

    await deliver(channel, queue, handle, count=3)
    await wait_for_count(otel, f"process {queue.name}", 4)
    spans = await wait_for(
        otel,
        lambda s: sum(x.name in (f"reject {queue.name}", f"nack {queue.name}") for x in s) >= 2,
    )
    settles = [s for s in spans if s.name.split(" ")[0] in ("ack", "nack", "reject")]
    assert sorted(s.name for s in settles) == [f"nack {queue.name}", f"reject {queue.name}"]
    for span in settles:
        summary = span_summary(span, spans)
        operation = span.name.split(" ")[0]
        tag = summary["attributes"]["messaging.rabbitmq.message.delivery_tag"]
        assert summary == {
            "name": f"{operation} {queue.name}",
            "kind": "CLIENT",
            "parent": f"process {queue.name}",
            "links": ["publish amq.default"],
            "status": "ERROR",
            "attributes": {
                **base_attributes(rabbitmq, operation, queue.name),
                "messaging.rabbitmq.destination.routing_key": queue.name,
                "messaging.rabbitmq.message.delivery_tag": tag,
                "error.type": "rejected",
            },
            "events": [],
        }
        assert span.parent is not None
        process = next(s for s in spans if s.context and s.context.span_id == span.parent.span_id)
        assert process.attributes is not None
        assert process.attributes["messaging.rabbitmq.message.delivery_tag"] == tag


@pytest.mark.asyncio
async def test_settle_spans_gives_every_ack_a_span(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """With settle_spans=True an ack makes an OK span under the process span; a requeueing nack one too."""
    instrument(settle_spans=True)
    calls = iter(["nack", "ack"])

    async def handle(message: AbstractIncomingMessage) -> None:
        if next(calls) == "nack":
            await message.nack(requeue=True)
        else:
            await message.ack()

    await deliver(channel, queue, handle)
    spans = await wait_for(
        otel, lambda s: any(x.name == f"ack {queue.name}" for x in s), timeout=15
    )
    nack = span_summary(next(s for s in spans if s.name == f"nack {queue.name}"), spans)
    ack = span_summary(next(s for s in spans if s.name == f"ack {queue.name}"), spans)
    assert (nack["status"], ack["status"]) == ("UNSET", "UNSET")
    assert nack["parent"] == ack["parent"] == f"process {queue.name}"
    assert "error.type" not in ack["attributes"]


@pytest.mark.asyncio
async def test_process_context_acks_and_rejects_with_the_blocks_exception(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """`async with message.process()` acks on success; an exception inside it rejects the message: the reject span is ERROR (rejected) and records that exception."""
    instrument(settle_spans=True)

    class OutOfStock(Exception):
        pass

    outcomes = iter(["ok", "fail"])

    async def handle(message: AbstractIncomingMessage) -> None:
        async with message.process():
            if next(outcomes) == "fail":
                raise OutOfStock("sku 7")

    await deliver(channel, queue, handle, count=2)
    spans = await wait_for(otel, lambda s: any(x.name == f"reject {queue.name}" for x in s))
    ack = span_summary(next(s for s in spans if s.name == f"ack {queue.name}"), spans)
    assert ack["status"] == "UNSET"
    reject_span = next(s for s in spans if s.name == f"reject {queue.name}")
    reject = span_summary(reject_span, spans)
    assert reject["status"] == "ERROR"
    assert reject["attributes"]["error.type"] == "rejected"
    assert reject["events"] == ["exception"]
    assert reject_span.events[0].attributes is not None
    assert reject_span.events[0].attributes["exception.type"].endswith("OutOfStock")
    assert reject_span.events[0].attributes["exception.message"] == "sku 7"


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


@pytest.mark.asyncio
async def test_requeueing_failure_without_settle_spans_makes_no_settle_span(
    instrumented: AioPikaInstrumentor,
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


@pytest.mark.asyncio
async def test_a_message_settled_after_its_handler_stays_in_its_trace(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A message acked later, outside its handler, gets an ack span under its process span, linked to its producer."""
    instrument(settle_spans=True)
    kept: list[AbstractIncomingMessage] = []
    got = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        kept.append(message)
        got.set()

    await deliver(channel, queue, handle)
    await asyncio.wait_for(got.wait(), 15)
    await wait_for_count(otel, f"process {queue.name}", 1)
    await kept[0].ack()
    spans = otel.spans()
    ack = span_summary(next(s for s in spans if s.name == f"ack {queue.name}"), spans)
    assert ack["parent"] == f"process {queue.name}"
    assert ack["links"] == ["publish amq.default"]


@pytest.mark.asyncio
async def test_ack_multiple_settles_every_outstanding_delivery_in_one_span(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """ack(multiple=True) makes one span for the batch: messaging.batch.message_count and a link to each producer."""
    instrument(settle_spans=True)
    kept: list[AbstractIncomingMessage] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        kept.append(message)

    await deliver(channel, queue, handle, count=3)
    await wait_for_count(otel, f"process {queue.name}", 3)
    last = max(kept, key=lambda m: m.delivery_tag or 0)
    await last.ack(multiple=True)
    spans = otel.spans()
    (ack,) = [s for s in spans if s.name == f"ack {queue.name}"]
    summary = span_summary(ack, spans)
    assert summary["attributes"]["messaging.batch.message_count"] == 3
    assert summary["links"] == ["publish amq.default"] * 3
    assert deliveries_of(message_channel(last), create=False) is not None
    assert deliveries_of(message_channel(last), create=False).records == {}  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_delivery_records_are_freed_on_settle_and_with_the_channel(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    connect: Connect,
    unique: Callable[[str], str],
) -> None:
    """Manual-ack deliveries are remembered until settled, and whatever is unsettled is dropped when the channel closes."""
    connection = await connect()
    channel = await connection.channel()
    queue = await channel.declare_queue(unique("q"), exclusive=True)
    kept: list[AbstractIncomingMessage] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        kept.append(message)

    await deliver(channel, queue, handle, count=2)
    await wait_for_count(otel, f"process {queue.name}", 2)
    records = deliveries_of(message_channel(kept[0]), create=False)
    assert records is not None
    assert sorted(records.records) == sorted(m.delivery_tag for m in kept)
    await kept[0].ack()
    assert sorted(records.records) == [kept[1].delivery_tag]
    await channel.close()
    assert await_records_cleared(records)


def await_records_cleared(records: Any) -> bool:
    return records.records == {} and records.pulled == {}


@pytest.mark.asyncio
async def test_rejecting_a_message_delivered_before_instrumentation_is_not_silent(
    otel: Recorder,
    instrument: Instrument,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """A message got before instrument() and rejected after it still makes an ERROR reject span, named from what the message says."""
    await channel.default_exchange.publish(aio_pika.Message(b"old"), routing_key=queue.name)
    message = await queue.get(timeout=10)
    assert message is not None
    instrument()
    await message.reject()
    (span,) = otel.spans()
    summary = span_summary(span)
    assert summary["name"] == f"reject {queue.name}"
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"] == "rejected"
