"""Header propagation: any header content is read without raising; injection never mutates the caller's headers."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from otel_messaging_core.propagation import (
    extract_context,
    header_texts,
    headers_getter,
    inject_into_copy,
)

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"

# What an AMQP field table may hold, as decoded by pika, aiormq/pamqp and py-amqp.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=False, places=4),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.binary(max_size=64).map(bytearray),
    st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=20), children, max_size=4),
    ),
    max_leaves=12,
)
header_keys = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["traceparent", "Traceparent", "TRACEPARENT", "tracestate", "baggage", "Baggage"]
    ),
)
tables = st.dictionaries(header_keys, values, max_size=8)


@settings(max_examples=400, deadline=None)
@given(table=tables, key=header_keys)
def test_getter_never_raises_and_returns_text_or_none(table: dict[str, Any], key: str) -> None:
    """For any header table the getter returns None or a non-empty list of str, never raises."""
    result = headers_getter.get(table, key)
    assert result is None or (result and all(type(v) is str for v in result))
    assert all(type(k) is str for k in headers_getter.keys(table))


@settings(max_examples=300, deadline=None)
@given(table=tables)
def test_extract_never_raises(table: dict[str, Any]) -> None:
    """Extraction from any header table gives a context, valid span or none."""
    ctx = extract_context(table)
    assert isinstance(ctx, Context)


@given(
    table=st.dictionaries(st.text(max_size=10), values, max_size=5),
    garbage=st.one_of(st.binary(max_size=80), st.text(max_size=80), st.integers()),
)
def test_malformed_traceparent_starts_no_parent(table: dict[str, Any], garbage: object) -> None:
    """A traceparent that is not a valid W3C value extracts no span context."""
    table = {**table, "traceparent": garbage}
    span_context = trace.get_current_span(extract_context(table)).get_span_context()
    if span_context.is_valid:  # only a real traceparent can survive
        assert str(garbage).startswith("00-") or (
            isinstance(garbage, bytes) and garbage.startswith(b"00-")
        )


def test_bytes_traceparent_is_decoded() -> None:
    """A traceparent sent as bytes (another language's client) continues its trace."""
    for value in (
        TRACEPARENT.encode(),
        bytearray(TRACEPARENT.encode()),
        memoryview(TRACEPARENT.encode()),
    ):
        span_context = trace.get_current_span(
            extract_context({"traceparent": value})
        ).get_span_context()
        assert span_context.trace_id == TRACE_ID
        assert span_context.span_id == SPAN_ID
        assert span_context.is_remote


def test_key_case_fallback_prefers_exact_match() -> None:
    """An exact lowercase key wins over differently cased duplicates; a lone odd-case key is still read."""
    other = f"00-{1:032x}-{2:016x}-01"
    assert headers_getter.get(
        {"Traceparent": other, "traceparent": TRACEPARENT}, "traceparent"
    ) == [TRACEPARENT]
    assert headers_getter.get({"TRACEPARENT": TRACEPARENT}, "traceparent") == [TRACEPARENT]
    assert headers_getter.get({b"traceparent": TRACEPARENT}, "traceparent") == [TRACEPARENT]


def test_getter_reads_numbers_and_ignores_tables() -> None:
    """Numbers become their text; tables, None and booleans are unreadable and ignored."""
    assert headers_getter.get({"x": 42}, "x") == ["42"]
    assert headers_getter.get({"x": Decimal("1.5")}, "x") == ["1.5"]
    assert headers_getter.get({"x": {"nested": "table"}}, "x") is None
    assert headers_getter.get({"x": None}, "x") is None
    assert headers_getter.get({"x": True}, "x") is None
    assert headers_getter.get({"x": datetime.datetime(2026, 1, 1)}, "x") is None
    assert headers_getter.get({"x": [b"a", 1, {"t": 1}]}, "x") == ["a", "1"]
    assert headers_getter.get({"x": b"\xff\xfeok"}, "x") == ["\ufffd\ufffdok"]
    assert headers_getter.get(None, "x") is None
    assert headers_getter.keys(None) == []


def test_inject_into_copy_leaves_the_callers_headers_alone() -> None:
    """Injection writes into a new dict: the caller's headers are unchanged and reusable."""
    parent = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    ctx = baggage.set_baggage("order.id", "17", trace.set_span_in_context(NonRecordingSpan(parent)))
    headers = {"x-app": "shop"}
    sent = inject_into_copy(headers, ctx)
    assert headers == {"x-app": "shop"}
    assert sent is not headers
    assert sent["x-app"] == "shop"
    assert sent["traceparent"] == TRACEPARENT
    assert sent["baggage"] == "order.id=17"
    assert inject_into_copy(None, ctx)["traceparent"] == TRACEPARENT


def test_baggage_round_trip() -> None:
    """Baggage injected on publish comes back out of the headers on consume."""
    ctx = baggage.set_baggage("order.id", "17", Context())
    extracted = extract_context(inject_into_copy({}, ctx))
    assert baggage.get_baggage("order.id", extracted) == "17"


def test_header_texts_for_capture() -> None:
    """capture_headers reads named headers as text, case-insensitively, skipping unreadable ones."""
    headers = {"X-Tenant": b"acme", "x-retry": 3, "x-table": {"a": 1}}
    assert header_texts(headers, ("x-tenant", "x-retry", "x-table", "absent")) == {
        "x-tenant": "acme",
        "x-retry": "3",
    }


hex_ids = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    st.just("0" * 32),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=30, max_size=34),
)
traceparents = st.builds(
    lambda version, trace_id, span_id, flags, tail: f"{version}-{trace_id}-{span_id}-{flags}{tail}",
    st.sampled_from(["00", "01", "ff", "0g"]),
    hex_ids,
    st.one_of(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16), st.just("0" * 16)),
    st.sampled_from(["00", "01", "02", "03", "ff", "1"]),
    st.sampled_from(["", "-extra", " ", "\t"]),
)
fast_path_tables = st.dictionaries(
    st.one_of(
        st.sampled_from(["traceparent", "Traceparent", "tracestate", "baggage", "x-app"]),
        st.text(max_size=8),
    ),
    st.one_of(traceparents, st.text(max_size=20), st.binary(max_size=8), st.integers()),
    max_size=4,
)


