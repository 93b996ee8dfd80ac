"""Render one run with ``rich``: orders, why the lost ones were lost, two waterfalls, MES timings.

Only presentation here; every number and every reason comes from :mod:`.analysis`. Written for a
support engineer at an 80-column terminal or reading a file the report was piped to: every table
cell fits or moves to a detail line, nothing is cut short, no word is split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Final

from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from examples.order_flow.analysis import (
    Fate,
    Loss,
    SpanRecord,
    WaterfallRow,
    exact_percentile,
    group_orders,
    hops,
    merge_histograms,
    percentile,
    sum_total,
    waterfall,
)
from examples.order_flow.domain import MES, SERVICES
from examples.order_flow.runner import FlowResult

__all__ = ["choose_examples", "losses", "orders_table", "render", "self_check", "short"]

SERVICE_STYLES: Final = {
    "shop-api": "cyan",
    "srm-api": "magenta",
    "mes": "yellow",
    "watcher": "blue",
    "broker": "red",
}
PROCESS_DURATION: Final = "messaging.process.duration"


def _service(name: str | None) -> Text:
    if name is None:
        return Text("-", style="dim")
    return Text(name, style=SERVICE_STYLES.get(name, "white"))


def short(name: str, result: FlowResult) -> str:
    """A span name without the run's unique prefix (``order-flow.<run>.``), for reading."""
    return name.replace(result.name_prefix, "") if result.name_prefix else name


def short_error(error_type: str | None) -> str:
    """An error type to fit a table cell: an exception's class name without its module, a dead
    letter's reason (``dead_letter:expired`` -> ``expired``; the span name says where)."""
    return (error_type or "error").rsplit(".", 1)[-1].removeprefix("dead_letter:")


def orders_table(result: FlowResult, fates: Mapping[str, Fate]) -> Table:
    """One row per order: its fate, the service and span that decided it, the error in short.

    Every cell is short enough for 80 columns; what does not fit (the exception's qualified name,
    the reason) is in :func:`losses`.
    """
    orders = group_orders(result.spans)
    table = Table(
        title="Orders", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False
    )
    table.add_column("order", justify="right", no_wrap=True)
    table.add_column("fate", no_wrap=True)
    table.add_column("where", no_wrap=True)
    # the only column that may wrap: a span name is "operation destination"
    table.add_column("span", overflow="fold")
    table.add_column("error", no_wrap=True)
    table.add_column("spans/traces", justify="right", no_wrap=True)
    for order in result.plan:
        oid = str(order.order_id)
        fate = fates[oid]
        spans = orders.get(oid, [])
        span = Text(short(fate.span or "-", result), style="dim")
        error = Text("")
        if fate.status == "completed":
            status = Text("completed", style="green")
        elif fate.status == "lost":
            status = Text("LOST", style="bold red")
            span.style = "red"
            error = Text(short_error(fate.error_type), style="red")
        else:
            status = Text("in flight", style="yellow")
        table.add_row(
            oid,
            status,
            _service(fate.service),
            span,
            error,
            f"{len(spans)}/{len({s.trace_id for s in spans})}",
        )
    return table


def _as_designed(result: FlowResult, fates: Mapping[str, Fate]) -> list[str]:
    """The orders that did not end where the scenario puts them."""
    off = []
    for order in result.plan:
        fate, expected = fates[str(order.order_id)], order.expected
        if fate.status != expected.status or (
            fate.status == "lost"
            and (fate.service, fate.error_type) != (expected.service, expected.error_type)
        ):
            off.append(str(order.order_id))
    return off


def self_check(result: FlowResult, fates: Mapping[str, Fate], problems: Sequence[str]) -> Text:
    """One line: did every order end where the scenario says (the demo checking itself)."""
    off = _as_designed(result, fates)
    if off:
        return Text(
            f"✗ self-check: order(s) {', '.join(off)} did not end where the scenario says "
            "(problems at the end)",
            style="bold red",
        )
    if problems:
        return Text(
            f"✗ self-check: every order ended where the scenario says, but {len(problems)} "
            "other problem(s) (at the end)",
            style="bold red",
        )
    return Text(
        f"✓ self-check: all {len(result.plan)} orders ended where the scenario says",
        style="green",
    )


def _loss_details(loss: Loss, result: FlowResult) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")  # words wrap; only a word wider than the line would fold
    if loss.exception:
        grid.add_row("exception", Text(loss.exception, style="red"))
    else:
        grid.add_row("error.type", Text(loss.error_type or "-", style="red"))
    reason = short(loss.reason, result)  # a broker loss names the queue: without the run prefix
    grid.add_row("reason", Text(reason or "(the span does not say)", style="bold"))
    for label, value in loss.facts:
        if value not in loss.reason:  # say each fact once
            grid.add_row(label, short(value, result))
    if loss.dropped_by:
        then = f"{short(loss.dropped_by, result)} ({loss.dropped_as or 'error'})"
        grid.add_row("then", f"{then}: {loss.dropped_why}" if loss.dropped_why else then)
    return grid


