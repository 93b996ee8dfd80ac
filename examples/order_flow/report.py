"""Render one run with ``rich``: orders, two waterfalls, MES processing time, the verdict.

Only presentation here; every number comes from :mod:`.analysis`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Final

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from examples.order_flow.analysis import (
    Fate,
    SpanRecord,
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

__all__ = ["choose_examples", "render"]

SERVICE_STYLES: Final = {"shop-api": "cyan", "srm-api": "magenta", "mes": "yellow"}
PROCESS_DURATION: Final = "messaging.process.duration"


def _service(name: str | None) -> Text:
    if name is None:
        return Text("-", style="dim")
    return Text(name, style=SERVICE_STYLES.get(name, "white"))


def orders_table(result: FlowResult, fates: Mapping[str, Fate]) -> Table:
    orders = group_orders(result.spans)
    table = Table(title="Orders", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("order", justify="right")
    table.add_column("fate")
    table.add_column("where")
    table.add_column("error.type / last span", overflow="fold")
    table.add_column("spans/traces", justify="right")
    table.add_column("as designed", justify="center")
    for order in result.plan:
        oid = str(order.order_id)
        fate = fates[oid]
        spans = orders.get(oid, [])
        if fate.status == "completed":
            status = Text("completed", style="green")
            detail = Text(short(fate.span or "", result), style="dim")
        elif fate.status == "lost":
            status = Text("LOST", style="bold red")
            detail = Text(fate.error_type or "error", style="red")
        else:
            status = Text("in flight", style="yellow")
            detail = Text(f"last seen: {short(fate.span or '-', result)}", style="dim")
        expected = order.expected
        designed = fate.status == expected.status and (
            fate.status != "lost"
            or (fate.service, fate.error_type) == (expected.service, expected.error_type)
        )
        table.add_row(
            oid,
            status,
            _service(fate.service),
            detail,
            f"{len(spans)}/{len({s.trace_id for s in spans})}",
            Text("✓", style="green") if designed else Text("✗", style="bold red"),
        )
    return table


def choose_examples(result: FlowResult, fates: Mapping[str, Fate]) -> list[str]:
    """One completed order and one lost order to draw (order 17 if it was lost)."""
    completed = [oid for oid, f in fates.items() if f.status == "completed"]
    lost = [oid for oid, f in fates.items() if f.status == "lost"]
    picks = completed[:1]
    if lost:
        picks.append("17" if "17" in lost else lost[-1])
    return picks


def short(name: str, result: FlowResult) -> str:
    """A span name without the run's unique prefix (``order-flow.<run>.``), for reading."""
    return name.replace(result.name_prefix, "") if result.name_prefix else name


def _bar(offset: float, duration: float, total: float, style: str, width: int) -> Text:
    total = total or 1e-9
    start = min(width - 1, int(offset / total * width))
    length = max(1, min(width - start, round(duration / total * width)))
    bar = Text(" " * start)
    bar.append("█" * length, style=style)
    bar.append(" " * (width - start - length))
    return bar


def waterfall_table(
    order_id: str, spans: Sequence[SpanRecord], fate: Fate, result: FlowResult, width: int
) -> Table:
    rows = waterfall(spans)
    total = max((r.offset_s + r.duration_s for r in rows), default=0.0)
    verdict = f"lost at {fate.service}: {fate.error_type}" if fate.status == "lost" else fate.status
    table = Table(
        title=f"Order {order_id}: {verdict}  ({len({s.trace_id for s in spans})} trace(s))",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    table.add_column("span", no_wrap=True)
    table.add_column("service", no_wrap=True)
    table.add_column("start", justify="right", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column(f"0 … {total * 1000:.0f} ms", no_wrap=True)
    for row in rows:
        span = row.span
        marker = {"link": "⇢ ", "child+link": "↳ "}.get(row.relation, "")
        label = Text("  " * row.depth + marker)
        label.append(short(span.name, result), style="bold red" if span.status == "ERROR" else "")
        if span.error_type:
            label.append(f"  {span.error_type.rsplit('.', 1)[-1]}", style="red")
        style = "red" if span.status == "ERROR" else SERVICE_STYLES.get(span.service, "white")
        table.add_row(
            label,
            _service(span.service),
            f"{row.offset_s * 1000:.1f} ms",
            f"{row.duration_s * 1000:.1f} ms",
            _bar(row.offset_s, row.duration_s, total, style, width),
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


def render(result: FlowResult, console: Console | None = None, *, broker: str = "") -> list[str]:
    """Print the report; returns the problems found (empty when the flow behaved as designed)."""
    console = console or Console()
    fates = result.fates()
    problems = result.problems()
    lost = sum(f.status == "lost" for f in fates.values())
    completed = sum(f.status == "completed" for f in fates.values())
    header = Text()
    header.append(f"run {result.run_id}", style="bold")
    header.append(f"   consumer_context={result.consumer_context}")
    if broker:
        header.append(f"   broker {broker}")
    if result.name_prefix:
        header.append(
            f"\nexchanges and queues of this run: {result.name_prefix}*  (prefix not shown below)"
        )
    header.append(
        f"\n{len(result.plan)} orders: {completed} completed, {lost} lost, "
        f"{len(result.plan) - completed - lost} unaccounted   "
        f"{len(result.spans)} spans received in {result.elapsed_s:.1f} s   {_relations(result)}"
    )
    console.print(Panel(header, title="order flow: shop-api → srm-api → mes", expand=False))
    console.print(orders_table(result, fates))
    orders = group_orders(result.spans)
    for order_id in choose_examples(result, fates):
        console.print()
        width = max(16, min(60, console.width - 78))
        table = waterfall_table(order_id, orders.get(order_id, []), fates[order_id], result, width)
        console.print(table)
    console.print()
    console.print(metrics_table(result, fates))
    if result.extra_endpoint:
        lost_ids = [oid for oid, f in fates.items() if f.status == "lost"]
        example = "17" if "17" in lost_ids else (lost_ids[0] if lost_ids else "1")
        hint = Text.assemble(
            f"The services also exported to {result.extra_endpoint}. In Jaeger: Search → Service ",
            ("mes", "bold"),
            " (or shop-api, srm-api) → Tags ",
            (f"order.id={example}", "bold"),
            " → Find Traces.\nAdd ",
            ("error=true", "bold"),
            " to the tags for the hop that failed, ",
            (f"order_flow.run_id={result.run_id}", "bold"),
            " for this run only; follow the span links (references) from hop to hop.",
        )
        console.print(Panel(hint, title=f"where did order {example} stop?", expand=False))
    console.print()
    if problems:
        console.print(Text("The flow did NOT behave as designed:", style="bold red"))
        for problem in problems:
            console.print(Text(f"  • {problem}", style="red"))
    else:
        console.print(
            Text(
                "The flow behaved as designed: every order completed or was lost where and how "
                "the plan loses it, and nothing was exported twice.",
                style="bold green",
            )
        )
    return problems
