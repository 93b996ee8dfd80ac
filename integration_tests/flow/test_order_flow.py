"""The order flow as real processes (three services and the dead-letter watcher) against the real
broker, judged by the OTLP data they exported.

Each mode runs the flow once (module-scoped fixture, ~10-20 s) and the tests below look at that
run from different sides: the spans, why the lost orders were lost, and the report a support
engineer reads. The exchanges and queues get unique names (``broker_harness.unique_name``, what
the ``unique`` fixture uses), so runs never collide on a shared broker.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from rich.cells import cell_len
from rich.console import Console

from broker_harness import Broker, unique_name
from examples.order_flow.analysis import (
    SpanRecord,
    duplicate_span_ids,
    exact_percentile,
    group_orders,
    hops,
    merge_histograms,
    percentile,
    publishes_per_service,
    sum_total,
    waterfall,
)
from examples.order_flow.domain import (
    BROKER,
    CHECKSUM_ACTUAL_KEY,
    CHECKSUM_EXPECTED_KEY,
    COMPLETED,
    LOST,
    MES,
    SHOP,
    SKU_KEY,
    SRM,
    WATCHER,
    Order,
)
from examples.order_flow.receiver import Receiver
from examples.order_flow.report import choose_examples, render, short, short_error
from examples.order_flow.runner import FlowResult, run_flow
from examples.order_flow.topology import Topology

ORDERS = 20


def _explain(result: FlowResult) -> str:
    logs = "\n".join(f"--- {name} ---\n{log[-4000:]}" for name, log in result.logs.items())
    return f"problems: {result.problems()}\nexit codes: {result.exit_codes}\n{logs}"


@dataclass
class Run:
    result: FlowResult
    mirrored: list[SpanRecord]  # what the services also sent to OTEL_EXPORTER_OTLP_ENDPOINT


@pytest.fixture(scope="module", params=["parent", "link"])
def run(request: pytest.FixtureRequest, rabbitmq: Broker) -> Iterator[Run]:
    mode = request.param
    prefix = f"{unique_name(f'flow-{mode}')}."
    topology = Topology.named(lambda role: f"{prefix}{role}")
    # a second receiver stands in for a real Jaeger or collector
    with Receiver() as backend, pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", backend.endpoint)
        result = run_flow(
            rabbitmq.url,
            orders=ORDERS,
            consumer_context=mode,
            topology=topology,
            name_prefix=prefix,
            timeout=180,
        )
        yield Run(result, backend.spans())


@pytest.fixture
def flow(run: Run) -> FlowResult:
    return run.result


def _orders_by_status(result: FlowResult, status: str) -> list[str]:
    return [str(o.order_id) for o in result.plan if o.expected.status == status]


def _messaging(spans: list[SpanRecord]) -> list[SpanRecord]:
    return [s for s in spans if "messaging.system" in s.attributes]


def test_flow_behaves_as_designed(flow: FlowResult) -> None:
    """Every order is completed or lost where the plan loses it, and every service exits cleanly."""
    assert flow.exit_codes == {SHOP: 0, SRM: 0, MES: 0, WATCHER: 0}, _explain(flow)
    assert not flow.timed_out, _explain(flow)
    assert flow.problems() == [], _explain(flow)
    statuses = Counter(f.status for f in flow.fates().values())
    assert statuses == {"completed": ORDERS - 4, "lost": 4}


def test_completed_order_spans_in_order(flow: FlowResult) -> None:
    """A completed order shows the request, both hops and both handlers' spans, in causal order."""
    t = flow.topology
    order = group_orders(flow.spans)[_orders_by_status(flow, COMPLETED)[0]]
    assert [(s.service, s.name, s.kind, s.status) for s in order] == [
        (SHOP, "POST /orders", "SERVER", "UNSET"),
        (SHOP, f"publish {t.shop_exchange}", "PRODUCER", "UNSET"),
        (SRM, f"process {t.srm_queue}", "CONSUMER", "UNSET"),
        (SRM, "check stock", "INTERNAL", "UNSET"),
        (SRM, f"publish {t.production_exchange}", "PRODUCER", "UNSET"),
        (MES, f"process {t.mes_queue}", "CONSUMER", "UNSET"),
        (MES, "process file", "INTERNAL", "UNSET"),
    ]


