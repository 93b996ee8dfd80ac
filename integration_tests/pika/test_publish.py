"""pika's own publish cases: the async adapters, publishes without properties, confirms of
unroutable messages and returns (the shared publish behaviour is in integration_tests/contract)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest
from opentelemetry import trace
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelWrongStateError, UnroutableError

from broker_harness import Broker, Recorder, Traceparent, messaging_attributes, span_summary
from integration_tests.pika.conftest import AsyncRun

pytestmark = pytest.mark.usefixtures("instrumented")


def test_a_publish_without_properties_carries_the_context(
    otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """A publish with no properties at all and a str body makes its span and still sends the context, in properties pika then creates."""
    channel.basic_publish("", queue, "text body")
    _method, received, body = channel.basic_get(queue, auto_ack=True)
    assert body == b"text body"
    (publish,) = otel.named("publish amq.default")
    assert span_summary(publish)["attributes"]["messaging.message.body.size"] == 9
    assert Traceparent.in_headers(received.headers) == Traceparent.of(publish)


def test_async_publish_makes_one_span(
    otel: Recorder,
    rabbitmq: Broker,
    async_run: AsyncRun,
    unique: Callable[[str], str],
) -> None:
    """Channel.basic_publish on SelectConnection and AsyncioConnection gives one PRODUCER span whose context the consumer receives."""
    name = unique("q")
    received: list[Any] = []

    def script(channel: Any) -> None:
        def on_message(_ch: Any, _method: Any, properties: Any, _body: bytes) -> None:
            received.append(properties.headers)
            async_run.done()

        def on_declared(_frame: Any) -> None:
            channel.basic_consume(name, on_message, auto_ack=True)
            channel.basic_publish("", name, b"x", pika.BasicProperties(message_id="a-1"))

        channel.queue_declare(name, exclusive=True, callback=on_declared)

    async_run.run(script)
    (publish,) = [s for s in otel.spans() if s.kind is trace.SpanKind.PRODUCER]
    assert span_summary(publish)["attributes"] == messaging_attributes(
        rabbitmq,
        "publish",
        name,
        name,
        **{"messaging.message.id": "a-1", "messaging.message.body.size": 1},
    )
    assert Traceparent.in_headers(received[0]) == Traceparent.of(publish)


@pytest.fixture
def exchange(channel: BlockingChannel, unique: Callable[[str], str]) -> str:
    """An auto-deleted direct exchange with no queue bound: a mandatory publish to it is returned."""
    name = unique("x")
    channel.exchange_declare(name, "direct", auto_delete=True)
    return name


def test_confirmed_unroutable_publish_is_an_error_and_reaches_the_caller(
    otel: Recorder, channel: BlockingChannel, exchange: str
) -> None:
    """With confirm_delivery(), a mandatory publish nobody can route raises UnroutableError (same object) and its span is ERROR error.type=unroutable."""
    channel.confirm_delivery()
    with pytest.raises(UnroutableError) as raised:
        channel.basic_publish(exchange, "nowhere", b"lost", mandatory=True)
    (span,) = otel.spans()
    summary = span_summary(span)
    assert summary["name"] == f"publish {exchange}"
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"] == "unroutable"
    assert summary["events"] == ["exception"]
    assert span.events[0].attributes["exception.type"] == "pika.exceptions.UnroutableError"  # type: ignore[index]
    assert raised.value.messages[0].body == b"lost"


def test_publish_on_a_closed_channel_raises_the_same_exception(
    otel: Recorder, channel: BlockingChannel, queue: str
) -> None:
    """A publish pika refuses raises pika's exception unchanged and leaves an ERROR span named after it."""
    channel.close()
    with pytest.raises(ChannelWrongStateError):
        channel.basic_publish("", queue, b"x")
    (span,) = otel.spans()
    assert span.status.status_code is trace.StatusCode.ERROR
    assert span.attributes["error.type"] == "pika.exceptions.ChannelWrongStateError"  # type: ignore[index]


@pytest.mark.parametrize("user_callback", [True, False], ids=["with-callback", "no-callback"])
def test_returned_message_is_an_error_span_in_the_publishers_trace(
    otel: Recorder,
    async_run: AsyncRun,
    unique: Callable[[str], str],
    user_callback: bool,
) -> None:
    """On the async adapters a mandatory publish returned by the broker makes an ERROR span under its publish span; a user's return callback still runs."""
    exchange = unique("x")
    returned: list[bytes] = []
    tracer = otel.tracer_provider.get_tracer("app")

    def script(channel: Any) -> None:
        def on_return(_ch: Any, _method: Any, _properties: Any, body: bytes) -> None:
            returned.append(body)

        def on_declared(_frame: Any) -> None:
            if user_callback:
                channel.add_on_return_callback(on_return)
            with tracer.start_as_current_span("order"):
                channel.basic_publish(exchange, "nowhere", b"lost", mandatory=True)
            # the return arrives before the reply to this declare
            channel.exchange_declare(
                exchange, "direct", auto_delete=True, callback=lambda _f: async_run.done()
            )

        channel.exchange_declare(exchange, "direct", auto_delete=True, callback=on_declared)

    async_run.run(script)
    assert returned == ([b"lost"] if user_callback else [])
    spans = otel.spans()
    order = next(s for s in spans if s.name == "order")
    publish, bounce = (s for s in spans if s.name == f"publish {exchange}")
    assert span_summary(publish, spans)["status"] == "UNSET"
    assert span_summary(bounce, spans) == {
        "name": f"publish {exchange}",
        "kind": "PRODUCER",
        "parent": f"publish {exchange}",
        "links": [],
        "status": "ERROR",
        "attributes": {
            **span_summary(publish)["attributes"],
            "error.type": "unroutable",
        },
        "events": [],
    }
    assert bounce.context.trace_id == order.context.trace_id
    assert bounce.parent is not None
    assert bounce.parent.span_id == publish.context.span_id
    assert bounce.status.description == "returned by the broker: 312 NO_ROUTE"


def test_blocking_return_without_confirms_is_an_error_span(
    otel: Recorder, channel: BlockingChannel, exchange: str
) -> None:
    """On a BlockingChannel without confirm_delivery() a returned mandatory publish also ends up as an ERROR span under its publish."""
    returned: list[bytes] = []
    channel.add_on_return_callback(lambda _c, _m, _p, body: returned.append(body))
    channel.basic_publish(exchange, "nowhere", b"lost", mandatory=True)
    spans = otel.wait_for_count(f"publish {exchange}", 1)
    channel.connection.process_data_events(time_limit=0.5)
    spans = otel.wait_for_count(f"publish {exchange}", 2)
    publish, bounce = spans
    assert bounce.parent is not None
    assert bounce.parent.span_id == publish.context.span_id
    assert bounce.attributes["error.type"] == "unroutable"  # type: ignore[index]
    assert returned == [b"lost"]
