"""What the three plugins' test_unsampled.py share (issue 18): the trace that was not sampled
upstream, what a message of it carries, hooks that must never run for it, and the checks each
plugin's test makes after its own publish and consume: each test keeps the client library's
calls, the check says what every plugin must give."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

from broker_harness import Recorder
from otel_messaging_core import MessagingTelemetry

__all__ = [
    "BAGGAGE",
    "PATHS",
    "SPAN_ID",
    "TRACEPARENT",
    "TRACE_ID",
    "VIEW",
    "HookCalls",
    "ManualAck",
    "NotSampledConsumer",
    "QuietAck",
    "check_carried",
    "check_counted_without_spans",
    "check_nothing_current",
    "handler_view",
    "handler_views",
    "in_unsampled_trace",
    "links_of",
    "manual_ack",
    "quiet_ack",
    "take_path",
    "unsampled_parent",
]

TRACE_ID = 0x5EED
SPAN_ID = 0xF00D
#: what a publish inside :func:`unsampled_parent` sends: the trace, not sampled (flags 00)
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"
BAGGAGE = "order.id=17"


def unsampled_parent() -> otel_context.Context:
    """A request handler's context whose trace was not sampled upstream, with baggage."""
    span = NonRecordingSpan(
        SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(0))
    )
    return baggage.set_baggage("order.id", "17", trace.set_span_in_context(span))


@contextmanager
def in_unsampled_trace() -> Iterator[None]:
    """``with in_unsampled_trace():`` runs the block in :func:`unsampled_parent`."""
    token = otel_context.attach(unsampled_parent())
    try:
        yield
    finally:
        otel_context.detach(token)


View = tuple[int, bool, str | None]
#: what :func:`handler_view` gives inside :func:`unsampled_parent`'s trace
VIEW: View = (TRACE_ID, False, "17")


def handler_view() -> View:
    """What a handler sees of the current context: trace id, sampled flag, ``order.id``."""
    span_context = trace.get_current_span().get_span_context()
    entry = baggage.get_baggage("order.id")
    return (
        span_context.trace_id,
        span_context.trace_flags.sampled,
        None if entry is None else str(entry),
    )


def handler_views(
    message_context: Callable[[Any], AbstractContextManager[Any]], message: Any
) -> tuple[View, View]:
    """Called in a consumer callback: :func:`handler_view` there, and inside the plugin's
    ``message_context(message)``."""
    with message_context(message):
        in_block = handler_view()
    return handler_view(), in_block


def check_nothing_current() -> None:
    """After the test's publishes and consumers, no context of ours is left current."""
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"


def check_carried(
    seen: Sequence[tuple[Any, str | None, str | None, View]], bodies: list[Any]
) -> None:
    """``seen`` holds, per delivered message, its body, its ``traceparent`` and ``baggage``
    headers and :func:`handler_view` in its callback: each message published inside
    :func:`unsampled_parent` arrives in order with the trace's traceparent (flags 00) and the
    baggage, and its callback runs in that trace, not sampled, with that baggage."""
    expected = [(body, TRACEPARENT, BAGGAGE, VIEW) for body in bodies]
    assert list(seen) == expected, f"{list(seen)!r} != {expected!r}"


def check_counted_without_spans(otel: Recorder, deliveries: int) -> None:
    """With a MeterProvider, not-sampled messages of a manual-ack consumer are still counted:
    each delivery's process duration and each ack's settle duration, with no span."""
    processed = [value for _, value in otel.points("messaging.process.duration")]
    assert processed == [deliveries], processed
    settles = [
        value
        for attributes, value in otel.points("messaging.client.operation.duration")
        if attributes.get("messaging.operation.name") == "ack"
    ]
    assert settles == [deliveries], settles
    assert otel.spans() == [], otel.spans()


def links_of(span: ReadableSpan) -> list[tuple[int, int]]:
    """``(trace_id, span_id)`` of every link of ``span``."""
    return [(link.context.trace_id, link.context.span_id) for link in span.links]


