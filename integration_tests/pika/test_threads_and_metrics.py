"""A BlockingConnection per thread keeps every span in its own trace; the four metrics and their attributes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Broker, Recorder
from integration_tests.pika.conftest import Instrument
from otel_pika import PikaInstrumentor


def test_eight_threads_each_with_a_connection_keep_their_traces_apart(
    instrumented: PikaInstrumentor,
    otel: Recorder,
    connect: Callable[..., BlockingConnection],
    unique: Callable[[str], str],
) -> None:
    """Eight threads publishing and consuming on their own BlockingConnections: every span lands in its own thread's trace."""
    tracer = otel.tracer_provider.get_tracer("app")
    connections = [connect(f"otel-pika-thread-{n}") for n in range(8)]
    queues = [unique(f"t{n}") for n in range(8)]
    traces: dict[int, int] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            channel = connections[n].channel()
            channel.queue_declare(queues[n], exclusive=True)
            start.wait(timeout=30)
            with tracer.start_as_current_span(f"job {n}") as job:
                traces[n] = job.get_span_context().trace_id
                for _ in range(5):
                    channel.basic_publish("", queues[n], b"%d" % n)
            handled = 0

            def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
                nonlocal handled
                handled += 1
                with tracer.start_as_current_span(f"handle {n}"):
                    ch.basic_ack(method.delivery_tag)
                if handled == 5:
                    ch.stop_consuming()

            channel.basic_consume(queues[n], on_message)
            channel.start_consuming()
            method, _properties, _body = channel.basic_get(queues[n])
            assert method is None
            assert not trace.get_current_span().get_span_context().is_valid
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    spans = otel.spans()
    assert len(spans) == 8 * (1 + 5 + 5 + 5)
    for n in range(8):
        mine = [s for s in spans if s.context.trace_id == traces[n]]
        names = sorted({s.name for s in mine})
        assert names == sorted(
            {f"job {n}", "publish amq.default", f"process {queues[n]}", f"handle {n}"}
        )
        assert len(mine) == 16
        assert all(int(s.attributes.get("messaging.message.body.size", 1)) == 1 for s in mine)  # type: ignore[union-attr]


def points(otel: Recorder, metric: str) -> dict[tuple[str, str | None], int]:
    found: dict[tuple[str, str | None], int] = {}
    for attributes, value in otel.points(metric):
        key = (str(attributes["messaging.operation.name"]), attributes.get("error.type"))
        found[key] = found.get(key, 0) + int(value)
    return found


def test_the_four_metrics_with_their_attributes(
    instrument: Instrument,
    otel: Recorder,
    rabbitmq: Broker,
    channel: BlockingChannel,
    queue: str,
) -> None:
    """Publish, process, receive and settle are counted and timed on the four semconv instruments with SPEC's attributes, error.type included."""
    instrument()
    for _ in range(3):
        channel.basic_publish("", queue, b"x")
    handled = 0

    def on_message(ch: BlockingChannel, method: Any, *_: Any) -> None:
        nonlocal handled
        handled += 1
        if handled == 2:
            ch.stop_consuming()
            raise LookupError("bad order")
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    with pytest.raises(LookupError):
        channel.start_consuming()
    channel.close()
    channel = channel.connection.channel()
    method, _properties, _body = channel.basic_get(queue)
    assert method is not None
    channel.basic_reject(method.delivery_tag, requeue=False)

    assert points(otel, "messaging.client.sent.messages") == {("publish", None): 3}
    assert points(otel, "messaging.client.consumed.messages") == {
        ("process", None): 1,
        ("process", "LookupError"): 1,
        ("receive", None): 1,
    }
    assert points(otel, "messaging.process.duration") == {
        ("process", None): 1,
        ("process", "LookupError"): 1,
    }
    assert points(otel, "messaging.client.operation.duration") == {
        ("publish", None): 3,
        ("receive", None): 1,
        ("ack", None): 1,
        ("reject", "rejected"): 1,
    }
    attributes = {
        name: [a for a, _v in otel.points(name)]
        for name in ("messaging.client.sent.messages", "messaging.process.duration")
    }
    assert attributes["messaging.client.sent.messages"] == [
        {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": "publish",
            "messaging.destination.name": queue,
            "server.address": rabbitmq.host,
            "server.port": rabbitmq.port,
        }
    ]
    assert {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "server.address": rabbitmq.host,
        "server.port": rabbitmq.port,
        "error.type": "LookupError",
    } in attributes["messaging.process.duration"]


def test_server_named_queues_are_low_cardinality(
    instrumented: PikaInstrumentor, otel: Recorder, channel: BlockingChannel
) -> None:
    """A server-named queue is called amq.gen in span names and metrics and is marked anonymous."""
    name = channel.queue_declare("", exclusive=True).method.queue
    assert name.startswith("amq.gen-")
    channel.basic_publish("", name, b"x")
    channel.basic_get(name, auto_ack=True)
    (receive,) = otel.named("receive amq.gen")
    assert receive.attributes["messaging.destination.anonymous"] is True  # type: ignore[index]
    assert receive.attributes["messaging.destination.name"] == name  # type: ignore[index]
    (publish,) = otel.named("publish amq.default")
    assert publish.attributes["messaging.destination.anonymous"] is True  # type: ignore[index]
    metric_names = {
        a["messaging.destination.name"]
        for metric in ("messaging.client.sent.messages", "messaging.client.consumed.messages")
        for a, _v in otel.points(metric)
    }
    assert metric_names == {"amq.gen"}
