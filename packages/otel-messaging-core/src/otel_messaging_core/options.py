"""The instrumentation keywords of SPEC, validated once at ``instrument()`` time.

Every plugin accepts the same keywords. A typo or a wrong value is a clear ``TypeError`` /
``ValueError`` when the service starts, not a silent default. Under ``opentelemetry-instrument``,
where no keywords can be passed, the same options come from environment variables; an explicit
keyword wins over the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Final, Iterable, Mapping

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, TracerProvider

from otel_messaging_core.consumer import CONSUMER_CONTEXT_MODES, ConsumerContextMode
from otel_messaging_core.envelope import Envelope

__all__ = ["ENV_VARS", "Hook", "InstrumentationOptions", "KEYWORDS"]

Hook = Callable[[Span, Envelope], None]

KEYWORDS: Final = (
    "tracer_provider",
    "meter_provider",
    "publish_hook",
    "consume_hook",
    "consumer_context",
    "settle_spans",
    "capture_headers",
    "baggage_attributes",
)

# BaseInstrumentor.instrument()'s own keywords: it consumes them, but a plugin's
# ``instrument_channel(channel, **kwargs)`` may be handed the same keywords as ``instrument()``.
BASE_INSTRUMENTOR_KEYWORDS: Final = ("skip_dep_check", "raise_exception_on_conflict")

ENV_VARS: Final[Mapping[str, str]] = {
    "consumer_context": "OTEL_PYTHON_RABBITMQ_CONSUMER_CONTEXT",
    "settle_spans": "OTEL_PYTHON_RABBITMQ_SETTLE_SPANS",
    "capture_headers": "OTEL_PYTHON_RABBITMQ_CAPTURE_HEADERS",
    "baggage_attributes": "OTEL_PYTHON_RABBITMQ_BAGGAGE_ATTRIBUTES",
}

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def _names(value: object, keyword: str, *, lower: bool = False) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # one name given as a bare string
        value = (value,)
    if not isinstance(value, Iterable):
        raise TypeError(f"{keyword} must be a sequence of names, got {type(value).__name__}")
    names: list[str] = []
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"{keyword} must hold non-empty strings, got {name!r}")
        names.append(name.strip().lower() if lower else name.strip())
    return tuple(dict.fromkeys(names))  # drop repeats, keep order


def _env_list(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))


def _env_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True, slots=True)
class InstrumentationOptions:
    """The validated keywords shared by every plugin."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    publish_hook: Hook | None = None
    consume_hook: Hook | None = None
    consumer_context: ConsumerContextMode = "parent"
    settle_spans: bool = False
    capture_headers: tuple[str, ...] = ()
    baggage_attributes: tuple[str, ...] = ()

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> InstrumentationOptions:
        """Validate ``instrument(**kwargs)``; options not given come from the environment."""
        unknown = sorted(set(kwargs) - set(KEYWORDS) - set(BASE_INSTRUMENTOR_KEYWORDS))
        if unknown:
            raise TypeError(
                f"unknown instrumentation keyword(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(KEYWORDS)}"
            )
        env = os.environ if environ is None else environ
        values = dict(kwargs)
        for keyword, var in ENV_VARS.items():
            if values.get(keyword) is None and env.get(var):
                raw = env[var]
                if keyword == "settle_spans":
                    values[keyword] = _env_bool(var, raw)
                elif keyword == "consumer_context":
                    values[keyword] = raw.strip().lower()
                else:
                    values[keyword] = _env_list(raw)

        mode = values.get("consumer_context") or "parent"
        if mode not in CONSUMER_CONTEXT_MODES:
            raise ValueError(f"consumer_context must be 'parent' or 'link', got {mode!r}")
        consumer_context: ConsumerContextMode = "link" if mode == "link" else "parent"
        for hook_name in ("publish_hook", "consume_hook"):
            hook = values.get(hook_name)
            if hook is not None and not callable(hook):
                raise TypeError(f"{hook_name} must be callable(span, envelope), got {hook!r}")
        settle = values.get("settle_spans")
        if settle is not None and not isinstance(settle, bool):
            raise TypeError(f"settle_spans must be a bool, got {settle!r}")
        return cls(
            tracer_provider=values.get("tracer_provider"),
            meter_provider=values.get("meter_provider"),
            publish_hook=values.get("publish_hook"),
            consume_hook=values.get("consume_hook"),
            consumer_context=consumer_context,
            settle_spans=bool(settle),
            capture_headers=_names(values.get("capture_headers"), "capture_headers", lower=True),
            baggage_attributes=_names(values.get("baggage_attributes"), "baggage_attributes"),
        )
