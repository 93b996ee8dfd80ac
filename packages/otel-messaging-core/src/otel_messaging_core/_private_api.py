"""Every use of OpenTelemetry's private API, in one place, each with a fallback to the public API.

The per-message paths read a few things the API keeps private, because the public route costs
several calls per message (docs/benchmarks.md). A rename in a new opentelemetry-api or -sdk
release must cost at most that speed, never the service: nothing here raises at import, each
value is looked up with ``getattr`` and, when it is gone, found or done through the public API
instead (logged once at INFO). ``FAST_PATHS`` says which of the names looked up at import are
live; a unit test per use asserts that its fast path is live on the installed versions (so a
rename fails a test, not a service) and another forces its fallback and checks the behaviour.

* ``opentelemetry.trace.propagation._SPAN_KEY``: the key ``trace.set_span_in_context()`` writes;
* ``opentelemetry.context._SUPPRESS_INSTRUMENTATION_KEY``: the key ``suppress_instrumentation()``
  (opentelemetry-instrumentation) writes;
* ``opentelemetry.baggage._BAGGAGE_KEY``: the key ``baggage.set_baggage()`` writes;
* ``opentelemetry.context._RUNTIME_CONTEXT``: ``context.attach()`` / ``context.detach()``;
* ``CompositePropagator._propagators``: none needed, the general propagation path is taken;
* the SDK samplers' description format: none needed, the sampler is asked for every span;
* a proxy instrument's ``_real_instrument``: none needed, every measurement goes to the API.

A ``Context`` is a ``dict`` (``opentelemetry.context.Context`` subclasses it, publicly), so a
key found through the public API reads exactly as the private constant does.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token
from typing import Any, Callable, Final, Sequence

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import INVALID_SPAN
from opentelemetry.trace import propagation as _span_propagation

__all__ = [
    "BAGGAGE_KEY",
    "FAST_PATHS",
    "SPAN_KEY",
    "SPAN_KEY_FOUND",
    "SUPPRESS_KEY",
    "attach",
    "composite_members",
    "detach",
    "REAL_INSTRUMENT",
    "get_current",
    "proxy_instrument",
    "sampler_drops_unsampled",
]

_logger = logging.getLogger("otel_messaging_core")

#: For each private name looked up at import: live (``True``) or replaced by the public API.
FAST_PATHS: dict[str, bool] = {}


def _choose(name: str, fast: Any, public: Callable[[], Any]) -> Any:
    """``fast`` when the private name exists, else what ``public()`` finds (logged once)."""
    if fast is not None:
        FAST_PATHS[name] = True
        return fast
    FAST_PATHS[name] = False
    _logger.info(
        "otel_messaging_core: %s is not in this OpenTelemetry release; using the public API",
        name,
    )
    try:
        return public()
    except Exception:  # a fallback that fails too: the caller's last resort decides
        _logger.debug("public fallback for %s failed", name, exc_info=True)
        return None


_LEGACY_SUPPRESS_KEY: Final = "suppress_instrumentation"


def _only_key(context: Context) -> str | None:
    """The one key of ``context`` (``None`` unless it has exactly one)."""
    keys = list(context)
    return keys[0] if len(keys) == 1 else None


# -- context keys ---------------------------------------------------------------------------------


def public_span_key() -> str | None:
    """The key under which ``trace.set_span_in_context()`` keeps the span in a Context."""
    return _only_key(trace.set_span_in_context(INVALID_SPAN, Context()))


def public_baggage_key() -> str | None:
    """The key under which ``baggage.set_baggage()`` keeps the entries in a Context."""
    return _only_key(baggage.set_baggage("k", "v", Context()))


def public_suppress_key() -> str | None:
    """The key ``suppress_instrumentation()`` (opentelemetry-instrumentation) sets to ``True``.

    It also sets the legacy plain key ``"suppress_instrumentation"``, which code that suppresses
    through ``context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True)`` (the SDK's own way) does
    not: the other key is the one to read.
    """
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    before = otel_context.get_current()
    with suppress_instrumentation():
        inside = otel_context.get_current()
    added = [key for key in inside if key not in before and inside.get(key) is True]
    keys = [key for key in added if key != _LEGACY_SUPPRESS_KEY] or added
    return keys[0] if len(keys) == 1 else None


_found_span_key: str | None = _choose(
    "trace.propagation._SPAN_KEY", getattr(_span_propagation, "_SPAN_KEY", None), public_span_key
)
#: False only when neither the private constant nor the public route gave the key: the paths that
#: build a Context by hand (the fast traceparent decode) are then off.
SPAN_KEY_FOUND: Final = _found_span_key is not None
# never present in any Context when unknown: the reads then find no span, as if none were active
SPAN_KEY: Final[str] = _found_span_key or "otel_messaging_core-span-key-unknown"

_found_suppress_key: str | None = _choose(
    "context._SUPPRESS_INSTRUMENTATION_KEY",
    getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", None),
    public_suppress_key,
)
if _found_suppress_key is None:  # pragma: no cover - no known opentelemetry release
    _logger.warning(
        "otel_messaging_core: suppress_instrumentation() cannot be recognised with this "
        "OpenTelemetry release; spans are made inside it"
    )
SUPPRESS_KEY: Final[str] = _found_suppress_key or "otel_messaging_core-suppress-key-unknown"

#: ``None``: unknown; :func:`opentelemetry.baggage.get_all` is then called instead.
BAGGAGE_KEY: Final[str | None] = _choose(
    "baggage._BAGGAGE_KEY", getattr(baggage, "_BAGGAGE_KEY", None), public_baggage_key
)


# -- attach / detach ------------------------------------------------------------------------------

# opentelemetry.context.attach() only forwards to the runtime context; detach() also logs an
# ERROR with a traceback when a token is reset from another contextvars.Context (an asyncio task
# other than the one that attached, a generator closed by the garbage collector), which is
# expected here: the runtime context is called directly, and its ValueError is the caller's.
_RUNTIME_CONTEXT: Any = getattr(otel_context, "_RUNTIME_CONTEXT", None)
if _RUNTIME_CONTEXT is not None and not (
    callable(getattr(_RUNTIME_CONTEXT, "attach", None))
    and callable(getattr(_RUNTIME_CONTEXT, "detach", None))
):  # pragma: no cover - a runtime context of another shape
    _RUNTIME_CONTEXT = None

# The default runtime context (exactly the API's ContextVarsRuntimeContext, not a subclass that
# may override its methods) only forwards each of the three calls to its ContextVar's own
# method: those C methods are called directly (a Python frame fewer per call; the fast paths
# read the current context at least once per message).
_CONTEXT_VAR: Any = None
try:
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    if type(_RUNTIME_CONTEXT) is ContextVarsRuntimeContext and isinstance(
        getattr(_RUNTIME_CONTEXT, "_current_context", None), ContextVar
    ):
        _CONTEXT_VAR = _RUNTIME_CONTEXT._current_context
except ImportError:  # pragma: no cover - an API without the module
    pass


def _runtime(method: str, var_method: str) -> Any:
    if _CONTEXT_VAR is not None:
        return getattr(_CONTEXT_VAR, var_method)
    return getattr(_RUNTIME_CONTEXT, method, None) if _RUNTIME_CONTEXT is not None else None


attach: Final[Callable[[Context], Token[Context]]] = _choose(
    "context._RUNTIME_CONTEXT.attach", _runtime("attach", "set"), lambda: otel_context.attach
)
detach: Final[Callable[[Token[Context]], None]] = _choose(
    "context._RUNTIME_CONTEXT.detach", _runtime("detach", "reset"), lambda: otel_context.detach
)
# the current context in one call instead of two (the unsampled fast path reads it per message)
get_current: Final[Callable[[], Context]] = _choose(
    "context._RUNTIME_CONTEXT.get_current",
    _runtime("get_current", "get"),
    lambda: otel_context.get_current,
)


# -- propagators ----------------------------------------------------------------------------------


def composite_members(textmap: TextMapPropagator) -> Sequence[TextMapPropagator] | None:
    """The propagators a ``CompositePropagator`` holds, or ``None`` when that cannot be read
    (the caller then takes the general path, through the composite's public methods)."""
    if type(textmap) is not CompositePropagator:
        return None
    inner = getattr(textmap, "_propagators", None)
    return inner if isinstance(inner, (list, tuple)) else None


# -- samplers -------------------------------------------------------------------------------------


def sampler_drops_unsampled(sampler: object) -> bool:
    """True when ``sampler`` certainly samples no child of a valid, not-sampled parent.

    Read from the SDK's ``Sampler.get_description()``: ``AlwaysOffSampler``, or ``ParentBased``
    with not-sampled parents (local and remote) going to ``AlwaysOffSampler`` (the SDK default,
    and what ``parentbased_traceidratio`` configures). The description is public, its format is
    not: any other text (another format, another sampler, a sampler that raises) gives ``False``
    and the sampler is asked for every span, which is always correct.
    """
    describe = getattr(sampler, "get_description", None)
    try:
        description = describe() if callable(describe) else ""
    except Exception:  # a custom sampler's bug: ask it, span by span
        return False
    if not isinstance(description, str):
        return False
    return description == "AlwaysOffSampler" or (
        description.startswith("ParentBased{")
        and "remoteParentNotSampled:AlwaysOffSampler" in description
        and "localParentNotSampled:AlwaysOffSampler" in description
    )


# -- metrics --------------------------------------------------------------------------------------


#: Where a proxy instrument keeps the instrument that backs it (``None`` until a MeterProvider
#: is set); read with ``getattr(proxy, REAL_INSTRUMENT)``, as cheap as an attribute.
REAL_INSTRUMENT: Final = "_real_instrument"


def proxy_instrument(instrument: object) -> object | None:
    """``instrument`` itself when it is an instrument of the API's proxy meter (no MeterProvider
    was set when it was made), whose ``getattr(instrument, REAL_INSTRUMENT)`` stays ``None``
    until one is set, so a measurement can be skipped instead of handed to a proxy that drops it.

    ``None`` for any other instrument, or when the proxy's state cannot be read: every
    measurement then goes to the API, which drops it while nothing backs the proxy.
    """
    return instrument if hasattr(instrument, REAL_INSTRUMENT) else None
