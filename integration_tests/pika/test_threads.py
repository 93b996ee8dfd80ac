"""A BlockingConnection per thread keeps every span in its own trace."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Recorder

pytestmark = pytest.mark.usefixtures("instrumented")


def test_eight_threads_each_with_a_connection_keep_their_traces_apart(
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
