"""The Celery app of these tests, made the same way by the worker and by the test that sends.

Every test uses a queue (and a node name) of its own; the event exchange (``celeryev``) and the
control exchanges (``celery.pidbox``, ``reply.celery.pidbox``) are Celery's defaults, as users
have them, so the default skip rule is tested on the names it is written for.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, Task, shared_task
from celery.exceptions import Reject

from integration_tests.celery_app import celery_app

ADD = "otel_tests.add"
SLOW_ADD = "otel_tests.slow_add"
RETRY_ONCE = "otel_tests.retry_once"
FAIL = "otel_tests.fail"
REJECT = "otel_tests.reject"


def make_app(broker: str, queue: str) -> Celery:
    """A Celery app whose tasks (the shared tasks below) go to ``queue`` (it and its exchange
    auto-deleted); no result backend."""
    return celery_app(
        "otel_tests", broker, queue, task_ignore_result=True, worker_prefetch_multiplier=1
    )


# Shared tasks, defined once per process: every app has them (opentelemetry-instrumentation-celery
# looks a task up in the current app), and no app registers a second callable under a name.


@shared_task(name=ADD)
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name=SLOW_ADD)
def slow_add(x: int, y: int) -> int:
    # long enough that handing the task to a thread or a child cannot outlast it
    time.sleep(0.5)
    return x + y


@shared_task(name=RETRY_ONCE, bind=True, max_retries=1)
def retry_once(self: Task) -> str:
    if not self.request.retries:
        raise self.retry(exc=ValueError("not yet"), countdown=1)
    return "done"


@shared_task(name=FAIL)
def fail() -> None:
    raise ValueError("order 17 cannot be planned")


@shared_task(name=REJECT, acks_late=True)
def reject() -> None:
    raise Reject("order 17 is malformed", requeue=False)


def send(app: Celery, name: str, *args: Any) -> str:
    """Send a task by name; its id."""
    return str(app.send_task(name, args=args).id)
