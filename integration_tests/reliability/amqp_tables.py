"""Hypothesis strategies for AMQP header tables holding anything, and what each client decodes.

A plain pika producer sends the tables. pika alone cannot encode a float, a ``bytearray`` or a long
string that is not UTF-8, which producers in other languages send all the time, so
:func:`extended_pika_encoder` teaches the producer's encoder those three (``d``, ``x`` and ``S``
with raw bytes); the consumers decode what arrives with their own, unchanged, codecs. What a
consumer's handler must see is exactly what its client library decodes from the bytes sent:
:func:`decoded_by` computes that without any instrumentation involved.
"""

from __future__ import annotations

import datetime
import decimal
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika.data
from hypothesis import strategies as st
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACE_FIELDS",
    "RawLongStr",
    "Table",
    "ValidContext",
    "bodies",
    "decoded_by",
    "encoded",
    "extended_pika_encoder",
    "tables",
]

TRACE_FIELDS = ("traceparent", "tracestate", "baggage")
INT64 = st.integers(-(2**63), 2**63 - 1)
MB = 1 << 20


class RawLongStr(bytes):
    """Bytes sent as an AMQP long string (``S``): text that is not valid UTF-8."""


def extended_pika_encoder(original: Callable[..., int]) -> Callable[..., int]:
    """pika's ``encode_value`` plus floats (``d``), ``bytearray`` (``x``) and :class:`RawLongStr`."""

    def encode_value(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, RawLongStr):
            pieces.append(struct.pack(">cI", b"S", len(value)))
            pieces.append(bytes(value))
            return 5 + len(value)
        if isinstance(value, bytearray):
            pieces.append(struct.pack(">cI", b"x", len(value)))
            pieces.append(bytes(value))
            return 5 + len(value)
        if isinstance(value, float):
            pieces.append(struct.pack(">cd", b"d", value))
            return 9
        return original(pieces, value)

    return encode_value


def encoded(table: dict[Any, Any]) -> bytes:
    """The table as the producer puts it on the wire (with the extended encoder installed)."""
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, table)
    return b"".join(pieces)


def decoded_by(library: str, wire: bytes) -> Any:
    """The header table ``library``'s own codec makes of ``wire``: what a handler must see."""
    if library == "pika":
        return pika.data.decode_table(wire, 0)[0]
    if library == "aiopika":
        from pamqp import decode

        return decode.field_table(wire)[1]
    if library == "kombu":
        from amqp.serialization import loads

        return loads("F", wire, 0)[0][0]
    raise ValueError(library)


# -- values ---------------------------------------------------------------------------------------

_TEXT_CHARS = st.characters(blacklist_categories=("Cs",))
texts = st.text(_TEXT_CHARS, max_size=40)
keys = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=30,
)
user_keys = keys.filter(lambda key: key.lower() not in TRACE_FIELDS)


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


invalid_utf8 = st.one_of(
    st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"00-\xff\xfe"]),
    st.binary(min_size=1, max_size=40).filter(_not_utf8),
).map(RawLongStr)
decimals = st.builds(
    lambda raw, places: decimal.Decimal(raw).scaleb(-places),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 9),
)
timestamps = st.datetimes(
    min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
)
scalars = st.one_of(
    texts,
    st.binary(max_size=40),
    st.binary(max_size=40).map(bytearray),
    invalid_utf8,
    INT64,
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),  # pika's own decoder cannot take NaN/inf
    decimals,
    timestamps,
    st.none(),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


# -- trace context fields ---------------------------------------------------------------------------

_T = "4bf92f3577b34da6a3ce929d0e0e4736"
_S = "00f067aa0ba902b7"
NEAR_MISSES = {
    "traceparent": [
        "",
        " ",
        "00",
        "00-",
        "garbage",
        f"00-{'0' * 32}-{_S}-01",  # all-zero trace id
        f"00-{_T}-{'0' * 16}-01",  # all-zero span id
        f"ff-{_T}-{_S}-01",  # forbidden version
        f"00-{_T.upper()}-{_S}-01",  # upper-case hex
        f"00-{_T}-{_S}-01-extra",  # version 00 takes no suffix
        f"00-{_T[:-1]}-{_S}-01",
        f"00_{_T}_{_S}_01",
        f"00-{_T}-{_S}-0g",
        f"00-{_T}-{_S}",
        _T,
        "\x00" * 55,
        f"00-{_T}-{_S}-01" + " " * 600,  # over the propagator's 512 characters
    ],
    "tracestate": ["", ",", "=", "a=", "=b", "k=v,k=v2", "x" * 300 + "=1", ",,,,", "k=v\x00"],
    "baggage": ["", ";", "=", "a=%ZZ", "k=v;prop", "k", "%", "a=b," * 500, "k=" + "v" * 9000],
}


