"""The instrumentation keywords of SPEC, validated once at ``instrument()`` time.

Every plugin accepts the same keywords (:data:`KEYWORDS`), and a plugin may add keywords of its own
(:class:`PluginOption`, e.g. kombu's ``skip_celery_messages``). Two sources, two rules (SPEC,
"Configuration never fails silently, never fails loudly into the service"):

* keywords given in code are validated strictly: a wrong name or value is a ``TypeError`` /
  ``ValueError`` naming the keyword and what it accepts, when the service starts;
* the ``OTEL_PYTHON_RABBITMQ_*`` environment variables (what ``opentelemetry-instrument`` has
  instead of keywords) are read leniently: a bad value is logged once at ERROR, naming the
  variable, the value and the accepted values, and the default is used, so the plugin still
  instruments and nothing raises out of the ``opentelemetry-instrument`` entry point.

A keyword wins over its environment variable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from functools import partial
from types import MappingProxyType
from typing import Any, Callable, Final, Iterable, Mapping, Sequence

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, TracerProvider

from otel_messaging_core.consumer import CONSUMER_CONTEXT_MODES, ConsumerContextMode
from otel_messaging_core.envelope import Envelope

__all__ = [
    "BASE_INSTRUMENTOR_KEYWORDS",
    "DEFAULT_CAPTURE_HEADERS_MAX_LENGTH",
    "ENV_VARS",
    "KEYWORDS",
    "Hook",
    "InstrumentationOptions",
    "PluginOption",
    "PluginValue",
    "has_options",
    "log_reconfigured",
]

_logger = logging.getLogger("otel_messaging_core")

Hook = Callable[[Span, Envelope], None]

KEYWORDS: Final = (
    "tracer_provider",
    "meter_provider",
    "publish_hook",
    "consume_hook",
    "consumer_context",
    "settle_spans",
    "capture_headers",
    "capture_headers_max_length",
    "baggage_attributes",
)

# BaseInstrumentor.instrument()'s own keywords: it consumes them, but a plugin's
# ``instrument_channel(channel, **kwargs)`` may be handed the same keywords as ``instrument()``.
BASE_INSTRUMENTOR_KEYWORDS: Final = ("skip_dep_check", "raise_exception_on_conflict")

ENV_VARS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "consumer_context": "OTEL_PYTHON_RABBITMQ_CONSUMER_CONTEXT",
        "settle_spans": "OTEL_PYTHON_RABBITMQ_SETTLE_SPANS",
        "capture_headers": "OTEL_PYTHON_RABBITMQ_CAPTURE_HEADERS",
        "capture_headers_max_length": "OTEL_PYTHON_RABBITMQ_CAPTURE_HEADERS_MAX_LENGTH",
        "baggage_attributes": "OTEL_PYTHON_RABBITMQ_BAGGAGE_ATTRIBUTES",
    }
)

#: A captured header value longer than this (in characters) is cut, see ``capture_headers_max_length``.
DEFAULT_CAPTURE_HEADERS_MAX_LENGTH: Final = 1024

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})
_BOOL_TEXT: Final = "true, false, 1, 0, yes, no, on, off"

# (variable, value) pairs already logged: each bad value is said once per process, however many
# plugins (and instrument_channel() calls) read it
_reported_env: set[tuple[str, str]] = set()


class _BadValue(ValueError):
    """An environment value that cannot be used; ``accepted`` says what can."""

    def __init__(self, accepted: str) -> None:
        super().__init__(accepted)
        self.accepted = accepted


PluginValue = bool | tuple[str, ...]


@dataclass(frozen=True)
class PluginOption:
    """A keyword one plugin adds (kombu: ``skip_celery_messages``) and its variable.

    Without ``choices`` it is a boolean. With ``choices`` it names some of them: a
    comma-separated string or a sequence of names in code, a comma-separated list in the variable,
    ``True`` (every choice) or ``False`` (none) in either; its value is the tuple of names chosen,
    in the order of ``choices``.
    """

    keyword: str
    env_var: str
    default: PluginValue = False
    choices: tuple[str, ...] = ()


# -- parsing ----------------------------------------------------------------------------------------


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _names(value: object, keyword: str, *, lower: bool = False) -> tuple[str, ...]:
    """Names given in code: a comma-separated string (as the variable takes) or strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = _split(value)
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{keyword} must be names: a comma-separated string or a sequence of strings, "
            f"got {value!r}"
        )
    names: list[str] = []
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"{keyword} must hold non-empty strings, got {name!r}")
        names.append(name.strip().lower() if lower else name.strip())
    return tuple(dict.fromkeys(names))  # drop repeats, keep order


