"""Every plugin's options and instrumentor: hooks, capture_headers and baggage_attributes on every
path, instrument() twice, uninstrument(), the entry point and strict keyword checks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.trace import Span

from broker_harness import Recorder, header_text
from integration_tests.contract.protocol import BODY, Client, Handling, Path, Plugin


@pytest.fixture
def pushed(plugin: Plugin) -> Iterator[Path]:
    """The plugin's first push path (its plain consumer callback)."""
    made = plugin.path(next(i for i, p in plugin.paths.items() if p.mode == "push"))
    yield made
    made.close()


def test_hooks_get_the_envelope_and_a_raising_hook_breaks_nothing(
    instrument: Callable[..., Any],
    otel: Recorder,
    plugin: Plugin,
    client: Client,
    path: Path,
    queue: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """publish_hook and consume_hook get the span and the shared Envelope of every message; a hook that raises is logged once per hook and the publish and the handler go on."""
    seen: list[tuple[str, Any]] = []

    def publish_hook(span: Span, envelope: Any) -> None:
        seen.append(("publish", envelope))
        span.set_attribute("app.hook", "publish")
        raise ValueError("publish hook bug")

    def consume_hook(span: Span, envelope: Any) -> None:
        seen.append(("consume", envelope))
        raise ValueError("consume hook bug")

    instrument(publish_hook=publish_hook, consume_hook=consume_hook)
    with caplog.at_level(logging.WARNING, logger="otel_messaging_core"):
        given = [
            client.publish(
                "", queue, headers={"x-k": "v"}, message_id=f"m-{n}", correlation_id="c-1"
            )
            for n in range(2)
        ]
        consumed = path.consume(queue, 2, Handling())
        otel.wait_for_count(f"{path.operation} {queue}", 2)
    assert [r.body for r in consumed.received] == [BODY, BODY]
    assert [s.status.status_code.name for s in otel.spans()] == ["UNSET"] * 4
    warned = [
        r for r in caplog.records if r.levelno == logging.WARNING and "hook" in r.getMessage()
    ]
    assert [str(r.exc_info[1]) for r in warned if r.exc_info] == [
        "publish hook bug",
        "consume hook bug",
    ], "logged once per hook, not per message"
    sent = [envelope for kind, envelope in seen if kind == "publish"]
    got = [envelope for kind, envelope in seen if kind == "consume"]
    assert [e.message_id for e in sent] == ["m-0", "m-1"]
    assert (sent[0].exchange, sent[0].routing_key, sent[0].body, sent[0].correlation_id) == (
        "",
        queue,
        BODY,
        "c-1",
    )
    assert sent[0].headers["x-k"] == "v"
    assert "traceparent" in sent[0].headers
    assert plugin.published_raw_ok(sent[0].raw, given[0], "m-0")
    first = consumed.received[0]
    assert [e.body for e in got] == [BODY, BODY]
    assert (
        got[0].exchange,
        got[0].routing_key,
        got[0].queue,
        got[0].delivery_tag,
        got[0].redelivered,
        got[0].message_id,
    ) == ("", queue, queue, first.delivery_tag, False, "m-0")
    assert got[0].raw is first.raw
    assert [(p.attributes or {}).get("app.hook") for p in otel.named("publish amq.default")] == [
        "publish",
        "publish",
    ]


def test_baggage_and_named_headers_travel_with_the_message(
    instrument: Callable[..., Any],
    otel: Recorder,
    client: Client,
    path: Path,
    queue: str,
    unique: Callable[[str], str],
) -> None:
    """The producer's baggage is current in the handler and gone after it and rides on the handler's own publish; baggage_attributes puts it on every span and capture_headers copies the named headers (and no others) onto the publish and consume spans."""
    instrument(baggage_attributes=("order.id",), capture_headers=("x-tenant",))
    onward = client.declare_queue(unique("onward"), {"x-expires": 120_000})
    try:
        token = otel_context.attach(baggage.set_baggage("order.id", "17"))
        try:
            client.publish("", queue, headers={"x-tenant": "acme", "x-other": "no"})
        finally:
            otel_context.detach(token)
        consumed = path.consume(queue, 1, Handling(forward_to=onward))
        _body, forwarded = client.fetch(onward)
    finally:
        client.delete_queue(onward)
    assert [r.baggage for r in consumed.received] == [{"order.id": "17"}]
    assert consumed.after_baggage == {}
    assert "order.id=17" in (header_text(forwarded, "baggage") or "")
    (consume,) = otel.wait_for_count(f"{path.operation} {queue}", 1)
    spans = otel.wait_for_count("publish amq.default", 2)
    first_publish = spans[0]
    for span in otel.spans():
        assert (span.attributes or {}).get("order.id") == "17", span.name
    for span in (first_publish, consume):
        assert span.attributes is not None
        assert span.attributes["messaging.header.x-tenant"] == "acme", span.name
        assert "messaging.header.x-other" not in span.attributes


def test_instrument_twice_gives_one_span_per_operation(
    instrument: Callable[..., Any], otel: Recorder, client: Client, pushed: Path, queue: str
) -> None:
    """A second instrument() patches nothing twice: a publish and its delivery still make one span each."""
    instrument()
    instrument()
    client.publish("", queue)
    pushed.consume(queue, 1, Handling())
    otel.wait_for_count(f"process {queue}", 1)
    assert sorted(s.name for s in otel.spans()) == [f"process {queue}", "publish amq.default"]


def test_uninstrument_restores_every_patched_attribute_and_stops_tracing(
    instrument: Callable[..., Any],
    otel: Recorder,
    plugin: Plugin,
    client: Client,
    pushed: Path,
    queue: str,
) -> None:
    """uninstrument() puts back the very objects instrument() replaced, and a consumer registered while instrumented still gets its messages but makes no span."""
    before = plugin.patched()
    instrumentor = instrument()
    assert plugin.unpatched(before, plugin.patched()) == []
    client.publish("", queue)
    pushed.consume(queue, 1, Handling())
    assert len(otel.wait_for_count(f"process {queue}", 1)) == 1

    def undo_then_publish() -> None:
        instrumentor.uninstrument()
        client.publish("", queue)

    consumed = pushed.consume(queue, 1, Handling(), between=undo_then_publish)
    after = plugin.patched()
    assert after.keys() == before.keys()
    assert [key for key, value in after.items() if value is not before[key]] == []
    assert [r.body for r in consumed.received] == [BODY]
    assert sorted(s.name for s in otel.spans()) == [f"process {queue}", "publish amq.default"]
    assert [count for _attributes, count in otel.points("messaging.client.sent.messages")] == [1]


def test_the_entry_point_loads_the_instrumentor(plugin: Plugin) -> None:
    """The distribution registers otel_<plugin> in the opentelemetry_instrumentor group, so opentelemetry-instrument finds it."""
    (point,) = entry_points(group="opentelemetry_instrumentor", name=f"otel_{plugin.name}")
    assert point.load() is type(plugin.instrumentor())


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"settle_span": True}, TypeError, "settle_span"),
        ({"consumer_context": "child"}, ValueError, "consumer_context"),
        ({"capture_headers": (1,)}, TypeError, "capture_headers"),
    ],
)
def test_a_bad_option_fails_before_anything_is_patched(
    plugin: Plugin,
    client: Client,
    options: dict[str, Any],
    error: type[Exception],
    names: str,
) -> None:
    """A misspelt keyword or a wrong value fails at instrument() and at the per-object instrument call, naming the keyword, and leaves everything unpatched."""
    before = plugin.patched()
    instrumentor = plugin.instrumentor()
    with pytest.raises(error, match=names):
        instrumentor.instrument(**options)
    with pytest.raises(error, match=names):
        plugin.instrument_object(client, **options)
    assert not instrumentor.is_instrumented_by_opentelemetry
    after = plugin.patched()
    assert [key for key, value in after.items() if value is not before[key]] == []
