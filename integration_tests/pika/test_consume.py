"""Consume: basic_consume callbacks (both channel kinds), the consume() generator, basic_get."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import NonRecordingSpan, SpanContext
from pika.adapters.blocking_connection import BlockingChannel

from broker_harness import Broker, Recorder, span_summary
from integration_tests.pika.conftest import AsyncRun, Instrument
from otel_pika import PikaInstrumentor, message_context


def current() -> SpanContext:
    return trace.get_current_span().get_span_context()


def nothing_current() -> bool:
    return not current().is_valid and not baggage.get_all()


def consume_attributes(
    broker: Broker, operation: str, queue: str, delivery_tag: int, **extra: Any
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": queue,
        "messaging.rabbitmq.destination.routing_key": queue,
        "messaging.rabbitmq.message.delivery_tag": delivery_tag,
        "server.address": broker.host,
        "server.port": broker.port,
    }
    attributes.update(extra)
    return attributes


# -- basic_consume callbacks -----------------------------------------------------------------------


def test_blocking_callback_runs_in_its_process_span(
    instrumented: PikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    channel: BlockingChannel,
    queue: str,
) -> None:
    """A BlockingChannel consumer's callback runs inside a CONSUMER span that is a child of and linked to the publish; nothing is current afterwards."""
    channel.basic_publish("", queue, b"order-1", pika.BasicProperties(message_id="m-1"))
    tracer = otel.tracer_provider.get_tracer("app")
    inside: list[SpanContext] = []

    def on_message(ch: BlockingChannel, method: Any, _properties: Any, _body: bytes) -> None:
        inside.append(current())
        with tracer.start_as_current_span("handle"):
            pass
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    assert nothing_current()
    spans = otel.spans()
    process = next(s for s in spans if s.name == f"process {queue}")
    assert span_summary(process, spans) == {
        "name": f"process {queue}",
        "kind": "CONSUMER",
        "parent": "publish amq.default",
        "links": ["publish amq.default"],
        "status": "UNSET",
        "attributes": consume_attributes(
            rabbitmq,
            "process",
            queue,
            1,
            **{"messaging.message.id": "m-1", "messaging.message.body.size": 7},
        ),
        "events": [],
    }
    assert inside == [process.context]
    handle = next(s for s in spans if s.name == "handle")
    assert span_summary(handle, spans)["parent"] == f"process {queue}"


