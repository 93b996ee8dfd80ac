"""pika's own consume cases: the async adapters' callbacks and basic_get, a consumer registered
before instrument(), and how a consume() generator ends (the behaviour every path shares is in
integration_tests/contract)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest
from opentelemetry import baggage, trace
from opentelemetry.trace import SpanContext
from pika.adapters.blocking_connection import BlockingChannel

from broker_harness import Broker, Recorder, messaging_attributes, span_summary
from integration_tests.pika.conftest import AsyncRun, Instrument
from otel_pika import PikaInstrumentor


def current() -> SpanContext:
    return trace.get_current_span().get_span_context()


def nothing_current() -> bool:
    return not current().is_valid and not baggage.get_all()


# -- basic_consume callbacks -----------------------------------------------------------------------


def test_blocking_consumer_registered_before_instrument_is_traced(
    instrument: Instrument, otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """A consumer registered before instrument() still gets a process span per message, the child of the message's publish from a channel opened before instrument() too, with the callback inside it."""
    inside: list[SpanContext] = []

    def on_message(ch: BlockingChannel, method: Any, _properties: Any, _body: bytes) -> None:
        inside.append(current())
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    instrument()
    channel.basic_publish("", queue, b"x")
    channel.start_consuming()
    spans = otel.spans()
    (process,) = otel.named(f"process {queue}")
    assert span_summary(process, spans)["parent"] == "publish amq.default"
    assert inside == [process.context]


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
    assert summary["attributes"] == messaging_attributes(
        rabbitmq,
        "process",
        name,
        name,
        **{"messaging.rabbitmq.message.delivery_tag": 1, "messaging.message.body.size": 1},
    )
    assert inside == [process.context]
    assert span_summary(next(s for s in spans if s.name == "handle"), spans)["parent"] == (
        f"process {name}"
    )
    assert after == [True]


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


# -- the consume() generator -----------------------------------------------------------------------


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


# -- basic_get ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("instrumented")
def test_async_basic_get_makes_a_receive_span(
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