def test_completed_orders_form_one_chain(flow: FlowResult) -> None:
    """Each completed order is one chain shop -> srm -> mes: parent+link in one trace, or linked traces in link mode."""
    orders = group_orders(flow.spans)
    completed = _orders_by_status(flow, COMPLETED)
    assert completed
    for order_id in completed:
        spans = orders[order_id]
        chain = hops(spans)
        assert [(h.publish.service, h.consume.service) for h in chain] == [
            (SHOP, SRM),
            (SRM, MES),
        ], order_id
        first, second = chain
        # the job was published from inside the order's handler, under its process span
        assert second.publish.parent_span_id == first.consume.span_id
        if flow.consumer_context == "parent":
            assert all(h.parent and h.link and h.same_trace for h in chain), order_id
            assert len({s.trace_id for s in spans}) == 1, order_id
        else:
            assert all(h.link and not h.parent and not h.same_trace for h in chain), order_id
            assert len({s.trace_id for s in spans}) == 3, order_id
        # the handlers' own spans join the hop's trace under its process span
        by_name = {s.name: s for s in spans}
        assert by_name["check stock"].parent_span_id == first.consume.span_id
        assert by_name["process file"].parent_span_id == second.consume.span_id
        assert {s.order_id for s in _messaging(spans)} == {order_id}


def test_consumer_span_attributes(flow: FlowResult) -> None:
    """The MES process span carries the SPEC attributes and the order id from baggage."""
    t = flow.topology
    order_id = _orders_by_status(flow, COMPLETED)[0]
    process = next(
        s for s in group_orders(flow.spans)[order_id] if s.name == f"process {t.mes_queue}"
    )
    assert isinstance(process.attributes.get("messaging.rabbitmq.message.delivery_tag"), int)
    assert isinstance(process.attributes.get("messaging.message.body.size"), int)
    assert isinstance(process.attributes.get("server.port"), int)
    assert dict(process.attributes) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": f"{t.production_exchange}:{t.job_key}:{t.mes_queue}",
        "messaging.rabbitmq.destination.routing_key": t.job_key,
        "messaging.rabbitmq.message.delivery_tag": process.attributes[
            "messaging.rabbitmq.message.delivery_tag"
        ],
        "messaging.message.id": f"job-{order_id}",
        "messaging.message.body.size": process.attributes["messaging.message.body.size"],
        "server.address": process.attributes["server.address"],
        "server.port": process.attributes["server.port"],
        "order.id": order_id,
    }


