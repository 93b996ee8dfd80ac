"""otel-kombu without a broker: Celery message recognition, transport names, options, the memory transport."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from opentelemetry import trace

from broker_harness import Recorder, span_summary
from otel_kombu import KombuInstrumentor
from otel_kombu._binding import system_of
from otel_kombu._celery import CelerySkip, is_celery_message, task_id
from otel_kombu.instrumentor import SKIP_CELERY_MESSAGES_ENV


@pytest.mark.parametrize(
    ("headers", "exchange", "expected"),
    [
        ({"task": "app.add", "id": "6b1c", "lang": "py"}, "", True),
        ({"task": "app.add"}, "orders", False),
        ({}, "celeryev", True),
        (None, "celery.pidbox", True),
        (None, "reply.celery.pidbox", True),
        ({b"task": b"x", b"id": b"y"}, "orders", False),
        ({"traceparent": "00-…"}, "orders", False),
    ],
)
def test_celery_messages_are_recognised(
    headers: dict[Any, Any] | None, exchange: str, expected: bool
) -> None:
    """Task protocol 2 headers, the event exchange and pidbox exchanges mark Celery's own messages."""
    assert is_celery_message(headers, exchange) is expected


TASK = {"task": "app.add", "id": "6b1c", "lang": "py"}


@pytest.mark.parametrize(
    ("kinds", "headers", "exchange", "skipped"),
    [
        (("control", "events"), TASK, "", False),
        (("control", "events"), None, "celeryev", True),
        (("control", "events"), None, "celery.pidbox", True),
        (("control", "events"), {}, "reply.celery.pidbox", True),
        (("control", "events"), None, "orders", False),
        (("tasks",), TASK, "", True),
        (("tasks",), TASK, "tasks", True),
        (("tasks",), None, "celeryev", False),
        (("tasks",), {"task": "app.add"}, "", False),
        (("events",), None, "celery.pidbox", False),
        (("tasks", "control", "events"), {b"task": b"x", b"id": b"y"}, "orders", False),
    ],
)
def test_each_kind_of_celery_message_is_skipped_on_its_own(
    kinds: tuple[str, ...], headers: dict[Any, Any] | None, exchange: str, skipped: bool
) -> None:
    """Tasks are told by their headers, control by a .pidbox exchange, events by celeryev; only
    the kinds named are skipped, asked twice (the exchange's answer is cached) the same."""
    skip = CelerySkip(kinds)
    assert skip.skips(headers, exchange) is skipped
    assert skip.skips(headers, exchange) is skipped


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (TASK, "6b1c"),
        ({"task": "app.add"}, None),
        ({"id": "6b1c"}, None),
        ({"task": "app.add", "id": b"6b1c"}, None),
        ({"task": "app.add", "id": ""}, None),
        (None, None),
    ],
)
def test_task_id_is_celerys_id_header(headers: dict[str, Any] | None, expected: str | None) -> None:
    """A task protocol 2 message's id header is its task id; anything else has none."""
    assert task_id(headers) == expected


@pytest.mark.parametrize(
    ("url", "system"),
    [
        ("amqp://guest:guest@mq.internal:5672//", "rabbitmq"),
        ("pyamqp://mq.internal", "rabbitmq"),
        ("memory://", "memory"),
        ("filesystem://", "filesystem"),
    ],
)
def test_messaging_system_per_transport(url: str, system: str) -> None:
    """AMQP transports are 'rabbitmq'; every other transport is named after itself."""
    assert system_of(Connection(url)) == system


def test_unknown_keyword_is_a_type_error() -> None:
    """A misspelt keyword fails instrument() instead of being ignored."""
    instrumentor = KombuInstrumentor()
    with pytest.raises(TypeError, match="settle_span"):
        instrumentor.instrument(settle_span=True)
    assert not instrumentor.is_instrumented_by_opentelemetry


