"""Every single-message pull: message_context() puts the handling of a pulled message in its
trace, with its baggage, whether a span was recorded for it or not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext

from broker_harness import Recorder, Traceparent, header_text
from integration_tests.contract.protocol import Client, Path
from integration_tests.contract.test_consume import PRODUCER_SPAN, PRODUCER_TRACE, TRACEPARENT

pytestmark = pytest.mark.paths(lambda path: path.mode == "pull")


def nothing_current() -> bool:
    return not trace.get_current_span().get_span_context().is_valid and not baggage.get_all()


def test_message_context_of_an_auto_ack_pull_is_its_receive_span(
    instrument: Callable[..., Any], otel: Recorder, client: Client, path: Path, queue: str
) -> None:
    """A message pulled with auto-ack is remembered too: message_context() makes its receive span current for the block only."""
    instrument()
    client.publish("", queue)
    got = path.pull(queue, auto_ack=True)
    assert got is not None
    assert nothing_current()
    tracer = otel.tracer_provider.get_tracer("app")
    with path.message_context(got.raw), tracer.start_as_current_span("handle"):
        pass
    assert nothing_current()
    (receive,) = otel.named(f"receive {queue}")
    (handle,) = otel.named("handle")
    assert handle.parent is not None
    assert handle.parent.span_id == receive.context.span_id


@pytest.mark.parametrize("instrumented", ["never", "until the publish"])
def test_message_context_without_a_recorded_span_reads_the_headers(
    instrumented: str,
    instrument: Callable[..., Any],
    otel: Recorder,
    client: Client,
    path: Path,
    queue: str,
) -> None:
    """For a message pulled while not instrumented (never, or no longer) message_context() continues the producer's trace from the headers."""
    if instrumented == "never":
        client.publish("", queue, headers={"traceparent": TRACEPARENT})
        producer = Traceparent(PRODUCER_TRACE, PRODUCER_SPAN, sampled=True)
    else:
        instrumentor = instrument()
        client.publish("", queue)
        instrumentor.uninstrument()
        (publish,) = otel.named("publish amq.default")
        producer = Traceparent.of(publish)
    got = path.pull(queue, auto_ack=True)
    assert got is not None
    tracer = otel.tracer_provider.get_tracer("app")
    with path.message_context(got.raw), tracer.start_as_current_span("handle"):
        pass
    assert nothing_current()
    (handle,) = otel.named("handle")
    assert handle.parent is not None
    assert (handle.context.trace_id, handle.parent.span_id) == (
        producer.trace_id,
        producer.span_id,
    )
    assert [s.name for s in otel.spans()] == (
        ["handle"] if instrumented == "never" else ["publish amq.default", "handle"]
    )


def test_message_context_of_an_unsampled_pull_stays_in_that_trace(
    instrument: Callable[..., Any], otel: Recorder, client: Client, path: Path, queue: str
) -> None:
    """Under a parent-based sampler a pulled message of an unsampled trace makes no span; message_context() still puts the block in that trace with the message's baggage, so a publish from it carries the trace on, not sampled."""
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(otel.tracer_provider._active_span_processor)  # type: ignore[attr-defined]
    instrument(tracer_provider=provider)
    upstream = SpanContext(PRODUCER_TRACE, PRODUCER_SPAN, is_remote=True)  # not sampled
    token = otel_context.attach(
        baggage.set_baggage("order.id", "9", trace.set_span_in_context(NonRecordingSpan(upstream)))
    )
    try:  # a publish inside the unsampled trace passes it on as it is
        client.publish("", queue)
    finally:
        otel_context.detach(token)
    got = path.pull(queue, auto_ack=True)
    assert got is not None
    assert (
        header_text(got.headers, "traceparent")
        == f"00-{PRODUCER_TRACE:032x}-{PRODUCER_SPAN:016x}-00"
    )
    with path.message_context(got.raw):
        current = trace.get_current_span().get_span_context()
        assert (current.trace_id, current.trace_flags.sampled) == (PRODUCER_TRACE, False)
        assert baggage.get_baggage("order.id") == "9"
        with provider.get_tracer("app").start_as_current_span("handle"):
            client.publish("", queue)
    assert nothing_current()
    _body, forwarded = client.fetch(queue)
    carried = Traceparent.in_headers(forwarded)
    assert (carried.trace_id, carried.sampled) == (PRODUCER_TRACE, False)
    assert header_text(forwarded, "baggage") == "order.id=9"
    assert otel.spans() == []  # nothing sampled: no receive, handle or publish span