def test_lost_orders_end_in_error_where_they_were_lost(flow: FlowResult) -> None:
    """Each lost order ends in an ERROR span with the designed error.type at the service that lost it."""
    orders = group_orders(flow.spans)
    t = flow.topology
    lost = {str(o.order_id): o.expected for o in flow.plan if o.expected.status == LOST}
    assert {e.service for e in lost.values()} == {SHOP, SRM, MES, BROKER}
    for order_id, expected in lost.items():
        spans = orders[order_id]
        errors = [(s.service, s.name, s.error_type) for s in spans if s.status == "ERROR"]
        if expected.service == SHOP:
            assert errors == [(SHOP, f"publish {t.shop_exchange}", "unroutable")]
            assert {s.service for s in spans} == {SHOP}  # it never reached a queue
        elif expected.service == BROKER:
            # expired in srm-api's queue: the watcher consumed the dead letter, in its trace
            assert errors == [(WATCHER, f"expired {t.srm_queue}", "dead_letter:expired")]
            assert {s.service for s in spans} == {SHOP, WATCHER}
            (dead,) = [s for s in spans if s.name == f"process {t.dead_queue}"]
            (publish,) = [s for s in spans if s.name == f"publish {t.shop_exchange}"]
            assert dead.status == "UNSET"  # the watcher handled it well
            assert dead.attributes["rabbitmq.dead_letter.reason"] == "expired"
            assert dead.attributes["rabbitmq.dead_letter.queue"] == t.srm_queue
            assert dead.attributes["rabbitmq.dead_letter.original_expiration_ms"] == 1000
            assert [sid for _tid, sid in dead.links] == [publish.span_id]
            if flow.consumer_context == "parent":
                assert dead.parent_span_id == publish.span_id
                assert dead.trace_id == publish.trace_id
            else:
                assert dead.trace_id != publish.trace_id
        elif expected.service == SRM:
            # the handler raised (recorded by the instrumentation), then the loop rejected it
            assert (SRM, f"process {t.srm_queue}", expected.error_type) in errors
            assert (SRM, f"reject {t.srm_queue}", "rejected") in errors
            process = next(s for s in spans if s.name == f"process {t.srm_queue}")
            assert "exception" in process.event_names
            # the rejected message is dead-lettered: the watcher records that in the order too
            assert (WATCHER, f"rejected {t.srm_queue}", "dead_letter:rejected") in errors
            assert {s.service for s in spans} == {SHOP, SRM, WATCHER}
        else:
            # MES's own span says why (a corrupt file), then the reject drops the job
            assert errors == [
                (MES, "process file", expected.error_type),
                (MES, f"reject {t.mes_queue}", "rejected"),
                (WATCHER, f"rejected {t.mes_queue}", "dead_letter:rejected"),
            ]
        fate = flow.fates()[order_id]
        assert (fate.status, fate.service, fate.error_type) == (
            "lost",
            expected.service,
            expected.error_type,
        )


def test_nothing_exported_twice(flow: FlowResult) -> None:
    """No span id arrives twice, and there is exactly one publish span per publish call."""
    assert duplicate_span_ids(flow.spans) == []
    publishes = Counter(s.service for s in flow.spans if s.operation_type == "send")
    processed = Counter(s.service for s in flow.spans if s.operation_type == "process")
    # shop publishes every order; SRM gets all but the unroutable and the expired one and sends
    # a job for all but the unknown SKU; MES processes those jobs; the watcher the dead letters
    # (the expired order, and the two rejected ones)
    assert publishes == {SHOP: ORDERS, SRM: ORDERS - 3}
    assert processed == {SRM: ORDERS - 2, MES: ORDERS - 3, WATCHER: 3}  # 3 dead letters
    for order_id, spans in group_orders(flow.spans).items():
        assert set(publishes_per_service(spans).values()) <= {1}, order_id
    sent = {
        service: sum_total(flow.sums, "messaging.client.sent.messages", service=service)
        for service in (SHOP, SRM)
    }
    assert sent == {SHOP: ORDERS, SRM: ORDERS - 3}


def test_mes_processing_time_from_the_histogram(flow: FlowResult) -> None:
    """MES's messaging.process.duration histogram counts every job and its p50/p95 match the spans."""
    histogram = merge_histograms(flow.histograms, "messaging.process.duration", service=MES)
    assert histogram is not None
    durations = [
        s.duration_s for s in flow.spans if s.service == MES and s.operation_type == "process"
    ]
    assert histogram.count == len(durations) == ORDERS - 3
    assert histogram.sum == pytest.approx(sum(durations), rel=0.05)
    for q in (0.5, 0.95):
        estimate = percentile(histogram, q)
        assert min(durations) <= estimate <= max(durations)
        # bucket interpolation is coarse (semconv buckets: 25, 50, 75, 100, 250 ms ...)
        assert estimate == pytest.approx(exact_percentile(durations, q), abs=0.06)