def losses(result: FlowResult, fates: Mapping[str, Fate]) -> Group | None:
    """Where and why each lost order was lost: the reason its failing span records, in full."""
    parts: list[RenderableType] = [Text("Why the lost orders were lost", style="italic")]
    for oid, fate in fates.items():
        if fate.loss is None:
            continue
        loss = fate.loss
        title = Text(f"Order {oid}", style="bold")
        title.append(" lost at ")
        title.append_text(_service(loss.where))
        title.append(f", in {short(loss.span, result)}")
        parts.extend(
            (Text(""), title, Padding(_loss_details(loss, result), (0, 0, 0, 2), expand=False))
        )
    return Group(*parts) if len(parts) > 1 else None


def choose_examples(result: FlowResult, fates: Mapping[str, Fate]) -> list[str]:
    """One completed order and one lost order to draw (order 17 if it was lost)."""
    completed = [oid for oid, f in fates.items() if f.status == "completed"]
    lost = [oid for oid, f in fates.items() if f.status == "lost"]
    picks = completed[:1]
    if lost:
        picks.append("17" if "17" in lost else lost[-1])
    return picks


def _bar(offset: float, duration: float, total: float, style: str, width: int) -> Text:
    total = total or 1e-9
    start = min(width - 1, int(offset / total * width))
    length = max(1, min(width - start, round(duration / total * width)))
    bar = Text(" " * start)
    bar.append("█" * length, style=style)
    bar.append(" " * (width - start - length))
    return bar


MARKERS: Final = {
    "child+link": ("↳ ", "↳ a consumer span under its publish, and linked to it"),
    "link": ("⇢ ", "⇢ a consumer span in its own trace, linked to its publish"),
}
ERROR_MARK: Final = " ✗"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def waterfall_table(
    order_id: str,
    spans: Sequence[SpanRecord],
    fate: Fate,
    result: FlowResult,
    console: Console,
) -> Table:
    """The order's spans as a tree with a time bar each, as wide as ``console`` allows.

    The bar gets what the other columns leave (at most 60 cells). ERROR spans are marked ``✗``
    (colour does not survive a pipe); why they failed is in :func:`losses`.
    """
    rows = waterfall(spans)
    total = max((r.offset_s + r.duration_s for r in rows), default=0.0)
    timeline = f"0 to {total * 1000:.0f} ms"
    table = _waterfall(order_id, spans, fate, result, rows, total, len(timeline))
    spare = console.width - console.measure(table).maximum
    if spare > 0:
        bar_width = min(60, len(timeline) + spare)
        table = _waterfall(order_id, spans, fate, result, rows, total, bar_width)
    return table


