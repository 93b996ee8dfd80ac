"""The demo's analysis functions on hand-made span and metric records (no broker, no processes)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from examples.order_flow.analysis import (
    Histogram,
    HistogramPoint,
    SpanEvent,
    SpanRecord,
    SumPoint,
    duplicate_span_ids,
    exact_percentile,
    flow_problems,
    group_orders,
    hops,
    loss_of,
    merge_histograms,
    order_fate,
    percentile,
    publishes_per_service,
    sum_total,
    waterfall,
)
from examples.order_flow.domain import COMPLETED, LOST, lost_order_ids, plan_orders

MS = 1_000_000


def span(
    span_id: str,
    name: str,
    *,
    trace: str = "t1",
    parent: str | None = None,
    links: tuple[str, ...] = (),
    service: str = "svc",
    start: int = 0,
    end: int = 1,
    op: str | None = None,
    order: str | None = None,
    error: str | None = None,
    failed: bool = False,
    why: str = "",
    exception: dict[str, Any] | None = None,
    attributes: dict[str, Any] | None = None,
) -> SpanRecord:
    attributes = dict(attributes or {})
    if op:
        attributes["messaging.operation.type"] = op
    if order:
        attributes["order.id"] = order
    if error:
        attributes["error.type"] = error
    return SpanRecord(
        service=service,
        trace_id=trace,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind="INTERNAL",
        start_ns=start * MS,
        end_ns=end * MS,
        status="ERROR" if error or failed else "UNSET",
        status_message=why,
        attributes=attributes,
        links=tuple(("tx", sid) for sid in links),
        events=(SpanEvent("exception", exception),) if exception is not None else (),
    )


def parent_mode_order() -> list[SpanRecord]:
    return [
        span("a", "POST /orders", service="shop", start=0, end=5, order="1"),
        span("b", "publish shop", parent="a", service="shop", start=1, end=4, op="send", order="1"),
        span("c", "process srm", parent="b", links=("b",), service="srm", start=6, end=20, op="process", order="1"),
        span("d", "check stock", parent="c", service="srm", start=7, end=9),
        span("e", "publish production", parent="c", service="srm", start=10, end=12, op="send", order="1"),
        span("f", "process jobs", parent="e", links=("e",), service="mes", start=14, end=60, op="process", order="1"),
    ]  # fmt: skip


def link_mode_order(order: str = "2", prefix: str = "") -> list[SpanRecord]:
    p = prefix
    return [
        span(p + "a", "publish shop", trace=p + "t1", service="shop", start=0, end=3, op="send", order=order),
        span(p + "b", "process srm", trace=p + "t2", links=(p + "a",), service="srm", start=4, end=10, op="process", order=order),
        span(p + "c", "publish production", trace=p + "t2", parent=p + "b", service="srm", start=5, end=6, op="send", order=order),
        span(p + "d", "process jobs", trace=p + "t3", links=(p + "c",), service="mes", start=8, end=30, op="process", order=order),
        span(p + "e", "process file", trace=p + "t3", parent=p + "d", service="mes", start=9, end=29),
    ]  # fmt: skip


def test_group_orders_joins_by_parent_and_by_link() -> None:
    """Spans of one order are found through parents (one trace) and through links (a trace per hop)."""
    first, second = parent_mode_order(), link_mode_order(prefix="L")
    unrelated = [span("z", "GET /health", trace="t9")]
    orders = group_orders([*second, *unrelated, *first])
    assert list(orders) == ["1", "2"]
    assert [s.span_id for s in orders["1"]] == ["a", "b", "c", "d", "e", "f"]
    assert [s.span_id for s in orders["2"]] == ["La", "Lb", "Lc", "Ld", "Le"]


def test_group_orders_lists_a_mixed_group_under_both_ids() -> None:
    """A group whose spans carry two order ids (a propagation bug) shows up under both."""
    spans = [span("a", "x", order="3"), span("b", "y", parent="a", order="4")]
    assert {k: [s.span_id for s in v] for k, v in group_orders(spans).items()} == {
        "3": ["a", "b"],
        "4": ["a", "b"],
    }


def test_order_ids_sort_numerically() -> None:
    """Orders come back sorted by numeric id (2 before 10)."""
    spans = [span("x", "p", trace="a", order="10"), span("y", "p", trace="b", order="2")]
    assert list(group_orders(spans)) == ["2", "10"]


def mes_processed(s: SpanRecord) -> bool:
    return s.service == "mes" and s.operation_type == "process"


def test_fate_completed_lost_and_in_flight() -> None:
    """Completed needs the final step and no error; the ERROR span that ended first says where an order was lost."""
    done = order_fate("1", parent_mode_order(), mes_processed)
    assert (done.status, done.service, done.span) == ("completed", "mes", "process jobs")

    raised = [
        span("a", "publish shop", service="shop", start=0, end=1, op="send"),
        span("b", "process srm", parent="a", service="srm", start=2, end=5, error="app.UnknownSku"),
        span("c", "reject srm", parent="b", service="srm", start=6, end=7, error="rejected"),
    ]
    lost = order_fate("13", raised, mes_processed)
    assert (lost.status, lost.service, lost.span, lost.error_type) == (
        "lost",
        "srm",
        "process srm",
        "app.UnknownSku",
    )
    waiting = order_fate("5", raised[:1], mes_processed)
    assert (waiting.status, waiting.service) == ("in flight", "shop")
    assert order_fate("6", [], mes_processed).status == "in flight"


def test_loss_says_why_from_the_span_that_failed_first() -> None:
    """A loss names the innermost failing span, its status description, exception, facts and the span that then dropped the message."""
    spans = [
        span("a", "publish shop", service="shop", start=0, end=1, op="send", order="13"),
        span("b", "process srm", parent="a", service="srm", start=2, end=9, op="process",
             error="app.UnknownSku", why="UnknownSku: order 13: unknown SKU 'X'",
             exception={"exception.type": "UnknownSku", "exception.message": "order 13: unknown SKU 'X'"}),
        span("c", "check stock", parent="b", service="srm", start=3, end=5, error="app.UnknownSku",
             why="unknown SKU 'X': not in stock", attributes={"srm.sku": "X"},
             exception={"exception.type": "UnknownSku", "exception.message": "order 13: unknown SKU 'X'"}),
        span("d", "reject srm", parent="b", service="srm", start=10, end=11, error="rejected",
             why="reject without requeue: message dropped or dead-lettered"),
    ]  # fmt: skip
    loss = loss_of(spans)
    assert loss is not None
    assert (loss.kind, loss.where, loss.span, loss.error_type, loss.exception) == (
        "service",
        "srm",
        "check stock",
        "app.UnknownSku",  # the bare class name of an older SDK's event, qualified by error.type
        "app.UnknownSku",
    )
    assert loss.reason == "unknown SKU 'X': not in stock"
    assert loss.facts == (("SKU", "X"),)
    assert (loss.dropped_by, loss.dropped_as, loss.dropped_why) == (
        "reject srm",
        "rejected",
        "reject without requeue: message dropped or dead-lettered",
    )
    fate = order_fate("13", spans, mes_processed)
    assert (fate.status, fate.service, fate.span, fate.error_type, fate.message) == (
        "lost",
        "srm",
        "check stock",
        "app.UnknownSku",
        "unknown SKU 'X': not in stock",
    )
    assert fate.loss == loss


def test_loss_reason_falls_back_to_the_exception_then_nothing() -> None:
    """Without a status description the exception's message is the reason; a bare ERROR span gives an empty one and no drop."""
    raised = span("a", "process file", failed=True,
                  exception={"exception.type": "pkg.CorruptFile", "exception.message": "bad checksum"})  # fmt: skip
    loss = loss_of([raised])
    assert loss is not None
    assert (loss.reason, loss.exception, loss.error_type, loss.dropped_by) == (
        "bad checksum",
        "pkg.CorruptFile",
        None,
        None,
    )
    unroutable = span("b", "publish shop", error="unroutable", why="returned by the broker: 312 NO_ROUTE",
                      attributes={"messaging.rabbitmq.destination.routing_key": "orders.apac"})  # fmt: skip
    loss = loss_of([unroutable])
    assert loss is not None
    assert (loss.reason, loss.exception, loss.facts) == (
        "returned by the broker: 312 NO_ROUTE",
        None,
        (("routing key", "orders.apac"),),
    )
    silent = loss_of([span("c", "process file", failed=True)])
    assert silent is not None
    assert (silent.reason, silent.error_type, silent.exception) == ("", None, None)
    assert loss_of([span("d", "process file")]) is None


