"""instrument() keywords: validated once, clear errors, environment fallback under opentelemetry-instrument."""

from __future__ import annotations

import logging

import pytest

from otel_messaging_core.options import InstrumentationOptions, PluginOption


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
    with pytest.raises(TypeError, match="capture_headers"):
        InstrumentationOptions.from_kwargs({"capture_headers": 5}, environ={})


def test_a_comma_separated_string_in_code_reads_as_the_variable_does() -> None:
    """``capture_headers="x-tenant, X-Retry"`` in code means the two names the variable would give."""
    options = InstrumentationOptions.from_kwargs(
        {"capture_headers": "x-tenant, X-Retry", "baggage_attributes": "order.id,tenant"},
        environ={},
    )
    from_env = InstrumentationOptions.from_kwargs(
        {},
        environ={
            "OTEL_PYTHON_RABBITMQ_CAPTURE_HEADERS": "x-tenant, X-Retry",
            "OTEL_PYTHON_RABBITMQ_BAGGAGE_ATTRIBUTES": "order.id,tenant",
        },
    )
    assert options.capture_headers == from_env.capture_headers == ("x-tenant", "x-retry")
    assert options.baggage_attributes == from_env.baggage_attributes == ("order.id", "tenant")


@pytest.mark.parametrize(
    ("keyword", "value", "error", "message"),
    [
        ("tracer_provider", "x", TypeError, r"tracer_provider must be an opentelemetry\.trace"),
        ("meter_provider", 3, TypeError, r"meter_provider must be an opentelemetry\.metrics"),
        ("consumer_context", "links", ValueError, r"consumer_context must be 'parent' or 'link'"),
        ("settle_spans", "yes", TypeError, r"settle_spans must be True or False"),
        ("capture_headers", b"x-tenant", TypeError, r"capture_headers must be names"),
        ("capture_headers", ["ok", ""], TypeError, r"capture_headers must hold non-empty"),
        (
            "capture_headers_max_length",
            "1k",
            TypeError,
            r"capture_headers_max_length must be an int",
        ),
        ("capture_headers_max_length", 0, ValueError, r"capture_headers_max_length must be 1"),
        (
            "capture_headers_max_length",
            True,
            TypeError,
            r"capture_headers_max_length must be an int",
        ),
        ("baggage_attributes", 7, TypeError, r"baggage_attributes must be names"),
        ("consume_hook", "nope", TypeError, r"consume_hook must be callable"),
    ],
)
def test_keywords_in_code_are_strict(
    keyword: str, value: object, error: type[Exception], message: str
) -> None:
    """A wrong keyword value in code is a TypeError or ValueError naming the keyword and what it
    accepts, never an AttributeError later (even with a valid environment variable for it)."""
    environ = {"OTEL_PYTHON_RABBITMQ_CONSUMER_CONTEXT": "link"}
    with pytest.raises(error, match=message):
        InstrumentationOptions.from_kwargs({keyword: value}, environ=environ)


def test_provider_objects_are_accepted() -> None:
    """An SDK tracer and meter provider (or anything with get_tracer / get_meter) pass."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    tracer_provider, meter_provider = TracerProvider(), MeterProvider()
    options = InstrumentationOptions.from_kwargs(
        {"tracer_provider": tracer_provider, "meter_provider": meter_provider}, environ={}
    )
    assert options.tracer_provider is tracer_provider
    assert options.meter_provider is meter_provider


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("OTEL_PYTHON_RABBITMQ_CONSUMER_CONTEXT", "links", "parent, link"),
        ("OTEL_PYTHON_RABBITMQ_SETTLE_SPANS", "maybe", "true, false"),
        ("OTEL_PYTHON_RABBITMQ_CAPTURE_HEADERS_MAX_LENGTH", "1kB", "a whole number"),
        ("OTEL_PYTHON_RABBITMQ_CAPTURE_HEADERS_MAX_LENGTH", "-5", "a whole number"),
    ],
)
def test_a_bad_variable_is_one_error_log_and_the_default(
    variable: str, value: str, accepted: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad OTEL_PYTHON_RABBITMQ_* value never raises: it is logged once at ERROR (variable,
    value, accepted values), the default is used, and the other variables still apply."""
    environ = {variable: value, "OTEL_PYTHON_RABBITMQ_BAGGAGE_ATTRIBUTES": "order.id"}
    with caplog.at_level(logging.ERROR, logger="otel_messaging_core"):
        first = InstrumentationOptions.from_kwargs({}, environ=environ)
        again = InstrumentationOptions.from_kwargs({}, environ=environ)
    assert first == again == InstrumentationOptions(baggage_attributes=("order.id",))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert variable in errors[0]
    assert repr(value) in errors[0]
    assert accepted in errors[0]


