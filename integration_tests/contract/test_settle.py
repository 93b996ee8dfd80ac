"""Every consumption path: a settle that drops a message is an ERROR span, other settles make spans
only with settle_spans=True, and each settle span sits in its message's trace."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from broker_harness import messaging_attributes, span_summary
from integration_tests.contract.case import Case
from integration_tests.contract.protocol import Settle


def settle_summary(case: Case, operation: str, tag: int, **extra: Any) -> dict[str, Any]:
    """The whole span a settle of delivery ``tag`` must leave (ERROR when ``extra`` names an
    error.type)."""
    return {
        "name": f"{operation} {case.queue}",
        "kind": "CLIENT",
        "parent": case.consume_name,
        "links": ["publish amq.default"],
        "status": "ERROR" if "error.type" in extra else "UNSET",
        "attributes": messaging_attributes(
            case.broker,
            operation,
            case.queue,
            case.queue,
            **{"messaging.rabbitmq.message.delivery_tag": tag, **extra},
        ),
        "events": [],
    }


def in_its_trace(settle: ReadableSpan, consume: ReadableSpan, publish: ReadableSpan) -> None:
    """``settle`` is a child of ``consume`` and linked to ``publish``."""
    assert settle.parent is not None
    assert settle.parent.span_id == consume.context.span_id
    assert [link.context.span_id for link in settle.links] == [publish.context.span_id]


def timed_settles(case: Case) -> list[tuple[str, Any, int]]:
    """(operation, error.type, count) of the settles on messaging.client.operation.duration."""
    return sorted(
        (str(a["messaging.operation.name"]), a.get("error.type"), int(count))
        for a, count in case.otel.points("messaging.client.operation.duration")
        if a["messaging.operation.name"] in ("ack", "nack", "reject")
    )


@pytest.mark.paths(lambda path: bool(path.settles & {"nack", "reject"}))
def test_a_settle_that_drops_the_message_is_always_an_error_span(case: Case) -> None:
    """Without settle_spans, a nack or reject without requeue still makes a settle span: ERROR with error.type rejected, a child of the message's consume span, linked to its publish, and timed with that error.type."""
    case.instrument()
    drops: list[Settle] = sorted(case.path.settles & {"nack", "reject"})
    for _ in drops:
        case.publish()
    case.consume(len(drops), settles=drops)
    consumes = case.consumes(len(drops))
    publishes = case.otel.named("publish amq.default")
    for tag, how in enumerate(drops, start=1):
        settle = case.span(f"{how} {case.queue}")
        assert span_summary(settle, case.otel.spans()) == settle_summary(
            case, how, tag, **{"error.type": "rejected"}
        )
        in_its_trace(settle, consumes[tag], publishes[tag - 1])
    assert timed_settles(case) == [(how, "rejected", 1) for how in drops]


@pytest.mark.paths(lambda path: "requeue" in path.settles)
def test_ack_and_requeue_are_timed_but_make_no_span_by_default(case: Case) -> None:
    """Without settle_spans a requeue and an ack make no span (the message is not lost) but are timed on messaging.client.operation.duration."""
    case.requeue_then_ack()
    case.consumes(2)
    assert sorted(s.name for s in case.otel.spans()) == sorted(
        [case.consume_name, case.consume_name, "publish amq.default"]
    )
    requeue = case.path.requeue_operation
    assert timed_settles(case) == sorted([("ack", None, 1), (requeue, None, 1)])


def test_settle_spans_gives_every_settle_a_span_in_its_messages_trace(case: Case) -> None:
    """With settle_spans=True a requeue and an ack each make an UNSET settle span, a child of that delivery's consume span and linked to the publish."""
    case.instrument(settle_spans=True)
    case.publish()
    settles: list[Settle] = ["requeue", "ack"] if "requeue" in case.path.settles else ["ack"]
    case.consume(len(settles), settles=settles)
    consumes = case.consumes(len(settles))
    publish = case.span("publish amq.default")
    for tag, how in enumerate(settles, start=1):
        operation = case.path.requeue_operation if how == "requeue" else how
        settle = case.span(f"{operation} {case.queue}")
        assert span_summary(settle, case.otel.spans()) == settle_summary(case, operation, tag)
        in_its_trace(settle, consumes[tag], publish)


@pytest.mark.paths(lambda path: path.settles_later)
def test_a_message_settled_after_its_handler_stays_in_its_trace(case: Case) -> None:
    """A delivery acked after its handler returned, outside any span, gets an ack span under its own consume span, linked to its publish."""
    case.instrument(settle_spans=True)
    case.publish()
    consumed = case.consume(settles=(None,))
    consume = case.span(case.consume_name)
    case.path.settle(consumed.received[0].message, "ack")
    in_its_trace(case.span(f"ack {case.queue}"), consume, case.span("publish amq.default"))


@pytest.mark.paths(lambda path: path.settles_multiple)
def test_a_multiple_ack_settles_every_delivery_up_to_its_tag_in_one_span(case: Case) -> None:
    """ack(multiple=True) makes one ack span for all deliveries up to its tag: messaging.batch.message_count and a link to each message's publish."""
    case.instrument(settle_spans=True)
    for _ in range(3):
        case.publish()
    consumed = case.consume(3, settles=(None,))
    case.consumes(3)
    case.path.settle(consumed.received[-1].message, "ack", multiple=True)
    ack = case.span(f"ack {case.queue}")
    summary = span_summary(ack, case.otel.spans())
    assert summary["status"] == "UNSET"
    assert summary["attributes"]["messaging.batch.message_count"] == 3
    assert summary["attributes"]["messaging.rabbitmq.message.delivery_tag"] == 3
    assert sorted(link.context.span_id for link in ack.links) == sorted(
        p.context.span_id for p in case.otel.named("publish amq.default")
    )


@pytest.mark.paths(lambda path: path.mode == "pull")
def test_a_reject_of_a_message_pulled_before_instrument_is_still_an_error_span(case: Case) -> None:
    """A message pulled before instrument() and rejected without requeue after it still makes an ERROR reject span (named after its queue where the plugin can tell it)."""
    case.publish()
    got = case.path.pull(case.queue)
    assert got is not None
    case.instrument()
    case.path.settle(got.message, "reject")
    summary = span_summary(
        case.span(f"reject {case.queue}" if case.path.names_untracked else "reject")
    )
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"] == "rejected"
    assert summary["attributes"]["messaging.rabbitmq.message.delivery_tag"] == 1