def test_a_lost_order_whose_span_does_not_say_why_is_a_problem() -> None:
    """The flow check reports a lost order whose failing span has neither a description nor an exception message."""
    silent = [span("a", "publish shop", service="shop", order="7", op="send", error="unroutable")]
    fates = {"7": order_fate("7", silent, mes_processed)}
    assert flow_problems(silent, fates, {"7": ("lost", "shop", "unroutable")}) == [
        "order 7: lost in publish shop, whose span does not say why"
    ]
    said = [
        span("a", "publish shop", service="shop", order="7", op="send", error="unroutable",
             why="returned by the broker: 312 NO_ROUTE"),
    ]  # fmt: skip
    fates = {"7": order_fate("7", said, mes_processed)}
    assert flow_problems(said, fates, {"7": ("lost", "shop", "unroutable")}) == []


def test_hops_pair_each_consumer_with_its_publish() -> None:
    """Each process span is paired with the publish span it is a child of and/or links to."""
    parent_hops = hops(parent_mode_order())
    assert [(h.publish.span_id, h.consume.span_id, h.parent, h.link) for h in parent_hops] == [
        ("b", "c", True, True),
        ("e", "f", True, True),
    ]
    assert all(h.same_trace for h in parent_hops)
    link_hops = hops(link_mode_order())
    assert [(h.publish.span_id, h.consume.span_id, h.parent, h.link) for h in link_hops] == [
        ("a", "b", False, True),
        ("c", "d", False, True),
    ]
    assert not any(h.same_trace for h in link_hops)


