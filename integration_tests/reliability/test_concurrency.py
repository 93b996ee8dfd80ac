"""Concurrency: many handlers at once never see each other's message context.

Orders are published, each in a trace of its own with its id in the baggage, onto one shared
queue; many consumers take them at the same time: 8 threads with their own pika
BlockingConnections, 100 concurrent aio-pika handlers, kombu consumers in 4 threads. Every
handler checks that the baggage it sees names its own order, and makes a child span; afterwards
each order's chain must be whole: ``order`` -> publish -> process -> ``handle`` of that order, all
in one trace, and the process span carries its own order's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Broker, Recorder
from integration_tests.reliability.conftest import (
    Instrument,
    SpanCounter,
    connection_name,
    pika_parameters,
)

pytestmark = pytest.mark.usefixtures("internal_errors")

OPTIONS: dict[str, Any] = {"baggage_attributes": ("order.id",)}


class Orders:
    """Publishes orders (each under its own root span, its id in the baggage) and records handling."""

    def __init__(self, otel: Recorder, counter: SpanCounter) -> None:
        self.otel = otel
        self.counter = counter
        self.tracer = otel.tracer_provider.get_tracer("shop")
        self.lock = threading.Lock()
        self.handled: list[int] = []
        self.mismatches: list[str] = []

    def publishing(self, order: int) -> Any:
        """A context manager: the order's root span and baggage are current inside it."""
        return _OrderScope(self.tracer, order)

    def handle(self, body: bytes) -> None:
        """A handler's work: its baggage must name its order; a child span records it."""
        order = int(body)
        seen = baggage.get_baggage("order.id")
        if seen != str(order):
            with self.lock:
                self.mismatches.append(f"order {order} handled with baggage order.id={seen}")
        with self.tracer.start_as_current_span(f"handle {order}"):
            pass
        with self.lock:
            self.handled.append(order)

    def check(self, total: int, queue: str) -> None:
        """Orders 0 to ``total`` - 1 each handled once, in its own trace and baggage, with its
        chain whole (see :func:`check_chains`); no span left open."""
        assert self.mismatches == []
        assert sorted(self.handled) == list(range(total))
        check_chains(self.otel.spans(), total, f"process {queue}")
        assert self.counter.open_spans() == []


@pytest.fixture
def orders(otel: Recorder, counter: SpanCounter) -> Orders:
    """The test's :class:`Orders`, recorded by ``otel``."""
    return Orders(otel, counter)


def consume_in_threads(count: int, name: str, consume: Callable[[], None]) -> None:
    """Run ``consume`` in ``count`` threads at once; fails if one raised, or was left with a span
    or baggage current once its consumer was done."""
    errors: list[BaseException] = []
    leftovers: list[str] = []

    def run() -> None:
        try:
            consume()
            if trace.get_current_span().get_span_context().is_valid or baggage.get_all():
                leftovers.append(threading.current_thread().name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, name=f"{name}-{n}") for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert errors == []
    assert leftovers == [], "a message's context stayed current in a consumer thread"


class _OrderScope:
    def __init__(self, tracer: trace.Tracer, order: int) -> None:
        self._tracer = tracer
        self._order = order
        self._token: Any = None
        self._span: Any = None

    def __enter__(self) -> None:
        context = baggage.set_baggage("order.id", str(self._order), otel_context.Context())
        self._token = otel_context.attach(context)
        self._span = self._tracer.start_as_current_span(f"order {self._order}")
        self._span.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._span.__exit__(*exc)
        otel_context.detach(self._token)


def check_chains(spans: list[ReadableSpan], orders: int, process_name: str) -> None:
    """Each order: ``order n`` -> publish -> process (order.id n) -> ``handle n``, one trace."""
    by_id = {s.context.span_id: s for s in spans}
    for order in range(orders):
        (root,) = [s for s in spans if s.name == f"order {order}"]
        handles = [s for s in spans if s.name == f"handle {order}"]
        assert len(handles) == 1, f"order {order} handled {len(handles)} times"
        (handle,) = handles
        assert handle.parent is not None
        process = by_id[handle.parent.span_id]
        assert process.name == process_name
        assert (process.attributes or {}).get("order.id") == str(order)
        assert process.parent is not None
        publish = by_id[process.parent.span_id]
        assert publish.name.startswith("publish ")
        assert publish.parent is not None
        assert publish.parent.span_id == root.context.span_id
        traces = {s.context.trace_id for s in (root, publish, process, handle)}
        assert traces == {root.context.trace_id}, f"order {order} crossed traces"


