"""Every plugin's instrumentor: instrument() twice, uninstrument(), the entry point, and strict
keyword checks at instrument() and at the per-object instrument call."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest

from integration_tests.contract.case import Case
from integration_tests.contract.protocol import BODY, Handling

pytestmark = pytest.mark.per_plugin


def test_instrument_twice_gives_one_span_per_operation(case: Case) -> None:
    """A second instrument() patches nothing twice: a publish and its delivery still make one span each."""
    case.instrument()
    case.instrument()
    case.publish()
    pushed = case.plugin.first("push")
    try:
        pushed.consume(case.queue, 1, Handling())
    finally:
        pushed.close()
    case.span(f"process {case.queue}")
    assert sorted(s.name for s in case.otel.spans()) == [
        f"process {case.queue}",
        "publish amq.default",
    ]


def test_uninstrument_restores_every_patched_attribute_and_stops_tracing(case: Case) -> None:
    """uninstrument() puts back the very objects instrument() replaced, and a consumer registered while instrumented still gets its messages but makes no span."""
    plugin = case.plugin
    before = plugin.patched()
    instrumentor = case.instrument()
    assert plugin.unpatched(before, plugin.patched()) == []
    case.publish()
    pushed = plugin.first("push")

    def undo_then_publish() -> None:
        instrumentor.uninstrument()
        case.publish()

    try:
        pushed.consume(case.queue, 1, Handling())
        case.span(f"process {case.queue}")
        consumed = pushed.consume(case.queue, 1, Handling(), between=undo_then_publish)
    finally:
        pushed.close()
    after = plugin.patched()
    assert after.keys() == before.keys()
    assert [key for key, value in after.items() if value is not before[key]] == []
    assert [r.body for r in consumed.received] == [BODY]
    assert sorted(s.name for s in case.otel.spans()) == [
        f"process {case.queue}",
        "publish amq.default",
    ]
    sent = [count for _attributes, count in case.otel.points("messaging.client.sent.messages")]
    assert sent == [1]


def test_the_entry_point_loads_the_instrumentor(case: Case) -> None:
    """The distribution registers otel_<plugin> in the opentelemetry_instrumentor group, so opentelemetry-instrument finds it."""
    (point,) = entry_points(group="opentelemetry_instrumentor", name=f"otel_{case.plugin.name}")
    assert point.load() is type(case.plugin.instrumentor())


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"settle_span": True}, TypeError, "settle_span"),
        ({"consumer_context": "child"}, ValueError, "consumer_context"),
        ({"capture_headers": (1,)}, TypeError, "capture_headers"),
    ],
)
def test_a_bad_option_fails_before_anything_is_patched(
    case: Case, options: dict[str, Any], error: type[Exception], names: str
) -> None:
    """A misspelt keyword or a wrong value fails at instrument() and at the per-object instrument call, naming the keyword, and leaves everything unpatched."""
    plugin = case.plugin
    before = plugin.patched()
    instrumentor = plugin.instrumentor()
    with pytest.raises(error, match=names):
        instrumentor.instrument(**options)
    with pytest.raises(error, match=names):
        plugin.instrument_object(case.client, **options)
    assert not instrumentor.is_instrumented_by_opentelemetry
    after = plugin.patched()
    assert [key for key, value in after.items() if value is not before[key]] == []
