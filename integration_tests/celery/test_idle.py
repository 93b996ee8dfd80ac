"""Idle Celery workers (start-up sync, heartbeats, gossip, remote control): no spans by default,
and, when traced, names that stay the same from one worker start to the next."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Queue

from broker_harness import Broker, Recorder
from integration_tests.celery.conftest import WAIT_TIMEOUT, Fleet, Worker

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def heartbeats_seen(broker: Broker, workers: list[Worker], unique: Callable[[str], str]) -> None:
    """Listen on Celery's event exchange until every worker has sent two heartbeats (so every
    gossiping worker has received some): the traffic an idle fleet makes all the time."""
    seen: dict[str, int] = {w.nodename: 0 for w in workers}

    def on_event(body: Any, message: Any) -> None:
        if isinstance(body, dict) and body.get("hostname") in seen:
            seen[body["hostname"]] += 1

    deadline = time.monotonic() + WAIT_TIMEOUT
    with Connection(broker.url) as connection:
        queue = Queue(
            unique("events"),
            get_exchange(connection),
            routing_key="worker.heartbeat",
            exclusive=True,
            auto_delete=True,
        )
        with Consumer(connection, [queue], callbacks=[on_event], no_ack=True):
            while min(seen.values()) < 2:
                if time.monotonic() > deadline:
                    pytest.fail(f"heartbeats seen within {WAIT_TIMEOUT} s: {seen}")
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)


def idle_traffic(
    fleet: Fleet,
    app: Celery,
    rabbitmq: Broker,
    unique: Callable[[str], str],
    names: tuple[str, ...],
    env: dict[str, str] | None = None,
) -> list[Worker]:
    """Start idle workers (start-up sync, gossip and heartbeats on), let them heartbeat, ping
    each over remote control (a broadcast and a reply), and stop them."""
    workers = [fleet.start(name, quiet=False, env=env) for name in names]
    for worker in workers:
        worker.wait_ready()
    heartbeats_seen(rabbitmq, workers, unique)
    replies = app.control.ping(destination=[w.nodename for w in workers], timeout=5)
    assert sorted(n for reply in replies for n in reply) == sorted(w.nodename for w in workers)
    for worker in workers:
        worker.stop()
    return workers


def test_an_idle_fleet_makes_no_spans_by_default(
    fleet: Fleet,
    app: Celery,
    sender: Recorder,
    rabbitmq: Broker,
    unique: Callable[[str], str],
) -> None:
    """Two idle workers with the default options: start-up sync, heartbeats, gossip, a ping and
    its replies make no span and no metric point, in the workers or in the process that pings."""
    workers = idle_traffic(fleet, app, rabbitmq, unique, ("idle1", "idle2"))
    for worker in workers:
        assert worker.spans() == []
        assert worker.metric_points() == []
    assert sender.spans() == []


def test_traced_control_and_events_keep_their_names_across_worker_restarts(
    fleet: Fleet,
    app: Celery,
    rabbitmq: Broker,
    unique: Callable[[str], str],
) -> None:
    """With skip_celery_messages=false the same idle traffic is traced, and two fleets started
    one after the other (new node names, new gossip and reply queues) record the same metric
    destination names and span names: a per-worker UUID is {uuid}, a node queue {node}."""
    env = {"OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES": "false"}
    runs = []
    for names in (("first1", "first2"), ("second1", "second2")):
        workers = idle_traffic(fleet, app, rabbitmq, unique, names, env=env)
        metric_names = {
            (p["metric"], p["attributes"]["messaging.destination.name"])
            for w in workers
            for p in w.metric_points()
        }
        span_names = {s["name"] for w in workers for s in w.spans()}
        runs.append((metric_names, span_names))
    (first_metrics, first_spans), (second_metrics, second_spans) = runs
    assert first_metrics == second_metrics
    assert first_spans == second_spans
    for name in {n for _, n in first_metrics} | first_spans:
        assert not _UUID.search(name), name
        assert "@" not in name, name
    assert {"process celeryev.{uuid}", "publish celeryev", "process {node}.celery.pidbox"} <= (
        first_spans
    )
    assert (
        "messaging.client.consumed.messages",
        "celeryev:worker.heartbeat:celeryev.{uuid}",
    ) in first_metrics
