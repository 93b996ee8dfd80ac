"""Reading and writing trace context in AMQP header tables that may hold anything.

AMQP header values arrive as ``str``, ``bytes``, ``bytearray``, numbers, decimals, timestamps,
nested tables, arrays or ``None``, depending on the producer's client library. A producer written
in another language may send ``traceparent`` as a byte string; the contrib getters hand such a
value straight to the propagator's regex and crash the consumer. Here, bytes are decoded as UTF-8
with errors replaced, numbers become their decimal text, and anything that cannot be read as
text is ignored. Nothing here raises for any header content.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Final, Iterable, Mapping

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanContext,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_messaging_core._private_api import (
    BAGGAGE_KEY,
    SPAN_KEY,
    SPAN_KEY_FOUND,
    composite_members,
)

__all__ = [
    "HeadersGetter",
    "decode_header_value",
    "extract_context",
    "fast_extract",
    "find_header",
    "header_texts",
    "headers_getter",
    "inject_into_copy",
    "inject_span",
]

_EMPTY_CONTEXT = Context()


def decode_header_value(value: object) -> str | None:
    """One header value as text, or ``None`` when it is not something a propagator can read."""
    if type(value) is str:  # the common case first: no isinstance chain
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8", errors="replace")
        except Exception:  # memoryview of a non-byte format, say
            return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, Decimal, str)):
        try:
            return str(value)
        except Exception:  # Decimal of absurd size in an exotic context, say
            return None
    return None


def find_header(headers: Mapping[Any, object] | None, key: str) -> object | None:
    """The raw value of ``key``: an exact match first, else the first key equal ignoring case.

    AMQP keys are case-sensitive, but producers that came from HTTP land send ``Traceparent``;
    the exact key wins when both are present, so the choice is deterministic.
    """
    if not headers:
        return None
    try:
        value = headers.get(key)
    except Exception:  # a bytes key equal to ``key`` under ``python -bb``; the scan below finds it
        value = None
    if value is not None:
        return value
    try:
        for name in headers:
            if type(name) is str:
                if name.lower() == key:
                    return headers[name]
            elif (
                isinstance(name, (bytes, bytearray))
                and bytes(name).decode("utf-8", errors="replace").lower() == key
            ):
                return headers[name]
    except Exception:  # a Mapping whose methods raise: treat as absent
        return None
    return None


class HeadersGetter(Getter[Mapping[Any, Any] | None]):
    """A propagator getter for AMQP header tables; never raises, returns ``[str]`` or ``None``."""

    def get(self, carrier: Mapping[Any, Any] | None, key: str) -> list[str] | None:
        value = find_header(carrier, key)
        if value is None:
            return None
        text = decode_header_value(value)
        if text is not None:
            return [text]
        if isinstance(value, (list, tuple)):
            texts = [t for t in map(decode_header_value, value) if t is not None]
            return texts or None
        return None

    def keys(self, carrier: Mapping[Any, Any] | None) -> list[str]:
        if not carrier:
            return []
        try:
            return [k if type(k) is str else _key_text(k) for k in carrier]
        except Exception:
            return []


def _key_text(key: object) -> str:
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8", errors="replace")
    return str(key)


headers_getter = HeadersGetter()


class _EncodableHeadersGetter(HeadersGetter):
    """:class:`HeadersGetter` whose texts can always be encoded (lone surrogates replaced)."""

    def get(self, carrier: Mapping[Any, Any] | None, key: str) -> list[str] | None:
        texts = super().get(carrier, key)
        if texts is None:
            return None
        return [t.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for t in texts]


_encodable_getter = _EncodableHeadersGetter()


def inject_into_copy(
    headers: Mapping[Any, Any] | None, context: Context | None = None
) -> dict[Any, Any]:
    """A new dict holding ``headers`` plus the propagation fields of ``context``.

    The caller's mapping is never touched: the same headers dict is often reused for many
    publishes, and a stale ``traceparent`` written into it would tie later messages to the wrong
    trace.
    """
    carrier: dict[Any, Any] = dict(headers) if headers else {}
    propagate.inject(carrier, context=context)
    return carrier


def inject_span(carrier: dict[Any, Any], span: Span, context: Context | None = None) -> None:
    """Write ``span``'s context (and the baggage of ``context``) into ``carrier``.

    Equivalent to ``propagate.inject(carrier, context=set_span_in_context(span, context))``; with
    the default propagators (W3C tracecontext + baggage) it formats the fields directly, which
    costs a fraction of the composite propagator's round of calls. A hypothesis test checks both
    ways write the same headers.
    """
    textmap = propagate.get_global_textmap()
    if textmap is not _default_textmap and not (_default_textmap is None and _is_default(textmap)):
        propagate.inject(carrier, context=trace.set_span_in_context(span, context))
        return
    if context is None:
        context = otel_context.get_current()
    span_context = span.get_span_context()
    if context.get(SPAN_KEY) is span:
        # The current span itself (a publish inside a parent that was not sampled, so made no span
        # of its own): the same parent usually sends many messages, so its formatted fields are
        # kept (baggage is per context and formatted below, each time).
        entry = _FORMATTED.get(id(span_context))
        if entry is None or entry[0] is not span_context:
            entry = _format_fields(span_context)
            if len(_FORMATTED) >= _FORMATTED_MAX:
                _FORMATTED.clear()  # bounded; one step, so safe under threads
            _FORMATTED[id(span_context)] = entry
        if entry[1] is not None:
            carrier["traceparent"] = entry[1]
            if entry[2] is not None:
                carrier["tracestate"] = entry[2]
    # is_valid first: the tuple comparison the propagator makes is the slow part of the check
    elif span_context.is_valid or span_context != INVALID_SPAN_CONTEXT:
        carrier["traceparent"] = (
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{span_context.trace_flags:02x}"
        )
        if span_context.trace_state:
            carrier["tracestate"] = span_context.trace_state.to_header()
    # The baggage entries live in the context (a dict) under the baggage module's key; reading it
    # directly spares building a read-only view per message just to see that there is none.
    if context.get(BAGGAGE_KEY) if BAGGAGE_KEY is not None else baggage.get_all(context):
        _BAGGAGE_PROPAGATOR.inject(carrier, context=context)


# The formatted ``traceparent`` and ``tracestate`` (None when not written) of recently injected
# parent span contexts, by identity: SpanContext is immutable, so its fields never change, and the
# entry holds the object itself, so its id cannot be reused while the entry lives (TraceState is
# not hashable, so span contexts cannot be keys). Emptied when full.
_FORMATTED: dict[int, tuple[SpanContext, str | None, str | None]] = {}
_FORMATTED_MAX: Final = 128


def _format_fields(span_context: SpanContext) -> tuple[SpanContext, str | None, str | None]:
    if not span_context.is_valid and span_context == INVALID_SPAN_CONTEXT:
        return span_context, None, None
    return (
        span_context,
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{span_context.trace_flags:02x}",
        span_context.trace_state.to_header() if span_context.trace_state else None,
    )


def extract_context(headers: Mapping[Any, Any] | None) -> Context:
    """The creation context (span context and baggage) carried by ``headers``.

    Extraction starts from an empty context, so the consumer's own ambient baggage never masks or
    mixes with the message's.
    """
    if not headers:
        return _EMPTY_CONTEXT
    textmap = propagate.get_global_textmap()
    if textmap is _default_textmap or (_default_textmap is None and _is_default(textmap)):
        fast = _fast_extract(headers)
        if fast is not None:
            return fast
    try:
        return propagate.extract(headers, context=_EMPTY_CONTEXT, getter=headers_getter)
    except UnicodeError:
        # Text no codec can encode: lone surrogates, which py-amqp (kombu) makes of invalid UTF-8
        # (it decodes with "surrogatepass"), and the baggage propagator encodes what it reads.
        # Read again with such text replaced, as undecodable bytes are.
        return propagate.extract(headers, context=_EMPTY_CONTEXT, getter=_encodable_getter)


# The fast path. With the default propagators (W3C tracecontext + baggage), a message that carries
# exactly one well-formed version-00 ``traceparent`` and nothing else the propagators read is by far
# the most common case; decoding it directly costs about half of going through the composite
# propagator, the getter and the regex. Anything else (baggage, tracestate, bytes, odd case,
# whitespace, other versions, another propagator configuration) takes the general path above. A
# hypothesis test checks that both paths agree on arbitrary header tables.
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_OTHER_FIELDS = frozenset({"tracestate", "baggage", "traceparent"})
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_default_textmap: TextMapPropagator | None = None
_BAGGAGE_PROPAGATOR = W3CBaggagePropagator()
# the flags nearly every traceparent carries (02/03: W3C level 2's random trace id), made once
_TRACE_FLAGS = {flags: TraceFlags(int(flags, 16)) for flags in ("00", "01", "02", "03")}


def _is_default(textmap: TextMapPropagator) -> bool:
    """True (and remembered) when ``textmap`` is exactly tracecontext followed by baggage."""
    global _default_textmap  # a one-slot cache of the global propagator
    inner = composite_members(textmap)
    if (
        SPAN_KEY_FOUND
        and inner is not None
        and [type(p) for p in inner] == [TraceContextTextMapPropagator, W3CBaggagePropagator]
    ):
        _default_textmap = textmap
        return True
    return False


def fast_extract(headers: Mapping[Any, Any], traceparent: object = None) -> Context | None:
    """:func:`extract_context`'s fast path alone: the context of ``headers`` when they carry
    exactly one well-formed version-00 ``traceparent`` and nothing else the propagators read (the
    default propagators only); ``None`` for anything else, which :func:`extract_context` reads.

    ``traceparent`` is ``headers.get("traceparent")`` when the caller has read it already."""
    textmap = propagate.get_global_textmap()
    if textmap is _default_textmap or (_default_textmap is None and _is_default(textmap)):
        return _fast_extract(headers, traceparent)
    return None


def _span_context_maker() -> bool:
    """True when a valid remote :class:`SpanContext` can be made as the tuple it is: its
    ``__new__`` (a Python frame that checks the ids' range, a third of the fast path's cost)
    is then skipped for ids already known valid. Checked once against the real constructor, so
    an API release that lays the tuple out otherwise only makes the fast path call it again."""
    try:
        flags = _TRACE_FLAGS["01"]
        made = tuple.__new__(SpanContext, (2, 3, True, flags, DEFAULT_TRACE_STATE, True))
        real = SpanContext(2, 3, True, flags)
        return (
            made == real
            and made.trace_id == 2
            and made.span_id == 3
            and made.is_remote is True
            and made.trace_flags is flags
            and made.trace_state is real.trace_state
            and made.is_valid is True
        )
    except Exception:  # pragma: no cover - an API whose SpanContext is no longer a tuple
        return False


_AS_TUPLE: Final = _span_context_maker()
_new_tuple: Final = tuple.__new__


def _fast_extract(headers: Mapping[Any, Any], value: object = None) -> Context | None:
    try:
        if value is None:
            value = headers.get("traceparent")
        if type(value) is not str or len(value) != 55:
            return None
        # the traceparent alone (the usual message) has nothing else to look at
        if len(headers) != 1:
            for name in headers:
                if type(name) is not str or (
                    name != "traceparent" and name.lower() in _OTHER_FIELDS
                ):
                    return None
    except Exception:  # an exotic mapping, or bytes keys under python -bb: the general path decides
        return None
    match = _TRACEPARENT_00.fullmatch(value)
    if match is None:
        return None
    trace_id, span_id, flags = match.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    trace_flags = _TRACE_FLAGS.get(flags)
    if trace_flags is None:
        trace_flags = TraceFlags(int(flags, 16))
    # 32 and 16 hex digits, not all zeros: ids in range, so the span context is valid
    if _AS_TUPLE:
        span_context = _new_tuple(
            SpanContext,
            (int(trace_id, 16), int(span_id, 16), True, trace_flags, DEFAULT_TRACE_STATE, True),
        )
    else:  # pragma: no cover - see _span_context_maker
        span_context = SpanContext(int(trace_id, 16), int(span_id, 16), True, trace_flags)
    # what set_span_in_context(span, empty context) builds, without copying the empty context
    return Context({SPAN_KEY: NonRecordingSpan(span_context)})


def header_texts(headers: Mapping[Any, Any] | None, names: Iterable[str]) -> dict[str, str]:
    """``{name: text}`` for the named headers that can be read as text (for ``capture_headers``)."""
    found: dict[str, str] = {}
    if not headers:
        return found
    for name in names:
        value = find_header(headers, name)
        if value is None:
            continue
        text = decode_header_value(value)
        if text is not None:
            found[name] = text
    return found
