"""otel-aiopika with a trace not sampled upstream (issue 18), against the real broker: what its
messages carry and what their consumers get, and a fast path that breaks never reaching the
user's publish or callback."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from broker_harness import Recorder
from integration_tests.aiopika.conftest import Connect, Instrument
from integration_tests.conftest import Fault
from integration_tests.internal_faults import FAST_PATH_STEPS
from integration_tests.unsampled_cases import (
    ManualAck,
    NotSampledConsumer,
    QuietAck,
    check_carried,
    check_counted_without_spans,
    check_nothing_current,
    handler_view,
    handler_views,
    in_unsampled_trace,
)
from otel_aiopika import message_context
from otel_aiopika._state import deliveries_of, message_channel


async def unsampled_queue(
    connect: Connect, unique: Callable[[str], str], count: int = 2
) -> AbstractQueue:
    """A new queue holding ``count`` messages published inside the unsampled trace; the
    caller's message and headers are left as they were."""
    channel = await (await connect()).channel()
    queue: AbstractQueue = await channel.declare_queue(unique("q"), exclusive=True)
    headers = {"x-app": "shop"}
    with in_unsampled_trace():
        for n in range(count):
            message = aio_pika.Message(b"order-%d" % n, headers=headers)
            await channel.default_exchange.publish(message, queue.name)
            assert message.headers == {"x-app": "shop"}
    assert headers == {"x-app": "shop"}
    return queue


async def consume_no_ack(queue: AbstractQueue, *, plain: bool = False) -> list[tuple[Any, ...]]:
    """Two messages consumed with no_ack (by a plain-function callback when ``plain``): each
    one's body, traceparent and baggage headers, and handler_view() in its callback."""
    seen: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def record(message: AbstractIncomingMessage) -> None:
        headers = message.headers
        seen.put_nowait(
            (message.body, headers.get("traceparent"), headers.get("baggage"), handler_view())
        )

    async def on_message(message: AbstractIncomingMessage) -> None:
        record(message)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # aio-pika >= 9: plain callbacks
        tag = await queue.consume(record if plain else on_message, no_ack=True)
    try:
        return [await asyncio.wait_for(seen.get(), 15) for _ in range(2)]
    finally:
        await queue.cancel(tag)


def note_views(message: AbstractIncomingMessage) -> tuple[Any, ...]:
    """A message's ``traceparent`` header and :func:`handler_views` in its callback."""
    return (message.headers.get("traceparent"), *handler_views(message_context, message))


async def consume_acking_the_first(
    queue: AbstractQueue,
    count: int,
    note: Callable[[AbstractIncomingMessage], Any] = lambda message: None,
) -> tuple[list[Any], list[AbstractIncomingMessage], Any]:
    """``count`` messages consumed with manual acks, ``order-0`` acked in its callback: what
    ``note`` gave in each callback (before that ack), in arrival order; the messages by
    delivery tag; and their channel's delivery records, checked to hold every delivery but
    the acked one."""
    seen: asyncio.Queue[tuple[AbstractIncomingMessage, Any]] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        noted = note(message)
        if message.body == b"order-0":
            await message.ack()
        seen.put_nowait((message, noted))

    tag = await queue.consume(on_message)
    got = [await asyncio.wait_for(seen.get(), 15) for _ in range(count)]
    await queue.cancel(tag)
    messages = sorted((message for message, _ in got), key=lambda m: m.delivery_tag or 0)
    records = deliveries_of(message_channel(messages[0]), create=False)
    assert records is not None
    assert sorted(records.records) == [m.delivery_tag for m in messages[1:]]
    return [noted for _, noted in got], messages, records


async def check_all_settled(
    case: NotSampledConsumer, queue: AbstractQueue, records: Any, deliveries: int
) -> None:
    """Every delivery settled: none left in the channel's records, none for the broker to
    redeliver; then the case's :meth:`~NotSampledConsumer.check_quiet`."""
    assert records.records == {}, records.records
    assert await queue.get(no_ack=True, fail=False) is None
    case.check_quiet(deliveries)