def _first_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and value:
        return _first_text(value[0])
    return None


def continues_a_trace(value: Any) -> bool:
    """True when a generous reader of ``value`` (bytes decoded, first array item) finds a valid
    ``traceparent`` in it; garbage strategies leave those out."""
    text = _first_text(value)
    if text is None:
        return False
    extracted = TraceContextTextMapPropagator().extract({"traceparent": text})
    from opentelemetry import trace

    return trace.get_current_span(extracted).get_span_context().is_valid


def garbage(field: str) -> st.SearchStrategy[Any]:
    """Malformed values for one trace-context field, in every AMQP type."""
    text = st.one_of(st.sampled_from(NEAR_MISSES[field]), texts)
    value = st.one_of(
        text,
        text.map(lambda t: t.encode("utf-8")),
        text.map(lambda t: bytearray(t.encode("utf-8"))),
        text.map(lambda t: RawLongStr(t.encode("utf-8"))),
        invalid_utf8,
        INT64,
        decimals,
        st.none(),
        st.lists(text, max_size=3),
        st.dictionaries(keys, text, max_size=2),
    )
    if field == "traceparent":
        return value.filter(lambda v: not continues_a_trace(v))
    return value


def case_variant(field: str) -> st.SearchStrategy[str]:
    """``field`` in any mix of upper and lower case."""
    return st.lists(st.booleans(), min_size=len(field), max_size=len(field)).map(
        lambda flags: "".join(c.upper() if up else c for c, up in zip(field, flags, strict=True))
    )


@dataclass(frozen=True)
class ValidContext:
    """The producer context a table carries under the exact key ``traceparent``."""

    trace_id: int
    span_id: int
    sampled: bool


@st.composite
def valid_traceparents(draw: st.DrawFn) -> tuple[Any, ValidContext]:
    trace_id = draw(st.integers(1, 2**128 - 1))
    span_id = draw(st.integers(1, 2**64 - 1))
    sampled = draw(st.booleans())
    version, suffix = draw(st.sampled_from([("00", ""), ("cc", "-future-fields"), ("01", "")]))
    pad = draw(st.sampled_from(["", " ", "\t"]))
    text = f"{pad}{version}-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}{suffix}"
    form = draw(st.sampled_from(["str", "bytes", "bytearray", "raw"]))
    value: Any = {
        "str": text,
        "bytes": text.encode(),
        "bytearray": bytearray(text.encode()),
        "raw": RawLongStr(text.encode()),
    }[form]
    return value, ValidContext(trace_id, span_id, sampled)


@dataclass(frozen=True)
class Table:
    """A generated header table and the context it carries (``None``: none, a fresh trace)."""

    headers: dict[Any, Any]
    context: ValidContext | None


@st.composite
def tables(draw: st.DrawFn, *, binary_keys: bool = False) -> Table:
    """Header tables: user entries of every type, nested; trace fields malformed, empty, in odd
    and duplicated case; sometimes a valid ``traceparent`` (as text or bytes) under the exact
    key; sometimes one entry of up to 100 kB (the table stays within the broker's frame size).
    ``binary_keys`` adds keys that are not UTF-8 (pika and py-amqp hand those over as bytes)."""
    headers: dict[Any, Any] = draw(st.dictionaries(user_keys, values, max_size=8))
    if binary_keys and draw(st.booleans()):
        headers[draw(invalid_utf8.map(bytes))] = draw(scalars)
    for field in TRACE_FIELDS:
        for key in draw(st.lists(case_variant(field), max_size=3, unique=True)):
            headers[key] = draw(garbage(field))
    context = None
    if draw(st.booleans()):
        headers["traceparent"], context = draw(valid_traceparents())
    big = draw(st.sampled_from([0, 0, 0, 1_000, 60_000, 100_000]))
    if big:
        key = draw(st.one_of(user_keys, case_variant("tracestate"), case_variant("baggage")))
        filler = draw(st.sampled_from(["a", "=", ",", "\u00e9"]))
        headers[key] = (filler * big)[:big] if filler != "\u00e9" else filler * (big // 2)
    return Table(headers, context)


def _body(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(
        _body,
        # around the frame size (131072 minus the 8 bytes of frame overhead) and a few MB
        st.sampled_from([0, 131_064, 131_065, 131_072, 131_073, MB, 3 * MB + 17]),
        st.integers(0, 2**32),
    ),
    st.builds(_body, st.integers(0, 4 * MB), st.integers(0, 2**32)),
)
