"""Every consumption path: the handler runs in its message's span, under the parent-or-link rule,
a failing handler is an ERROR span, a plain producer's trace headers are read where they can be,
and server-named queues stay low-cardinality."""

from __future__ import annotations

from typing import Any

import pytest

from broker_harness import messaging_attributes, span_summary
from integration_tests.contract.case import Case
from integration_tests.contract.plain import PlainProducer
from integration_tests.contract.protocol import BODY, Handling, Received

PRODUCER_TRACE, PRODUCER_SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
TRACEPARENT = f"00-{PRODUCER_TRACE:032x}-{PRODUCER_SPAN:016x}-01"
# What producers without OpenTelemetry (or in other languages) put in the trace headers, and
# whether the consumer continues the producer's trace from it.
PLAIN_HEADERS: list[tuple[dict[str, Any], bool]] = [
    ({"traceparent": TRACEPARENT.encode(), "x-tenant": b"acme"}, True),
    ({"traceparent": 17}, False),
    ({"traceparent": "garbage", "tracestate": b"\xff\xfe"}, False),
    ({"traceparent": {"nested": [b"\x00", 15]}, "baggage": b"\xff"}, False),
    ({"Traceparent": TRACEPARENT}, True),
    (
        {
            "traceparent": {"nested": [1, 2]},
            "tracestate": 12,
            "baggage": b"\xff\xfe\x00order.id",
            "Traceparent": b"00-zz-" + b"x" * 5000,
        },
        False,
    ),
]


def test_each_message_is_handled_in_its_own_consume_span(case: Case) -> None:
    """Each message's handler runs in its own process or receive span, a child of and linked to that message's publish and carrying every attribute; the handler's spans are its children and nothing of it stays current afterwards."""
    path, otel = case.path, case.otel
    case.instrument()
    exchange = case.unique("x")
    case.client.declare_exchange(exchange, case.queue, "order.created")
    for n in range(2):
        case.client.publish(exchange, "order.created", message_id=f"m-{n}", correlation_id=f"c-{n}")
    tracer = otel.tracer_provider.get_tracer("app")
    ended: list[int] = []  # consume spans ended when each handler ran

    def look(_seen: Received) -> None:
        ended.append(len(otel.named(case.consume_name)))
        with tracer.start_as_current_span("handle"):
            pass

    consumed = case.consume(2, look=look)
    assert consumed.raised is None
    assert not consumed.after.is_valid
    assert consumed.after_baggage == {}
    consumes = case.consumes(2)
    spans = otel.spans()
    handles = {h.parent.span_id: h for h in otel.named("handle") if h.parent}
    for n, publish in enumerate(otel.named(f"publish {exchange}")):
        consume = consumes[n + 1]
        assert span_summary(consume, spans) == {
            "name": case.consume_name,
            "kind": path.span_kind,
            "parent": f"publish {exchange}",
            "links": [f"publish {exchange}"],
            "status": "UNSET",
            "attributes": messaging_attributes(
                case.broker,
                path.operation,
                f"{exchange}:order.created:{case.queue}",
                "order.created",
                **{
                    "messaging.rabbitmq.message.delivery_tag": n + 1,
                    "messaging.message.id": f"m-{n}",
                    "messaging.message.conversation_id": f"c-{n}",
                    "messaging.message.body.size": len(BODY),
                },
            ),
            "events": [],
        }
        assert consume.parent is not None
        assert consume.parent.span_id == publish.context.span_id
        assert [link.context.span_id for link in consume.links] == [publish.context.span_id]
        assert consume.context.span_id in handles, "the handler's span is the consume span's child"
    assert [r.current for r in consumed.received] == [consumes[1].context, consumes[2].context]
    if path.operation == "receive":  # a buffered delivery is not a process span too
        assert otel.named(f"process {case.queue}") == []
    if path.mode == "loop":  # a receive span covers the loop body, up to the next message
        assert ended == [0, 1]
        assert consumes[1].end_time is not None
        assert consumes[2].start_time is not None
        assert consumes[1].end_time <= consumes[2].start_time


def test_link_mode_starts_a_trace_of_its_own_linked_to_the_producer(case: Case) -> None:
    """With consumer_context="link" the consume span is the root of a new trace, linked to the publish, and still current in the handler."""
    case.instrument(consumer_context="link")
    case.publish()
    consumed = case.consume()
    consume = case.span(case.consume_name)
    publish = case.span("publish amq.default")
    assert consume.parent is None
    assert consume.context.trace_id != publish.context.trace_id
    assert [link.context.span_id for link in consume.links] == [publish.context.span_id]
    assert [r.current for r in consumed.received] == [consume.context]


