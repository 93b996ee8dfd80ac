"""Lifecycle: instrumentation switched off while messages flow, switched on after connections
exist, and instrumentors of different libraries in one process.

* ``uninstrument()`` while a producer and a consumer run in other threads (or tasks): no crash,
  no message lost or duplicated, and spans stop: once the calls in flight at that moment are
  done, no span starts again.
* ``instrument()`` after connections, channels and consumers exist: each plugin traces them as
  its guide says: existing channels, producers and consumers, in every plugin.
* aio-pika publishes, kombu consumes and publishes with pika, pika consumes: one process with
  three instrumentors makes one connected trace, baggage included.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Broker, Recorder, span_summary
from integration_tests.reliability.conftest import (
    Instrument,
    SpanCounter,
    ack_one,
    connection_name,
    pika_parameters,
)

TOTAL = 300
IN_FLIGHT_SLACK = 4  # spans that may start after uninstrument() returned: calls already inside


class Flow:
    """A producer thread and a consumer thread moving ``TOTAL`` numbered messages."""

    def __init__(self) -> None:
        self.handled: list[int] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def wait_handled(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.handled) < count:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"only {len(self.handled)} handled"
            time.sleep(0.01)

    def run(self, *targets: Callable[[], None]) -> list[threading.Thread]:
        def guarded(target: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    target()
                except BaseException as exc:
                    self.errors.append(exc)

            return run

        threads = [threading.Thread(target=guarded(t)) for t in targets]
        for thread in threads:
            thread.start()
        return threads


def check_uninstrumented_mid_flow(
    flow: Flow, counter: SpanCounter, uninstrument: Callable[[], None], threads: Any
) -> None:
    flow.wait_handled(TOTAL // 3)
    uninstrument()
    right_after = counter.started
    flow.wait_handled(TOTAL // 3 + 50)
    settled = counter.started
    flow.wait_handled(TOTAL)
    flow.stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert flow.errors == []
    assert sorted(flow.handled) == list(range(TOTAL)), "every message handled exactly once"
    assert settled - right_after <= IN_FLIGHT_SLACK
    assert counter.started == settled, "spans started after uninstrument() had settled"
    assert counter.open_spans() == []


# -- uninstrument() while messages flow -----------------------------------------------------------


def test_pika_uninstrument_while_messages_flow(
    instrument_pika: Instrument,
    counter: SpanCounter,
    rabbitmq: Broker,
    shared_queue: str,
) -> None:
    """uninstrument() while threads publish and consume with pika: no error, no message lost or doubled, and no span starts once the calls in flight are done."""
    instrumentor = instrument_pika(settle_spans=True)
    flow = Flow()

    def produce() -> None:
        connection = BlockingConnection(pika_parameters(rabbitmq.url, connection_name()))
        channel = connection.channel()
        for n in range(TOTAL):
            channel.basic_publish("", shared_queue, b"%d" % n)
            time.sleep(0.002)
        connection.close()

    def consume() -> None:
        connection = BlockingConnection(pika_parameters(rabbitmq.url, connection_name()))
        channel = connection.channel()

        def on_message(ch: BlockingChannel, method: Any, _p: Any, body: bytes) -> None:
            flow.handled.append(int(body))
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(shared_queue, on_message)
        while not flow.stop.is_set():
            connection.process_data_events(time_limit=0.05)
        connection.close()

    threads = flow.run(produce, consume)
    check_uninstrumented_mid_flow(flow, counter, instrumentor.uninstrument, threads)


def test_kombu_uninstrument_while_messages_flow(
    instrument_kombu: Instrument,
    counter: SpanCounter,
    rabbitmq: Broker,
    shared_queue: str,
) -> None:
    """uninstrument() while threads publish and consume with kombu: no error, no message lost or doubled, and no span starts once the calls in flight are done."""
    import kombu

    instrumentor = instrument_kombu(settle_spans=True)
    flow = Flow()
    queue = kombu.Queue(shared_queue, no_declare=True)

    def produce() -> None:
        with kombu.Connection(rabbitmq.url) as connection:
            producer = connection.Producer()
            for n in range(TOTAL):
                producer.publish(b"%d" % n, routing_key=shared_queue)
                time.sleep(0.002)

    def consume() -> None:
        with kombu.Connection(rabbitmq.url) as connection:

            def on_message(_body: Any, message: Any) -> None:
                flow.handled.append(int(message.body))
                message.ack()

            with kombu.Consumer(connection, [queue], callbacks=[on_message]):
                while not flow.stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.05)

    threads = flow.run(produce, consume)
    check_uninstrumented_mid_flow(flow, counter, instrumentor.uninstrument, threads)


@pytest.mark.asyncio
async def test_aiopika_uninstrument_while_messages_flow(
    instrument_aiopika: Instrument,
    counter: SpanCounter,
    rabbitmq: Broker,
    shared_queue: str,
) -> None:
    """uninstrument() while tasks publish and consume (a callback and the queue iterator) with aio-pika: nothing lost or doubled, and no span starts afterwards."""
    import aio_pika
    from yarl import URL

    instrumentor = instrument_aiopika(settle_spans=True)
    handled: list[int] = []
    url = str(URL(rabbitmq.url).update_query(name=connection_name()))
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        other = await (await connection.channel()).declare_queue(exclusive=True)
        queue = await channel.get_queue(shared_queue, ensure=False)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            handled.append(int(message.body))
            await message.ack()

        await queue.consume(on_message)

        async def produce() -> None:
            for n in range(TOTAL):
                await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), shared_queue)
                await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), other.name)

        iterated: list[int] = []
        current: list[Any] = []  # the span current in the loop body after uninstrument()

        async def iterate() -> None:
            async with other.iterator() as messages:
                async for message in messages:
                    if not instrumentor.is_instrumented_by_opentelemetry:
                        current.append(trace.get_current_span())
                    iterated.append(int(message.body))
                    await message.ack()
                    if len(iterated) == TOTAL:
                        break

        producing = asyncio.ensure_future(produce())
        iterating = asyncio.ensure_future(iterate())
        while len(handled) < TOTAL // 3:
            await asyncio.sleep(0.005)
        instrumentor.uninstrument()
        right_after = counter.started
        await asyncio.wait_for(asyncio.gather(producing, iterating), 60)
        while len(handled) < TOTAL:
            await asyncio.sleep(0.01)
    finally:
        await connection.close()
    assert sorted(handled) == list(range(TOTAL))
    assert sorted(iterated) == list(range(TOTAL))
    assert counter.open_spans() == []
    assert counter.names[right_after:] == [], "a span started after uninstrument()"
    stale = [span for span in current if span.get_span_context().is_valid]
    assert stale == [], "a message's context stayed current in the iterating task"


@pytest.mark.asyncio
@pytest.mark.parametrize("caller", ["loop body", "another task"])
async def test_aiopika_uninstrument_during_an_iterator_loop_leaves_nothing_behind(
    caller: str,
    instrument_aiopika: Instrument,
    counter: SpanCounter,
    rabbitmq: Broker,
) -> None:
    """uninstrument() while an aio-pika queue iterator's loop body runs (called in it, or from another task): its receive span ends and the next messages' bodies run with nothing of it current."""
    import aio_pika
    from yarl import URL

    if caller == "another task" and sys.version_info < (3, 12):
        pytest.skip("Python < 3.12 gives no way into another task's context (documented limit)")
    instrumentor = instrument_aiopika()
    connection = await aio_pika.connect(str(URL(rabbitmq.url).update_query(name=connection_name())))
    current: list[Any] = []
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        for n in range(3):
            await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), queue.name)
        first = asyncio.Event()
        resume = asyncio.Event()

        async def iterate() -> None:
            async with queue.iterator() as messages:
                async for message in messages:
                    current.append(trace.get_current_span())
                    if len(current) == 1:
                        if caller == "loop body":
                            instrumentor.uninstrument()
                        else:
                            first.set()
                            await resume.wait()  # the loop body is suspended here
                    await message.ack()
                    if len(current) == 3:
                        break
            current.append(trace.get_current_span())  # after the loop

        iterating = asyncio.ensure_future(iterate())
        if caller == "another task":
            await asyncio.wait_for(first.wait(), 10)
            instrumentor.uninstrument()
            resume.set()
        await asyncio.wait_for(iterating, 10)
    finally:
        await connection.close()
    assert current[0].get_span_context().is_valid  # the first body ran in its receive span
    assert [span.get_span_context().is_valid for span in current[1:]] == [False, False, False]
    assert counter.open_spans() == []
    assert counter.names == ["publish amq.default"] * 3 + ["receive amq.gen"]


# -- instrument() after connections exist ---------------------------------------------------------


@pytest.mark.asyncio
async def test_aiopika_instrument_after_channels_exist(
    instrument_aiopika: Instrument,
    otel: Recorder,
    rabbitmq: Broker,
    unique: Callable[[str], str],
) -> None:
    """instrument() after an aio-pika channel, queue and consumer exist: publishes and gets on them are traced, and so are the consumers registered before and after it."""
    import aio_pika
    from yarl import URL

    connection = await aio_pika.connect(str(URL(rabbitmq.url).update_query(name=connection_name())))
    try:
        channel = await connection.channel()
        early = await channel.declare_queue(unique("early"), exclusive=True)
        late = await channel.declare_queue(unique("late"), exclusive=True)
        pulled = await channel.declare_queue(unique("pulled"), exclusive=True)
        got: asyncio.Queue[str] = asyncio.Queue()

        def handler(name: str) -> Callable[[Any], Any]:
            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                await message.ack()
                got.put_nowait(name)

            return on_message

        await early.consume(handler("early"))
        instrument_aiopika()
        await late.consume(handler("late"))
        for queue in (early, late, pulled):
            await channel.default_exchange.publish(aio_pika.Message(b"x"), queue.name)
        assert {await asyncio.wait_for(got.get(), 10) for _ in range(2)} == {"early", "late"}
        message = await pulled.get(timeout=10)
        await message.ack()
    finally:
        await connection.close()
    names = [s.name for s in otel.spans()]
    assert names.count("publish amq.default") == 3
    assert f"process {late.name}" in names
    assert f"receive {pulled.name}" in names
    assert f"process {early.name}" in names


def test_kombu_instrument_after_connections_exist(
    instrument_kombu: Instrument,
    otel: Recorder,
    rabbitmq: Broker,
    unique: Callable[[str], str],
) -> None:
    """instrument() after a kombu producer and a consuming Consumer exist: both are traced at once, and the consumer stays traced once it consumes again."""
    import kombu

    # not auto-deleted: the consumer cancels and consumes again (expires when unused)
    queue = kombu.Queue(unique("q"), durable=False, expires=60)
    with kombu.Connection(rabbitmq.url) as connection:
        producer = connection.Producer()
        got: list[Any] = []

        def on_message(_body: Any, message: Any) -> None:
            got.append(trace.get_current_span().get_span_context())
            message.ack()

        def drain_one() -> None:
            deadline = time.monotonic() + 10
            count = len(got)
            while len(got) == count:
                assert time.monotonic() < deadline, "no delivery"
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.2)

        consumer = kombu.Consumer(connection, [queue], callbacks=[on_message])
        consumer.consume()
        instrument_kombu()
        producer.publish(b"1", routing_key=queue.name)
        drain_one()
        consumer.cancel()
        consumer.consume()
        producer.publish(b"2", routing_key=queue.name)
        drain_one()
        consumer.cancel()
        queue(connection.default_channel).delete()
    spans = otel.spans()
    names = [s.name for s in spans]
    assert names.count("publish amq.default") == 2
    processes = [s.context for s in spans if s.name == f"process {queue.name}"]
    assert got == processes  # consuming before instrument(): traced from its next message on


# -- several instrumentors in one process ---------------------------------------------------------


@pytest.mark.usefixtures("internal_errors")
def test_three_instrumentors_in_one_process_make_one_trace(
    instrument_pika: Instrument,
    instrument_aiopika: Instrument,
    instrument_kombu: Instrument,
    otel: Recorder,
    rabbitmq: Broker,
    unique: Callable[[str], str],
) -> None:
    """A shop publishes with aio-pika, a service consumes with kombu and publishes with pika, a third consumes with pika: one connected trace, the order's baggage on every hop."""
    import aio_pika
    import kombu
    from yarl import URL

    options = {"baggage_attributes": ("order.id",)}
    instrument_pika(**options)
    instrument_aiopika(**options)
    instrument_kombu(**options)
    tracer = otel.tracer_provider.get_tracer("shop")
    orders, work = unique("orders"), unique("work")

    async def shop() -> None:
        url = str(URL(rabbitmq.url).update_query(name=connection_name()))
        connection = await aio_pika.connect(url)
        channel = await connection.channel()
        token = otel_context.attach(baggage.set_baggage("order.id", "17"))
        try:
            with tracer.start_as_current_span("checkout"):
                await channel.default_exchange.publish(aio_pika.Message(b"order 17"), orders)
        finally:
            otel_context.detach(token)
        await connection.close()

    pika_connection = BlockingConnection(pika_parameters(rabbitmq.url, connection_name()))
    pika_channel = pika_connection.channel()
    pika_channel.queue_declare(work, exclusive=True)
    seen_baggage: list[Any] = []
    try:
        with kombu.Connection(rabbitmq.url) as connection:
            queue = kombu.Queue(orders, durable=False, auto_delete=True)

            def on_order(_body: Any, message: Any) -> None:
                seen_baggage.append(baggage.get_baggage("order.id"))
                pika_channel.basic_publish("", work, b"make 17", pika.BasicProperties())
                message.ack()

            with kombu.Consumer(connection, [queue], callbacks=[on_order]):
                asyncio.run(shop())
                connection.drain_events(timeout=10)

        def on_work() -> None:
            seen_baggage.append(baggage.get_baggage("order.id"))
            with tracer.start_as_current_span("make"):
                pass

        ack_one(pika_channel, work, on_work)
    finally:
        pika_connection.close()

    spans = otel.spans()
    chain = {s.name: span_summary(s, spans) for s in spans}
    assert chain["publish amq.default"]["parent"] in ("checkout", f"process {orders}")
    assert chain[f"process {orders}"]["parent"] == "publish amq.default"
    assert chain[f"process {work}"]["parent"] == "publish amq.default"
    assert chain["make"]["parent"] == f"process {work}"
    assert len({s.context.trace_id for s in spans}) == 1, "one connected trace"
    assert seen_baggage == ["17", "17"]
    for span in spans:
        if span.name != "checkout" and span.name != "make":
            assert (span.attributes or {}).get("order.id") == "17", span.name
    scopes = {s.instrumentation_scope.name for s in spans if s.instrumentation_scope}
    assert {"otel_pika", "otel_aiopika", "otel_kombu"} <= scopes
