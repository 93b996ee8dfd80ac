"""Every consumption path: a settle that drops a message is an ERROR span, other settles make spans
only with settle_spans=True, and each settle span sits in its message's trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from broker_harness import Broker, Recorder, messaging_attributes, span_summary
from integration_tests.contract.protocol import Client, Handling, Path, Settle
from integration_tests.contract.test_consume import by_tag


def operation_of(path: Path, how: Settle) -> str:
    """The settle span's operation: a requeue is a nack or a reject, as the library calls it."""
    return path.requeue_operation if how == "requeue" else how


def settle_summary(
    broker: Broker, path: Path, queue: str, operation: str, tag: int, **extra: Any
) -> dict[str, Any]:
    """The whole span a settle of delivery ``tag`` must leave (ERROR when ``extra`` names an
    error.type)."""
    return {
        "name": f"{operation} {queue}",
        "kind": "CLIENT",
        "parent": f"{path.operation} {queue}",
        "links": ["publish amq.default"],
        "status": "ERROR" if "error.type" in extra else "UNSET",
        "attributes": messaging_attributes(
            broker,
            operation,
            queue,
            queue,
            **{"messaging.rabbitmq.message.delivery_tag": tag, **extra},
        ),
        "events": [],
    }


def in_its_trace(settle: ReadableSpan, consume: ReadableSpan, publish: ReadableSpan) -> None:
    """``settle`` is a child of ``consume`` and linked to ``publish``."""
    assert settle.parent is not None
    assert settle.parent.span_id == consume.context.span_id
    assert [link.context.span_id for link in settle.links] == [publish.context.span_id]


def timed_settles(otel: Recorder) -> list[tuple[str, Any, int]]:
    """(operation, error.type, count) of the settles on messaging.client.operation.duration."""
    return sorted(
        (str(a["messaging.operation.name"]), a.get("error.type"), int(count))
        for a, count in otel.points("messaging.client.operation.duration")
        if a["messaging.operation.name"] in ("ack", "nack", "reject")
    )


@pytest.mark.paths(lambda path: bool(path.settles & {"nack", "reject"}))
def test_a_settle_that_drops_the_message_is_always_an_error_span(
    instrument: Callable[..., Any],
    otel: Recorder,
    rabbitmq: Broker,
    client: Client,
    path: Path,
    queue: str,
) -> None:
    """Without settle_spans, a nack or reject without requeue still makes a settle span: ERROR with error.type rejected, a child of the message's consume span, linked to its publish, and timed with that error.type."""
    instrument()
    drops: list[Settle] = sorted(path.settles & {"nack", "reject"})  # type: ignore[arg-type]
    for _ in drops:
        client.publish("", queue)
    path.consume(queue, len(drops), Handling(settles=drops))
    consumes = by_tag(otel.wait_for_count(f"{path.operation} {queue}", len(drops)))
    publishes = otel.named("publish amq.default")
    spans = otel.spans()
    for tag, how in enumerate(drops, start=1):
        (settle,) = otel.wait_for_count(f"{how} {queue}", 1)
        assert span_summary(settle, spans) == settle_summary(
            rabbitmq, path, queue, how, tag, **{"error.type": "rejected"}
        )
        in_its_trace(settle, consumes[tag], publishes[tag - 1])
    assert timed_settles(otel) == [(how, "rejected", 1) for how in drops]


@pytest.mark.paths(lambda path: "requeue" in path.settles)
def test_ack_and_requeue_are_timed_but_make_no_span_by_default(
    instrument: Callable[..., Any], otel: Recorder, client: Client, path: Path, queue: str
) -> None:
    """Without settle_spans a requeue and an ack make no span (the message is not lost) but are timed on messaging.client.operation.duration."""
    instrument()
    client.publish("", queue)
    consumed = path.consume(queue, 2, Handling(settles=("requeue", "ack")))
    assert [r.redelivered for r in consumed.received] == [False, True]
    otel.wait_for_count(f"{path.operation} {queue}", 2)
    assert sorted(s.name for s in otel.spans()) == sorted(
        [f"{path.operation} {queue}", f"{path.operation} {queue}", "publish amq.default"]
    )
    assert timed_settles(otel) == sorted([("ack", None, 1), (path.requeue_operation, None, 1)])


