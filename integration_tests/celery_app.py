"""The Celery app factory shared by the Celery worker tests (integration_tests/celery) and the
embedded-worker test of otel-kombu (integration_tests/kombu/test_celery.py)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue


def celery_app(
    main: str, broker: str, queue: str, *, backend: str | None = None, **conf: Any
) -> Celery:
    """A Celery app whose tasks go to ``queue`` through an exchange of the same name, both
    auto-deleted and not durable (Celery would declare a durable exchange named after the queue),
    that leaves the root logger alone; ``conf`` adds to or overrides that configuration."""
    app = Celery(main, broker=broker, backend=backend, set_as_current=False)
    exchange = Exchange(queue, type="direct", durable=False, auto_delete=True)
    app.conf.update(
        task_queues=[Queue(queue, exchange, routing_key=queue, durable=False, auto_delete=True)],
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        **conf,
    )
    return app
