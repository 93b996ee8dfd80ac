"""Many messages handled at once: each handler's spans stay in its own order's trace."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from opentelemetry import trace

from broker_harness import Recorder
from integration_tests.aiopika.conftest import wait_for, wait_for_count

pytestmark = pytest.mark.usefixtures("instrumented")

ORDERS = 48


@pytest.mark.asyncio
async def test_concurrent_handlers_each_stay_in_their_own_orders_trace(
    otel: Recorder,
    connection: AbstractConnection,
    robust: bool,
    unique: Callable[[str], str],
) -> None:
    """With prefetch 64 and handlers that await, 48 orders are handled at the same time and every handler span, publish and ack sits in its own order's trace."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=64)
    queue = await channel.declare_queue(unique("q"), exclusive=True)
    onward = await channel.declare_queue(unique("onward"), exclusive=True)
    tracer = otel.tracer_provider.get_tracer("app")
    running = 0
    most = 0
    all_in = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        nonlocal running, most
        async with message.process():
            running += 1
            most = max(most, running)
            if running >= ORDERS:
                all_in.set()
            await asyncio.wait_for(all_in.wait(), 30)  # every handler is in flight at once
            with tracer.start_as_current_span(f"handle {message.body.decode()}"):
                await asyncio.sleep(0.001)
                await channel.default_exchange.publish(
                    aio_pika.Message(message.body), routing_key=onward.name
                )
            running -= 1

    await queue.consume(handle)
    for number in range(ORDERS):
        with tracer.start_as_current_span(f"order {number}"):
            await channel.default_exchange.publish(
                aio_pika.Message(str(number).encode()), routing_key=queue.name
            )
    await wait_for_count(otel, f"process {queue.name}", ORDERS, timeout=60)
    spans = await wait_for(
        otel, lambda s: sum(x.name.startswith("handle ") for x in s) >= ORDERS, timeout=60
    )
    assert most == ORDERS
    trace_of = {
        s.name: s.context.trace_id for s in spans if s.context and s.name.startswith("order ")
    }
    assert len(set(trace_of.values())) == ORDERS
    by_id = {s.context.span_id: s for s in spans if s.context}
    for number in range(ORDERS):
        handler = next(s for s in spans if s.name == f"handle {number}")
        assert handler.context is not None
        assert handler.context.trace_id == trace_of[f"order {number}"]
        assert handler.parent is not None
        process = by_id[handler.parent.span_id]
        assert process.name == f"process {queue.name}"
        onward_publish = next(
            s
            for s in spans
            if s.parent is not None
            and s.parent.span_id == handler.context.span_id
            and s.kind is trace.SpanKind.PRODUCER
        )
        assert onward_publish.context is not None
        assert onward_publish.context.trace_id == trace_of[f"order {number}"]
    assert not trace.get_current_span().get_span_context().is_valid
