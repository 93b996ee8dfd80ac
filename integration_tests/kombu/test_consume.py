"""Consumers against the real broker: one process span per message around every callback, in its context."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pika
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.mixins import ConsumerMixin
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context

from broker_harness import Broker, Recorder, span_summary
from integration_tests.kombu.conftest import Instrument, declare, drain
from otel_kombu import KombuInstrumentor

SERVER = {"server.address": "127.0.0.1", "server.port": 5672}


def current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


def publish(connection: Connection, exchange: Exchange, body: Any = None, **kwargs: Any) -> None:
    Producer(connection, exchange=exchange).publish(
        body if body is not None else {"order": 1}, routing_key="order.created", **kwargs
    )


def test_callbacks_run_in_one_process_span(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """Every callback of a message runs inside one process span, child of and linked to its publish; nothing stays current."""
    exchange, queue = entities
    seen: list[tuple[str, int]] = []

    def first(body: Any, message: Any) -> None:
        seen.append(("first", current_span_id()))

    def second(body: Any, message: Any) -> None:
        seen.append(("second", current_span_id()))
        message.ack()

    with Consumer(connection, [queue], callbacks=[first, second]):
        publish(connection, exchange, message_id="m-1", correlation_id="c-1")
        drain(connection, lambda: len(seen) == 2)
    assert not trace.get_current_span().get_span_context().is_valid, "nothing current afterwards"
    spans = otel.spans()
    (process,) = otel.named(f"process {queue.name}")
    assert span_summary(process, spans) == {
        "name": f"process {queue.name}",
        "kind": "CONSUMER",
        "parent": f"publish {exchange.name}",
        "links": [f"publish {exchange.name}"],
        "status": "UNSET",
        "attributes": {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": f"{exchange.name}:order.created:{queue.name}",
            "messaging.rabbitmq.destination.routing_key": "order.created",
            "messaging.rabbitmq.message.delivery_tag": 1,
            "messaging.message.id": "m-1",
            "messaging.message.conversation_id": "c-1",
            "messaging.message.body.size": len(b'{"order": 1}'),
            **SERVER,
        },
        "events": [],
    }
    assert seen == [("first", process.context.span_id), ("second", process.context.span_id)]
    assert process.context.trace_id == otel.named(f"publish {exchange.name}")[0].context.trace_id


def test_on_message_runs_in_the_process_span(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """on_message gets the kombu Message inside the process span; a publish it makes joins the trace."""
    exchange, queue = entities
    reply = Queue(f"{queue.name}.reply", durable=False, auto_delete=True)
    declare(connection, reply)
    handled: list[int] = []

    def on_message(message: Any) -> None:
        handled.append(current_span_id())
        Producer(connection).publish({"reply": True}, routing_key=reply.name)
        message.ack()

    with Consumer(connection, [queue], on_message=on_message):
        publish(connection, exchange)
        drain(connection, lambda: bool(handled))
    spans = otel.spans()
    (process,) = otel.named(f"process {queue.name}")
    (reply_publish,) = otel.named("publish amq.default")
    assert handled == [process.context.span_id]
    assert span_summary(reply_publish, spans)["parent"] == f"process {queue.name}"
    assert not trace.get_current_span().get_span_context().is_valid


def test_handler_exception_reaches_drain_events_unchanged(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """A callback's exception marks the process span ERROR and reaches drain_events as the same object."""
    exchange, queue = entities
    failure = LookupError("unknown sku")

    def callback(body: Any, message: Any) -> None:
        raise failure

    with Consumer(connection, [queue], callbacks=[callback]):
        publish(connection, exchange)
        with pytest.raises(LookupError) as raised:
            drain(connection, lambda: False)
    assert raised.value is failure
    (process,) = otel.named(f"process {queue.name}")
    assert process.status.status_code.name == "ERROR"
    assert process.attributes is not None
    assert process.attributes["error.type"] == "LookupError"
    assert [e.name for e in process.events] == ["exception"]
    assert not trace.get_current_span().get_span_context().is_valid, "restored after the failure"
    ((attrs, _),) = otel.points("messaging.process.duration")
    assert attrs["error.type"] == "LookupError"


