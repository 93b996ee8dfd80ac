"""Every plugin's publish: one PRODUCER span, the context sent in a copy of the caller's headers,
propagation under suppress_instrumentation(), and a broker nack as an ERROR span."""

from __future__ import annotations

import contextlib

import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation

from broker_harness import Traceparent, header_text, messaging_attributes, span_summary
from integration_tests.contract.case import Case
from integration_tests.contract.protocol import BODY

pytestmark = pytest.mark.per_plugin


def qualified_name(exc: BaseException) -> str:
    kind = type(exc)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


@pytest.mark.parametrize("to", ["default exchange", "named exchange"])
def test_a_publish_is_one_producer_span_and_sends_its_context_in_a_copy(
    case: Case, to: str
) -> None:
    """A publish makes exactly one PRODUCER span with every attribute (a child of the current span, if any); the caller's headers stay as they were, on the caller's message too, and the message sent carries the span's context."""
    client, queue = case.client, case.queue
    exchange, routing_key = ("", queue) if to == "default exchange" else (case.unique("x"), "rk")
    if exchange:
        client.declare_exchange(exchange, queue, routing_key)
    case.instrument()
    headers = {"x-app": "shop"}
    tracer = case.otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("checkout") if exchange else contextlib.nullcontext():
        client.publish(exchange, routing_key, headers=headers, correlation_id="c-1")
    assert headers == {"x-app": "shop"}, "the caller's headers are never changed"
    before, after = client.held_headers
    assert after is before, "nor replaced on the caller's message"
    assert dict(after) == {"x-app": "shop"}
    name = f"publish {exchange or 'amq.default'}"
    publish = case.span(name)
    assert span_summary(publish, case.otel.spans()) == {
        "name": name,
        "kind": "PRODUCER",
        "parent": "checkout" if exchange else None,
        "links": [],
        "status": "UNSET",
        "attributes": messaging_attributes(
            case.broker,
            "publish",
            f"{exchange}:{routing_key}" if exchange else queue,
            routing_key,
            **{
                "messaging.message.id": "m-1",
                "messaging.message.conversation_id": "c-1",
                "messaging.message.body.size": len(BODY),
            },
        ),
        "events": [],
    }
    body, sent = client.fetch(queue)
    assert body == BODY
    assert header_text(sent, "x-app") == "shop"
    assert Traceparent.in_headers(sent) == Traceparent.of(publish)


def test_a_suppressed_publish_records_nothing_but_still_carries_the_context(case: Case) -> None:
    """Inside suppress_instrumentation() a publish makes no span, yet the message carries the current context."""
    case.instrument()
    tracer = case.otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("request") as request, suppress_instrumentation():
        case.publish()
    _body, sent = case.client.fetch(case.queue)
    assert [s.name for s in case.otel.spans()] == ["request"]
    assert Traceparent.in_headers(sent) == Traceparent.of(request)


def test_a_publish_the_broker_nacks_is_an_error_span_and_the_caller_gets_the_error(
    case: Case,
) -> None:
    """In publisher-confirm mode a publish the broker nacks (a full reject-publish queue) raises the library's own error, unchanged, and ends ERROR with error.type broker_nack, counted as such."""
    client = case.client
    full = client.declare_queue(
        case.unique("full"),
        {"x-max-length": 1, "x-overflow": "reject-publish", "x-expires": 60_000},
    )
    try:
        case.instrument()
        client.publish("", full, confirm=True)
        with pytest.raises(Exception) as raised:
            client.publish("", full, confirm=True)
    finally:
        client.delete_queue(full)
    assert client.is_broker_nack(raised.value), repr(raised.value)
    accepted, nacked = case.otel.named("publish amq.default")
    assert accepted.status.is_unset
    assert span_summary(nacked)["status"] == "ERROR"
    assert span_summary(nacked)["attributes"]["error.type"] == "broker_nack"
    assert [e.name for e in nacked.events] == ["exception"]
    assert nacked.events[0].attributes is not None
    assert nacked.events[0].attributes["exception.type"] == qualified_name(raised.value)
    assert sorted(
        (attributes.get("error.type", ""), count)
        for attributes, count in case.otel.points("messaging.client.sent.messages")
    ) == [("", 1), ("broker_nack", 1)]
