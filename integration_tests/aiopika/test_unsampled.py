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
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from broker_harness import Recorder
from integration_tests.aiopika.conftest import Connect, Instrument
from integration_tests.internal_faults import FAST_PATH_STEPS, fault_logged, inject

TRACE_ID = 0x5EED
SPAN_ID = 0xF00D
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"


def unsampled_parent() -> otel_context.Context:
    span = NonRecordingSpan(
        SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(0))
    )
    return baggage.set_baggage("order.id", "17", trace.set_span_in_context(span))


async def publish_unsampled(channel: AbstractChannel, queue: AbstractQueue) -> None:
    headers = {"x-app": "shop"}
    token = otel_context.attach(unsampled_parent())
    try:
        for n in (0, 1):
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
    assert seen == [
        (b"order-%d" % n, TRACEPARENT, "order.id=17", TRACE_ID, False, "17") for n in (0, 1)
    ]
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