@settings(max_examples=500, deadline=None)
@given(table=fast_path_tables, mixed_in=traceparents)
def test_fast_extract_agrees_with_the_propagators(table: dict[str, Any], mixed_in: str) -> None:
    """The fast path yields exactly what the configured propagators yield, for any header table."""
    from opentelemetry import propagate

    from otel_messaging_core.propagation import _EMPTY_CONTEXT

    for candidate in (table, {**table, "traceparent": mixed_in}, {"traceparent": mixed_in}):
        fast = extract_context(candidate)
        slow = propagate.extract(candidate, context=_EMPTY_CONTEXT, getter=headers_getter)
        assert (
            trace.get_current_span(fast).get_span_context()
            == trace.get_current_span(slow).get_span_context()
        )
        assert dict(baggage.get_all(fast)) == dict(baggage.get_all(slow))


def test_default_propagators_take_the_fast_path() -> None:
    """With the default propagators a plain traceparent is decoded by the fast path."""
    from opentelemetry import propagate

    from otel_messaging_core import propagation

    span_context = trace.get_current_span(
        extract_context({"traceparent": TRACEPARENT})
    ).get_span_context()
    assert span_context.trace_id == TRACE_ID
    assert propagation._default_textmap is propagate.get_global_textmap()
    assert propagation._fast_extract({"traceparent": TRACEPARENT}) is not None
    assert propagation._fast_extract({"traceparent": TRACEPARENT, "Baggage": "a=1"}) is None


def test_the_fast_path_span_context_is_the_one_the_constructor_makes() -> None:
    """The fast path makes its span context as the tuple SpanContext is (this opentelemetry-api
    lays it out as checked at import), equal to SpanContext()'s and read the same way."""
    from otel_messaging_core import propagation

    assert propagation._AS_TUPLE
    for flags in ("00", "01", "02", "03", "ff"):
        headers = {"traceparent": f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-{flags}", "x-app": "1"}
        made = trace.get_current_span(propagation._fast_extract(headers)).get_span_context()
        real = SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(int(flags, 16)))
        assert made == real
        assert (made.trace_id, made.span_id, made.trace_flags) == (
            TRACE_ID,
            SPAN_ID,
            int(flags, 16),
        )
        assert made.is_valid
        assert made.is_remote
        assert made.trace_state == real.trace_state


def test_fast_extract_takes_the_traceparent_already_read() -> None:
    """``fast_extract(headers, traceparent)`` decodes the traceparent its caller read, and still
    leaves a table with other propagation fields to the general path."""
    from otel_messaging_core.propagation import fast_extract

    context = fast_extract({"traceparent": TRACEPARENT}, TRACEPARENT)
    assert context is not None
    assert trace.get_current_span(context).get_span_context().trace_id == TRACE_ID
    assert fast_extract({"traceparent": TRACEPARENT, "tracestate": "a=b"}, TRACEPARENT) is None


span_contexts = st.builds(
    lambda trace_id, span_id, flags, state: SpanContext(
        trace_id,
        span_id,
        is_remote=False,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState(state),
    ),
    st.integers(min_value=0, max_value=2**128 - 1),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=255),
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
            st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
        ),
        max_size=3,
        unique_by=lambda kv: kv[0],
    ),
)


# a span context and the baggage entries of the context it is injected from
_spans_with_baggage = given(
    span_context=span_contexts,
    entries=st.dictionaries(
        st.from_regex(r"[a-z][a-z.]{0,8}", fullmatch=True), st.text(max_size=10), max_size=3
    ),
)


