"""The dead-letter watcher (``otel_pika.dead_letters``) against the real broker: each dead letter
is recorded in its original trace, then dropped or parked after a confirm; a message it cannot
park stays in the queue, and it reconnects when the broker closes its connection mid-stream."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from broker_harness import Broker, Recorder
from broker_harness.broker import close_connections
from integration_tests.contract.protocol import poll
from integration_tests.pika.conftest import Instrument
from otel_pika.dead_letters import Watcher

TTL_MS = "50"


@dataclass
class DeadLetters:
    """A dead-letter queue ``queue`` and a source queue ``{queue}.src`` that dead-letters into it,
    with an uninstrumented channel (opened before instrument()) for topology and inspection."""

    queue: str
    setup: BlockingChannel
    connect: Callable[..., BlockingConnection]
    broker: Broker
    otel: Recorder

    def expire(self, count: int = 1) -> BlockingConnection:
        """Publish ``count`` messages (instrumented: each in its own trace) that expire into the
        dead-letter queue."""
        connection = self.connect("otel-dlw-producer")
        channel = connection.channel()
        for n in range(count):
            channel.basic_publish(
                "",
                f"{self.queue}.src",
                f"order {n}".encode(),
                pika.BasicProperties(expiration=TTL_MS, message_id=f"m-{n}"),
            )
        return connection

    def left_in(self, queue: str | None = None) -> int:
        """Messages in ``queue`` (the dead-letter queue by default)."""
        name = queue or self.queue
        return int(self.setup.queue_declare(name, passive=True).method.message_count)

    def watcher(self, *args: Any, **options: Any) -> Watcher:
        """A Watcher of the dead-letter queue on the test's broker."""
        return Watcher(self.broker.url, self.queue, *args, **options)


@pytest.fixture
def dead(
    connect: Callable[..., BlockingConnection],
    rabbitmq: Broker,
    otel: Recorder,
    unique: Callable[[str], str],
) -> Iterator[DeadLetters]:
    """The test's :class:`DeadLetters`; both queues deleted after the test."""
    setup = connect("otel-dlw-setup").channel()
    dlq = unique("dead")
    setup.queue_declare(dlq, arguments={"x-expires": 120_000})
    setup.queue_declare(
        f"{dlq}.src",
        arguments={
            "x-expires": 120_000,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        },
    )
    yield DeadLetters(dlq, setup, connect, rabbitmq, otel)
    with contextlib.suppress(Exception):
        setup.queue_delete(dlq)
        setup.queue_delete(f"{dlq}.src")


