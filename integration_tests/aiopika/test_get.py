"""Queue.get: a receive span per message got, none for an empty get, and message_context() for the handling."""

from __future__ import annotations

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from aio_pika.exceptions import QueueEmpty
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context

from broker_harness import Broker, Recorder, span_summary
from integration_tests.aiopika.conftest import Instrument, base_attributes
from otel_aiopika import AioPikaInstrumentor, message_context


@pytest.mark.asyncio
async def test_get_makes_a_receive_span_and_leaves_the_callers_context(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Queue.get of a message gives one CLIENT receive span, child of its publish; the caller's current span is the same before and after."""
    tracer = otel.tracer_provider.get_tracer("app")
    await channel.default_exchange.publish(
        aio_pika.Message(b"pull me", correlation_id="c-3"), routing_key=queue.name
    )
    with tracer.start_as_current_span("poller") as poller:
        message = await queue.get(timeout=10)
        assert trace.get_current_span() is poller
    await message.ack()
    spans = otel.spans()
    receive = next(s for s in spans if s.name == f"receive {queue.name}")
    summary = span_summary(receive, spans)
    assert summary == {
        "name": f"receive {queue.name}",
        "kind": "CLIENT",
        "parent": "poller",
        "links": ["publish amq.default"],
        "status": "UNSET",
        "attributes": {
            **base_attributes(rabbitmq, "receive", queue.name),
            "messaging.rabbitmq.destination.routing_key": queue.name,
            "messaging.rabbitmq.message.delivery_tag": message.delivery_tag,
            "messaging.message.id": message.message_id,
            "messaging.message.conversation_id": "c-3",
            "messaging.message.body.size": 7,
        },
        "events": [],
    }


@pytest.mark.asyncio
async def test_get_outside_a_span_is_a_child_of_the_publish(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """With no span active, the receive span of a get continues the producer's trace."""
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    message = await queue.get(timeout=10, no_ack=True)
    assert message is not None
    assert not trace.get_current_span().get_span_context().is_valid
    spans = otel.spans()
    receive = next(s for s in spans if s.name == f"receive {queue.name}")
    assert span_summary(receive, spans)["parent"] == "publish amq.default"


@pytest.mark.asyncio
async def test_an_empty_get_makes_no_span(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    queue: AbstractQueue,
) -> None:
    """An empty get (None with fail=False, QueueEmpty otherwise) makes no span."""
    assert await queue.get(fail=False, timeout=10) is None
    with pytest.raises(QueueEmpty):
        await queue.get(timeout=10)
    assert otel.spans() == []


@pytest.mark.asyncio
async def test_message_context_makes_the_receive_span_current(
    instrument: Instrument,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Inside `with message_context(message)` the got message's receive span and baggage are current; afterwards the caller's context is back."""
    instrument(settle_spans=True)
    tracer = otel.tracer_provider.get_tracer("app")
    token = otel_context.attach(baggage.set_baggage("order.id", "o-5"))
    try:
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    finally:
        otel_context.detach(token)
    message = await queue.get(timeout=10)
    assert message is not None
    with message_context(message):
        assert baggage.get_baggage("order.id") == "o-5"
        with tracer.start_as_current_span("handle"):
            pass
        await message.ack()
    assert baggage.get_baggage("order.id") is None
    assert not trace.get_current_span().get_span_context().is_valid
    spans = otel.spans()
    for name in ("handle", f"ack {queue.name}"):
        assert span_summary(next(s for s in spans if s.name == name), spans)["parent"] == (
            f"receive {queue.name}"
        )


@pytest.mark.asyncio
async def test_message_context_of_an_auto_ack_get(
    instrumented: AioPikaInstrumentor,
    otel: Recorder,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """message_context() also finds the receive span of a message got with no_ack=True."""
    tracer = otel.tracer_provider.get_tracer("app")
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    message = await queue.get(timeout=10, no_ack=True)
    assert message is not None
    with message_context(message), tracer.start_as_current_span("handle"):
        pass
    spans = otel.spans()
    handle = next(s for s in spans if s.name == "handle")
    assert span_summary(handle, spans)["parent"] == f"receive {queue.name}"


@pytest.mark.asyncio
async def test_message_context_without_instrumentation_uses_the_headers(
    otel: Recorder,
    instrument: Instrument,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """For a message got while not instrumented, message_context() continues the producer's trace from its headers."""
    instrumentor = instrument()
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    instrumentor.uninstrument()
    message = await queue.get(timeout=10, no_ack=True)
    assert message is not None
    tracer = otel.tracer_provider.get_tracer("app")
    with message_context(message), tracer.start_as_current_span("handle"):
        pass
    spans = otel.spans()
    assert [s.name for s in spans] == ["publish amq.default", "handle"]
    assert span_summary(spans[1], spans)["parent"] == "publish amq.default"


@pytest.mark.asyncio
async def test_message_context_of_an_unsampled_get(
    otel: Recorder,
    instrument: Instrument,
    channel: AbstractChannel,
    queue: AbstractQueue,
) -> None:
    """Under a parent-based sampler, a message got from an unsampled trace makes no span and is not
    kept; message_context() still puts the block in that trace with the message's baggage, and a
    publish from it carries the trace on, not sampled."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace import NonRecordingSpan, SpanContext

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(otel.tracer_provider._active_span_processor)
    instrument(tracer_provider=provider)
    upstream = SpanContext(0xABC, 0xDEF, is_remote=True)  # not sampled
    token = otel_context.attach(
        baggage.set_baggage("order.id", "9", trace.set_span_in_context(NonRecordingSpan(upstream)))
    )
    try:
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    finally:
        otel_context.detach(token)
    message = await queue.get(timeout=10, no_ack=True)
    assert message is not None
    assert message.headers["traceparent"] == f"00-{0xABC:032x}-{0xDEF:016x}-00"
    with message_context(message):
        current = trace.get_current_span().get_span_context()
        assert (current.trace_id, current.trace_flags.sampled) == (0xABC, False)
        assert baggage.get_baggage("order.id") == "9"
        with provider.get_tracer("app").start_as_current_span("handle"):
            await channel.default_exchange.publish(aio_pika.Message(b"y"), routing_key=queue.name)
    forwarded = await queue.get(timeout=10, no_ack=True)
    assert forwarded is not None
    traceparent = str(forwarded.headers["traceparent"])
    assert traceparent.startswith(f"00-{0xABC:032x}-")
    assert traceparent.endswith("-00")
    assert forwarded.headers["baggage"] == "order.id=9"
    assert otel.spans() == []  # nothing sampled: no receive, handle or publish span