@settings(max_examples=300, deadline=None)
@_spans_with_baggage
def test_inject_span_writes_what_the_propagators_write(
    span_context: SpanContext, entries: dict[str, str]
) -> None:
    """The fast inject writes exactly the headers propagate.inject writes, baggage included."""
    from opentelemetry import propagate

    from otel_messaging_core.propagation import inject_span

    ctx = Context()
    for name, value in entries.items():
        ctx = baggage.set_baggage(name, value, ctx)
    span = NonRecordingSpan(span_context)
    fast: dict[str, Any] = {"x": 1}
    slow: dict[str, Any] = {"x": 1}
    inject_span(fast, span, ctx)
    propagate.inject(slow, context=trace.set_span_in_context(span, ctx))
    assert fast == slow


@settings(max_examples=300, deadline=None)
@_spans_with_baggage
def test_injecting_the_current_span_writes_what_the_propagators_write(
    span_context: SpanContext, entries: dict[str, str]
) -> None:
    """A publish inside a parent that made no span of its own sends the parent's context: the same
    headers as propagate.inject, the first time and from the formatted-header cache after."""
    from opentelemetry import propagate

    from otel_messaging_core.propagation import inject_span

    span = NonRecordingSpan(span_context)
    ctx = trace.set_span_in_context(span, Context())
    for name, value in entries.items():
        ctx = baggage.set_baggage(name, value, ctx)
    slow: dict[str, Any] = {"x": 1}
    propagate.inject(slow, context=ctx)
    for _ in range(2):
        fast: dict[str, Any] = {"x": 1}
        inject_span(fast, span, ctx)
        assert fast == slow


def _current(trace_id: int, span_id: int, sampled: bool, state: TraceState | None = None) -> Any:
    span = NonRecordingSpan(
        SpanContext(
            trace_id,
            span_id,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
            trace_state=state,
        )
    )
    return span, trace.set_span_in_context(span, Context())


def test_parent_header_cache_keeps_each_parent_apart() -> None:
    """Publishes inside different parents carry each its own parent, sampled flag and tracestate,
    however they interleave: a cached header never leaks into another trace."""
    from otel_messaging_core.propagation import inject_span

    unsampled, unsampled_ctx = _current(TRACE_ID, SPAN_ID, sampled=False)
    sampled, sampled_ctx = _current(TRACE_ID, SPAN_ID, sampled=True)
    other, other_ctx = _current(TRACE_ID + 1, SPAN_ID + 1, False, TraceState([("k", "v")]))
    for _ in range(3):
        for span, ctx, expected in (
            (unsampled, unsampled_ctx, {"traceparent": f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"}),
            (sampled, sampled_ctx, {"traceparent": f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"}),
            (
                other,
                other_ctx,
                {
                    "traceparent": f"00-{TRACE_ID + 1:032x}-{SPAN_ID + 1:016x}-00",
                    "tracestate": "k=v",
                },
            ),
        ):
            carrier: dict[str, Any] = {}
            inject_span(carrier, span, ctx)
            assert carrier == expected


def test_parent_header_cache_formats_baggage_per_context() -> None:
    """The same parent with different baggage current: each publish carries its own baggage."""
    from otel_messaging_core.propagation import inject_span

    span, ctx = _current(TRACE_ID, SPAN_ID, sampled=False)
    with_a = baggage.set_baggage("tenant", "a", ctx)
    with_b = baggage.set_baggage("tenant", "b", ctx)
    sent = []
    for context in (with_a, ctx, with_b, with_a):
        carrier: dict[str, Any] = {}
        inject_span(carrier, span, context)
        sent.append(carrier.get("baggage"))
    assert sent == ["tenant=a", None, "tenant=b", "tenant=a"]


def test_parent_header_cache_is_bounded() -> None:
    """Many distinct parents (one per request) never grow the cache past its bound."""
    from otel_messaging_core import propagation

    for n in range(1, 3 * propagation._FORMATTED_MAX):
        span, ctx = _current(n, n, sampled=False)
        carrier: dict[str, Any] = {}
        propagation.inject_span(carrier, span, ctx)
        assert carrier["traceparent"] == f"00-{n:032x}-{n:016x}-00"
        assert len(propagation._FORMATTED) <= propagation._FORMATTED_MAX


def test_parent_header_cache_under_threads() -> None:
    """Threads publishing inside their own parents at the same time each send their own parent."""
    import threading

    from otel_messaging_core import propagation

    wrong: list[str] = []

    def publish_many(thread: int) -> None:
        for n in range(400):
            trace_id = (thread << 32) + (n % 50) + 1
            span, ctx = _current(trace_id, trace_id, sampled=n % 2 == 0)
            carrier: dict[str, Any] = {}
            propagation.inject_span(carrier, span, ctx)
            expected = f"00-{trace_id:032x}-{trace_id:016x}-{'01' if n % 2 == 0 else '00'}"
            if carrier["traceparent"] != expected:
                wrong.append(carrier["traceparent"])

    threads = [threading.Thread(target=publish_many, args=(t,)) for t in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert len(propagation._FORMATTED) <= propagation._FORMATTED_MAX