@pytest.mark.paths(lambda path: path.marks_errors)
def test_a_handler_that_raises_ends_its_span_as_error(case: Case) -> None:
    """An exception from the handler ends its consume span ERROR with the exception recorded and error.type its name, counted and timed with it; it reaches the caller of the library's loop as the same object where the library passes it on, and nothing stays current."""
    path, otel = case.path, case.otel
    case.instrument()
    case.publish()
    failure = LookupError("unknown sku")
    consumed = case.consume(raises=failure)
    assert consumed.raised is (failure if path.raises_to_caller else None)
    assert not consumed.after.is_valid
    consume = case.span(case.consume_name)
    assert span_summary(consume, otel.spans()) == {
        "name": case.consume_name,
        "kind": path.span_kind,
        "parent": "publish amq.default",
        "links": ["publish amq.default"],
        "status": "ERROR",
        "attributes": messaging_attributes(
            case.broker,
            path.operation,
            case.queue,
            case.queue,
            **{
                "messaging.rabbitmq.message.delivery_tag": 1,
                "messaging.message.id": "m-1",
                "messaging.message.body.size": len(BODY),
                "error.type": "LookupError",
            },
        ),
        "events": ["exception"],
    }
    assert consume.status.description == "LookupError: unknown sku"
    assert consume.events[0].attributes is not None
    assert consume.events[0].attributes["exception.message"] == "unknown sku"
    duration = (
        "messaging.process.duration"
        if path.operation == "process"
        else "messaging.client.operation.duration"
    )
    for metric in (duration, "messaging.client.consumed.messages"):
        assert [
            (attributes.get("error.type"), count)
            for attributes, count in otel.points(metric)
            if attributes["messaging.operation.name"] == path.operation
        ] == [("LookupError", 1)], metric
    if path.rejects_on_error:  # the library rejects the message: not lost silently either
        reject = case.span(f"reject {case.queue}")
        assert reject.parent is not None
        assert reject.parent.span_id == consume.context.span_id
        assert reject.status.status_code.name == "ERROR"
        assert (reject.attributes or {})["error.type"] == "rejected"
        assert reject.events[0].attributes is not None
        assert reject.events[0].attributes["exception.type"] == "LookupError"
        assert reject.events[0].attributes["exception.message"] == "unknown sku"


def test_context_headers_from_a_plain_producer_are_read_where_possible(case: Case) -> None:
    """Trace headers from a producer without OpenTelemetry (bytes, numbers, garbage, nested tables, another letter case) continue its trace where they can be read and start a fresh one where not; every message reaches the handler, and a captured bytes header is decoded."""
    producer = PlainProducer(case.broker, case.queue)
    try:
        for headers, _continued in PLAIN_HEADERS:
            producer.publish(headers, BODY)
    finally:
        producer.close()
    case.instrument(capture_headers=("x-tenant",))
    consumed = case.consume(len(PLAIN_HEADERS))
    assert [r.body for r in consumed.received] == [BODY] * len(PLAIN_HEADERS)
    consumes = case.consumes(len(PLAIN_HEADERS))
    for tag, (_headers, continued) in enumerate(PLAIN_HEADERS, start=1):
        span = consumes[tag]
        assert span.status.is_unset, tag
        links = [(link.context.trace_id, link.context.span_id) for link in span.links]
        if continued:
            assert span.context.trace_id == PRODUCER_TRACE, tag
            assert span.parent is not None
            assert span.parent.span_id == PRODUCER_SPAN
            assert links == [(PRODUCER_TRACE, PRODUCER_SPAN)]
        else:
            assert span.context.trace_id != PRODUCER_TRACE, tag
            assert (span.parent, links) == (None, []), tag
    assert (consumes[1].attributes or {})["messaging.header.x-tenant"] == "acme"


@pytest.mark.paths(plugin=lambda plugin: plugin.server_names_queues)
def test_a_server_named_queue_is_named_amq_gen(case: Case) -> None:
    """A server-named queue, reached through the default exchange or a named one, is called amq.gen in span names and metrics and marked anonymous, while messaging.destination.name keeps its real name."""
    client, otel = case.client, case.otel
    name = client.declare_queue("", {"x-expires": 120_000})
    exchange = case.unique("x")
    try:
        assert name.startswith("amq.gen-")
        client.declare_exchange(exchange, name, "order.created")
        case.instrument()
        client.publish("", name)
        client.publish(exchange, "order.created")
        case.path.consume(name, 2, Handling())
    finally:
        client.delete_queue(name)
    consumes = case.consumes(2, f"{case.path.operation} amq.gen")
    routed = f"{exchange}:order.created"
    for span, destination in (
        (case.span("publish amq.default"), name),
        (consumes[1], name),
        (consumes[2], f"{routed}:{name}"),
    ):
        assert span.attributes is not None
        assert span.attributes["messaging.destination.anonymous"] is True
        assert span.attributes["messaging.destination.name"] == destination
    destinations = {
        metric: sorted({str(a["messaging.destination.name"]) for a, _count in otel.points(metric)})
        for metric in ("messaging.client.sent.messages", "messaging.client.consumed.messages")
    }
    assert destinations == {
        "messaging.client.sent.messages": sorted(["amq.gen", routed]),
        "messaging.client.consumed.messages": sorted(["amq.gen", f"{routed}:amq.gen"]),
    }


@pytest.mark.paths(lambda path: path.mode == "pull")
def test_a_pull_inside_a_span_is_its_child_and_leaves_that_span_current(case: Case) -> None:
    """A single-message pull makes a receive span, a child of the caller's span and linked to the publish, and leaves the caller's span current; an empty pull makes no span."""
    otel = case.otel
    case.instrument()
    assert case.path.pull(case.queue, wait=False) is None
    assert otel.spans() == []
    case.publish(correlation_id="c-9")
    with otel.tracer_provider.get_tracer("app").start_as_current_span("poll") as poll:
        got = case.path.pull(case.queue, auto_ack=True)
    assert got is not None
    assert got.body == BODY
    assert got.current == poll.get_span_context()
    receive = case.span(f"receive {case.queue}")
    assert span_summary(receive, otel.spans()) == {
        "name": f"receive {case.queue}",
        "kind": "CLIENT",
        "parent": "poll",
        "links": ["publish amq.default"],
        "status": "UNSET",
        "attributes": messaging_attributes(
            case.broker,
            "receive",
            case.queue,
            case.queue,
            **{
                "messaging.rabbitmq.message.delivery_tag": 1,
                "messaging.message.id": "m-1",
                "messaging.message.conversation_id": "c-9",
                "messaging.message.body.size": len(BODY),
            },
        ),
        "events": [],
    }
