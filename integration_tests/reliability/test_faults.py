"""Broker faults: the broker closes a consumer's connection in the middle of a stream.

A pika reconnect loop and an aio-pika robust connection must go on producing the right spans
afterwards (one span per delivery, in its message's trace: nothing wrapped twice); the span of
the delivery whose handling the loss interrupted ends ERROR with the ``error.type`` of the error
the client library reported; and nothing leaks: every span started has ended (a span processor
counts them) and the per-delivery records of the dropped channel are freed. Only the test's own
named connection is closed (``rabbitmqctl close_connection``); the broker keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pika
import pika.exceptions
import pytest
import wrapt
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Broker, Recorder
from broker_harness.broker import close_connections
from integration_tests.reliability.conftest import (
    Instrument,
    SpanCounter,
    connection_name,
    pika_parameters,
)

pytestmark = pytest.mark.slow

MESSAGES = 8
DROP_AT = 3  # the handler of this message has the broker close its connection, then acks


def close_named(name: str) -> None:
    """Close a connection from the broker's side (the listing can lag behind a new connection)."""
    deadline = time.monotonic() + 30
    while not close_connections(name, "otel reliability fault test"):
        assert time.monotonic() < deadline, f"the broker never listed connection {name}"
        time.sleep(0.3)


def publish_orders(broker: Broker, queue: str, count: int) -> None:
    """Publish orders 0..count-1 with uninstrumented-looking pika (instrumented: publish spans)."""
    connection = BlockingConnection(pika_parameters(broker.url, connection_name("producer")))
    channel = connection.channel()
    for n in range(count):
        channel.basic_publish("", queue, b"%d" % n, pika.BasicProperties(message_id=str(n)))
    connection.close()


def publish_span_of(spans: list[ReadableSpan], order: int) -> ReadableSpan:
    (found,) = [
        s
        for s in spans
        if s.name == "publish amq.default"
        and (s.attributes or {}).get("messaging.message.id") == str(order)
    ]
    return found


def check_one_trace_per_order(
    spans: list[ReadableSpan], name: str, handled: list[tuple[int, Any]]
) -> None:
    """Every delivery handled has exactly one span ``name``, a child of its order's publish."""
    consumer_spans = [s for s in spans if s.name == name]
    assert len(consumer_spans) == len(handled), "one span per delivery, none doubled"
    by_id = {s.context.span_id: s for s in consumer_spans}
    for order, span_context in handled:
        span = by_id[span_context.span_id]
        publish = publish_span_of(spans, order)
        assert span.parent is not None
        assert span.parent.span_id == publish.context.span_id
        assert span.context.trace_id == publish.context.trace_id


def assert_wrapped_once(owner: type, attribute: str) -> None:
    patched = owner.__dict__[attribute]
    assert isinstance(patched, wrapt.FunctionWrapper)
    assert not isinstance(patched.__wrapped__, wrapt.FunctionWrapper), "wrapped twice"