def test_settle_spans_gives_every_settle_a_span_in_its_messages_trace(
    instrument: Callable[..., Any],
    otel: Recorder,
    rabbitmq: Broker,
    client: Client,
    path: Path,
    queue: str,
) -> None:
    """With settle_spans=True a requeue and an ack each make an UNSET settle span, a child of that delivery's consume span and linked to the publish."""
    instrument(settle_spans=True)
    client.publish("", queue)
    settles: list[Settle] = ["requeue", "ack"] if "requeue" in path.settles else ["ack"]
    path.consume(queue, len(settles), Handling(settles=settles))
    consumes = by_tag(otel.wait_for_count(f"{path.operation} {queue}", len(settles)))
    (publish,) = otel.named("publish amq.default")
    for tag, how in enumerate(settles, start=1):
        operation = operation_of(path, how)
        (settle,) = otel.wait_for_count(f"{operation} {queue}", 1)
        assert span_summary(settle, otel.spans()) == settle_summary(
            rabbitmq, path, queue, operation, tag
        )
        in_its_trace(settle, consumes[tag], publish)


@pytest.mark.paths(lambda path: path.settles_later)
def test_a_message_settled_after_its_handler_stays_in_its_trace(
    instrument: Callable[..., Any], otel: Recorder, client: Client, path: Path, queue: str
) -> None:
    """A delivery acked after its handler returned, outside any span, gets an ack span under its own consume span, linked to its publish."""
    instrument(settle_spans=True)
    client.publish("", queue)
    consumed = path.consume(queue, 1, Handling(settles=(None,)))
    (consume,) = otel.wait_for_count(f"{path.operation} {queue}", 1)
    path.settle(consumed.received[0].message, "ack")
    (ack,) = otel.wait_for_count(f"ack {queue}", 1)
    in_its_trace(ack, consume, otel.named("publish amq.default")[0])


@pytest.mark.paths(lambda path: path.settles_multiple)
def test_a_multiple_ack_settles_every_delivery_up_to_its_tag_in_one_span(
    instrument: Callable[..., Any], otel: Recorder, client: Client, path: Path, queue: str
) -> None:
    """ack(multiple=True) makes one ack span for all deliveries up to its tag: messaging.batch.message_count and a link to each message's publish."""
    instrument(settle_spans=True)
    for _ in range(3):
        client.publish("", queue)
    consumed = path.consume(queue, 3, Handling(settles=(None,)))
    otel.wait_for_count(f"{path.operation} {queue}", 3)
    path.settle(consumed.received[-1].message, "ack", multiple=True)
    (ack,) = otel.wait_for_count(f"ack {queue}", 1)
    summary = span_summary(ack, otel.spans())
    assert summary["status"] == "UNSET"
    assert summary["attributes"]["messaging.batch.message_count"] == 3
    assert summary["attributes"]["messaging.rabbitmq.message.delivery_tag"] == 3
    assert sorted(link.context.span_id for link in ack.links) == sorted(
        p.context.span_id for p in otel.named("publish amq.default")
    )


@pytest.mark.paths(lambda path: path.mode == "pull")
def test_a_reject_of_a_message_pulled_before_instrument_is_still_an_error_span(
    instrument: Callable[..., Any], otel: Recorder, client: Client, path: Path, queue: str
) -> None:
    """A message pulled before instrument() and rejected without requeue after it still makes an ERROR reject span (named after its queue where the plugin can tell it)."""
    client.publish("", queue)
    got = path.pull(queue)
    assert got is not None
    instrument()
    path.settle(got.message, "reject")
    (reject,) = otel.wait_for_count(f"reject {queue}" if path.names_untracked else "reject", 1)
    summary = span_summary(reject)
    assert summary["status"] == "ERROR"
    assert summary["attributes"]["error.type"] == "rejected"
    assert summary["attributes"]["messaging.rabbitmq.message.delivery_tag"] == 1
