"""Our code can never break the user's call: each core step otel-kombu calls is made to raise in
turn, and the user's publish, handler and ack still run with their own results and exceptions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kombu
import pytest
from kombu import Connection, Exchange, Queue
from opentelemetry import trace

from integration_tests.internal_faults import STEPS, fault_logged, inject
from integration_tests.kombu.conftest import Instrument, declare, drain

# otel-kombu's own helpers, as its wrappers look them up at call time
KOMBU_STEPS = (
    "otel_kombu._publish:binding_for",
    "otel_kombu._publish:_positional",
    "otel_kombu._publish:_copy_headers",
    "otel_kombu._consume:binding_for",
    "otel_kombu._consume:_queue_of",
    "otel_kombu._consume:_sweep",
    "otel_kombu._settle:binding_for",
)


class Boom(Exception):
    """The handler's own exception."""


def own(headers: Any) -> dict[str, Any]:
    """The headers the caller set (what the instrumentation, and kombu for a compressed body,
    added taken out)."""
    return {k: v for k, v in (headers or {}).items() if k not in ("traceparent", "compression")}


@pytest.mark.parametrize("step", [*STEPS, *KOMBU_STEPS])
def test_calls_survive_a_fault_in_each_step(
    step: str,
    instrument: Instrument,
    connection: Connection,
    entities: tuple[Exchange, Queue],
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With one core step raising, Producer.publish (plain, retrying and compressed), a Consumer
    callback, SimpleQueue.get, ack, reject and requeue behave exactly as uninstrumented kombu:
    the same results, every message delivered once with the caller's headers, the handler's
    exception reaching drain_events() as the same object; the fault is logged."""
    caplog.set_level(logging.DEBUG, logger="otel_messaging_core")
    inject(monkeypatch, step)
    instrument(settle_spans=True)
    exchange, queue = entities
    declare(connection, exchange, queue)
    producer = connection.Producer()
    headers = {"x-tenant": "acme"}
    publish: dict[str, Any] = {"exchange": exchange, "routing_key": "order.created"}
    producer.publish({"n": 0}, headers=headers, **publish)
    producer.publish({"n": 1}, headers=headers, retry=True, **publish)
    # kombu itself writes "compression" into the headers dict it is given (our wrapper sends a
    # copy, unless that step is the broken one): this publish gets a dict of its own
    producer.publish({"n": 2}, headers=dict(headers), compression="zlib", **publish)
    assert headers == {"x-tenant": "acme"}

    boom = Boom("handler bug")
    seen: list[tuple[Any, dict[str, Any]]] = []

    def on_message(body: Any, message: Any) -> None:
        seen.append((body, own(message.headers)))
        assert message.ack() is None
        if body == {"n": 1}:
            raise boom

    consumer = kombu.Consumer(connection, [queue], callbacks=[on_message], prefetch_count=1)
    with consumer:
        with pytest.raises(Boom) as raised:
            drain(connection, lambda: len(seen) == 3)
        assert raised.value is boom
        drain(connection, lambda: len(seen) == 3)
    assert [body for body, _ in seen] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(got == {"x-tenant": "acme"} for _, got in seen)

    simple = connection.SimpleQueue(queue, no_ack=False)
    try:
        for n in (3, 4):
            producer.publish({"n": n}, headers=headers, **publish)
        message = simple.get(timeout=10)
        assert (message.payload, own(message.headers)) == ({"n": 3}, headers)
        assert message.requeue() is None
        message = simple.get(timeout=10)
        assert message.payload in ({"n": 3}, {"n": 4})
        assert message.reject() is None
        message = simple.get(timeout=10)
        assert message.ack() is None
        with pytest.raises(simple.Empty):
            simple.get(timeout=0.2)
        # Producer._publish called with keywords (its arguments are bound to positions first)
        producer._publish(
            b'{"n": 6}',
            0,
            "application/json",
            "utf-8",
            dict(headers),
            {},
            "order.created",
            mandatory=False,
            immediate=False,
            exchange=exchange.name,
            declare=[],
        )
        message = simple.get(timeout=10)
        assert (message.payload, own(message.headers)) == ({"n": 6}, headers)
        assert message.ack() is None
    finally:
        simple.close()

    lost = Exchange(unique("nowhere"), type="direct", durable=False, auto_delete=True)
    declare(connection, lost)
    producer.publish({"n": 5}, exchange=lost, routing_key="none", mandatory=True)
    assert fault_logged(caplog, step)
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"
