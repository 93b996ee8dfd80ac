"""Every consumption path, in both consumer-context modes: a message the broker dead-lettered
(per-message TTL, queue TTL, reject, max-length, a quorum queue's delivery limit) is consumed from
its dead-letter queue in (or linked to) its original trace, with why, where, how often and when it
died on the consume span and an ERROR child that marks the death."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanContext
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from integration_tests.contract.case import Case
from integration_tests.contract.plain import connection_name
from integration_tests.contract.protocol import poll

TTL_MS = 50  # tiny: the test waits by polling for the dead letter, never by sleeping
REASONS = ["expired-message-ttl", "expired-queue-ttl", "rejected", "maxlen", "delivery_limit"]


@contextlib.contextmanager
def uninstrumented() -> Iterator[None]:
    """No span and no context from here: the setup must not be what the test observes."""
    token = otel_context.attach(Context())
    try:
        with suppress_instrumentation():
            yield
    finally:
        otel_context.detach(token)


class Setup:
    """Plain pika (installed in every integration session) for topology and for the broker's
    part: rejecting and requeueing on the source queue, nothing recorded."""

    def __init__(self, case: Case) -> None:
        params = pika.URLParameters(case.broker.url)
        params.client_properties = {"connection_name": connection_name("dlx-setup")}
        with uninstrumented():
            self.connection = BlockingConnection(params)
            self.channel: BlockingChannel = self.connection.channel()
        self.queues: list[str] = []

    def declare(self, name: str, **arguments: Any) -> str:
        durable = arguments.get("x-queue-type") == "quorum"  # quorum queues are always durable
        with uninstrumented():
            self.channel.queue_declare(name, durable=durable, arguments=arguments)
        self.queues.append(name)
        return name

    def publish(self, queue: str, headers: dict[str, Any], **properties: Any) -> None:
        with uninstrumented():
            self.channel.basic_publish(
                "", queue, b"order 17", pika.BasicProperties(headers=headers, **properties)
            )

    def settle_next(self, queue: str, requeue: bool) -> None:
        """Pull the next message of ``queue`` and reject it (requeue or not)."""

        def pulled() -> Any:
            with uninstrumented():
                method, _props, _body = self.channel.basic_get(queue)
            return method

        method = poll(pulled, f"message on {queue}")
        with uninstrumented():
            self.channel.basic_nack(method.delivery_tag, requeue=requeue)

    def close(self) -> None:
        with uninstrumented(), contextlib.suppress(Exception):
            for name in self.queues:
                self.channel.queue_delete(name)
            self.connection.close()


@pytest.fixture
def broker(case: Case) -> Iterator[Setup]:
    made = Setup(case)
    yield made
    made.close()


def dead_letter(case: Case, broker: Setup, how: str) -> tuple[str, str, SpanContext]:
    """Make the broker dead-letter one message into ``case.queue``: its source queue, the reason
    the broker gives, and the span context the message was sent in (a ``checkout`` span)."""
    source = case.unique("src")
    to_dlq = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": case.queue}
    tracer = case.otel.tracer_provider.get_tracer("app")
    with uninstrumented(), tracer.start_as_current_span("checkout") as checkout:
        headers: dict[str, Any] = {}
        propagate.inject(headers)
    sent = checkout.get_span_context()
    if how == "expired-message-ttl":
        broker.declare(source, **to_dlq, **{"x-expires": 120_000})
        broker.publish(source, headers, expiration=str(TTL_MS))
        return source, "expired", sent
    if how == "expired-queue-ttl":
        broker.declare(source, **to_dlq, **{"x-expires": 120_000, "x-message-ttl": TTL_MS})
        broker.publish(source, headers)
        return source, "expired", sent
    if how == "rejected":
        broker.declare(source, **to_dlq, **{"x-expires": 120_000})
        broker.publish(source, headers)
        broker.settle_next(source, requeue=False)
        return source, "rejected", sent
    if how == "maxlen":
        broker.declare(source, **to_dlq, **{"x-expires": 120_000, "x-max-length": 1})
        broker.publish(source, headers)
        broker.publish(source, {})  # pushes the first one out: the oldest is dropped
        return source, "maxlen", sent
    assert how == "delivery_limit"
    broker.declare(source, **to_dlq, **{"x-queue-type": "quorum", "x-delivery-limit": 0})
    broker.publish(source, headers)
    broker.settle_next(source, requeue=True)  # returned once: over the limit of 0
    return source, "delivery_limit", sent


@pytest.mark.parametrize("mode", ["parent", "link"])
@pytest.mark.parametrize("how", REASONS)
def test_a_dead_lettered_message_shows_why_where_and_when_it_died_in_its_trace(
    case: Case, broker: Setup, how: str, mode: str
) -> None:
    """A message consumed from a dead-letter queue gets rabbitmq.dead_letter.* (reason, queue, exchange, routing keys, count, time) on its consume span, which stays UNSET as its handler succeeded, continues (parent) or links to (link) the trace it was sent in, and has an ERROR child "{reason} {queue}" with error.type dead_letter:{reason}."""
    case.instrument(consumer_context=mode)
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    source, reason, sent = dead_letter(case, broker, how)
    consumed = case.consume()
    assert consumed.raised is None
    consume = case.span(case.consume_name)
    death = case.span(f"{reason} {source}")
    attributes = dict(consume.attributes or {})
    died = datetime.datetime.fromisoformat(
        str(attributes.pop("rabbitmq.dead_letter.time")).replace("Z", "+00:00")
    )
    assert before <= died <= datetime.datetime.now(datetime.timezone.utc)
    expected: dict[str, Any] = {
        "rabbitmq.dead_letter.reason": reason,
        "rabbitmq.dead_letter.queue": source,
        "rabbitmq.dead_letter.exchange": "amq.default",
        "rabbitmq.dead_letter.routing_keys": (source,),
        "rabbitmq.dead_letter.count": 1,
    }
    if how == "expired-message-ttl":
        expected["rabbitmq.dead_letter.original_expiration_ms"] = TTL_MS
    assert {
        k: v
        for k, v in attributes.items()
        if k.startswith("rabbitmq.dead_letter.")  # rabbitmq.message.*: quorum queues may add
    } == expected
    assert consume.status.status_code.name == "UNSET"
    assert death.parent is not None
    assert death.parent.span_id == consume.context.span_id
    assert death.context.trace_id == consume.context.trace_id
    assert death.status.status_code.name == "ERROR"
    assert (death.attributes or {})["error.type"] == f"dead_letter:{reason}"
    if mode == "parent":
        assert consume.parent is not None
        assert consume.parent.span_id == sent.span_id
        assert consume.context.trace_id == sent.trace_id
    else:
        assert consume.parent is None
        assert consume.context.trace_id != sent.trace_id
    assert [link.context.span_id for link in consume.links] == [sent.span_id]
    assert consumed.received[0].current == consume.context  # the handler runs in it


@pytest.mark.paths(lambda path: "requeue" in path.settles)
def test_a_redelivered_message_says_so_on_its_consume_span(case: Case) -> None:
    """A delivery the broker marks redelivered (requeued once) has rabbitmq.message.redelivered=true; the first delivery has no such attribute."""
    case.requeue_then_ack()
    first, second = (case.consumes(2)[tag] for tag in (1, 2))
    assert "rabbitmq.message.redelivered" not in (first.attributes or {})
    assert (second.attributes or {})["rabbitmq.message.redelivered"] is True
    assert not [s for s in case.otel.spans() if s.name.startswith(("expired", "rejected "))]