def _waterfall(
    order_id: str,
    spans: Sequence[SpanRecord],
    fate: Fate,
    result: FlowResult,
    rows: Sequence[WaterfallRow],
    total: float,
    bar_width: int,
) -> Table:
    if fate.status == "lost":
        verdict = (
            f"lost at {fate.service}, in {short(fate.span or '-', result)} "
            f"({short_error(fate.error_type)})"
        )
    else:
        verdict = fate.status
    traces = len({s.trace_id for s in spans})
    relations = {r.relation for r in rows}
    legend = [text for key, (_mark, text) in MARKERS.items() if key in relations]
    if any(r.span.status == "ERROR" for r in rows):
        legend.append("✗ an ERROR span")
    table = Table(
        title=f"Order {order_id}: {verdict}, {traces} trace{'s' if traces != 1 else ''}",
        title_justify="left",
        caption="\n".join(legend) or None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    table.add_column("span", no_wrap=True)
    table.add_column("service", no_wrap=True)
    table.add_column("start", justify="right", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column(f"0 to {total * 1000:.0f} ms", no_wrap=True)
    for row in rows:
        span = row.span
        failed = span.status == "ERROR"
        label = Text("  " * row.depth + MARKERS.get(row.relation, ("", ""))[0])
        label.append(short(span.name, result), style="bold red" if failed else "")
        if failed:
            label.append(ERROR_MARK, style="bold red")
        style = "red" if failed else SERVICE_STYLES.get(span.service, "white")
        table.add_row(
            label,
            _service(span.service),
            _ms(row.offset_s),
            _ms(row.duration_s),
            _bar(row.offset_s, row.duration_s, total, style, bar_width),
        )
    return table


def _relations(result: FlowResult) -> str:
    all_hops = hops(result.spans)
    counts = Counter(
        ("parent+link" if h.parent and h.link else "parent" if h.parent else "link")
        for h in all_hops
    )
    cross_trace = sum(not h.same_trace for h in all_hops)
    parts = [f"{n} {kind}" for kind, n in sorted(counts.items())]
    return f"{len(all_hops)} hops ({', '.join(parts) or 'none'}; {cross_trace} across traces)"


def metrics_table(result: FlowResult, fates: Mapping[str, Fate]) -> Table:
    table = Table(
        title="MES file processing and message counts",
        title_justify="left",
        show_header=False,
        box=box.SIMPLE,
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    histogram = merge_histograms(result.histograms, PROCESS_DURATION, service=MES)
    mes_spans = [
        s.duration_s
        for s in result.spans
        if s.service == MES and s.operation_type == "process" and s.status != "ERROR"
    ]
    if histogram is None or histogram.count == 0:
        table.add_row(PROCESS_DURATION, Text("no data points received", style="red"))
    else:
        table.add_row("p50 (from the histogram)", f"{percentile(histogram, 0.5) * 1000:.0f} ms")
        table.add_row("p95 (from the histogram)", f"{percentile(histogram, 0.95) * 1000:.0f} ms")
        table.add_row("messages in the histogram", str(histogram.count))
    if mes_spans:
        table.add_row(
            Text("p50 / p95 from the spans, for comparison", style="dim"),
            Text(
                f"{exact_percentile(mes_spans, 0.5) * 1000:.0f} / "
                f"{exact_percentile(mes_spans, 0.95) * 1000:.0f} ms",
                style="dim",
            ),
        )
    completed = sum(f.status == "completed" for f in fates.values())
    table.add_row("completed orders", Text(str(completed), style="bold green"))
    for service in SERVICES:
        sent = sum_total(result.sums, "messaging.client.sent.messages", service=service)
        consumed = sum_total(result.sums, "messaging.client.consumed.messages", service=service)
        table.add_row(
            Text(f"{service}: sent / consumed messages", style="dim"),
            Text(f"{sent:.0f} / {consumed:.0f}", style="dim"),
        )
    return table


def _header(result: FlowResult, fates: Mapping[str, Fate], broker: str) -> Panel:
    lost = sum(f.status == "lost" for f in fates.values())
    completed = sum(f.status == "completed" for f in fates.values())
    header = Text()
    header.append(f"run {result.run_id}", style="bold")
    header.append(f"   consumer_context={result.consumer_context}")
    if broker:
        header.append(f"\nbroker {broker}")
    if result.name_prefix:
        header.append(f"\nexchanges and queues: {result.name_prefix}*  (prefix left out below)")
    header.append(
        f"\n{len(result.plan)} orders: {completed} completed, {lost} lost, "
        f"{len(result.plan) - completed - lost} unaccounted"
    )
    header.append(
        f"\n{len(result.spans)} spans received in {result.elapsed_s:.1f} s; {_relations(result)}"
    )
    return Panel(header, title="order flow: shop-api → srm-api → mes", expand=False)


def _jaeger_hint(result: FlowResult, fates: Mapping[str, Fate]) -> Panel:
    lost_ids = [oid for oid, f in fates.items() if f.status == "lost"]
    example = "17" if "17" in lost_ids else (lost_ids[0] if lost_ids else "1")
    hint = Text.assemble(
        f"The services also exported to {result.extra_endpoint}. In Jaeger: Search → Service ",
        ("mes", "bold"),
        " → Tags ",
        (f"order.id={example}", "bold"),
        " → Find Traces.\nAdd ",
        ("error=true", "bold"),
        # Jaeger shows an OTLP status description as this tag and span events as the span's logs
        # (jaeger's OTLP-to-Jaeger translator, getTagFromStatusMsg)
        " for the spans that failed: the reason is their ",
        ("otel.status_description", "bold"),
        " tag, the exception is in their logs. Add ",
        (f"order_flow.run_id={result.run_id}", "bold"),
        " for this run only. A tag search is per service: repeat it for srm-api and shop-api, or follow the span links (references) from hop to hop.",
    )
    return Panel(hint, title=f"where did order {example} stop?", expand=False)


def render(result: FlowResult, console: Console | None = None, *, broker: str = "") -> list[str]:
    """Print the report; returns the problems found (empty when the flow behaved as designed).

    Laid out for 80 columns and wider: no cell is cut short and no word is split; what does not
    fit a table cell is printed in full on a line of its own.
    """
    console = console or Console()
    fates = result.fates()
    problems = result.problems()
    console.print(_header(result, fates, broker))
    console.print(orders_table(result, fates))
    console.print(self_check(result, fates, problems))
    why = losses(result, fates)
    if why is not None:
        console.print()
        console.print(why)
    orders = group_orders(result.spans)
    for order_id in choose_examples(result, fates):
        console.print()
        spans = orders.get(order_id, [])
        console.print(waterfall_table(order_id, spans, fates[order_id], result, console))
    console.print()
    console.print(metrics_table(result, fates))
    if result.extra_endpoint:
        console.print(_jaeger_hint(result, fates))
    if problems:
        console.print()
        console.print(Text("The flow did NOT behave as designed:", style="bold red"))
        for problem in problems:
            console.print(Text(f"  • {problem}", style="red"))
    return problems