def _env_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _BadValue(_BOOL_TEXT)


def _env_length(raw: str) -> int:
    try:
        length = int(raw.strip())
    except ValueError:
        length = 0
    if length < 1:
        raise _BadValue("a whole number of characters, 1 or more")
    return length


def _env_choices(choices: tuple[str, ...], raw: str) -> PluginValue:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    names = _split(lowered)
    if not names or any(name not in choices for name in names):
        raise _BadValue(f"a comma-separated list of {', '.join(choices)}; or {_BOOL_TEXT}")
    return names


def _env_mode(raw: str) -> str:
    mode = raw.strip().lower()
    if mode not in CONSUMER_CONTEXT_MODES:
        raise _BadValue(", ".join(CONSUMER_CONTEXT_MODES))
    return mode


_ENV_PARSERS: Final[Mapping[str, Callable[[str], object]]] = MappingProxyType(
    {
        "consumer_context": _env_mode,
        "settle_spans": _env_bool,
        "capture_headers": _split,
        "capture_headers_max_length": _env_length,
        "baggage_attributes": _split,
    }
)


def _from_env(
    env: Mapping[str, str], var: str, parse: Callable[[str], object], default: object
) -> object:
    """The parsed value of ``var``; a bad one is logged once at ERROR and ``None`` returned."""
    raw = env.get(var)
    if not raw:
        return None
    try:
        return parse(raw)
    except _BadValue as bad:
        if (var, raw) not in _reported_env:
            _reported_env.add((var, raw))
            _logger.error(
                "%s=%r is not a valid value (accepted: %s); the default %r is used and the "
                "RabbitMQ instrumentation goes on",
                var,
                raw,
                bad.accepted,
                default,
            )
        return None


# -- strict checks of keywords given in code --------------------------------------------------------


def _provider(value: object, keyword: str, method: str, kind: str) -> Any:
    if value is None or callable(getattr(value, method, None)):
        return value
    raise TypeError(
        f"{keyword} must be an {kind} (or None for the global one), "
        f"got {value!r} ({type(value).__name__})"
    )


def _bool(value: object, keyword: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{keyword} must be True or False, got {value!r}")
    return value


def _plugin_value(option: PluginOption, value: object) -> PluginValue:
    """A plugin keyword's value given in code, checked (a default or a parsed variable passes)."""
    if not option.choices:
        return _bool(value, option.keyword)
    if isinstance(value, bool):
        return option.choices if value else ()
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, (str, Iterable)):
        raise TypeError(
            f"{option.keyword} must be True, False or names out of {', '.join(option.choices)} "
            f"(a comma-separated string or a sequence of strings), got {value!r}"
        )
    names = _names(value, option.keyword, lower=True)
    unknown = [name for name in names if name not in option.choices]
    if unknown:
        raise ValueError(
            f"{option.keyword}: unknown name(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(option.choices)} (or True for all, False for none)"
        )
    return tuple(choice for choice in option.choices if choice in names)