def test_the_unknown_keyword_error_lists_kombus_own_keyword() -> None:
    """The TypeError for a misspelt keyword names every accepted keyword, skip_celery_messages
    included."""
    with pytest.raises(TypeError, match=r"accepted: .*skip_celery_messages"):
        KombuInstrumentor().instrument(skip_celery=True)


def test_a_bad_variable_leaves_kombu_instrumented(
    otel: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES value is one ERROR naming it; instrument()
    goes on with the default (task messages traced)."""
    monkeypatch.setenv(SKIP_CELERY_MESSAGES_ENV, "sometimes")
    instrumentor = KombuInstrumentor()
    with caplog.at_level(logging.ERROR, logger="otel_messaging_core"):
        instrumentor.instrument(
            tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        )
    try:
        assert instrumentor.is_instrumented_by_opentelemetry
        with Connection("memory://") as connection:
            task = memory_round_trip(connection, {"task": "app.add", "id": "6b1c"})
    finally:
        instrumentor.uninstrument()
    assert "traceparent" in task.headers
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert SKIP_CELERY_MESSAGES_ENV in error
    assert "'sometimes'" in error


def memory_round_trip(connection: Connection, headers: dict[str, Any] | None = None) -> Any:
    exchange = Exchange("orders", type="direct")
    queue = Queue("srm", exchange, routing_key="order.created")
    got: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        got.append(message)
        message.ack()

    with Consumer(connection, [queue], callbacks=[callback]):
        Producer(connection, exchange=exchange).publish(
            {"order": 1}, routing_key="order.created", headers=headers
        )
        connection.drain_events(timeout=5)
    return got[0]


def test_memory_transport_round_trip(traced: KombuInstrumentor, otel: Recorder) -> None:
    """On memory:// the publish and process spans are linked and name the 'memory' system, no server."""
    with Connection("memory://") as connection:
        memory_round_trip(connection)
    spans = otel.spans()
    process = span_summary(otel.named("process srm")[0], spans)
    assert process["parent"] == "publish orders"
    assert process["attributes"] == {
        "messaging.system": "memory",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "orders:order.created:srm",
        "messaging.message.body.size": len(b'{"order": 1}'),
    }


def test_a_body_that_does_not_decode_goes_to_on_decode_error_inside_the_process_span(
    traced: KombuInstrumentor, otel: Recorder
) -> None:
    """kombu's decode-error handling is kept: on_decode_error gets the message (not the callbacks),
    in the process span's context, and the span ends when it returns."""
    exchange = Exchange("orders", type="direct")
    queue = Queue("srm-bad", exchange, routing_key="bad")
    called: list[Any] = []
    seen: list[Any] = []

    def on_decode_error(message: Any, exc: Exception) -> None:
        seen.append((message, type(exc).__name__, trace.get_current_span().get_span_context()))

    with (
        Connection("memory://") as connection,
        Consumer(
            connection,
            [queue],
            callbacks=[lambda body, message: called.append(body)],
            on_decode_error=on_decode_error,
        ),
    ):
        Producer(connection, exchange=exchange).publish(
            b"{not json", routing_key="bad", content_type="application/json",
            content_encoding="utf-8",
        )  # fmt: skip
        connection.drain_events(timeout=5)
    assert called == []
    ((message, error, span_context),) = seen
    assert error == "DecodeError"
    assert message.body == b"{not json"
    (process,) = otel.named("process srm-bad")
    assert span_context.span_id == process.context.span_id


def test_a_producer_that_published_while_instrumented_is_kombus_own_after_uninstrument(
    otel: Recorder,
) -> None:
    """uninstrument() restores producers that are kept and reused (pools, Celery): no spans,
    no context in the headers, kombu's own methods."""
    instrumentor = KombuInstrumentor()
    instrumentor.instrument(tracer_provider=otel.tracer_provider)
    with Connection("memory://") as connection:
        producer = Producer(connection, exchange=Exchange("unbound-shadow", type="direct"))
        producer.publish({"n": 1}, routing_key="order.created")
        instrumentor.uninstrument()
        assert not {"publish", "_publish"} & set(vars(producer))
        before = len(otel.spans())
        producer.publish({"n": 2}, routing_key="order.created")
    assert len(otel.spans()) == before


class _CountingProducer(Producer):  # type: ignore[misc]
    calls = 0

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        type(self).calls += 1
        return super().publish(*args, **kwargs)


def test_a_producer_subclass_that_overrides_publish_keeps_its_override(
    traced: KombuInstrumentor, otel: Recorder
) -> None:
    """A subclass's own publish runs on every call, and its messages are still traced."""
    with Connection("memory://") as connection:
        producer = _CountingProducer(connection, exchange=Exchange("unbound-shadow", type="direct"))
        producer.publish({"n": 1}, routing_key="order.created")
        producer.publish({"n": 2}, routing_key="order.created")
    assert _CountingProducer.calls == 2
    assert len(otel.named("publish unbound-shadow")) == 2


class _CountingConsumer(Consumer):  # type: ignore[misc]
    calls = 0

    def _receive_callback(self, message: Any) -> Any:
        type(self).calls += 1
        return super()._receive_callback(message)


@pytest.mark.parametrize("consumer_class", [Consumer, _CountingConsumer])
def test_consumers_are_traced_and_restored_by_uninstrument(
    otel: Recorder, consumer_class: type[Consumer]
) -> None:
    """Each delivery gets a process span (a subclass's own _receive_callback still runs);
    after uninstrument() the same consumer goes on receiving, untraced, as kombu's own."""
    exchange = Exchange("shadowed-consumer", type="direct")
    queue = Queue(f"shadowed-{consumer_class.__name__}", exchange, routing_key="k")
    got: list[Any] = []
    _CountingConsumer.calls = 0
    instrumentor = KombuInstrumentor()
    instrumentor.instrument(tracer_provider=otel.tracer_provider)
    try:
        with Connection("memory://") as connection:
            consumer = consumer_class(connection, [queue], callbacks=[lambda b, m: got.append(b)])
            with consumer:
                producer = Producer(connection, exchange=exchange)
                producer.publish({"n": 1}, routing_key="k")
                connection.drain_events(timeout=5)
                instrumentor.uninstrument()
                assert "_receive_callback" not in vars(consumer)
                producer.publish({"n": 2}, routing_key="k")
                connection.drain_events(timeout=5)
    finally:
        instrumentor.uninstrument()
    assert got == [{"n": 1}, {"n": 2}]
    assert len(otel.named(f"process {queue.name}")) == 1
    if consumer_class is _CountingConsumer:
        assert _CountingConsumer.calls == 2


def test_skip_celery_messages_from_the_environment(
    otel: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES=true leaves task messages untraced, others traced."""
    monkeypatch.setenv(SKIP_CELERY_MESSAGES_ENV, "true")
    instrumentor = KombuInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    try:
        with Connection("memory://") as connection:
            task = memory_round_trip(connection, {"task": "app.add", "id": "6b1c"})
            plain = memory_round_trip(connection, {"x-origin": "shop"})
    finally:
        instrumentor.uninstrument()
    assert "traceparent" not in task.headers
    assert "traceparent" in plain.headers
    assert sorted(s.name for s in otel.spans()) == ["process srm", "publish orders"]


def memory_publish_to(connection: Connection, exchange_name: str) -> Any:
    """Publish one message to a fanout exchange named like Celery's and consume it."""
    exchange = Exchange(exchange_name, type="fanout")
    queue = Queue(f"{exchange_name}.3f2b8c1e-1234-4abc-9def-0123456789ab", exchange)
    got: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        got.append(message)
        message.ack()

    with Consumer(connection, [queue], callbacks=[callback]):
        Producer(connection, exchange=exchange).publish({"hostname": "w1"})
        connection.drain_events(timeout=5)
    return got[0]


def test_celery_control_and_events_are_not_traced_by_default(
    traced: KombuInstrumentor, otel: Recorder
) -> None:
    """By default heartbeats and gossip (celeryev) and remote control (*.pidbox) make no span and
    no metric point; a task message is traced, with its task id as messaging.message.id."""
    with Connection("memory://") as connection:
        event = memory_publish_to(connection, "celeryev")
        control = memory_publish_to(connection, "celery.pidbox")
        task = memory_round_trip(connection, {"task": "app.add", "id": "6b1c"})
    assert "traceparent" not in event.headers
    assert "traceparent" not in control.headers
    assert "traceparent" in task.headers
    spans = otel.spans()
    assert sorted(s.name for s in spans) == ["process srm", "publish orders"]
    assert {(s.attributes or {}).get("messaging.message.id") for s in spans} == {"6b1c"}
    destinations = {
        a["messaging.destination.name"] for a, _ in otel.points("messaging.client.sent.messages")
    }
    assert destinations == {"orders:order.created"}


def test_skip_celery_messages_false_traces_control_and_events_with_stable_names(
    otel: Recorder,
) -> None:
    """skip_celery_messages=False traces every Celery message; a per-worker queue name is
    {uuid} in the span name and the metric, and real in the span attribute."""
    instrumentor = KombuInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        skip_celery_messages=False,
    )
    try:
        with Connection("memory://") as connection:
            memory_publish_to(connection, "celeryev")
    finally:
        instrumentor.uninstrument()
    (process,) = otel.named("process celeryev.{uuid}")
    assert (process.attributes or {})["messaging.destination.name"] == (
        "celeryev:celeryev.3f2b8c1e-1234-4abc-9def-0123456789ab"
    )
    consumed = {
        a["messaging.destination.name"]
        for a, _ in otel.points("messaging.client.consumed.messages")
    }
    assert consumed == {"celeryev:celeryev.{uuid}"}


def test_skip_celery_messages_names_kinds_in_code_and_says_which(otel: Recorder) -> None:
    """skip_celery_messages="tasks" skips task messages only; an unknown kind is a ValueError
    naming the accepted ones."""
    with pytest.raises(ValueError, match="accepted: tasks, control, events"):
        KombuInstrumentor().instrument(skip_celery_messages="heartbeats")
    instrumentor = KombuInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        skip_celery_messages="tasks",
    )
    try:
        with Connection("memory://") as connection:
            memory_round_trip(connection, {"task": "app.add", "id": "6b1c"})
            memory_publish_to(connection, "celeryev")
    finally:
        instrumentor.uninstrument()
    assert sorted(s.name for s in otel.spans()) == ["process celeryev.{uuid}", "publish celeryev"]


