"""The unsampled fast path on aio-pika (issue 18), against the real broker: what a message of a
trace that is not sampled still carries and gets, and a broken fast path never reaching the
user's publish or callback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context

from broker_harness import Recorder
from integration_tests.aiopika.conftest import Connect, Instrument
from integration_tests.internal_faults import FAST_PATH_STEPS, fault_logged, inject
from integration_tests.unsampled_cases import (
    BAGGAGE,
    PATHS,
    SPAN_ID,
    TRACE_ID,
    TRACEPARENT,
    HookCalls,
    handler_view,
    links_of,
    take_path,
    unsampled_parent,
)
from otel_aiopika import message_context
from otel_aiopika._state import deliveries_of, message_channel


async def publish_unsampled(channel: AbstractChannel, queue: AbstractQueue, count: int = 2) -> None:
    headers = {"x-app": "shop"}
    token = otel_context.attach(unsampled_parent())
    try:
        for n in range(count):
            message = aio_pika.Message(b"order-%d" % n, headers=headers)
            await channel.default_exchange.publish(message, queue.name)
            assert message.headers == {"x-app": "shop"}
    finally:
        otel_context.detach(token)
    assert headers == {"x-app": "shop"}


async def consume_no_ack(queue: AbstractQueue) -> list[tuple[Any, ...]]:
    seen: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        span_context = trace.get_current_span().get_span_context()
        headers = message.headers
        seen.put_nowait(
            (
                message.body,
                headers.get("traceparent"),
                headers.get("baggage"),
                span_context.trace_id,
                span_context.trace_flags.sampled,
                baggage.get_baggage("order.id"),
            )
        )

    tag = await queue.consume(on_message, no_ack=True)
    try:
        return [await asyncio.wait_for(seen.get(), 15) for _ in range(2)]
    finally:
        await queue.cancel(tag)


@pytest.mark.asyncio
async def test_unsampled_publish_and_consume_carry_the_decision_without_spans(
    instrument: Instrument, otel: Recorder, connect: Connect, unique: Callable[[str], str]
) -> None:
    """Inside a trace that was not sampled (no MeterProvider: nothing to count), a publish sends
    the trace's traceparent with flags 00 and the baggage, a no_ack consumer's callback runs in
    that trace with that baggage, and no span is made; the caller's message and headers are
    left as they were."""
    instrument(meter_provider=None)
    channel = await (await connect()).channel()
    queue = await channel.declare_queue(unique("q"), exclusive=True)
    await publish_unsampled(channel, queue)
    seen = await consume_no_ack(queue)
    assert seen == [(b"order-%d" % n, TRACEPARENT, BAGGAGE, TRACE_ID, False, "17") for n in (0, 1)]
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"
    assert otel.spans() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("step", FAST_PATH_STEPS)
async def test_a_broken_fast_path_never_reaches_the_user(
    step: str,
    instrument: Instrument,
    connect: Connect,
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a fast-path step raising, an unsampled publish and a no_ack consumer behave as
    uninstrumented aio-pika: every message delivered once with its body, the callback runs;
    the fault is logged and nothing stays current."""
    caplog.set_level(logging.DEBUG, logger="otel_messaging_core")
    inject(monkeypatch, step)
    instrument(meter_provider=None)
    channel = await (await connect()).channel()
    queue = await channel.declare_queue(unique("q"), exclusive=True)
    await publish_unsampled(channel, queue)
    seen = await consume_no_ack(queue)
    assert [entry[0] for entry in seen] == [b"order-0", b"order-1"]
    assert fault_logged(caplog, step)
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"


@pytest.mark.asyncio
@pytest.mark.parametrize("path", PATHS)
async def test_manual_ack_consumer_of_a_not_sampled_message_settles_from_its_record(
    path: str,
    instrument: Instrument,
    otel: Recorder,
    connect: Connect,
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A manual-ack consumer of messages whose trace was not sampled (no MeterProvider) runs
    each callback in that trace with its baggage (message_context() too), hooks never run, and
    every ack settles its delivery: one inside the callback, then ack(multiple=True) outside it
    for the other two, whose settle span (settle_spans=True; a new trace, so the sampler keeps
    it) links both producers and names the queue. Nothing else is recorded; nothing redelivered.
    The fast path and the general path give the same."""
    general = take_path(monkeypatch, path)
    hooks = HookCalls()
    instrument(meter_provider=None, settle_spans=True, **hooks.options())
    channel = await (await connect()).channel()
    queue = await channel.declare_queue(unique("q"), exclusive=True)
    await publish_unsampled(channel, queue, 3)
    seen: asyncio.Queue[Any] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        with message_context(message):
            in_block = handler_view()
        if message.body == b"order-0":
            await message.ack()
        seen.put_nowait((message, message.headers.get("traceparent"), handler_view(), in_block))

    tag = await queue.consume(on_message)
    got = [await asyncio.wait_for(seen.get(), 15) for _ in range(3)]
    await queue.cancel(tag)
    view = (TRACE_ID, False, "17")
    assert [entry[1:] for entry in got] == [(TRACEPARENT, view, view)] * 3
    messages = sorted((entry[0] for entry in got), key=lambda m: m.delivery_tag or 0)
    records = deliveries_of(message_channel(messages[0]), create=False)
    assert records is not None
    assert sorted(records.records) == [m.delivery_tag for m in messages[1:]]
    await messages[2].ack(multiple=True)
    assert records.records == {}
    (ack,) = otel.spans()
    assert ack.name == f"ack {queue.name}"
    assert ack.parent is None
    assert links_of(ack) == [(TRACE_ID, SPAN_ID)] * 2
    assert ack.attributes is not None
    assert ack.attributes["messaging.batch.message_count"] == 2
    assert await queue.get(no_ack=True, fail=False) is None  # all settled
    assert hooks.calls == []
    assert general == ([] if path == "fast" else ["start_consume"] * 3)
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"


@pytest.mark.asyncio
async def test_not_sampled_manual_ack_messages_are_counted_with_a_meter_provider(
    instrument: Instrument, otel: Recorder, connect: Connect, unique: Callable[[str], str]
) -> None:
    """With a MeterProvider, not-sampled messages of a manual-ack consumer are still counted:
    each delivery's process duration and each ack's settle duration, with no span."""
    instrument()
    channel = await (await connect()).channel()
    queue = await channel.declare_queue(unique("q"), exclusive=True)
    await publish_unsampled(channel, queue, 3)
    done: asyncio.Queue[None] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        done.put_nowait(None)

    tag = await queue.consume(on_message)
    for _ in range(3):
        await asyncio.wait_for(done.get(), 15)
    await queue.cancel(tag)
    assert [value for _, value in otel.points("messaging.process.duration")] == [3]
    settles = [
        value
        for attributes, value in otel.points("messaging.client.operation.duration")
        if attributes.get("messaging.operation.name") == "ack"
    ]
    assert settles == [3]
    assert otel.spans() == []