@pytest.mark.asyncio
async def test_unsampled_publish_and_consume_carry_the_decision_without_spans(
    instrument: Instrument, otel: Recorder, connect: Connect, unique: Callable[[str], str]
) -> None:
    """Inside a trace that was not sampled (no MeterProvider: nothing to count), a publish sends
    the trace's traceparent with flags 00 and the baggage, a no_ack consumer's callback runs in
    that trace with that baggage, and no span is made; the caller's message and headers are
    left as they were."""
    instrument(meter_provider=None)
    queue = await unsampled_queue(connect, unique)
    check_carried(await consume_no_ack(queue), [b"order-0", b"order-1"])
    check_nothing_current()
    assert otel.spans() == []


@pytest.mark.asyncio
async def test_a_plain_function_callback_of_a_not_sampled_message_runs_in_its_trace(
    instrument: Instrument, otel: Recorder, connect: Connect, unique: Callable[[str], str]
) -> None:
    """A plain-function no_ack callback gets what an async one gets: each message's trace, not
    sampled, with its baggage, and no span; nothing stays current."""
    instrument(meter_provider=None)
    queue = await unsampled_queue(connect, unique)
    check_carried(await consume_no_ack(queue, plain=True), [b"order-0", b"order-1"])
    check_nothing_current()
    assert otel.spans() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", FAST_PATH_STEPS, indirect=True)
async def test_a_broken_fast_path_never_reaches_the_user(
    fault: Fault, instrument: Instrument, connect: Connect, unique: Callable[[str], str]
) -> None:
    """With a fast-path step raising, an unsampled publish and a no_ack consumer behave as
    uninstrumented aio-pika: every message delivered once with its body, the callback runs;
    the fault is logged and nothing stays current."""
    instrument(meter_provider=None)
    seen = await consume_no_ack(await unsampled_queue(connect, unique))
    assert [entry[0] for entry in seen] == [b"order-0", b"order-1"]
    fault.check_logged()
    check_nothing_current()


@pytest.mark.asyncio
async def test_manual_ack_consumer_of_a_not_sampled_message_settles_from_its_record(
    manual_ack: ManualAck, otel: Recorder, connect: Connect, unique: Callable[[str], str]
) -> None:
    """What every plugin's manual-ack consumer gives (ManualAck), on aio-pika: one
    message.ack() inside the callback, then ack(multiple=True) outside it for the other two
    leaves no delivery recorded and nothing to redeliver, with one settle span for the two."""
    queue = await unsampled_queue(connect, unique, 3)
    noted, messages, records = await consume_acking_the_first(queue, 3, note_views)
    manual_ack.check_callbacks(noted, 3)
    await messages[2].ack(multiple=True)
    manual_ack.check_multiple_ack_span(otel.spans(), queue.name)
    await check_all_settled(manual_ack, queue, records, 3)


@pytest.mark.asyncio
async def test_manual_acks_with_nothing_to_record_forget_their_records(
    quiet_ack: QuietAck, otel: Recorder, connect: Connect, unique: Callable[[str], str]
) -> None:
    """What every plugin's quiet ack gives (QuietAck), on aio-pika: message.ack() inside the
    callback and ack(multiple=True) after it forget their deliveries and start nothing;
    nack(multiple=True, requeue=False) of the other two is the ERROR span linking both;
    nothing is left recorded or to redeliver."""
    queue = await unsampled_queue(connect, unique, 5)
    _, messages, records = await consume_acking_the_first(queue, 5)
    await messages[2].ack(multiple=True)
    assert sorted(records.records) == [m.delivery_tag for m in messages[3:]]
    quiet_ack.check_acks_started_nothing()
    await messages[4].nack(multiple=True, requeue=False)
    quiet_ack.check_dropped_span(otel.spans(), queue.name, "nack", 2)
    await check_all_settled(quiet_ack, queue, records, 5)


@pytest.mark.asyncio
async def test_not_sampled_manual_ack_messages_are_counted_with_a_meter_provider(
    instrument: Instrument, otel: Recorder, connect: Connect, unique: Callable[[str], str]
) -> None:
    """Not-sampled messages are still counted with a MeterProvider (check_counted_without_spans)
    on aio-pika: three, each acked in its callback."""
    instrument()
    queue = await unsampled_queue(connect, unique, 3)
    done: asyncio.Queue[None] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        done.put_nowait(None)

    tag = await queue.consume(on_message)
    for _ in range(3):
        await asyncio.wait_for(done.get(), 15)
    await queue.cancel(tag)
    check_counted_without_spans(otel, 3)
