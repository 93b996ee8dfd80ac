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


def stop_after_reject(worker: Worker, queue: str) -> list[Span]:
    """Wait for the reject span of ``queue``, stop the worker; every span it exported."""
    wait_until(
        "reject span",
        lambda: any(s["name"] == f"reject {queue}" for s in worker.spans()),
        worker,
    )
    worker.stop()
    return worker.spans()


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


def ours(spans: list[Span]) -> list[Span]:
    """Our spans (every one has messaging.system), not Celery's."""
    return [s for s in spans if attribute(s, "messaging.system")]


def test_retries_failures_and_rejects_in_a_solo_worker(
    fleet: Fleet, app: Celery, sender: Recorder, queue: str
) -> None:
    """Solo pool: a countdown retry runs after the process span of its message has ended; a
    failure is ERROR on Celery's run span while our process span stays UNSET (Celery catches the
    exception); an acks_late task that raises Reject(requeue=False) ends in our `reject` ERROR."""
    worker = fleet.start("solo")
    worker.wait_ready()
    retried = send(app, RETRY_ONCE)
    failed = send(app, FAIL)
    rejected = send(app, REJECT)
    wait_for_run(worker, retried, count=2)
    wait_for_run(worker, failed)
    spans = stop_after_reject(worker, queue)

    # retry: the first run publishes the task again (same id); its message is held until the
    # countdown ends, after the process span of that message has ended
    first_run, second_run = sorted(
        of_task(spans, retried, f"run/{RETRY_ONCE}"), key=lambda s: s["start"]
    )
    first_process, second_process = sorted(
        of_task(spans, retried, f"process {queue}"), key=lambda s: s["start"]
    )
    (republish,) = of_task(spans, retried, "publish ")
    (retry_apply_async,) = of_task(spans, retried, f"apply_async/{RETRY_ONCE}")
    assert retry_apply_async["parent_id"] == first_run["span_id"]
    assert republish["parent_id"] == retry_apply_async["span_id"]
    assert second_process["parent_id"] == republish["span_id"]
    assert nested(first_run, first_process)
    assert second_run["start"] >= second_process["end"], "a countdown retry runs later, outside"
    assert attribute(first_run, "celery.retry.reason"), "Celery's run span says why it retried"
    assert first_process["status"] == second_process["status"] == "UNSET"
    retry_spans = (first_run, second_run, first_process, second_process, republish)
    assert len({s["trace_id"] for s in retry_spans}) == 1, "the retry stays in the task's trace"

    # failure: Celery's span shows it, ours do not (the exception never reaches kombu)
    (failed_run,) = of_task(spans, failed, f"run/{FAIL}")
    (failed_process,) = of_task(spans, failed, f"process {queue}")
    assert failed_run["status"] == "ERROR"
    assert failed_process["status"] == "UNSET"

    # reject: the message is dropped (or dead-lettered): our settle span is ERROR
    (reject,) = [s for s in spans if s["name"] == f"reject {queue}"]
    assert reject["status"] == "ERROR"
    assert attribute(reject, "error.type") == "rejected"
    (rejected_process,) = of_task(spans, rejected, f"process {queue}")
    assert reject["parent_id"] == rejected_process["span_id"]
    (rejected_run,) = of_task(spans, rejected, f"run/{REJECT}")
    assert rejected_run["status"] == "UNSET", "Celery's spans do not show the reject"


def test_threads_pool_runs_the_task_after_handing_it_over(
    fleet: Fleet, app: Celery, sender: Recorder, queue: str
) -> None:
    """Threads pool: the process span covers handing the task to a thread; the task runs
    outside it (here: it is still running when the process span has ended)."""
    worker = fleet.start("threads", pool="threads")
    worker.wait_ready()
    task_id = send(app, SLOW_ADD, 2, 3)
    wait_for_run(worker, task_id)
    worker.stop()
    spans = worker.spans()
    (process,) = of_task(spans, task_id, f"process {queue}")
    (run,) = of_task(spans, task_id, f"run/{SLOW_ADD}")
    assert not nested(run, process)
    assert run["end"] > process["end"]
    assert run["parent_id"] == process["parent_id"], "both continue from the publish span"