class HookCalls:
    """``publish_hook`` / ``consume_hook`` that note every call (they must never run for a
    message whose span does not record)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def publish(self, span: Any, envelope: Any) -> None:
        self.calls.append("publish")

    def consume(self, span: Any, envelope: Any) -> None:
        self.calls.append("consume")

    def options(self) -> dict[str, Any]:
        return {"publish_hook": self.publish, "consume_hook": self.consume}


#: the two ways a not-sampled pushed message can go: the fast path, and the general path it
#: must match (``unsampled_consume`` stepping aside)
PATHS = ("fast", "general")


def take_path(monkeypatch: pytest.MonkeyPatch, path: str) -> list[str]:
    """Make not-sampled pushed messages take ``path``; the list of ``start_consume`` calls
    (the general path's), which stays empty on the fast path (so a test knows where it ran)."""
    general: list[str] = []
    if path == "general":
        monkeypatch.setattr(MessagingTelemetry, "unsampled_consume", lambda self, headers: None)
    start_consume = MessagingTelemetry.start_consume

    def noted(self: MessagingTelemetry, *args: Any, **kwargs: Any) -> Any:
        general.append("start_consume")
        return start_consume(self, *args, **kwargs)

    monkeypatch.setattr(MessagingTelemetry, "start_consume", noted)
    return general


class NotSampledConsumer:
    """What :class:`ManualAck` and :class:`QuietAck` share: made before the test's first
    publish, it picks ``path``, notes the hooks and instruments through the plugin's
    ``instrument`` fixture with no MeterProvider (and ``options``); the test publishes and
    consumes with its client library, then calls the checks."""

    def __init__(
        self,
        instrument: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch,
        path: str,
        **options: Any,
    ) -> None:
        self.path = path
        self.general = take_path(monkeypatch, path)
        self.hooks = HookCalls()
        instrument(meter_provider=None, **options, **self.hooks.options())

    def check_quiet(self, deliveries: int) -> None:
        """No hook ran; each of the ``deliveries`` took the test's path (the general path's
        ``start_consume`` once each, the fast path's never); nothing of ours stays current."""
        assert self.hooks.calls == [], self.hooks.calls
        expected = [] if self.path == "fast" else ["start_consume"] * deliveries
        assert self.general == expected, self.general
        check_nothing_current()


class ManualAck(NotSampledConsumer):
    """A manual-ack consumer of messages whose trace was not sampled (no MeterProvider, hooks
    noted, ``settle_spans=True``), on ``path``: each callback runs in that trace with its
    baggage (``message_context()`` too), hooks never run, every settle finds its delivery's
    record, and the fast path and the general path give the same."""

    def __init__(
        self, instrument: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, path: str
    ) -> None:
        super().__init__(instrument, monkeypatch, path, settle_spans=True)

    def check_callbacks(self, seen: Sequence[tuple[str | None, View, View]], count: int) -> None:
        """``seen`` holds, per callback, its message's ``traceparent`` header and
        :func:`handler_views`: ``count`` callbacks, each with the trace's traceparent and in
        that trace with its baggage, inside ``message_context()`` too."""
        expected = [(TRACEPARENT, VIEW, VIEW)] * count
        assert list(seen) == expected, f"{list(seen)!r} != {expected!r}"

    @staticmethod
    def check_multiple_ack_span(spans: Sequence[ReadableSpan], queue: str) -> None:
        """The only span is the settle span of one ``ack(multiple=True)`` of two deliveries:
        a new trace (so the sampler keeps it) that links both producers and names the queue."""
        assert len(spans) == 1, [span.name for span in spans]
        (ack,) = spans
        assert ack.name == f"ack {queue}", ack.name
        assert ack.parent is None, ack.parent
        assert links_of(ack) == [(TRACE_ID, SPAN_ID)] * 2, links_of(ack)
        assert ack.attributes is not None
        assert ack.attributes["messaging.batch.message_count"] == 2, ack.attributes


class QuietAck(NotSampledConsumer):
    """A manual-ack consumer of messages whose trace was not sampled, with nothing to record for
    an ack (no ``settle_spans``, no MeterProvider, hooks noted), on ``path``: its acks, one by
    one inside the callback and ``multiple=True`` after it, start nothing (the plugin forgets
    the deliveries' records and calls the client) and leave no record behind; a settle that
    drops messages still finds the records of the ones not acked and is the ERROR span."""

    def __init__(
        self, instrument: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, path: str
    ) -> None:
        #: the operation of every settle that started (``start_settle``)
        self.started: list[str] = []
        start_settle = MessagingTelemetry.start_settle
        started = self.started

        def noted(telemetry: MessagingTelemetry, operation: str, *args: Any, **kwargs: Any) -> Any:
            started.append(operation)
            return start_settle(telemetry, operation, *args, **kwargs)

        monkeypatch.setattr(MessagingTelemetry, "start_settle", noted)
        super().__init__(instrument, monkeypatch, path)

    def check_acks_started_nothing(self) -> None:
        """No ack so far started a settle."""
        assert self.started == [], self.started

    def check_dropped_span(
        self, spans: Sequence[ReadableSpan], queue: str, operation: str, count: int
    ) -> None:
        """The only settle started after the acks is ``operation`` without requeue, and its
        span the only span: ERROR ``rejected``, a new trace linking the ``count`` producers
        whose records the acks left in place."""
        assert self.started == [operation], self.started
        assert len(spans) == 1, [span.name for span in spans]
        (dropped,) = spans
        assert dropped.name == f"{operation} {queue}", dropped.name
        assert dropped.status.status_code is StatusCode.ERROR, dropped.status
        assert dropped.attributes is not None
        assert dropped.attributes["error.type"] == "rejected", dropped.attributes
        assert dropped.attributes["messaging.batch.message_count"] == count, dropped.attributes
        assert dropped.parent is None, dropped.parent
        assert links_of(dropped) == [(TRACE_ID, SPAN_ID)] * count, links_of(dropped)


@pytest.fixture(params=PATHS)
def manual_ack(
    request: pytest.FixtureRequest, instrument: Any, monkeypatch: pytest.MonkeyPatch
) -> ManualAck:
    """A :class:`ManualAck` on each path, instrumented by the plugin's ``instrument``
    fixture (integration_tests/conftest.py loads this module as a plugin)."""
    return ManualAck(instrument, monkeypatch, request.param)


@pytest.fixture(params=PATHS)
def quiet_ack(
    request: pytest.FixtureRequest, instrument: Any, monkeypatch: pytest.MonkeyPatch
) -> QuietAck:
    """A :class:`QuietAck` on each path, as :func:`manual_ack`."""
    return QuietAck(instrument, monkeypatch, request.param)
