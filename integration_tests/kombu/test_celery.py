"""Celery on the real broker with opentelemetry-instrumentation-celery: one connected trace with our spans."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor

from broker_harness import Broker, Recorder, Traceparent, span_summary
from integration_tests.celery_app import celery_app
from integration_tests.kombu.conftest import Instrument


@pytest.fixture
def celery_instrumented(otel: Recorder) -> Iterator[None]:
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    yield
    instrumentor.uninstrument()


@pytest.fixture
def app(rabbitmq: Broker, unique: Callable[[str], str]) -> Iterator[Celery]:
    """A Celery app on the broker with its own task queue, no remote control or events."""
    name = unique("celery")
    app = celery_app(
        "otel_kombu_tests",
        rabbitmq.url,
        name,
        backend="cache+memory://",
        worker_enable_remote_control=False,
        worker_send_task_events=False,
    )
    app.ran = []  # type: ignore[attr-defined]

    # a task name of its own: Celery keeps the first callable registered under a name
    @app.task(name=f"{name}.add")
    def add(x: int, y: int) -> int:
        app.ran.append(trace.get_current_span().get_span_context().span_id)  # type: ignore[attr-defined]
        return x + y

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield app
    app.close()
    # the embedded worker configures logging for the whole process; give it back
    root.setLevel(level)
    root.handlers[:] = handlers


def task_name(app: Celery) -> str:
    return f"{app.conf.task_default_queue}.add"


def run_task(app: Celery) -> None:
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        assert app.tasks[task_name(app)].delay(2, 3).get(timeout=30) == 5


def test_task_is_one_connected_trace(
    celery_instrumented: None,
    instrument: Instrument,
    otel: Recorder,
    app: Celery,
) -> None:
    """A task sent and run by a real worker is one trace: Celery's spans and ours, one traceparent
    header, the task id as messaging.message.id on all four."""
    task_headers: list[Any] = []
    queue = app.conf.task_default_queue

    def consume_hook(span: Any, envelope: Any) -> None:
        if envelope.queue == queue:
            task_headers.append(dict(envelope.headers))

    instrument(consume_hook=consume_hook)
    run_task(app)
    spans = otel.spans()
    task = task_name(app)
    (apply_async,) = otel.named(f"apply_async/{task}")
    (run,) = otel.named(f"run/{task}")
    (process,) = otel.named(f"process {queue}")
    # Celery sends through the default exchange, routing key = the queue
    (publish,) = [s for s in spans if s.name.startswith("publish ")]
    assert publish.attributes is not None
    assert publish.attributes["messaging.rabbitmq.destination.routing_key"] == queue
    assert {s.context.trace_id for s in spans} == {apply_async.context.trace_id}, "one trace"
    assert span_summary(publish, spans)["parent"] == f"apply_async/{task}"
    assert span_summary(process, spans)["parent"] == publish.name
    assert span_summary(run, spans)["parent"] == publish.name
    assert app.ran == [run.context.span_id], "the task body runs in Celery's run span"  # type: ignore[attr-defined]
    assert process.status.status_code.name == "UNSET"
    (headers,) = task_headers
    context_headers = [k for k in headers if str(k).lower() == "traceparent"]
    assert context_headers == ["traceparent"], "exactly one context header"
    assert Traceparent.in_headers(headers) == Traceparent.of(publish)
    assert not any(s.status.status_code.name == "ERROR" for s in spans)
    # Celery sets no message_id: the task id is messaging.message.id on Celery's spans and ours
    ids = {
        (s.attributes or {}).get("messaging.message.id")
        for s in (apply_async, publish, process, run)
    }
    assert ids == {headers["id"]}


def test_skip_celery_messages_leaves_them_to_celery(
    celery_instrumented: None,
    instrument: Instrument,
    otel: Recorder,
    app: Celery,
) -> None:
    """With skip_celery_messages=True our spans stay out of Celery's tasks; Celery's own trace still connects."""
    instrument(skip_celery_messages=True, settle_spans=True)
    run_task(app)
    spans = otel.spans()
    task = task_name(app)
    assert sorted(s.name for s in spans) == [f"apply_async/{task}", f"run/{task}"]
    (apply_async,) = otel.named(f"apply_async/{task}")
    (run,) = otel.named(f"run/{task}")
    assert span_summary(run, spans)["parent"] == f"apply_async/{task}"
    assert run.context.trace_id == apply_async.context.trace_id
    assert not otel.points("messaging.client.sent.messages")