def test_duplicates_and_publish_counts() -> None:
    """A span id exported twice is reported; publish spans are counted per service."""
    spans = parent_mode_order()
    assert duplicate_span_ids(spans) == []
    assert duplicate_span_ids([*spans, spans[1]]) == ["b"]
    assert publishes_per_service(spans) == {"shop": 1, "srm": 1}


def test_waterfall_nests_children_and_linked_hops() -> None:
    """The waterfall is depth-first in start order; a linked hop hangs under the span it links to."""
    rows = waterfall(link_mode_order())
    assert [(r.span.span_id, r.depth, r.relation) for r in rows] == [
        ("a", 0, "root"),
        ("b", 1, "link"),
        ("c", 2, "child"),
        ("d", 3, "link"),
        ("e", 4, "child"),
    ]
    assert rows[3].offset_s == pytest.approx(0.008)
    assert rows[3].duration_s == pytest.approx(0.022)
    parent_rows = waterfall(parent_mode_order())
    assert [(r.span.span_id, r.depth, r.relation) for r in parent_rows] == [
        ("a", 0, "root"),
        ("b", 1, "child"),
        ("c", 2, "child+link"),
        ("d", 3, "child"),
        ("e", 3, "child"),
        ("f", 4, "child+link"),
    ]
    assert waterfall([]) == []


def hpoint(
    time_ns: int,
    counts: tuple[int, ...],
    *,
    cumulative: bool = True,
    instance: str = "1",
    **extra: Any,
) -> HistogramPoint:
    return HistogramPoint(
        service="mes",
        instance=instance,
        metric="messaging.process.duration",
        attributes={"messaging.destination.name": "jobs"},
        start_ns=0,
        time_ns=time_ns,
        count=sum(counts),
        sum=0.0,
        bounds=(0.05, 0.1, 0.25),
        bucket_counts=counts,
        cumulative=cumulative,
        **extra,
    )