@pytest.mark.parametrize("instrument", ["parent", "opentelemetry-instrument"])
def test_prefork_instrumented_in_the_parent(
    fleet: Fleet, app: Celery, sender: Recorder, queue: str, instrument: str
) -> None:
    """Prefork, instrument() in the worker's parent process before it forks (at import of the
    app module, or by opentelemetry-instrument): the parent's process span ends before the child
    starts the task, and a rejected task ends in our `reject` ERROR (the parent settles it)."""
    worker = fleet.start("prefork", pool="prefork", instrument=instrument)
    worker.wait_ready()
    task_id = send(app, SLOW_ADD, 2, 3)
    rejected = send(app, REJECT)
    wait_for_run(worker, task_id)
    spans = stop_after_reject(worker, queue)
    (process,) = of_task(spans, task_id, f"process {queue}")
    (run,) = of_task(spans, task_id, f"run/{SLOW_ADD}")
    assert run["pid"] != process["pid"], "the task runs in a child, the parent consumes"
    assert run["start"] >= process["end"]
    assert run["parent_id"] == process["parent_id"]
    (reject,) = [s for s in spans if s["name"] == f"reject {queue}"]
    assert reject["status"] == "ERROR"
    assert of_task(spans, rejected, f"process {queue}")


def test_prefork_instrumented_in_worker_process_init_loses_our_consumer_spans(
    fleet: Fleet, app: Celery, sender: Recorder, queue: str
) -> None:
    """Prefork, instrument() from worker_process_init (in each child only): Celery's run spans
    are there, but the parent consumes and settles, so there is no process span and the
    rejected task has no `reject` ERROR: nothing of ours at all."""
    worker = fleet.start("children", pool="prefork", instrument="worker_process_init")
    worker.wait_ready()
    task_id = send(app, SLOW_ADD, 2, 3)
    rejected = send(app, REJECT)
    wait_for_run(worker, task_id)
    wait_for_run(worker, rejected)
    worker.stop()  # a warm shutdown: the parent has settled the rejected message
    spans = worker.spans()
    assert of_task(spans, task_id, f"run/{SLOW_ADD}")
    assert ours(spans) == []


def test_link_mode_moves_only_our_spans(
    fleet: Fleet, app: Celery, sender: Recorder, queue: str
) -> None:
    """consumer_context="link" in the worker: our process span starts a trace of its own, linked
    to the publish; Celery's run span still continues the publisher's trace."""
    worker = fleet.start("link", env={"OTEL_PYTHON_RABBITMQ_CONSUMER_CONTEXT": "link"})
    worker.wait_ready()
    task_id = send(app, ADD, 2, 3)
    wait_for_run(worker, task_id)
    worker.stop()
    (publish,) = sender.named("publish amq.default")
    trace_id, publish_id = hex_ids(publish)
    spans = worker.spans()
    (process,) = of_task(spans, task_id, f"process {queue}")
    (run,) = of_task(spans, task_id, f"run/{ADD}")
    assert process["parent_id"] is None
    assert process["trace_id"] != trace_id
    assert process["links"] == [{"trace_id": trace_id, "span_id": publish_id}]
    assert run["trace_id"] == trace_id
    assert run["parent_id"] == publish_id


def test_skipping_tasks_leaves_them_and_their_reject_to_celery(
    fleet: Fleet,
    app: Celery,
    celery_traced: Recorder,
    kombu_traced: Any,
    queue: str,
) -> None:
    """skip_celery_messages=True on both sides: no span of ours for a task, not even the `reject`
    ERROR of a rejected one; Celery's own spans still make one trace."""
    kombu_traced(skip_celery_messages=True)
    worker = fleet.start("skip", env={"OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES": "true"})
    worker.wait_ready()
    rejected = send(app, REJECT)
    wait_for_run(worker, rejected)
    worker.stop()
    spans = worker.spans()
    assert ours(spans) == []
    assert [s.name for s in celery_traced.spans()] == [f"apply_async/{REJECT}"]
    (apply_async,) = celery_traced.spans()
    (run,) = of_task(spans, rejected, f"run/{REJECT}")
    assert (run["trace_id"], run["parent_id"]) == hex_ids(apply_async)