def test_pika_eight_threads_with_their_own_connections_keep_contexts_apart(
    instrument_pika: Instrument, orders: Orders, rabbitmq: Broker, shared_queue: str
) -> None:
    """Eight threads consuming one queue on their own BlockingConnections: every handler runs in its own message's trace and baggage, and nothing stays open or current."""
    instrument_pika(**OPTIONS)
    total = 200
    producer = BlockingConnection(pika_parameters(rabbitmq.url, connection_name("producer")))
    channel = producer.channel()
    for order in range(total):
        with orders.publishing(order):
            channel.basic_publish("", shared_queue, b"%d" % order)
    producer.close()

    def consume() -> None:
        connection = BlockingConnection(pika_parameters(rabbitmq.url, connection_name()))
        try:
            ch = connection.channel()
            ch.basic_qos(prefetch_count=5)

            def on_message(c: BlockingChannel, method: Any, _props: Any, body: bytes) -> None:
                orders.handle(body)
                c.basic_ack(method.delivery_tag)

            ch.basic_consume(shared_queue, on_message)
            deadline = time.monotonic() + 60
            while len(orders.handled) < total and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.05)
        finally:
            connection.close()

    consume_in_threads(8, "consumer", consume)
    orders.check(total, shared_queue)


@pytest.mark.asyncio
async def test_aiopika_hundred_concurrent_handlers_keep_contexts_apart(
    instrument_aiopika: Instrument, orders: Orders, rabbitmq: Broker, shared_queue: str
) -> None:
    """100 aio-pika handlers awaiting at the same time: each runs in its own message's trace and baggage, across every await."""
    import aio_pika
    from yarl import URL

    instrument_aiopika(**OPTIONS)
    total = 100
    running = 0
    most = 0
    all_in = asyncio.Event()
    connection = await aio_pika.connect(str(URL(rabbitmq.url).update_query(name=connection_name())))
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=total)
        for order in range(total):
            with orders.publishing(order):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"%d" % order), shared_queue
                )
        queue = await channel.get_queue(shared_queue, ensure=False)
        done = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            if running == total:
                all_in.set()
            with contextlib.suppress(asyncio.TimeoutError):
                # hold every handler open until all are in (or a while): they overlap
                await asyncio.wait_for(all_in.wait(), 5)
            await asyncio.sleep(random.random() / 50)
            orders.handle(message.body)
            await message.ack()
            running -= 1
            if len(orders.handled) == total:
                done.set()

        await queue.consume(on_message)
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await connection.close()
    assert most == total, f"only {most} handlers ran at once"
    assert not trace.get_current_span().get_span_context().is_valid
    orders.check(total, shared_queue)


def test_kombu_consumers_in_threads_keep_contexts_apart(
    instrument_kombu: Instrument, orders: Orders, rabbitmq: Broker, shared_queue: str
) -> None:
    """Four threads with their own kombu connections and Consumers on one queue: every callback runs in its own message's trace and baggage, and nothing stays current."""
    import kombu

    instrument_kombu(**OPTIONS)
    total = 120
    queue = kombu.Queue(shared_queue, no_declare=True)
    with kombu.Connection(rabbitmq.url) as connection:
        producer = connection.Producer()
        for order in range(total):
            with orders.publishing(order):
                producer.publish(b"%d" % order, routing_key=shared_queue)

    def consume() -> None:
        with kombu.Connection(rabbitmq.url) as connection:

            def on_message(_body: Any, message: Any) -> None:
                orders.handle(message.body)
                message.ack()

            with kombu.Consumer(connection, [queue], callbacks=[on_message], prefetch_count=5):
                deadline = time.monotonic() + 60
                while len(orders.handled) < total and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.05)

    consume_in_threads(4, "kombu", consume)
    orders.check(total, shared_queue)
