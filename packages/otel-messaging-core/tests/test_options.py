"""instrument() keywords: validated once, clear errors, environment fallback under opentelemetry-instrument."""

from __future__ import annotations

import pytest

from otel_messaging_core.options import InstrumentationOptions


def test_defaults() -> None:
    """No keywords and no environment give SPEC's defaults."""
    options = InstrumentationOptions.from_kwargs({}, environ={})
    assert options.consumer_context == "parent"
    assert options.settle_spans is False
    assert options.capture_headers == ()
    assert options.baggage_attributes == ()


def test_unknown_keyword_is_a_type_error() -> None:
    """A misspelt keyword fails loudly instead of being ignored."""
    with pytest.raises(TypeError, match="consumer_contxt"):
        InstrumentationOptions.from_kwargs({"consumer_contxt": "link"}, environ={})


def test_base_instrumentor_keywords_are_not_ours_and_not_errors() -> None:
    """``instrument_channel(channel, **same_kwargs_as_instrument)`` may carry BaseInstrumentor's
    own keywords: every plugin accepts and ignores them."""
    options = InstrumentationOptions.from_kwargs(
        {"skip_dep_check": True, "raise_exception_on_conflict": True, "settle_spans": True},
        environ={},
    )
    assert options.settle_spans is True


def test_bad_consumer_context_is_a_value_error() -> None:
    """consumer_context accepts only parent and link."""
    with pytest.raises(ValueError, match="parent' or 'link"):
        InstrumentationOptions.from_kwargs({"consumer_context": "child"}, environ={})


def test_hooks_must_be_callable() -> None:
    """A non-callable hook is rejected at instrument() time."""
    with pytest.raises(TypeError, match="publish_hook"):
        InstrumentationOptions.from_kwargs({"publish_hook": "nope"}, environ={})


def test_names_are_normalised() -> None:
    """A bare string is one name; repeats are dropped; captured header names are lowercased."""
    options = InstrumentationOptions.from_kwargs(
        {"capture_headers": ("X-Tenant", "x-tenant"), "baggage_attributes": "order.id"}, environ={}
    )
    assert options.capture_headers == ("x-tenant",)
    assert options.baggage_attributes == ("order.id",)
    with pytest.raises(TypeError):
        InstrumentationOptions.from_kwargs({"capture_headers": 5}, environ={})


def test_environment_fills_what_keywords_leave_out() -> None:
    """OTEL_PYTHON_RABBITMQ_* variables apply when the keyword is not given; keywords win."""
    environ = {
        "OTEL_PYTHON_RABBITMQ_CONSUMER_CONTEXT": "Link",
        "OTEL_PYTHON_RABBITMQ_SETTLE_SPANS": "true",
        "OTEL_PYTHON_RABBITMQ_CAPTURE_HEADERS": "x-tenant, x-retry",
        "OTEL_PYTHON_RABBITMQ_BAGGAGE_ATTRIBUTES": "order.id",
    }
    options = InstrumentationOptions.from_kwargs({}, environ=environ)
    assert options.consumer_context == "link"
    assert options.settle_spans is True
    assert options.capture_headers == ("x-tenant", "x-retry")
    assert options.baggage_attributes == ("order.id",)
    explicit = InstrumentationOptions.from_kwargs({"consumer_context": "parent"}, environ=environ)
    assert explicit.consumer_context == "parent"
    with pytest.raises(ValueError, match="SETTLE_SPANS"):
        InstrumentationOptions.from_kwargs(
            {}, environ={"OTEL_PYTHON_RABBITMQ_SETTLE_SPANS": "maybe"}
        )