def test_services_also_export_to_the_configured_endpoint(run: Run) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, every service also sends every span there."""
    assert run.result.extra_endpoint is not None
    assert sorted(s.span_id for s in run.mirrored) == sorted(s.span_id for s in run.result.spans)
    assert {s.service for s in run.mirrored} == {SHOP, SRM, MES, WATCHER}


def _lost(flow: FlowResult) -> dict[str, Order]:
    return {str(o.order_id): o for o in flow.plan if o.expected.status == LOST}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _failing_span(flow: FlowResult, order: Order) -> SpanRecord:
    """The span where each designed loss happens (see examples/order_flow/domain.py)."""
    name, service = {
        SHOP: (f"publish {flow.topology.shop_exchange}", SHOP),
        SRM: ("check stock", SRM),
        MES: ("process file", MES),
        BROKER: (f"expired {flow.topology.srm_queue}", WATCHER),  # the dead letter, recorded
    }[order.expected.service]
    spans = group_orders(flow.spans)[str(order.order_id)]
    return next(s for s in spans if s.name == name and s.service == service)


def test_lost_orders_say_why_on_the_span_that_failed(flow: FlowResult) -> None:
    """The span where each order dies carries the reason as ERROR status description, exception event and attributes."""
    for order in _lost(flow).values():
        span = _failing_span(flow, order)
        assert span.status == "ERROR", span
        if order.expected.service == SHOP:
            # the broker's answer, and the routing key no queue is bound to
            assert span.status_message == "returned by the broker: 312 NO_ROUTE"
            assert span.attributes["messaging.rabbitmq.destination.routing_key"] == "orders.apac"
            continue
        if order.expected.service == BROKER:
            queue = flow.topology.srm_queue
            assert span.status_message.startswith(
                f"dead-lettered by the broker: expired in {queue}"
            )
            assert span.error_type == "dead_letter:expired"
            assert span.attributes["rabbitmq.dead_letter.queue"] == queue
            continue
        assert span.error_type == order.expected.error_type
        assert span.exception is not None, span.events
        assert str(span.exception["exception.type"]).endswith(
            str(order.expected.error_type).rsplit(".", 1)[-1]
        )
        if order.expected.service == SRM:
            assert span.attributes[SKU_KEY] == order.sku == "SKU-404"
            assert span.status_message == "unknown SKU 'SKU-404': not in srm-api's stock list"
            assert "unknown SKU 'SKU-404'" in str(span.exception["exception.message"])
        else:
            expected, actual = order.checksum, _sha256(order.file)  # the file was truncated
            assert expected != actual
            assert (
                span.attributes[CHECKSUM_EXPECTED_KEY],
                span.attributes[CHECKSUM_ACTUAL_KEY],
            ) == (
                expected,
                actual,
            )
            assert span.status_message == (
                f"file checksum mismatch: expected sha256 {expected[:12]}, got {actual[:12]}"
            )
            message = str(span.exception["exception.message"])
            assert expected in message
            assert actual in message


def test_each_lost_order_has_its_reason_in_the_analysis(flow: FlowResult) -> None:
    """The analysis reads where, why and what followed off the exported spans, for each kind of loss."""
    fates = flow.fates()
    t = flow.topology
    for order_id, order in _lost(flow).items():
        loss = fates[order_id].loss
        assert loss is not None, fates[order_id]
        span = _failing_span(flow, order)
        if order.expected.service == BROKER:
            assert (loss.kind, loss.where, loss.span, loss.error_type) == (
                "broker",
                BROKER,
                span.name,
                "dead_letter:expired",
            )
            assert loss.reason == f"expired in {t.srm_queue} after 1.0 s (its per-message TTL)"
            assert loss.facts == (("queue", t.srm_queue), ("recorded by", WATCHER))
            continue
        assert (loss.kind, loss.where, loss.span, loss.reason) == (
            "service",
            order.expected.service,
            span.name,
            span.status_message,
        )
        if order.expected.service == SHOP:
            assert (loss.exception, loss.dropped_by) == (None, None)
            assert loss.facts == (("routing key", "orders.apac"),)
        elif order.expected.service == SRM:
            assert loss.exception == order.expected.error_type
            assert loss.facts == (("SKU", "SKU-404"),)
            assert (loss.dropped_by, loss.dropped_as) == (f"reject {t.srm_queue}", "rejected")
        else:
            assert loss.exception == order.expected.error_type
            assert loss.facts == (("expected", order.checksum), ("actual", _sha256(order.file)))
            assert (loss.dropped_by, loss.dropped_as) == (f"reject {t.mes_queue}", "rejected")


def test_the_configured_endpoint_gets_the_reasons_too(run: Run) -> None:
    """What Jaeger would get has the same ERROR spans with the same descriptions, attributes and events."""

    def failures(spans: list[SpanRecord]) -> dict[str, tuple[object, ...]]:
        return {
            s.span_id: (s.name, s.status_message, dict(s.attributes), s.events)
            for s in spans
            if s.status == "ERROR"
        }

    received = failures(run.result.spans)
    # 7: publish; 13: check stock, process, reject, its dead letter; 17: file, reject, its dead
    # letter; 19: expired (its dead letter)
    assert len(received) == 9
    assert failures(run.mirrored) == received


def _render(flow: FlowResult, width: int) -> list[str]:
    out = io.StringIO()
    # what `nox -s demo > out.txt` gets: no terminal, no colour, a fixed width
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    render(flow, console, broker="amqp://guest:***@127.0.0.1:5672/ (local)")
    return [line.rstrip() for line in out.getvalue().splitlines()]


def _one_line(lines: list[str], pattern: str) -> str:
    found = [line for line in lines if re.fullmatch(pattern, line)]
    assert len(found) == 1, (pattern, "\n".join(lines))
    return found[0]


@pytest.mark.parametrize("width", [80, 120])
def test_report_fits_the_terminal_without_cutting_or_splitting_words(
    flow: FlowResult, width: int
) -> None:
    """At 80 columns (piped to a file) and wider, every table row stays on one line and every name, reason and checksum is printed whole."""
    lines = _render(flow, width)
    text = "\n".join(lines)
    assert max(cell_len(line) for line in lines) <= width, text
    assert "…" not in text, text  # rich's mark for a cell it cut short
    fates = flow.fates()
    # the orders table: one line per order, the exception's class name, no self-check column
    _one_line(lines, r"\s*order\s+fate\s+where\s+span\s+error\s+spans/traces")
    orders = group_orders(flow.spans)
    for order in flow.plan:
        oid = str(order.order_id)
        fate, spans = fates[oid], orders[oid]
        status = "LOST" if fate.status == LOST else fate.status
        error = short_error(fate.error_type) if fate.error_type else ""
        _one_line(
            lines,
            rf"\s*{oid}\s+{status}\s+{fate.service}\s+{re.escape(short(fate.span or '', flow))}"
            rf"\s+{re.escape(error)}\s*{len(spans)}/{len({s.trace_id for s in spans})}",
        )
    _one_line(lines, rf"✓ self-check: all {ORDERS} orders ended where the scenario says")
    # why each lost order was lost: the full exception name, the reason, the facts
    flat = " ".join(text.split())
    for oid in _lost(flow):
        loss = fates[oid].loss
        assert loss is not None
        _one_line(
            lines, rf"Order {oid} lost at {loss.where}, in {re.escape(short(loss.span, flow))}"
        )
        if loss.exception:
            _one_line(lines, rf"\s+exception\s+{re.escape(loss.exception)}")
        assert f"reason {short(loss.reason, flow)} " in flat
        for label, value in loss.facts:
            if value not in loss.reason:
                _one_line(lines, rf"\s+{re.escape(label)}\s+{re.escape(short(value, flow))}")
    # the waterfalls: every span on one line, with its service, start and duration (two example
    # orders can have a span that reads the same, to the tenth of a millisecond: one line each)
    rows = Counter(
        rf"\s+(?:[↳⇢] )?{re.escape(short(row.span.name, flow) + mark)}\s+{row.span.service}"
        rf"\s+{row.offset_s * 1000:.1f} ms\s+{row.duration_s * 1000:.1f} ms\s+█+\s*"
        for order_id in choose_examples(flow, fates)
        for row in waterfall(orders[order_id])
        for mark in [" ✗" if row.span.status == "ERROR" else ""]
    )
    for pattern, count in rows.items():
        found = [line for line in lines if re.fullmatch(pattern, line)]
        assert len(found) == count, (pattern, count, text)