def test_consumer_mixin(
    traced: KombuInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """A ConsumerMixin worker's callbacks run in process spans like any Consumer's."""
    exchange, queue = entities
    declare(connection, queue)

    class Worker(ConsumerMixin):  # type: ignore[misc]
        def __init__(self, connection: Connection) -> None:
            self.connection = connection
            self.handled: list[int] = []

        def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
            return [consumer_cls(queues=[queue], callbacks=[self.on_order])]

        def on_order(self, body: Any, message: Any) -> None:
            self.handled.append(current_span_id())
            message.ack()
            self.should_stop = True

    publish(connection, exchange)
    worker_connection = Connection(rabbitmq.url, connect_timeout=10)
    worker = Worker(worker_connection)
    timer = threading.Timer(20, lambda: setattr(worker, "should_stop", True))
    timer.start()
    try:
        worker.run()
    finally:
        timer.cancel()
        worker_connection.release()
    (process,) = otel.named(f"process {queue.name}")
    assert worker.handled == [process.context.span_id]
    assert span_summary(process, otel.spans())["parent"] == f"publish {exchange.name}"


def test_bytes_traceparent_from_pika_continues_the_trace(
    traced: KombuInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """A message from a plain pika producer with a bytes traceparent continues that trace in a kombu consumer."""
    exchange, queue = entities
    trace_id, span_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    handled: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        handled.append(message.headers["traceparent"])
        message.ack()

    with Consumer(connection, [queue], callbacks=[callback]):
        params = pika.URLParameters(rabbitmq.url)
        with pika.BlockingConnection(params) as plain:
            plain.channel().basic_publish(
                exchange.name,
                "order.created",
                b'{"order": 1}',
                pika.BasicProperties(
                    content_type="application/json",
                    headers={"traceparent": f"00-{trace_id:032x}-{span_id:016x}-01".encode()},
                ),
            )
        drain(connection, lambda: bool(handled))
    assert isinstance(handled[0], bytes), "the header really arrived as bytes"
    (process,) = otel.named(f"process {queue.name}")
    assert process.context.trace_id == trace_id
    assert process.parent is not None
    assert process.parent.span_id == span_id
    assert [link.context.span_id for link in process.links] == [span_id]


def test_link_mode_starts_a_new_trace(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """With consumer_context='link' the process span starts its own trace, linked to the publish."""
    instrument(consumer_context="link")
    exchange, queue = entities
    done: list[bool] = []
    with Consumer(connection, [queue], callbacks=[lambda body, message: done.append(True)]):
        publish(connection, exchange)
        drain(connection, lambda: bool(done))
    (producer,) = otel.named(f"publish {exchange.name}")
    (process,) = otel.named(f"process {queue.name}")
    assert process.parent is None
    assert process.context.trace_id != producer.context.trace_id
    assert [link.context.span_id for link in process.links] == [producer.context.span_id]


def test_baggage_flows_through_the_message(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """Baggage set by the producer is current in the handler, becomes span attributes and is passed on."""
    instrument(baggage_attributes=("order.id",), capture_headers=("x-tenant",))
    exchange, queue = entities
    onward = Queue(f"{queue.name}.onward", durable=False, auto_delete=True)
    declare(connection, onward)
    seen: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        seen.append(baggage.get_baggage("order.id"))
        Producer(connection).publish({"next": 1}, routing_key=onward.name)
        message.ack()

    with Consumer(connection, [queue], callbacks=[callback]):
        token = otel_context.attach(baggage.set_baggage("order.id", "o-42"))
        try:
            publish(connection, exchange, headers={"x-tenant": "acme"})
        finally:
            otel_context.detach(token)
        drain(connection, lambda: bool(seen))
    assert seen == ["o-42"]
    assert baggage.get_baggage("order.id") is None, "the message's baggage does not leak"
    (process,) = otel.named(f"process {queue.name}")
    assert process.attributes is not None
    assert process.attributes["order.id"] == "o-42"
    assert process.attributes["messaging.header.x-tenant"] == "acme"
    (onward_publish,) = otel.named("publish amq.default")
    assert onward_publish.attributes is not None
    assert onward_publish.attributes["order.id"] == "o-42"


def test_consume_hook_and_a_raising_consume_hook(
    instrument: Instrument,
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """consume_hook gets the kombu Message in the envelope; one that raises never stops the handler."""
    envelopes: list[Any] = []

    def hook(span: Any, envelope: Any) -> None:
        envelopes.append(envelope)
        raise ValueError("hook bug")

    instrument(consume_hook=hook)
    exchange, queue = entities
    handled: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        handled.append((body, message))
        message.ack()

    with Consumer(connection, [queue], callbacks=[callback]):
        publish(connection, exchange, message_id="m-9")
        drain(connection, lambda: bool(handled))
    ((body, message),) = handled
    assert body == {"order": 1}
    (envelope,) = envelopes
    assert envelope.raw is message
    assert (envelope.exchange, envelope.routing_key, envelope.queue) == (
        exchange.name,
        "order.created",
        queue.name,
    )
    assert envelope.message_id == "m-9"
    assert envelope.delivery_tag == 1
    assert envelope.redelivered is False
    assert otel.named(f"process {queue.name}")[0].status.status_code.name == "UNSET"


def test_consumer_on_several_queues_names_the_right_one(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    unique: Callable[[str], str],
) -> None:
    """A consumer on two queues names each process span after the queue the message came from."""
    exchange = Exchange(unique("ex"), type="direct", durable=False, auto_delete=True)
    orders = Queue(
        unique("orders"), exchange, routing_key="orders", durable=False, auto_delete=True
    )
    refunds = Queue(
        unique("refunds"), exchange, routing_key="refunds", durable=False, auto_delete=True
    )
    handled: list[str] = []
    with Consumer(
        connection,
        [orders, refunds],
        callbacks=[lambda b, m: handled.append(m.delivery_info["routing_key"])],
    ):
        producer = Producer(connection, exchange=exchange)
        producer.publish({"n": 1}, routing_key="refunds")
        producer.publish({"n": 2}, routing_key="orders")
        drain(connection, lambda: len(handled) == 2)
    assert len(otel.named(f"process {orders.name}")) == 1
    assert len(otel.named(f"process {refunds.name}")) == 1


def test_server_named_queue_is_named_amq_gen(
    traced: KombuInstrumentor,
    otel: Recorder,
    connection: Connection,
    unique: Callable[[str], str],
) -> None:
    """A consumer on a server-named queue names its span 'process amq.gen' and marks the destination anonymous."""
    exchange = Exchange(unique("ex"), type="fanout", durable=False, auto_delete=True)
    queue = Queue("", exchange, exclusive=True)
    handled: list[Any] = []
    with Consumer(connection, [queue], callbacks=[lambda b, m: handled.append(m)]) as consumer:
        declared = consumer.queues[0].name
        assert declared.startswith("amq.gen-")
        Producer(connection, exchange=exchange).publish({"n": 1})
        drain(connection, lambda: bool(handled))
    (process,) = otel.named("process amq.gen")
    assert process.attributes is not None
    assert process.attributes["messaging.destination.anonymous"] is True
    assert process.attributes["messaging.destination.name"] == f"{exchange.name}:{declared}"
    (point,) = [
        attrs
        for attrs, _ in otel.points("messaging.client.consumed.messages")
        if attrs["messaging.operation.name"] == "process"
    ]
    assert point["messaging.destination.name"] == f"{exchange.name}:amq.gen"


def test_malformed_context_headers_never_break_the_consumer(
    traced: KombuInstrumentor,
    otel: Recorder,
    rabbitmq: Broker,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """Garbage in traceparent, tracestate and baggage (tables, numbers, invalid bytes) starts a fresh trace; the handler runs."""
    exchange, queue = entities
    handled: list[Any] = []
    with Consumer(connection, [queue], callbacks=[lambda b, m: handled.append(b)]):
        with pika.BlockingConnection(pika.URLParameters(rabbitmq.url)) as plain:
            plain.channel().basic_publish(
                exchange.name,
                "order.created",
                b'{"order": 1}',
                pika.BasicProperties(
                    content_type="application/json",
                    headers={
                        "traceparent": {"nested": [1, 2]},
                        "tracestate": 12,
                        "baggage": b"\xff\xfe\x00order.id",
                        "Traceparent": b"00-zz-" + b"x" * 5000,
                    },
                ),
            )
        drain(connection, lambda: bool(handled))
    assert handled == [{"order": 1}]
    (process,) = otel.named(f"process {queue.name}")
    assert process.parent is None
    assert process.links == ()