def test_captured_values_are_capped_by_default_and_by_choice() -> None:
    """The cap is 1024 characters unless the keyword or its variable says otherwise."""
    assert InstrumentationOptions.from_kwargs({}, environ={}).capture_headers_max_length == 1024
    environ = {"OTEL_PYTHON_RABBITMQ_CAPTURE_HEADERS_MAX_LENGTH": "64"}
    assert InstrumentationOptions.from_kwargs({}, environ=environ).capture_headers_max_length == 64
    explicit = InstrumentationOptions.from_kwargs(
        {"capture_headers_max_length": 8}, environ=environ
    )
    assert explicit.capture_headers_max_length == 8


def test_plugin_options_are_keywords_and_variables_too() -> None:
    """A plugin's own keyword (kombu's skip_celery_messages) is validated like the others, read
    from its variable when not given, and listed in the unknown-keyword error."""
    skip = PluginOption("skip_celery_messages", "OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES")
    environ = {"OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES": "true"}
    assert InstrumentationOptions.from_kwargs({}, environ={}, plugin_options=(skip,)).plugin == {
        "skip_celery_messages": False
    }
    from_env = InstrumentationOptions.from_kwargs({}, environ=environ, plugin_options=(skip,))
    assert from_env.plugin == {"skip_celery_messages": True}
    explicit = InstrumentationOptions.from_kwargs(
        {"skip_celery_messages": False}, environ=environ, plugin_options=(skip,)
    )
    assert explicit.plugin == {"skip_celery_messages": False}
    with pytest.raises(TypeError, match="skip_celery_messages must be True or False"):
        InstrumentationOptions.from_kwargs(
            {"skip_celery_messages": "yes"}, environ={}, plugin_options=(skip,)
        )
    with pytest.raises(TypeError, match=r"accepted: .*skip_celery_messages"):
        InstrumentationOptions.from_kwargs(
            {"skip_celery": True}, environ={}, plugin_options=(skip,)
        )


KINDS = PluginOption(
    "skip_celery_messages",
    "OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES",
    default=("control", "events"),
    choices=("tasks", "control", "events"),
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, ("tasks", "control", "events")),
        (False, ()),
        ("events, TASKS", ("tasks", "events")),
        (["control"], ("control",)),
        ("", ()),
        ((), ()),
        (None, ("control", "events")),  # None: not given
    ],
)
def test_a_plugin_option_with_choices_names_some(value: object, expected: tuple[str, ...]) -> None:
    """An option with choices takes True (all), False (none) or names, kept in the choices' order."""
    options = InstrumentationOptions.from_kwargs(
        {"skip_celery_messages": value}, environ={}, plugin_options=(KINDS,)
    )
    assert options.plugin == {"skip_celery_messages": expected}


def test_a_plugin_option_with_choices_rejects_other_names_in_code() -> None:
    """A name not among the choices is a ValueError listing them; a wrong type is a TypeError."""
    with pytest.raises(ValueError, match=r"'heartbeats'.*accepted: tasks, control, events"):
        InstrumentationOptions.from_kwargs(
            {"skip_celery_messages": "events,heartbeats"}, environ={}, plugin_options=(KINDS,)
        )
    with pytest.raises(TypeError, match="skip_celery_messages must be True, False or names"):
        InstrumentationOptions.from_kwargs(
            {"skip_celery_messages": 1}, environ={}, plugin_options=(KINDS,)
        )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("tasks,control", ("tasks", "control")),
        ("true", ("tasks", "control", "events")),
        ("0", ()),
        ("Events", ("events",)),
    ],
)
def test_a_plugin_option_with_choices_from_its_variable(
    raw: str, expected: tuple[str, ...]
) -> None:
    """The variable takes the same names, comma-separated, or a boolean word."""
    options = InstrumentationOptions.from_kwargs(
        {}, environ={KINDS.env_var: raw}, plugin_options=(KINDS,)
    )
    assert options.plugin == {"skip_celery_messages": expected}


def test_a_bad_variable_for_a_plugin_option_with_choices_is_one_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unknown name in the variable is logged at ERROR with the accepted names; the default
    is used."""
    with caplog.at_level(logging.ERROR, logger="otel_messaging_core"):
        options = InstrumentationOptions.from_kwargs(
            {}, environ={KINDS.env_var: "control,gossip"}, plugin_options=(KINDS,)
        )
    assert options.plugin == {"skip_celery_messages": ("control", "events")}
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert KINDS.env_var in error
    assert "'control,gossip'" in error
    assert "tasks, control, events" in error


def test_changes_name_each_option_that_differs() -> None:
    """What a second instrument() changes is listed option by option, old value included."""
    old = InstrumentationOptions(consumer_context="parent")
    new = InstrumentationOptions(consumer_context="link", baggage_attributes=("order.id",))
    assert new.changes_from(old) == [
        "consumer_context='link' (was 'parent')",
        "baggage_attributes=('order.id',) (was ())",
    ]
    assert old.changes_from(old) == []


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
