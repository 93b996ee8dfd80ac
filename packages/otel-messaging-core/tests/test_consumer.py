"""The parent-or-link rule and making the handling context current in sync code, generators and tasks."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_messaging_core.consumer import ContextActivation, MessageContext, handling_parent

PRODUCER = SpanContext(0xA1, 0xB1, is_remote=True, trace_flags=TraceFlags(1))
LOCAL = SpanContext(0xC2, 0xD2, is_remote=False, trace_flags=TraceFlags(1))


def creation_context() -> Context:
    ctx = trace.set_span_in_context(NonRecordingSpan(PRODUCER), Context())
    return baggage.set_baggage("order.id", "17", ctx)


def active_span_context() -> Context:
    return baggage.set_baggage("tenant", "acme", trace.set_span_in_context(NonRecordingSpan(LOCAL)))


def span_of(ctx: Context) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def test_parent_mode_without_active_span_parents_to_producer() -> None:
    """parent mode, nothing active: the producer is the parent and also a link; baggage kept."""
    parent, links = handling_parent(creation_context(), "parent", Context())
    assert span_of(parent) == PRODUCER
    assert [link.context for link in links] == [PRODUCER]
    assert baggage.get_baggage("order.id", parent) == "17"


def test_parent_mode_with_active_span_keeps_it_as_parent() -> None:
    """parent mode, a span active: it stays the parent, the producer is a link, baggage merged."""
    parent, links = handling_parent(creation_context(), "parent", active_span_context())
    assert span_of(parent) == LOCAL
    assert [link.context for link in links] == [PRODUCER]
    assert baggage.get_baggage("order.id", parent) == "17"
    assert baggage.get_baggage("tenant", parent) == "acme"


def test_link_mode_starts_a_new_trace_but_keeps_baggage() -> None:
    """link mode: no parent, a link to the producer, and the message's baggage."""
    parent, links = handling_parent(creation_context(), "link", Context())
    assert not span_of(parent).is_valid
    assert [link.context for link in links] == [PRODUCER]
    assert baggage.get_baggage("order.id", parent) == "17"


def test_message_without_context_starts_fresh() -> None:
    """A message that carried no context gives a root span with no links in both modes."""
    for mode in ("parent", "link"):
        parent, links = handling_parent(Context(), mode, Context())  # type: ignore[arg-type]
        assert not span_of(parent).is_valid
        assert links == []


def test_activation_restores_the_previous_context() -> None:
    """deactivate() restores what was current and is idempotent."""
    before = otel_context.get_current()
    activation = ContextActivation()
    activation.activate(creation_context())
    assert span_of(otel_context.get_current()) == PRODUCER
    activation.deactivate()
    activation.deactivate()
    assert otel_context.get_current() is before


def test_activation_inside_a_generator_is_visible_to_the_loop_body() -> None:
    """A generator that activates before yielding puts the loop body in that context, and nothing leaks after break."""
    before = otel_context.get_current()

    def messages() -> Iterator[int]:
        activation = ContextActivation()
        try:
            for i in range(3):
                activation.activate(creation_context())
                yield i
                activation.deactivate()
        finally:
            activation.deactivate()

    seen = []
    gen = messages()
    for _ in gen:
        seen.append(span_of(otel_context.get_current()))
        break
    gen.close()
    assert seen == [PRODUCER]
    assert otel_context.get_current() is before


def test_deactivate_from_another_context_is_quiet(caplog: object) -> None:
    """A generator finalised elsewhere (another thread) does not raise or log an error."""
    holder: dict[str, ContextActivation] = {}

    def attach_in_thread() -> None:
        activation = ContextActivation()
        activation.activate(creation_context())
        holder["a"] = activation

    t = threading.Thread(target=attach_in_thread)
    t.start()
    t.join()
    holder["a"].deactivate()  # token from another thread's context: must not raise
    gc.collect()


def test_activation_per_asyncio_task_does_not_cross() -> None:
    """Concurrent tasks each see their own message's context, never another's."""

    async def handle(n: int) -> tuple[int, int]:
        sc = SpanContext(0x100 + n, 0x200 + n, is_remote=True, trace_flags=TraceFlags(1))
        with MessageContext(trace.set_span_in_context(NonRecordingSpan(sc), Context())):
            await asyncio.sleep(0.001 * (n % 5))
            return n, span_of(otel_context.get_current()).trace_id

    async def main() -> list[tuple[int, int]]:
        return await asyncio.gather(*(handle(n) for n in range(50)))

    results = asyncio.run(main())
    assert all(trace_id == 0x100 + n for n, trace_id in results)
    assert not span_of(otel_context.get_current()).is_valid
