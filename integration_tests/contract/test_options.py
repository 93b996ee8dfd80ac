"""Every consumption path: hooks get the shared envelope and may fail harmlessly, and
capture_headers and baggage_attributes copy what travels with the message onto its spans."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.trace import Span

from broker_harness import header_text
from integration_tests.contract.case import Case
from integration_tests.contract.protocol import BODY


def test_hooks_get_the_envelope_and_a_raising_hook_breaks_nothing(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """publish_hook and consume_hook get the span and the shared Envelope of every message; a hook that raises is logged once per hook and the publish and the handler go on."""
    seen: list[tuple[str, Any]] = []

    def publish_hook(span: Span, envelope: Any) -> None:
        seen.append(("publish", envelope))
        span.set_attribute("app.hook", "publish")
        raise ValueError("publish hook bug")

    def consume_hook(span: Span, envelope: Any) -> None:
        seen.append(("consume", envelope))
        raise ValueError("consume hook bug")

    case.instrument(publish_hook=publish_hook, consume_hook=consume_hook)
    with caplog.at_level(logging.WARNING, logger="otel_messaging_core"):
        given = [
            case.publish(headers={"x-k": "v"}, message_id=f"m-{n}", correlation_id="c-1")
            for n in range(2)
        ]
        consumed = case.consume(2)
        case.consumes(2)
    assert [r.body for r in consumed.received] == [BODY, BODY]
    assert [s.status.status_code.name for s in case.otel.spans()] == ["UNSET"] * 4
    warned = [
        r for r in caplog.records if r.levelno == logging.WARNING and "hook" in r.getMessage()
    ]
    assert [str(r.exc_info[1]) for r in warned if r.exc_info] == [
        "publish hook bug",
        "consume hook bug",
    ], "logged once per hook, not per message"
    sent = [envelope for kind, envelope in seen if kind == "publish"]
    got = [envelope for kind, envelope in seen if kind == "consume"]
    assert [e.message_id for e in sent] == ["m-0", "m-1"]
    assert (sent[0].exchange, sent[0].routing_key, sent[0].body, sent[0].correlation_id) == (
        "",
        case.queue,
        BODY,
        "c-1",
    )
    assert sent[0].headers["x-k"] == "v"
    assert "traceparent" in sent[0].headers
    assert case.plugin.published_raw_ok(sent[0].raw, given[0], "m-0")
    first = consumed.received[0]
    assert [e.body for e in got] == [BODY, BODY]
    assert (
        got[0].exchange,
        got[0].routing_key,
        got[0].queue,
        got[0].delivery_tag,
        got[0].redelivered,
        got[0].message_id,
    ) == ("", case.queue, case.queue, first.delivery_tag, False, "m-0")
    assert got[0].raw is first.raw
    hooked = [(p.attributes or {}).get("app.hook") for p in case.otel.named("publish amq.default")]
    assert hooked == ["publish", "publish"]


def test_baggage_and_named_headers_travel_with_the_message(case: Case) -> None:
    """The producer's baggage is current in the handler and gone after it and rides on the handler's own publish; baggage_attributes puts it on every span and capture_headers copies the named headers (and no others) onto the publish and consume spans."""
    client = case.client
    case.instrument(baggage_attributes=("order.id",), capture_headers=("x-tenant",))
    onward = client.declare_queue(case.unique("onward"), {"x-expires": 120_000})
    try:
        token = otel_context.attach(baggage.set_baggage("order.id", "17"))
        try:
            case.publish(headers={"x-tenant": "acme", "x-other": "no"})
        finally:
            otel_context.detach(token)
        consumed = case.consume(forward_to=onward)
        _body, forwarded = client.fetch(onward)
    finally:
        client.delete_queue(onward)
    assert [r.baggage for r in consumed.received] == [{"order.id": "17"}]
    assert consumed.after_baggage == {}
    assert "order.id=17" in (header_text(forwarded, "baggage") or "")
    consume = case.span(case.consume_name)
    first_publish = case.otel.wait_for_count("publish amq.default", 2)[0]
    for span in case.otel.spans():
        assert (span.attributes or {}).get("order.id") == "17", span.name
    for span in (first_publish, consume):
        assert span.attributes is not None
        assert span.attributes["messaging.header.x-tenant"] == "acme", span.name
        assert "messaging.header.x-other" not in span.attributes
