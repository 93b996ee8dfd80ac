"""Where the instrumentation adds nothing, pika sees exactly what the caller gave: the caller's
own basic_get callback, and a message without headers stays without headers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika
import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pika.adapters.blocking_connection import BlockingChannel

from broker_harness import Broker, Recorder
from integration_tests.pika.conftest import AsyncRun, Instrument


def get_one(channel: BlockingChannel, queue: str) -> Any:
    deadline = time.monotonic() + 10
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return properties, body
        assert time.monotonic() < deadline, "no message"
        time.sleep(0.05)


@pytest.mark.parametrize("properties", [None, pika.BasicProperties(message_id="m-1")])
def test_a_suppressed_publish_without_headers_arrives_without_headers(
    instrument: Instrument,
    otel: Recorder,
    channel: BlockingChannel,
    queue: str,
    properties: pika.BasicProperties | None,
) -> None:
    """Inside suppress_instrumentation() with nothing current, a publish with no properties, or
    properties without headers, arrives with headers None (not {}), and makes no span."""
    instrument()
    with suppress_instrumentation():
        channel.basic_publish("", queue, b"order", properties)
    received, body = get_one(channel, queue)
    assert body == b"order"
    assert received.headers is None
    if properties is not None:
        assert received.message_id == "m-1"
        assert properties.headers is None
    assert [s.name for s in otel.spans()] == [f"receive {queue}"]


def test_a_publish_with_no_tracing_configured_sends_the_callers_properties(
    instrument: Instrument,
    channel: BlockingChannel,
    queue: str,
) -> None:
    """With a tracer provider that makes no spans (tracing switched off) and no baggage, the
    message goes out as the caller gave it: no headers added."""
    from opentelemetry.trace import NoOpTracerProvider

    instrument(tracer_provider=NoOpTracerProvider())
    properties = pika.BasicProperties(headers={"x-tenant": "acme"})
    channel.basic_publish("", queue, b"order", properties)
    channel.basic_publish("", queue, b"bare")
    assert get_one(channel, queue)[0].headers == {"x-tenant": "acme"}
    assert get_one(channel, queue)[0].headers is None


def test_the_async_get_callback_pika_holds_is_the_callers(
    instrument: Instrument,
    otel: Recorder,
    rabbitmq: Broker,
    unique: Callable[[str], str],
) -> None:
    """Channel.basic_get keeps the caller's own callback in _on_getok_callback (where pika and
    its users look for it); the callback still runs inside its receive span."""
    instrument()
    name = unique("q")
    run = AsyncRun(rabbitmq, "select")
    held: list[bool] = []
    ran: list[bytes] = []

    def script(channel: Any) -> None:
        def on_get(_ch: Any, _method: Any, _properties: Any, body: bytes) -> None:
            ran.append(body)
            run.done()

        def on_confirm(_frame: Any) -> None:
            channel.basic_get(name, on_get, auto_ack=True)
            held.append(channel._on_getok_callback is on_get)

        def on_declared(_frame: Any) -> None:
            channel.confirm_delivery(on_confirm)
            channel.basic_publish("", name, b"order")

        channel.queue_declare(name, exclusive=True, callback=on_declared)

    run.run(script)
    assert held == [True]
    assert ran == [b"order"]
    (receive,) = otel.named(f"receive {name}")
    assert receive.parent is not None  # a child of the publish, whose context it carried