# -- pika ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("internal_errors")
@pytest.mark.parametrize("style", ["callback", "generator"])
def test_pika_reconnect_loop_keeps_tracing_after_the_broker_drops_the_connection(
    style: str,
    instrument_pika: Instrument,
    otel: Recorder,
    counter: SpanCounter,
    local_broker: Broker,
    shared_queue: str,
) -> None:
    """A BlockingConnection consumer whose connection the broker closes mid-stream reconnects: the interrupted delivery's spans end ERROR with pika's error, every later delivery has one span in its order's trace, and nothing is left open or tracked."""
    from otel_pika._state import state_of

    instrument_pika(settle_spans=True)
    publish_orders(local_broker, shared_queue, MESSAGES)
    name = connection_name("otel-rel-fault-pika")
    handled: list[tuple[int, Any]] = []
    done: set[int] = set()
    failures: list[BaseException] = []
    dropped_channels: list[BlockingChannel] = []

    def handle(channel: BlockingChannel, method: Any, body: bytes) -> None:
        order = int(body)
        handled.append((order, trace.get_current_span().get_span_context()))
        if order == DROP_AT and not dropped_channels:
            dropped_channels.append(channel)
            close_named(name)
        channel.basic_ack(method.delivery_tag)  # raises on the dropped connection
        done.add(order)

    deadline = time.monotonic() + 60
    while len(done) < MESSAGES:  # the service's reconnect loop
        assert time.monotonic() < deadline, f"only {sorted(done)} were handled"
        connection = BlockingConnection(pika_parameters(local_broker.url, name))
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1)
            if style == "callback":

                def on_message(ch: BlockingChannel, method: Any, _p: Any, body: bytes) -> None:
                    handle(ch, method, body)
                    if len(done) == MESSAGES:
                        ch.stop_consuming()

                channel.basic_consume(shared_queue, on_message)
                channel.start_consuming()
            else:
                for method, _properties, body in channel.consume(
                    shared_queue, inactivity_timeout=10
                ):
                    assert method is not None, "no delivery within 10 s"
                    handle(channel, method, body)
                    if len(done) == MESSAGES:
                        break
                channel.cancel()
        except pika.exceptions.AMQPConnectionError as exc:
            failures.append(exc)
        finally:
            with contextlib.suppress(Exception):
                if connection.is_open:
                    connection.close()

    assert len(failures) == 1, "the broker closed the connection once"
    error_type = f"{type(failures[0]).__module__}.{type(failures[0]).__qualname__}"
    spans = otel.spans()
    consumer_span = f"{'process' if style == 'callback' else 'receive'} {shared_queue}"
    interrupted = [s for s in spans if s.status.status_code.name == "ERROR"]
    assert {s.name for s in interrupted} == (
        {consumer_span, f"ack {shared_queue}"} if style == "callback" else {f"ack {shared_queue}"}
    )
    assert {(s.attributes or {}).get("error.type") for s in interrupted} == {error_type}
    # the interrupted order comes again (redelivered) and is handled once more, in its trace
    assert [order for order, _ in handled].count(DROP_AT) == 2
    assert done == set(range(MESSAGES))
    check_one_trace_per_order(spans, consumer_span, handled)
    assert counter.open_spans() == []
    assert counter.started == counter.ended == len(spans)
    state = state_of(dropped_channels[0]._impl)
    assert state is not None
    assert state.deliveries == {}, "the dropped channel's delivery records are freed"
    for attribute in ("basic_publish", "basic_ack", "consume", "_dispatch_events"):
        assert_wrapped_once(BlockingChannel, attribute)


# -- aio-pika -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("internal_errors")
def test_aiopika_robust_connection_keeps_tracing_after_the_broker_drops_it(
    instrument_aiopika: Instrument,
    otel: Recorder,
    counter: SpanCounter,
    local_broker: Broker,
    shared_queue: str,
) -> None:
    """A robust aio-pika consumer whose connection the broker closes mid-stream: the interrupted handler's span ends ERROR with aio-pika's error, the restored consumer traces each delivery once in its order's trace, publishes during the outage end with their outcome, and nothing is left open or tracked."""
    import aio_pika
    from yarl import URL

    from otel_aiopika._state import deliveries_of

    instrument_aiopika(settle_spans=True)
    name = connection_name("otel-rel-fault-aiopika")
    url = str(URL(local_broker.url).update_query(name=name, reconnect_interval="0.5"))
    handled: list[tuple[int, Any]] = []
    done: set[int] = set()
    raised: list[BaseException] = []
    dropped: list[Any] = []
    published: list[bool] = []  # the outcome of a publish made during the outage

    async def run() -> None:
        connection = await aio_pika.connect_robust(url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1)
            # declared (same arguments) so the robust channel restores it and its consumer
            queue = await channel.declare_queue(shared_queue, arguments={"x-expires": 120_000})
            for n in range(MESSAGES):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"%d" % n, message_id=str(n)), shared_queue
                )
            finished = asyncio.Event()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                order = int(message.body)
                handled.append((order, trace.get_current_span().get_span_context()))
                try:
                    if order == DROP_AT and not dropped:
                        dropped.append(message.channel)
                        await asyncio.to_thread(close_named, name)
                        await asyncio.sleep(
                            5
                        )  # aio-pika cancels the handler when it sees the close
                    await message.ack()
                except BaseException as exc:
                    raised.append(exc)
                    raise
                done.add(order)
                if len(done) == MESSAGES:
                    finished.set()

            await queue.consume(on_message)
            while not raised:
                await asyncio.sleep(0.01)
            try:  # publishing in the outage: the span ends with whatever the call did
                await channel.default_exchange.publish(
                    aio_pika.Message(b"x", message_id="outage"),
                    "nowhere",
                    mandatory=False,  # dropped by the broker, not returned: OK when it went out
                    timeout=2,
                )
                published.append(True)
            except Exception:
                published.append(False)
            await asyncio.wait_for(finished.wait(), 60)
        finally:
            await asyncio.wait_for(connection.close(), 10)

    asyncio.run(run())
    assert len(raised) == 1, "the broker's close interrupted one handler"
    error_type = f"{type(raised[0]).__module__}.{type(raised[0]).__qualname__}"
    spans = otel.spans()
    interrupted = [
        s for s in spans if s.status.status_code.name == "ERROR" and s.name != "publish amq.default"
    ]
    assert f"process {shared_queue}" in {s.name for s in interrupted}
    assert {s.name for s in interrupted} <= {f"process {shared_queue}", f"ack {shared_queue}"}
    assert {(s.attributes or {}).get("error.type") for s in interrupted} == {error_type}
    (outage,) = [s for s in spans if (s.attributes or {}).get("messaging.message.id") == "outage"]
    assert outage.status.status_code.name == ("UNSET" if published[0] else "ERROR"), (
        published,
        outage.attributes,
        [(e.name, e.attributes) for e in outage.events],
    )
    assert [order for order, _ in handled].count(DROP_AT) == 2
    assert done == set(range(MESSAGES))
    check_one_trace_per_order(spans, f"process {shared_queue}", handled)
    assert counter.open_spans() == []
    assert counter.started == counter.ended == len(spans)
    records = deliveries_of(dropped[0], create=False)
    assert records is None or records.records == {}, "the dropped channel's records are freed"