def test_merge_takes_latest_cumulative_and_sums_deltas() -> None:
    """Cumulative series count once (latest point); delta points and separate instances add up."""
    points = [
        hpoint(2, (1, 2, 0, 0), min=0.03, max=0.09),
        hpoint(1, (1, 0, 0, 0)),
        hpoint(5, (0, 1, 1, 0), instance="2", min=0.07, max=0.2),
        hpoint(3, (1, 0, 0, 0), cumulative=False, instance="3"),
        hpoint(4, (0, 0, 0, 1), cumulative=False, instance="3", min=0.3, max=0.3),
    ]
    merged = merge_histograms(points, "messaging.process.duration", service="mes")
    assert merged == Histogram((0.05, 0.1, 0.25), (2, 3, 1, 1), 7, 0.0, 0.03, 0.3)
    assert merge_histograms(points, "messaging.process.duration", service="srm") is None
    assert (
        merge_histograms(
            points, "messaging.process.duration", where={"messaging.destination.name": "x"}
        )
        is None
    )


def test_counter_total_over_series() -> None:
    """A counter's total is the latest cumulative value of each series, summed."""
    points = [
        SumPoint("mes", "1", "sent", {}, 0, 1, 3, True),
        SumPoint("mes", "1", "sent", {}, 0, 2, 5, True),
        SumPoint("mes", "1", "sent", {"error.type": "x"}, 0, 2, 1, True),
        SumPoint("srm", "2", "sent", {}, 0, 2, 7, True),
    ]
    assert sum_total(points, "sent", service="mes") == 6
    assert sum_total(points, "sent") == 13
    assert sum_total(points, "sent", where={"error.type": "x"}) == 1


def test_percentile_interpolates_within_buckets() -> None:
    """p50/p95 come from linear interpolation in the bucket holding the rank, clamped to min/max."""
    hist = Histogram((0.05, 0.1, 0.25), (0, 10, 10, 0), 20, 0.0)
    assert percentile(hist, 0.5) == pytest.approx(0.1)
    assert percentile(hist, 0.25) == pytest.approx(0.075)
    assert percentile(hist, 0.95) == pytest.approx(0.1 + 0.15 * 0.9)
    clamped = Histogram((0.05, 0.1, 0.25), (0, 10, 10, 0), 20, 0.0, min=0.06, max=0.2)
    assert percentile(clamped, 1.0) == pytest.approx(0.2)
    assert percentile(clamped, 0.0) == pytest.approx(0.06)
    overflow = Histogram((0.05,), (0, 4), 4, 0.0, min=0.5, max=1.5)
    assert percentile(overflow, 0.5) == pytest.approx(0.05 + (1.5 - 0.05) * 0.5)
    assert math.isnan(percentile(Histogram((0.05,), (0, 0), 0, 0.0), 0.5))
    with pytest.raises(ValueError):
        percentile(hist, 1.5)


def test_exact_percentile() -> None:
    """The exact percentile interpolates between closest ranks."""
    assert exact_percentile([4.0, 1.0, 3.0, 2.0], 0.5) == pytest.approx(2.5)
    assert exact_percentile([1.0], 0.95) == 1.0
    assert math.isnan(exact_percentile([], 0.5))


def test_plan_loses_four_orders_in_four_places() -> None:
    """The plan loses one order at each service and one at the broker, each with its designed error type, and completes the rest."""
    orders = plan_orders(20)
    assert [o.order_id for o in orders] == list(range(1, 21))
    lost = {
        o.order_id: (o.expected.service, o.expected.error_type)
        for o in orders
        if o.expected.status == LOST
    }
    assert lost == {
        7: ("shop-api", "unroutable"),
        13: ("srm-api", "examples.order_flow.domain.UnknownSku"),
        17: ("mes", "examples.order_flow.domain.CorruptFile"),
        19: ("broker", "dead_letter:expired"),
    }
    assert [o.order_id for o in orders if o.ttl_ms] == [19]  # the express order
    assert orders[17].quantity >= 500  # 18, the slow bulk order just before it
    assert sum(o.expected.status == COMPLETED for o in orders) == 16
    assert len({o.work_ms for o in orders}) > 10  # processing times vary
    assert lost_order_ids(5) == (3, 2, 4, 5)
    with pytest.raises(ValueError):
        plan_orders(4)
