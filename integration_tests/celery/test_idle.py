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
from integration_tests.celery.tasks import make_app

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def heartbeats_seen(broker: Broker, workers: list[Worker], listener: str) -> None:
    """Listen on Celery's event exchange (from the queue ``listener``) until every worker has
    sent two heartbeats (so every gossiping worker has received some): the traffic an idle fleet
    makes all the time."""
    seen: dict[str, int] = {w.nodename: 0 for w in workers}

    def on_event(body: Any, message: Any) -> None:
        if isinstance(body, dict) and body.get("hostname") in seen:
            seen[body["hostname"]] += 1

    deadline = time.monotonic() + WAIT_TIMEOUT
    with Connection(broker.url) as connection:
        queue = Queue(
            listener,
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
    listener: str,
    names: tuple[str, ...],
    env: dict[str, str] | None = None,
) -> list[Worker]:
    """Start idle workers (start-up sync, gossip and heartbeats on), let them heartbeat, ping
    each over remote control (a broadcast and a reply), and stop them."""
    workers = [fleet.start(name, quiet=False, env=env) for name in names]
    for worker in workers:
        worker.wait_ready()
    heartbeats_seen(rabbitmq, workers, listener)
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
    workers = idle_traffic(fleet, app, rabbitmq, unique("events"), ("idle1", "idle2"))
    for worker in workers:
        assert worker.spans() == []
        assert worker.metric_points() == []
    assert sender.spans() == []


METRICS = (
    "messaging.client.sent.messages",
    "messaging.client.consumed.messages",
    "messaging.client.operation.duration",
    "messaging.process.duration",
)


def test_traced_control_and_events_keep_their_names_across_worker_restarts(
    fleet: Fleet,
    otel: Recorder,
    kombu_traced: Callable[..., Any],
    rabbitmq: Broker,
    unique: Callable[[str], str],
) -> None:
    """With skip_celery_messages=false the same idle traffic is traced, and two fleets started
    one after the other (new node names, new gossip and reply queues) record the same metric
    destination names and span names, in the workers and in the process that pings them (new
    reply queue each time): a UUID is {uuid}, a pidbox node {node}; no name holds a UUID or a
    node name."""
    kombu_traced(skip_celery_messages=False)
    env = {"OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES": "false"}
    runs = []
    reply_queues = set()
    listener = unique("events")  # this test's own queue: the same name in both runs
    for names in (("first1", "first2"), ("second1", "second2")):
        # a new app, as a new process would have: a new reply queue for its ping
        pinger = make_app(rabbitmq.url, fleet.queue)
        try:
            workers = idle_traffic(fleet, pinger, rabbitmq, listener, names, env=env)
            reply_queues.add(pinger.control.mailbox.get_reply_queue().name)
        finally:
            pinger.close()
        worker_metrics = {
            (p["metric"], p["attributes"]["messaging.destination.name"])
            for w in workers
            for p in w.metric_points()
        }
        worker_spans = {s["name"] for w in workers for s in w.spans()}
        # this process's recorder holds both runs: its names must not grow with the second
        pinger_metrics = {
            (metric, attributes["messaging.destination.name"])
            for metric in METRICS
            for attributes, _ in otel.points(metric)
        }
        pinger_spans = {s.name for s in otel.spans()}
        runs.append((worker_metrics, worker_spans, pinger_metrics, pinger_spans))
    assert len(reply_queues) == 2, "each run pinged from a reply queue of its own"
    first, second = runs
    # which worker events (online, heartbeat, offline) a gossiping worker happens to receive
    # depends on start and stop order: a fixed set of Celery's, compared as one
    # The pinging process holds both runs: its names must not grow with the second.
    assert first[2:] == second[2:]
    # Which control and event messages a worker happens to receive (online, heartbeat, offline,
    # another worker's ping reply) depends on start and stop order, so the workers' two sets
    # need not be equal; what keeps the series bounded is that no name, in either run, holds a
    # UUID or a node name: every restart then maps onto the same finite set of names.
    for worker_metrics, worker_spans, pinger_metrics, pinger_spans in runs:
        for name in {n for _, n in worker_metrics | pinger_metrics} | worker_spans | pinger_spans:
            assert not _UUID.search(name), name
            assert "@" not in name, name
    worker_metrics, worker_spans, pinger_metrics, pinger_spans = first
    assert {"process celeryev.{uuid}", "publish celeryev", "process {node}.celery.pidbox"} <= (
        worker_spans
    )
    assert (
        "messaging.client.consumed.messages",
        "celeryev:worker.heartbeat:celeryev.{uuid}",
    ) in worker_metrics
    assert {"publish celery.pidbox", "process {uuid}.reply.celery.pidbox"} <= pinger_spans
