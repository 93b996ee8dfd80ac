"""Our code can never break the user's call: each core step otel-pika calls is made to raise in
turn, and the user's publish, handler and ack still run with their own results and exceptions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest
from opentelemetry import trace
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Broker
from integration_tests.internal_faults import STEPS, fault_logged, inject
from integration_tests.pika.conftest import AsyncRun, Instrument

# otel-pika's own helpers, as its wrappers look them up (the channel lookup is bound when
# instrument() builds the wrappers, so every step is broken before instrument())
PIKA_STEPS = (
    "otel_pika.instrumentor:scope_of",
    "otel_pika._consume:scope_of",
    "otel_pika._consume:remember",
    "otel_pika._state:ChannelState.queue_of",
    "otel_pika._state:ChannelState.remember_queue",
    "otel_pika._state:ChannelState.take",
    "otel_pika._publish:_with_headers",
)
BLOCKING_STEPS = (*STEPS, *PIKA_STEPS)
# the async adapters have no consume() generator: their receive spans do not remember properties
ASYNC_STEPS = (*STEPS, *(s for s in PIKA_STEPS if "_consume:scope_of" not in s))


class Boom(Exception):
    """The handler's own exception."""


@pytest.fixture
def caplog_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Our loggers down to DEBUG: a place's repeated faults are logged there."""
    caplog.set_level(logging.DEBUG, logger="otel_messaging_core")
    return caplog


@pytest.mark.parametrize("step", BLOCKING_STEPS)
def test_blocking_channel_calls_survive_a_fault_in_each_step(
    step: str,
    instrument: Instrument,
    connect: Callable[..., BlockingConnection],
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog_debug: pytest.LogCaptureFixture,
) -> None:
    """With one core step raising, a BlockingChannel publish, consumer callback, consume()
    generator, basic_get, ack and reject behave exactly as uninstrumented pika: the same
    results, every message delivered once with the caller's headers, the handler's exception
    reaching start_consuming() as the same object; the fault is logged."""
    inject(monkeypatch, step)
    instrument(settle_spans=True)
    channel = connect().channel()
    queue = unique("q")
    channel.queue_declare(queue, exclusive=True)
    properties = pika.BasicProperties(message_id="m-1", headers={"x-tenant": "acme"})
    for n in range(4):
        assert channel.basic_publish("", queue, b"order-%d" % n, properties) is None
    assert properties.headers == {"x-tenant": "acme"}

    boom = Boom("handler bug")
    seen: list[tuple[bytes, Any]] = []

    def on_message(ch: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
        seen.append((body, props.headers.get("x-tenant")))
        assert ch.basic_ack(method.delivery_tag) is None
        raise boom

    tag = channel.basic_consume(queue, on_message)
    assert isinstance(tag, str)
    with pytest.raises(Boom) as raised:
        channel.start_consuming()
    assert raised.value is boom
    channel.basic_cancel(tag)
    assert seen == [(b"order-0", "acme")]

    for method, props, body in channel.consume(queue, inactivity_timeout=10):
        assert method is not None
        assert (body, props.headers["x-tenant"]) == (b"order-1", "acme")
        assert channel.basic_ack(method.delivery_tag) is None
        break
    channel.cancel()

    got = _get(channel, queue)
    assert (got[2], got[1].headers["x-tenant"]) == (b"order-2", "acme")
    assert channel.basic_reject(got[0].delivery_tag, requeue=False) is None
    got = _get(channel, queue)
    assert got[2] == b"order-3"
    assert channel.basic_nack(got[0].delivery_tag, requeue=False) is None
    assert channel.basic_get(queue) == (None, None, None)

    confirming = connect().channel()
    confirming.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        confirming.basic_publish("", unique("nowhere"), b"lost", mandatory=True)
    assert fault_logged(caplog_debug, step)
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"


def _own(headers: Any) -> dict[str, Any]:
    """The headers the caller set (what the instrumentation added taken out)."""
    return {k: v for k, v in (headers or {}).items() if k != "traceparent"}


def _get(channel: BlockingChannel, queue: str) -> Any:
    deadline = time.monotonic() + 10
    while True:
        got = channel.basic_get(queue)
        if got[0] is not None:
            return got
        assert time.monotonic() < deadline, "no message"
        time.sleep(0.05)


@pytest.mark.parametrize("step", ASYNC_STEPS)
def test_async_adapter_calls_survive_a_fault_in_each_step(
    step: str,
    instrument: Instrument,
    rabbitmq: Broker,
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog_debug: pytest.LogCaptureFixture,
) -> None:
    """With one core step raising, a SelectConnection publish, consumer callback, basic_get
    with its callback, ack and a returned mandatory message reach the user exactly as without
    instrumentation (pika keeps the caller's own get callback); the fault is logged."""
    inject(monkeypatch, step)
    instrument(settle_spans=True)
    name = unique("q")
    run = AsyncRun(rabbitmq, "select")
    events: list[Any] = []

    def script(channel: Any) -> None:
        confirmed: list[int] = []

        def on_confirm(frame: Any) -> None:
            confirmed.append(frame.method.delivery_tag)
            if len(confirmed) == 2:  # order-2 is in the queue: get it
                assert channel.basic_get(name, on_get) is None
                events.append(("holds", channel._on_getok_callback is on_get))

        def on_get(ch: Any, method: Any, props: Any, body: bytes) -> None:
            events.append(("get", body, _own(props.headers)))
            ch.basic_ack(method.delivery_tag)
            ch.basic_publish("", unique("nowhere"), b"lost", mandatory=True)

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            events.append(("process", body, _own(props.headers)))
            ch.basic_ack(method.delivery_tag)
            ch.basic_cancel(method.consumer_tag)
            ch.basic_publish("", name, b"order-2", pika.BasicProperties(headers={"n": 2}))

        def on_return(_ch: Any, method: Any, _props: Any, body: bytes) -> None:
            events.append(("returned", body, method.reply_text))
            run.done()

        def on_declared(_frame: Any) -> None:
            channel.add_on_return_callback(on_return)
            channel.confirm_delivery(on_confirm)
            channel.basic_consume(name, on_message)
            assert channel.basic_publish("", name, b"order-1", None) is None

        channel.queue_declare(name, exclusive=True, callback=on_declared)

    run.run(script)
    assert events == [
        ("process", b"order-1", {}),
        ("holds", True),
        ("get", b"order-2", {"n": 2}),
        ("returned", b"lost", "NO_ROUTE"),
    ]
    assert fault_logged(caplog_debug, step)
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"