def test_instrument_connection_on_memory(otel: Recorder) -> None:
    """instrument_connection records its own connection only, and undoing it leaves kombu as it was."""
    mine, other = Connection("memory://"), Connection("memory://")
    KombuInstrumentor.instrument_connection(
        mine, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    try:
        memory_round_trip(mine)
        assert sorted(s.name for s in otel.spans()) == ["process srm", "publish orders"]
        otel.clear()
        memory_round_trip(other)
        assert otel.spans() == []
    finally:
        KombuInstrumentor.uninstrument_connection(mine)
        mine.release()
        other.release()
    assert not hasattr(Producer.publish, "__wrapped__")


def test_inner_publish_called_with_keywords(traced: KombuInstrumentor, otel: Recorder) -> None:
    """Code that calls Producer._publish with keywords (not kombu's positional call) is traced the same."""
    with Connection("memory://") as connection:
        exchange = Exchange("orders", type="direct")
        queue = Queue("srm", exchange, routing_key="order.created")
        queue(connection.default_channel).declare()
        headers: dict[str, Any] = {"x-origin": "shop"}
        Producer(connection)._publish(
            body=b"{}",
            priority=0,
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
            properties={"message_id": "m-1"},
            routing_key="order.created",
            mandatory=False,
            immediate=False,
            exchange="orders",
            declare=[],
        )
        message = queue(connection.default_channel).get()
    (span,) = otel.named("publish orders")
    assert headers == {"x-origin": "shop"}
    assert message.headers["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"
