"""Header text a propagator cannot encode (lone surrogates, as py-amqp decodes invalid UTF-8 with
``surrogatepass``) never stops extraction: the context is read as if the bad text were garbage."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, trace

from otel_messaging_core.propagation import extract_context

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": TRACEPARENT, "baggage": "\ud800"},
        {"traceparent": TRACEPARENT, "baggage": "k=\udcff,order.id=17"},
        {"traceparent": TRACEPARENT, "tracestate": "\ud800=1"},
        {"traceparent": TRACEPARENT, "BAGGAGE": ["\ud800", "a=b"]},
    ],
)
def test_lone_surrogates_do_not_stop_extraction(headers: dict[str, object]) -> None:
    """The valid traceparent is still read; the text that cannot be encoded is treated as garbage."""
    context = extract_context(headers)
    span_context = trace.get_current_span(context).get_span_context()
    assert span_context.is_valid
    assert f"{span_context.span_id:016x}" == "00f067aa0ba902b7"
    assert all("\ud800" not in str(v) for v in baggage.get_all(context).values())


def test_lone_surrogate_in_traceparent_is_a_fresh_trace() -> None:
    """A traceparent holding a lone surrogate is malformed: no parent, no exception."""
    context = extract_context({"traceparent": "\ud800" + TRACEPARENT[1:]})
    assert not trace.get_current_span(context).get_span_context().is_valid