@contextlib.contextmanager
def running(watcher: Watcher) -> Iterator[Watcher]:
    thread = threading.Thread(target=watcher.run, name="dead-letter-watcher", daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        watcher.stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the watcher did not stop"


def until(check: Callable[[], bool], what: str) -> None:
    poll(lambda: True if check() else None, what)


def test_ack_mode_records_each_dead_letter_in_its_trace_then_drops_it(
    instrument: Instrument, dead: DeadLetters
) -> None:
    """With action="ack", an expired message's process span is a child of its publish span, carries rabbitmq.dead_letter.*, has the ERROR death child, and the message is acked once recorded."""
    instrument()
    dead.expire()
    watcher = dead.watcher(connection_name="otel-dlw-ack")
    with running(watcher):
        until(lambda: watcher.handled == 1, "the dead letter handled")
    (publish,) = dead.otel.named("publish amq.default")
    process = dead.otel.wait_for_count(f"process {dead.queue}", 1)[0]
    death = dead.otel.wait_for_count(f"expired {dead.queue}.src", 1)[0]
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    attributes = process.attributes or {}
    assert attributes["rabbitmq.dead_letter.reason"] == "expired"
    assert attributes["rabbitmq.dead_letter.queue"] == f"{dead.queue}.src"
    assert attributes["rabbitmq.dead_letter.original_expiration_ms"] == int(TTL_MS)
    assert death.parent is not None
    assert death.parent.span_id == process.context.span_id
    assert death.status.status_code.name == "ERROR"
    assert dead.left_in() == 0
    assert watcher.requeued == 0


def test_republish_mode_parks_the_message_after_the_confirm(
    instrument: Instrument, dead: DeadLetters
) -> None:
    """With action="republish", the message (body, message id, x-death and trace headers) lands in the parking queue, published from within its process span, and leaves the dead-letter queue."""
    instrument()
    park = f"{dead.queue}.parked"
    dead.setup.queue_declare(park, arguments={"x-expires": 120_000})
    dead.expire()
    watcher = dead.watcher("republish", park, connection_name="otel-dlw-republish")
    with running(watcher):
        until(lambda: watcher.handled == 1, "the dead letter parked")
    method, properties, body = dead.setup.basic_get(park, auto_ack=True)
    assert method is not None
    assert body == b"order 0"
    assert properties.message_id == "m-0"
    assert properties.headers["x-death"][0]["reason"] in ("expired", b"expired")
    assert "traceparent" in properties.headers
    process = dead.otel.wait_for_count(f"process {dead.queue}", 1)[0]
    parked = dead.otel.wait_for_count("publish amq.default", 2)
    assert [p.parent.span_id for p in parked if p.parent] == [process.context.span_id]
    assert dead.left_in() == 0


def test_a_message_the_parking_queue_refuses_stays_in_the_dead_letter_queue(
    instrument: Instrument, dead: DeadLetters
) -> None:
    """When the broker nacks the republish (a full parking queue that rejects publishes), the dead letter is nacked with requeue: never lost."""
    instrument()
    park = f"{dead.queue}.full"
    dead.setup.queue_declare(
        park, arguments={"x-expires": 120_000, "x-max-length": 0, "x-overflow": "reject-publish"}
    )
    dead.expire()
    watcher = dead.watcher("republish", park, backoff=(0.05, 1.0), connection_name="otel-dlw-full")
    with running(watcher):
        until(lambda: watcher.requeued >= 2, "the dead letter requeued twice")
    assert watcher.handled == 0
    until(lambda: dead.left_in() == 1, "the dead letter back in its queue")
    assert dead.left_in(park) == 0


def test_the_watcher_reconnects_when_the_broker_closes_its_connection_and_loses_nothing(
    instrument: Instrument, dead: DeadLetters, unique: Callable[[str], str]
) -> None:
    """The broker closing the watcher's connection mid-stream (rabbitmqctl close_connection) is followed by a reconnect; every dead letter is handled at least once and none is left behind."""
    if not dead.broker.local:
        pytest.skip("closing a connection from the broker side needs rabbitmqctl")
    instrument()
    seen: set[Any] = set()
    name = unique("otel-dlw-reconnect")
    watcher = dead.watcher(
        prefetch=1,
        backoff=(0.05, 1.0),
        connection_name=name,
        on_settled=lambda outcome, _m, properties: seen.add(properties.message_id),
    )
    with running(watcher):
        dead.expire(30)
        until(lambda: watcher.handled >= 5, "some dead letters handled")
        assert close_connections(name) == 1
        until(lambda: watcher.connections >= 2, "a new connection")
        until(lambda: len(seen) == 30, "every dead letter handled")
    assert dead.left_in() == 0


def test_the_command_line_stops_on_sigterm(dead: DeadLetters) -> None:
    """python -m otel_pika.dead_letters runs with an SDK provider, consumes, and exits 0 on SIGTERM; without any tracer provider it refuses to start (exit 2), so no dead letter is acked unrecorded."""
    code = (
        "import sys;"
        "from opentelemetry import trace;"
        "from opentelemetry.sdk.trace import TracerProvider;"
        "trace.set_tracer_provider(TracerProvider());"
        "from otel_pika.dead_letters import main;"
        "sys.exit(main(sys.argv[1:]))"
    )
    args = ["--url", dead.broker.url, "--queue", dead.queue]
    watcher = subprocess.Popen(
        [sys.executable, "-c", code, *args], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        assert watcher.stderr is not None
        for line in watcher.stderr:
            if f"consuming {dead.queue}" in line or time.monotonic() > deadline:
                break
        watcher.terminate()
        assert watcher.wait(30) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
    bare = subprocess.run(
        [sys.executable, "-m", "otel_pika.dead_letters", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bare.returncode == 2
    assert "opentelemetry-instrument" in bare.stderr
