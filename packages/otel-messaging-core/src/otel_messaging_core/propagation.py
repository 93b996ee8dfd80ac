"""Reading and writing trace context in AMQP header tables that may hold anything.

AMQP header values arrive as ``str``, ``bytes``, ``bytearray``, numbers, decimals, timestamps,
nested tables, arrays or ``None``, depending on the producer's client library. A producer written
in another language may send ``traceparent`` as a byte string; the contrib getters hand such a
value straight to the propagator's regex and crash the consumer. Here, bytes are decoded as UTF-8
with errors replaced, numbers become their decimal text, and anything that cannot be read as
text is ignored. Nothing here raises for any header content.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Iterable, Mapping

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter

__all__ = [
    "HeadersGetter",
    "decode_header_value",
    "extract_context",
    "find_header",
    "header_texts",
    "headers_getter",
    "inject_into_copy",
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


def extract_context(headers: Mapping[Any, Any] | None) -> Context:
    """The creation context (span context and baggage) carried by ``headers``.

    Extraction starts from an empty context, so the consumer's own ambient baggage never masks or
    mixes with the message's.
    """
    if not headers:
        return _EMPTY_CONTEXT
    return propagate.extract(headers, context=_EMPTY_CONTEXT, getter=headers_getter)


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
