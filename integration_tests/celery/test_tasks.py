"""A task through real ``celery worker`` processes (solo, threads, prefork): one trace, the task id
on Celery's spans and ours, what each pool does to our spans' timing, retries, failures, rejects,
link mode, and where ``instrument()`` has to be called. docs/celery.md states these."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from broker_harness import Recorder
from integration_tests.celery.conftest import Fleet, Worker, wait_until
from integration_tests.celery.tasks import ADD, FAIL, REJECT, RETRY_ONCE, SLOW_ADD, send

Span = dict[str, Any]


def attribute(span: Span, name: str) -> Any:
    return span["attributes"].get(name)


def of_task(spans: list[Span], task_id: str, prefix: str) -> list[Span]:
    """The spans named ``prefix…`` that carry this task id as messaging.message.id."""
    return [
        s
        for s in spans
        if s["name"].startswith(prefix) and attribute(s, "messaging.message.id") == task_id
    ]


def wait_for_run(worker: Worker, task_id: str, count: int = 1) -> None:
    """Until Celery's run span(s) of this task are written (each ends after the task returns)."""
    wait_until(
        f"run span of task {task_id}",
        lambda: len(of_task(worker.spans(), task_id, "run/")) >= count,
        worker,
    )


def hex_ids(span: Any) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def nested(inner: Span, outer: Span) -> bool:
    return bool(outer["start"] <= inner["start"] and inner["end"] <= outer["end"])


def test_a_task_is_one_trace_with_its_id_on_both_instrumentations_spans(
    fleet: Fleet, app: Celery, sender: Recorder, queue: str
) -> None:
    """Sent here, run by a solo worker: apply_async -> publish -> process + run is one trace, and
    Celery's spans and ours carry the task id as messaging.message.id; with solo the task runs
    inside our process span."""
    worker = fleet.start("solo")
    worker.wait_ready()
    task_id = send(app, ADD, 2, 3)
    wait_for_run(worker, task_id)
    worker.stop()

    (apply_async,) = sender.named(f"apply_async/{ADD}")
    (publish,) = sender.named("publish amq.default")
    spans = worker.spans()
    (process,) = of_task(spans, task_id, f"process {queue}")
    (run,) = of_task(spans, task_id, f"run/{ADD}")
    for span in (apply_async, publish):
        assert span.attributes is not None
        assert span.attributes["messaging.message.id"] == task_id
    trace_id, publish_id = hex_ids(publish)
    assert hex_ids(apply_async)[0] == trace_id
    assert {process["trace_id"], run["trace_id"]} == {trace_id}, "one trace"
    assert process["parent_id"] == publish_id
    assert run["parent_id"] == publish_id, "Celery continues from our publish span's context"
    assert nested(run, process), "solo: the task runs inside the process span"
    assert process["status"] == run["status"] == "UNSET"