def test_blocking_consumer_registered_before_instrument_is_traced(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """A consumer registered before instrument() still gets a process span per message."""
    inside: list[SpanContext] = []

    def on_message(ch: BlockingChannel, method: Any, _properties: Any, _body: bytes) -> None:
        inside.append(current())
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    instrument()
    channel.basic_publish("", queue, b"x")
    channel.start_consuming()
    (process,) = otel.named(f"process {queue}")
    assert inside == [process.context]
    assert process.parent is not None


@pytest.mark.parametrize("registered", ["before", "after"])
def test_async_callback_runs_in_its_process_span(
    instrument: Instrument,
    otel: Recorder,
    rabbitmq: Broker,
    async_run: AsyncRun,
    unique: Callable[[str], str],
    registered: str,
) -> None:
    """On SelectConnection and AsyncioConnection the consumer callback (registered before or after instrument()) runs inside its process span."""
    name = unique("q")
    inside: list[SpanContext] = []
    after: list[bool] = []
    tracer = otel.tracer_provider.get_tracer("app")

    def script(channel: Any) -> None:
        def on_message(ch: Any, method: Any, _properties: Any, _body: bytes) -> None:
            inside.append(current())
            with tracer.start_as_current_span("handle"):
                ch.basic_ack(method.delivery_tag)
            # the next pika callback: the context must be back to what it was
            ch.queue_declare(
                name,
                exclusive=True,
                callback=lambda _f: (after.append(nothing_current()), async_run.done()),
            )

        def on_declared(_frame: Any) -> None:
            if registered == "before":
                channel.basic_consume(name, on_message)
                instrument()
            else:
                instrument()
                channel.basic_consume(name, on_message)
            channel.basic_publish("", name, b"x")

        channel.queue_declare(name, exclusive=True, callback=on_declared)

    async_run.run(script)
    spans = otel.spans()
    (process,) = [s for s in spans if s.name == f"process {name}"]
    summary = span_summary(process, spans)
    assert summary["parent"] == "publish amq.default"
    assert summary["links"] == ["publish amq.default"]
    assert summary["attributes"] == consume_attributes(
        rabbitmq, "process", name, 1, **{"messaging.message.body.size": 1}
    )
    assert inside == [process.context]
    assert span_summary(next(s for s in spans if s.name == "handle"), spans)["parent"] == (
        f"process {name}"
    )
    assert after == [True]


def test_handler_exception_reaches_start_consuming_and_marks_the_span(
    instrumented: PikaInstrumentor, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """An exception raised by a callback reaches start_consuming() as the same object; the process span is ERROR with the exception recorded."""
    boom = KeyError("sku-17")

    def on_message(_ch: Any, _method: Any, _properties: Any, _body: bytes) -> None:
        raise boom

    channel.basic_publish("", queue, b"x")
    channel.basic_consume(queue, on_message, auto_ack=True)
    with pytest.raises(KeyError) as raised:
        channel.start_consuming()
    assert raised.value is boom
    assert nothing_current()
    (process,) = otel.named(f"process {queue}")
    summary = span_summary(process)
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"] == "KeyError"
    assert summary["events"] == ["exception"]


def test_async_handler_exception_marks_the_span_and_reaches_pika(
    instrumented: PikaInstrumentor, otel: Recorder, rabbitmq: Broker, unique: Callable[[str], str]
) -> None:
    """On SelectConnection a callback's exception reaches pika unchanged (pika then drops the connection, naming it) and its process span is ERROR."""
    name = unique("q")
    boom = RuntimeError("handler bug")
    run = AsyncRun(rabbitmq, "select")
    reasons: list[BaseException] = []

    def script(channel: Any) -> None:
        def on_message(*_args: Any) -> None:
            raise boom

        def on_declared(_frame: Any) -> None:
            channel.basic_consume(name, on_message, auto_ack=True)
            channel.basic_publish("", name, b"x")

        channel.connection.add_on_close_callback(lambda _c, reason: reasons.append(reason))
        channel.queue_declare(name, exclusive=True, callback=on_declared)

    run.run(script)
    assert len(reasons) == 1
    assert "RuntimeError('handler bug')" in str(reasons[0])  # pika wraps it: StreamLostError
    (process,) = otel.named(f"process {name}")
    assert process.status.status_code is trace.StatusCode.ERROR
    assert process.attributes["error.type"] == "RuntimeError"  # type: ignore[index]
    assert process.events[0].attributes["exception.message"] == "handler bug"  # type: ignore[index]


def test_link_mode_starts_a_new_trace_linked_to_the_producer(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """With consumer_context='link' the process span is a root span of its own trace, linked to the publish."""
    instrument(consumer_context="link")
    channel.basic_publish("", queue, b"x")

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    spans = otel.spans()
    publish = otel.named("publish amq.default")[0]
    process = otel.named(f"process {queue}")[0]
    summary = span_summary(process, spans)
    assert summary["parent"] is None
    assert summary["links"] == ["publish amq.default"]
    assert process.context.trace_id != publish.context.trace_id


def test_baggage_is_current_in_the_handler_reinjected_and_copied_to_attributes(
    instrument: Instrument,
    otel: Recorder,
    channel: BlockingChannel,
    queue: str,
    unique: Callable[[str], str],
) -> None:
    """The message's baggage is current in the handler and rides on its publishes; baggage_attributes and capture_headers become span attributes."""
    instrument(baggage_attributes=("order.id",), capture_headers=("x-tenant",))
    onward = unique("onward")
    channel.queue_declare(onward, exclusive=True)
    token = otel_context.attach(baggage.set_baggage("order.id", "17"))
    try:
        channel.basic_publish("", queue, b"x", pika.BasicProperties(headers={"x-tenant": b"acme"}))
    finally:
        otel_context.detach(token)
    seen: list[object] = []

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        seen.append(baggage.get_baggage("order.id"))
        ch.basic_publish("", onward, b"next")
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    assert seen == ["17"]
    assert nothing_current()
    _method, properties, _body = channel.basic_get(onward, auto_ack=True)
    assert "order.id=17" in properties.headers["baggage"]
    for span in otel.spans():
        assert span.attributes["order.id"] == "17", span.name  # type: ignore[index]
    process = otel.named(f"process {queue}")[0]
    assert process.attributes["messaging.header.x-tenant"] == "acme"  # type: ignore[index]


def test_bytes_int_and_garbage_traceparents_from_a_plain_producer_never_break_the_consumer(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Headers from an uninstrumented producer (bytes, int, garbage, nested tables) are read where possible and never raise."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    headers_list: list[dict[str, Any]] = [
        {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01".encode()},
        {"traceparent": 17},
        {"traceparent": "garbage", "tracestate": b"\xff\xfe"},
        {"traceparent": {"nested": [b"\x00", 15]}, "baggage": b"\xff"},
        {"Traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
    ]
    for headers in headers_list:  # published before instrument(): nothing injected
        channel.basic_publish("", queue, b"x", pika.BasicProperties(headers=headers))
    instrument()
    handled: list[int] = []

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        handled.append(method.delivery_tag)
        ch.basic_ack(method.delivery_tag)
        if len(handled) == len(headers_list):
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    assert handled == [1, 2, 3, 4, 5]
    spans = otel.named(f"process {queue}")
    assert [f"{s.context.trace_id:032x}" == trace_id for s in spans] == [
        True,
        False,
        False,
        False,
        True,
    ]
    assert all(s.status.status_code is trace.StatusCode.UNSET for s in spans)


# -- the consume() generator -----------------------------------------------------------------------


def test_generator_loop_body_runs_in_each_receive_span(
    instrumented: PikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    channel: BlockingChannel,
    queue: str,
) -> None:
    """Each message of consume() gets a CLIENT receive span that is current during the loop body and ends when the next one is requested; nothing is current after break."""
    for n in range(2):
        channel.basic_publish("", queue, b"m%d" % n)
    tracer = otel.tracer_provider.get_tracer("app")
    inside: list[SpanContext] = []
    for method, _properties, _body in channel.consume(queue, auto_ack=True):
        inside.append(current())
        with tracer.start_as_current_span("handle"):
            pass
        if method.delivery_tag == 2:
            break
    assert nothing_current()
    channel.cancel()
    spans = otel.spans()
    first, second = otel.named(f"receive {queue}")
    assert inside == [first.context, second.context]
    assert first.end_time is not None
    assert second.start_time is not None
    assert first.end_time <= second.start_time
    assert span_summary(first, spans) == {
        "name": f"receive {queue}",
        "kind": "CLIENT",
        "parent": "publish amq.default",
        "links": ["publish amq.default"],
        "status": "UNSET",
        "attributes": consume_attributes(
            rabbitmq, "receive", queue, 1, **{"messaging.message.body.size": 2}
        ),
        "events": [],
    }
    handles = [s for s in spans if s.name == "handle"]
    assert [span_summary(h, spans)["parent"] for h in handles] == [f"receive {queue}"] * 2
    assert [h.parent.span_id for h in handles if h.parent] == [
        first.context.span_id,
        second.context.span_id,
    ]


def test_generator_kept_after_break_ends_its_span_on_cancel(
    instrumented: PikaInstrumentor, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Breaking out of a generator the caller still holds, then calling channel.cancel(), leaves nothing current and ends the span."""
    channel.basic_publish("", queue, b"x")
    messages = channel.consume(queue, auto_ack=True)
    for _message in messages:
        assert current().is_valid
        break
    channel.cancel()
    assert nothing_current()
    (receive,) = otel.named(f"receive {queue}")
    assert receive.end_time is not None
    del messages


def test_generator_inactivity_timeout_yields_with_nothing_current(
    instrumented: PikaInstrumentor, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """An inactivity timeout's (None, None, None) comes with nothing current and the previous message's span ended."""
    channel.basic_publish("", queue, b"x")
    seen: list[tuple[bool, bool]] = []
    for method, _properties, _body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.3):
        seen.append((method is None, current().is_valid))
        if method is None:
            assert nothing_current()
            assert len(otel.named(f"receive {queue}")) == 1
            break
    channel.cancel()
    assert seen == [(False, True), (True, False)]


def test_generator_close_and_its_end_leave_nothing_current(
    instrumented: PikaInstrumentor, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Closing the generator ends the open receive span, and cancel() from inside the loop lets the generator end cleanly."""
    channel.basic_publish("", queue, b"1")
    channel.basic_publish("", queue, b"2")
    messages = channel.consume(queue, auto_ack=True)
    next(messages)
    assert current().is_valid
    messages.close()
    assert nothing_current()
    assert len(otel.named(f"receive {queue}")) == 1

    bodies = []
    for _method, _properties, body in channel.consume(queue, auto_ack=True):
        bodies.append(body)
        channel.cancel()  # the generator ends at the next request
    assert nothing_current()
    assert bodies == [b"2"]
    assert len(otel.named(f"receive {queue}")) == 2


def test_generator_manual_ack_settles_its_delivery(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """A consume() message acked in the loop body gets its ack span as a child of the receive span."""
    instrument(settle_spans=True)
    channel.basic_publish("", queue, b"x")
    for method, _properties, _body in channel.consume(queue):
        channel.basic_ack(method.delivery_tag)
        break
    channel.cancel()
    spans = otel.spans()
    (ack,) = otel.named(f"ack {queue}")
    summary = span_summary(ack, spans)
    assert summary["parent"] == f"receive {queue}"
    assert summary["links"] == ["publish amq.default"]
    assert summary["attributes"]["messaging.rabbitmq.message.delivery_tag"] == 1


# -- basic_get ------------------------------------------------------------------------------------


def test_blocking_basic_get_makes_a_receive_span_and_leaves_the_context(
    instrumented: PikaInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    channel: BlockingChannel,
    queue: str,
) -> None:
    """basic_get makes a receive span (child of the active span, linked to the producer), leaves the caller's context as it was, and an empty get makes none."""
    tracer = otel.tracer_provider.get_tracer("app")
    assert channel.basic_get(queue) == (None, None, None)
    channel.basic_publish("", queue, b"abc", pika.BasicProperties(correlation_id="c-9"))
    with tracer.start_as_current_span("poll") as poll:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        assert current() == poll.get_span_context()
    assert body == b"abc"
    assert method.delivery_tag == 1
    spans = otel.spans()
    (receive,) = otel.named(f"receive {queue}")
    assert span_summary(receive, spans) == {
        "name": f"receive {queue}",
        "kind": "CLIENT",
        "parent": "poll",
        "links": ["publish amq.default"],
        "status": "UNSET",
        "attributes": consume_attributes(
            rabbitmq,
            "receive",
            queue,
            1,
            **{"messaging.message.conversation_id": "c-9", "messaging.message.body.size": 3},
        ),
        "events": [],
    }
    with message_context(properties):
        assert current() == receive.context
    assert nothing_current()


def test_message_context_of_a_pulled_message(
    instrumented: PikaInstrumentor, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """message_context() makes the pulled message's receive span and baggage current for the block only; outside any span the receive span is the producer's child."""
    token = otel_context.attach(baggage.set_baggage("order.id", "5"))
    try:
        channel.basic_publish("", queue, b"x")
    finally:
        otel_context.detach(token)
    _method, properties, _body = channel.basic_get(queue, auto_ack=True)
    assert nothing_current()
    tracer = otel.tracer_provider.get_tracer("app")
    with message_context(properties):
        assert baggage.get_baggage("order.id") == "5"
        with tracer.start_as_current_span("handle"):
            pass
    assert nothing_current()
    spans = otel.spans()
    summary = span_summary(otel.named("handle")[0], spans)
    assert summary["parent"] == f"receive {queue}"
    assert span_summary(otel.named(f"receive {queue}")[0], spans)["parent"] == "publish amq.default"


def test_message_context_without_a_recorded_span_uses_the_headers(
    otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Without instrumentation, message_context() still makes the producer's context current from the headers."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    headers = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    channel.basic_publish("", queue, b"x", pika.BasicProperties(headers=headers))
    _method, properties, _body = channel.basic_get(queue, auto_ack=True)
    with message_context(properties):
        assert f"{current().trace_id:032x}" == trace_id
    assert nothing_current()


def test_message_context_of_an_unsampled_pulled_message(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """Under a parent-based sampler, a pulled message of an unsampled trace makes no span and is not
    remembered; message_context() still puts the block in that trace, with the message's baggage,
    so the block's spans are not sampled either and a publish from it carries the trace on."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(otel.tracer_provider._active_span_processor)
    instrument(tracer_provider=provider)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    upstream = SpanContext(int(trace_id, 16), 0xB7AD6B7169203331, is_remote=True)  # not sampled
    token = otel_context.attach(
        baggage.set_baggage("order.id", "9", trace.set_span_in_context(NonRecordingSpan(upstream)))
    )
    try:  # a publish inside the unsampled trace passes it on as it is
        channel.basic_publish("", queue, b"x")
    finally:
        otel_context.detach(token)
    _method, properties, _body = channel.basic_get(queue, auto_ack=True)
    assert properties.headers["traceparent"] == f"00-{trace_id}-b7ad6b7169203331-00"
    with message_context(properties):
        assert f"{current().trace_id:032x}" == trace_id
        assert not current().trace_flags.sampled
        assert baggage.get_baggage("order.id") == "9"
        with provider.get_tracer("app").start_as_current_span("handle"):
            channel.basic_publish("", queue, b"y")
    assert nothing_current()
    _method, forwarded, _body = channel.basic_get(queue, auto_ack=True)
    assert forwarded.headers["traceparent"].startswith(f"00-{trace_id}-")
    assert forwarded.headers["traceparent"].endswith("-00")
    assert forwarded.headers["baggage"] == "order.id=9"
    assert otel.spans() == []  # nothing sampled: no receive, handle or publish span


def test_async_basic_get_makes_a_receive_span(
    instrumented: PikaInstrumentor,
    otel: Recorder,
    async_run: AsyncRun,
    unique: Callable[[str], str],
) -> None:
    """Channel.basic_get on the async adapters: an empty get makes no span; a message's callback runs inside its receive span."""
    name = unique("q")
    inside: list[SpanContext] = []

    def script(channel: Any) -> None:
        def on_message(_ch: Any, method: Any, _properties: Any, _body: bytes) -> None:
            inside.append(current())
            channel.basic_ack(method.delivery_tag)
            channel.queue_declare(name, exclusive=True, callback=lambda _f: async_run.done())

        def on_empty(_frame: Any) -> None:
            channel.basic_publish("", name, b"x")
            channel.basic_get(name, on_message)

        def on_declared(_frame: Any) -> None:
            channel.add_callback(on_empty, [pika.spec.Basic.GetEmpty], one_shot=True)
            channel.basic_get(name, on_message)

        channel.queue_declare(name, exclusive=True, callback=on_declared)

    async_run.run(script)
    spans = otel.spans()
    (receive,) = otel.named(f"receive {name}")
    summary = span_summary(receive, spans)
    assert summary["kind"] == "CLIENT"
    assert summary["parent"] == "publish amq.default"
    assert inside == [receive.context]
