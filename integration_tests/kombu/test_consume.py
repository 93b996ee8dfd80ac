"""kombu's own consumers: several callbacks, on_message, ConsumerMixin, a consumer on several
queues (the behaviour every path shares is in integration_tests/contract)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.mixins import ConsumerMixin
from opentelemetry import trace

from broker_harness import Broker, Recorder, span_summary
from integration_tests.kombu.conftest import declare, drain

pytestmark = pytest.mark.usefixtures("traced")


def current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


def publish(connection: Connection, exchange: Exchange, body: Any = None, **kwargs: Any) -> None:
    Producer(connection, exchange=exchange).publish(
        body if body is not None else {"order": 1}, routing_key="order.created", **kwargs
    )


def test_callbacks_run_in_one_process_span(
    otel: Recorder,
    connection: Connection,
    entities: tuple[Exchange, Queue],
) -> None:
    """Every callback of a message runs inside the same one process span; nothing stays current."""
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
    assert span_summary(process, spans)["parent"] == f"publish {exchange.name}"
    assert seen == [("first", process.context.span_id), ("second", process.context.span_id)]
    assert process.context.trace_id == otel.named(f"publish {exchange.name}")[0].context.trace_id


def test_on_message_runs_in_the_process_span(
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


def test_consumer_mixin(
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


def test_consumer_on_several_queues_names_the_right_one(
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
