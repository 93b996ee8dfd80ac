"""What the three plugins' test_unsampled.py share (issue 18): the trace that was not sampled
upstream, what a message of it carries, and hooks that must never run for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_messaging_core import MessagingTelemetry

__all__ = [
    "BAGGAGE",
    "PATHS",
    "SPAN_ID",
    "TRACEPARENT",
    "TRACE_ID",
    "HookCalls",
    "handler_view",
    "in_unsampled_trace",
    "links_of",
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


def handler_view() -> tuple[int, bool, str | None]:
    """What a handler sees of the current context: trace id, sampled flag, ``order.id``."""
    span_context = trace.get_current_span().get_span_context()
    entry = baggage.get_baggage("order.id")
    return (
        span_context.trace_id,
        span_context.trace_flags.sampled,
        None if entry is None else str(entry),
    )


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