def _length(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"capture_headers_max_length must be an int (characters, 1 or more), got {value!r}"
        )
    if value < 1:
        raise ValueError(f"capture_headers_max_length must be 1 or more, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class InstrumentationOptions:
    """The validated keywords shared by every plugin (``plugin``: the plugin's own ones)."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    publish_hook: Hook | None = None
    consume_hook: Hook | None = None
    consumer_context: ConsumerContextMode = "parent"
    settle_spans: bool = False
    capture_headers: tuple[str, ...] = ()
    capture_headers_max_length: int = DEFAULT_CAPTURE_HEADERS_MAX_LENGTH
    baggage_attributes: tuple[str, ...] = ()
    plugin: Mapping[str, PluginValue] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_kwargs(
        cls,
        kwargs: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
        *,
        plugin_options: Sequence[PluginOption] = (),
    ) -> InstrumentationOptions:
        """Validate ``instrument(**kwargs)`` strictly; options not given come from the
        environment, leniently (see the module docstring)."""
        extra = {option.keyword: option for option in plugin_options}
        accepted = (*KEYWORDS, *extra)
        unknown = sorted(set(kwargs) - set(accepted) - set(BASE_INSTRUMENTOR_KEYWORDS))
        if unknown:
            raise TypeError(
                f"unknown instrumentation keyword(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(accepted)}"
            )
        env = os.environ if environ is None else environ
        given = {k: v for k, v in kwargs.items() if v is not None}

        mode = given.get("consumer_context")
        if mode is None:
            mode = _from_env(env, ENV_VARS["consumer_context"], _env_mode, "parent") or "parent"
        elif mode not in CONSUMER_CONTEXT_MODES:
            raise ValueError(f"consumer_context must be 'parent' or 'link', got {mode!r}")
        consumer_context: ConsumerContextMode = "link" if mode == "link" else "parent"

        for hook_name in ("publish_hook", "consume_hook"):
            hook = given.get(hook_name)
            if hook is not None and not callable(hook):
                raise TypeError(f"{hook_name} must be callable(span, envelope), got {hook!r}")

        values: dict[str, Any] = {}
        for keyword in ("settle_spans", "capture_headers", "capture_headers_max_length"):
            if keyword in given:
                values[keyword] = given[keyword]
            else:
                found = _from_env(env, ENV_VARS[keyword], _ENV_PARSERS[keyword], _default(keyword))
                if found is not None:
                    values[keyword] = found
        baggage_names = given.get("baggage_attributes")
        if baggage_names is None:
            baggage_names = _from_env(env, ENV_VARS["baggage_attributes"], _split, ())

        plugin: dict[str, PluginValue] = {}
        for keyword, option in extra.items():
            if keyword in given:
                plugin[keyword] = _plugin_value(option, given[keyword])
            else:
                parse = _env_bool if not option.choices else partial(_env_choices, option.choices)
                found = _from_env(env, option.env_var, parse, option.default)
                plugin[keyword] = _plugin_value(option, option.default if found is None else found)

        return cls(
            tracer_provider=_provider(
                given.get("tracer_provider"),
                "tracer_provider",
                "get_tracer",
                "opentelemetry.trace.TracerProvider",
            ),
            meter_provider=_provider(
                given.get("meter_provider"),
                "meter_provider",
                "get_meter",
                "opentelemetry.metrics.MeterProvider",
            ),
            publish_hook=given.get("publish_hook"),
            consume_hook=given.get("consume_hook"),
            consumer_context=consumer_context,
            settle_spans=_bool(values.get("settle_spans", False), "settle_spans"),
            capture_headers=_names(values.get("capture_headers"), "capture_headers", lower=True),
            capture_headers_max_length=_length(
                values.get("capture_headers_max_length", DEFAULT_CAPTURE_HEADERS_MAX_LENGTH)
            ),
            baggage_attributes=_names(baggage_names, "baggage_attributes"),
            plugin=MappingProxyType(plugin),
        )

    def changes_from(self, old: InstrumentationOptions) -> list[str]:
        """``keyword=new (was old)`` for every option that differs from ``old``."""
        changed = []
        for option in fields(self):
            if option.name == "plugin":
                continue
            new_value, old_value = getattr(self, option.name), getattr(old, option.name)
            if new_value != old_value:
                changed.append(f"{option.name}={new_value!r} (was {old_value!r})")
        for keyword in sorted({*self.plugin, *old.plugin}):
            new_flag, old_flag = self.plugin.get(keyword), old.plugin.get(keyword)
            if new_flag != old_flag:
                changed.append(f"{keyword}={new_flag!r} (was {old_flag!r})")
        return changed


def _default(keyword: str) -> object:
    return {
        "settle_spans": False,
        "capture_headers": (),
        "capture_headers_max_length": DEFAULT_CAPTURE_HEADERS_MAX_LENGTH,
    }[keyword]


def has_options(kwargs: Mapping[str, Any]) -> bool:
    """True when ``instrument(**kwargs)`` was given instrumentation options (not only
    ``BaseInstrumentor``'s own keywords)."""
    return any(k not in BASE_INSTRUMENTOR_KEYWORDS for k in kwargs)


def log_reconfigured(
    name: str, old: InstrumentationOptions | None, new: InstrumentationOptions
) -> None:
    """Say at INFO what a second ``instrument(**options)`` changed in the live instrumentation.

    Under ``opentelemetry-instrument`` the instrumentor is instrumented (from the environment)
    before the service's own code runs; the service's explicit ``instrument(...)`` then applies
    its options instead of being ignored, and this says so.
    """
    if old is None:
        _logger.info("%s: instrument() options applied", name)
        return
    changed = new.changes_from(old)
    _logger.info(
        "%s: instrument() called while already instrumented (by opentelemetry-instrument, say): %s",
        name,
        "its options now apply: " + "; ".join(changed) if changed else "its options are the same",
    )