# -- kombu --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("internal_errors")
def test_kombu_consumer_mixin_keeps_tracing_after_the_broker_drops_the_connection(
    instrument_kombu: Instrument,
    otel: Recorder,
    counter: SpanCounter,
    local_broker: Broker,
    shared_queue: str,
) -> None:
    """A kombu ConsumerMixin whose connection the broker closes mid-stream reconnects and consumes again: every delivery before and after has one process span in its order's trace, and nothing is left open."""
    import kombu
    from kombu.mixins import ConsumerMixin

    instrument_kombu()
    name = connection_name("otel-rel-fault-kombu")
    handled: list[tuple[int, Any]] = []
    done: set[int] = set()
    dropped: list[bool] = []
    queue = kombu.Queue(shared_queue, no_declare=True)

    class Worker(ConsumerMixin):  # type: ignore[misc]
        def __init__(self, connection: kombu.Connection) -> None:
            self.connection = connection

        def get_consumers(self, consumer: Any, _channel: Any) -> list[Any]:
            return [consumer([queue], callbacks=[self.on_message], prefetch_count=1)]

        def on_message(self, body: Any, message: Any) -> None:
            order = int(message.body)
            handled.append((order, trace.get_current_span().get_span_context()))
            if order == DROP_AT and not dropped:
                dropped.append(True)
                close_named(name)
            message.ack()  # lost with the connection: the broker delivers the order again
            done.add(order)
            if len(done) == MESSAGES:
                self.should_stop = True

        def on_connection_error(self, exc: Exception, interval: float) -> None:
            pass  # kombu logs a warning; the reconnect is what this test is about

    connection = kombu.Connection(
        local_broker.url, transport_options={"client_properties": {"connection_name": name}}
    )
    with connection:
        producer = connection.Producer()
        for n in range(MESSAGES):
            producer.publish(str(n).encode(), routing_key=shared_queue, message_id=str(n))
        worker = Worker(connection)
        deadline = time.monotonic() + 60
        while not worker.should_stop:
            assert time.monotonic() < deadline, f"only {sorted(done)} were handled"
            worker.run()  # returns on should_stop, reconnects on connection errors

    assert dropped == [True]
    assert done == set(range(MESSAGES))
    # py-amqp's ack on the closed connection went nowhere: the broker delivered the order again
    assert [order for order, _ in handled].count(DROP_AT) == 2
    spans = otel.spans()
    check_one_trace_per_order(spans, f"process {shared_queue}", handled)
    assert counter.open_spans() == []
    assert counter.started == counter.ended == len(spans)
