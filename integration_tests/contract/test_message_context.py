"""Every single-message pull: message_context() puts the handling of a pulled message in its
trace, with its baggage, whether a span was recorded for it or not."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext

from broker_harness import Traceparent, header_text
from integration_tests.contract.case import Case
from integration_tests.contract.protocol import Received
from integration_tests.contract.test_consume import PRODUCER_SPAN, PRODUCER_TRACE, TRACEPARENT

pytestmark = pytest.mark.paths(lambda path: path.mode == "pull")


def nothing_current() -> bool:
    return not trace.get_current_span().get_span_context().is_valid and not baggage.get_all()


def pulled(case: Case) -> Received:
    """The next message on the case's queue, pulled with auto-ack."""
    got = case.path.pull(case.queue, auto_ack=True)
    assert got is not None
    return got


def handled_in_context(case: Case, got: Received) -> None:
    """A "handle" span made inside ``message_context()`` of a pulled message."""
    tracer = case.otel.tracer_provider.get_tracer("app")
    with case.path.message_context(got.raw), tracer.start_as_current_span("handle"):
        pass
    assert nothing_current()


def test_message_context_of_an_auto_ack_pull_is_its_receive_span(case: Case) -> None:
    """A message pulled with auto-ack is remembered too: message_context() makes its receive span current for the block only."""
    case.instrument()
    case.publish()
    got = pulled(case)
    assert nothing_current()
    handled_in_context(case, got)
    handle = case.span("handle")
    assert handle.parent is not None
    assert handle.parent.span_id == case.span(f"receive {case.queue}").context.span_id


@pytest.mark.parametrize("instrumented", ["never", "until the publish"])
def test_message_context_without_a_recorded_span_reads_the_headers(
    case: Case, instrumented: str
) -> None:
    """For a message pulled while not instrumented (never, or no longer) message_context() continues the producer's trace from the headers."""
    if instrumented == "never":
        case.publish(headers={"traceparent": TRACEPARENT})
        producer = Traceparent(PRODUCER_TRACE, PRODUCER_SPAN, sampled=True)
    else:
        instrumentor = case.instrument()
        case.publish()
        instrumentor.uninstrument()
        producer = Traceparent.of(case.span("publish amq.default"))
    handled_in_context(case, pulled(case))
    handle = case.span("handle")
    assert handle.parent is not None
    assert (handle.context.trace_id, handle.parent.span_id) == (
        producer.trace_id,
        producer.span_id,
    )
    assert [s.name for s in case.otel.spans()] == (
        ["handle"] if instrumented == "never" else ["publish amq.default", "handle"]
    )


def test_message_context_of_an_unsampled_pull_stays_in_that_trace(case: Case) -> None:
    """Under a parent-based sampler a pulled message of an unsampled trace makes no span; message_context() still puts the block in that trace with the message's baggage, so a publish from it carries the trace on, not sampled."""
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(case.otel.tracer_provider._active_span_processor)
    case.instrument(tracer_provider=provider)
    upstream = SpanContext(PRODUCER_TRACE, PRODUCER_SPAN, is_remote=True)  # not sampled
    token = otel_context.attach(
        baggage.set_baggage("order.id", "9", trace.set_span_in_context(NonRecordingSpan(upstream)))
    )
    try:  # a publish inside the unsampled trace passes it on as it is
        case.publish()
    finally:
        otel_context.detach(token)
    got = pulled(case)
    carried = f"00-{PRODUCER_TRACE:032x}-{PRODUCER_SPAN:016x}-00"
    assert header_text(got.headers, "traceparent") == carried
    with case.path.message_context(got.raw):
        current = trace.get_current_span().get_span_context()
        assert (current.trace_id, current.trace_flags.sampled) == (PRODUCER_TRACE, False)
        assert baggage.get_baggage("order.id") == "9"
        with provider.get_tracer("app").start_as_current_span("handle"):
            case.publish()
    assert nothing_current()
    _body, forwarded = case.client.fetch(case.queue)
    onward = Traceparent.in_headers(forwarded)
    assert (onward.trace_id, onward.sampled) == (PRODUCER_TRACE, False)
    assert header_text(forwarded, "baggage") == "order.id=9"
    assert case.otel.spans() == []  # nothing sampled: no receive, handle or publish span
