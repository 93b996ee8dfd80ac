"""Pure functions over received telemetry: orders, where each one stopped, hops, percentiles.

No I/O and no rendering here: the demo's report and the cross-process tests call the same
functions on the same records (:class:`SpanRecord`, :class:`HistogramPoint`), which the OTLP
receiver builds from what the services exported.

How an order is found: every messaging span carries ``order.id`` (the services instrument with
``baggage_attributes=("order.id",)`` and the id rides in baggage). Spans are joined into groups
through parent ids *and* links, so the same grouping works when every hop is its own trace
(``consumer_context="link"``); a group's ``order.id`` names the order.

Why an order was lost comes from its ERROR spans too (:class:`Loss`): the status description,
the exception event and the few attributes in :data:`REASON_ATTRIBUTES` that the services set
on the span that failed, the same things a support engineer reads in Jaeger. A message the broker
dropped and dead-lettered shows as the ERROR span the instrumentation makes when the dead letter
is consumed (``error.type=dead_letter:<reason>``), with ``rabbitmq.dead_letter.*`` saying where
and when it died (docs/reference.md).
"""

from __future__ import annotations

import datetime
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from examples.order_flow.domain import BROKER, CHECKSUM_ACTUAL_KEY, CHECKSUM_EXPECTED_KEY, SKU_KEY

__all__ = [
    "ORDER_KEY",
    "REASON_ATTRIBUTES",
    "Fate",
    "Histogram",
    "HistogramPoint",
    "Hop",
    "Loss",
    "SpanEvent",
    "SpanRecord",
    "SumPoint",
    "WaterfallRow",
    "broker_loss",
    "duplicate_span_ids",
    "exact_percentile",
    "flow_fates",
    "flow_problems",
    "group_orders",
    "hops",
    "loss_of",
    "merge_histograms",
    "order_fate",
    "percentile",
    "processed_at",
    "publishes_per_service",
    "sum_total",
    "waterfall",
]

ORDER_KEY: Final = "order.id"
ERROR: Final = "ERROR"
DEAD_LETTER_ERROR: Final = "dead_letter:"  # error.type prefix of the span marking a dead letter
DEAD_LETTER_REASON: Final = "rabbitmq.dead_letter.reason"
DEAD_LETTER_QUEUE: Final = "rabbitmq.dead_letter.queue"
DEAD_LETTER_TIME: Final = "rabbitmq.dead_letter.time"
DEAD_LETTER_TTL: Final = "rabbitmq.dead_letter.original_expiration_ms"
# The attributes that explain a failure, with the label a reader sees: where an unroutable
# publish was sent, and the facts the services record on the span that fails.
REASON_ATTRIBUTES: Final = (
    ("routing key", "messaging.rabbitmq.destination.routing_key"),
    ("SKU", SKU_KEY),
    ("expected", CHECKSUM_EXPECTED_KEY),
    ("actual", CHECKSUM_ACTUAL_KEY),
)


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """One span event (``exception``, say) with its attributes."""

    name: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One exported span, decoded from OTLP; ids as lowercase hex."""

    service: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str  # INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER
    start_ns: int
    end_ns: int
    status: str  # UNSET, OK, ERROR
    status_message: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()  # (trace_id, span_id) of each link
    events: tuple[SpanEvent, ...] = ()
    scope: str = ""

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    @property
    def error_type(self) -> str | None:
        value = self.attributes.get("error.type")
        return None if value is None else str(value)

    @property
    def order_id(self) -> str | None:
        value = self.attributes.get(ORDER_KEY)
        return None if value is None else str(value)

    @property
    def operation_type(self) -> str | None:
        value = self.attributes.get("messaging.operation.type")
        return None if value is None else str(value)

    @property
    def event_names(self) -> tuple[str, ...]:
        return tuple(event.name for event in self.events)

    @property
    def exception(self) -> Mapping[str, Any] | None:
        """The attributes of the first ``exception`` event (type, message, stack trace), if any."""
        return next((e.attributes for e in self.events if e.name == "exception"), None)


@dataclass(frozen=True, slots=True)
class HistogramPoint:
    """One OTLP histogram data point."""

    service: str
    instance: str  # service.instance.id: two processes of one service are two series
    metric: str
    attributes: Mapping[str, Any]
    start_ns: int
    time_ns: int
    count: int
    sum: float
    bounds: tuple[float, ...]
    bucket_counts: tuple[int, ...]
    cumulative: bool
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class SumPoint:
    """One OTLP sum (counter) data point."""

    service: str
    instance: str
    metric: str
    attributes: Mapping[str, Any]
    start_ns: int
    time_ns: int
    value: float
    cumulative: bool


# -- orders ------------------------------------------------------------------------------------


class _Groups:
    """Union-find over span ids."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        root = self.parent.setdefault(item, item)
        while root != self.parent[root]:
            root = self.parent[root]
        while item != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def group_orders(spans: Iterable[SpanRecord], key: str = ORDER_KEY) -> dict[str, list[SpanRecord]]:
    """Spans per order id: groups joined by parent ids and links, named by their ``key`` attribute.

    A group carrying two different ids is listed under both (that would be a propagation bug, and
    the tests look for it); spans of groups without any id are left out. Spans within an order
    are sorted by start time.
    """
    spans = list(spans)
    groups = _Groups()
    for span in spans:
        groups.find(span.span_id)
        if span.parent_span_id:
            groups.union(span.span_id, span.parent_span_id)
        for _trace_id, linked in span.links:
            groups.union(span.span_id, linked)
    ids_of: dict[str, set[str]] = defaultdict(set)
    for span in spans:
        value = span.attributes.get(key)
        if value is not None:
            ids_of[groups.find(span.span_id)].add(str(value))
    orders: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        for order_id in ids_of.get(groups.find(span.span_id), ()):
            orders[order_id].append(span)
    return {
        order_id: sorted(members, key=lambda s: (s.start_ns, s.end_ns))
        for order_id, members in sorted(orders.items(), key=lambda item: _id_sort_key(item[0]))
    }


def _id_sort_key(order_id: str) -> tuple[int, int, str]:
    return (0, int(order_id), "") if order_id.isdigit() else (1, 0, order_id)


@dataclass(frozen=True, slots=True)
class Loss:
    """Where and why an order was lost, as its ERROR spans tell it.

    ``kind="service"``: an operation of a service failed. ``span`` is the ERROR span that ended
    first (an exception ends the innermost span first, so that is where it began); ``reason`` is
    its status description (what Jaeger shows as the span's error), else the exception's message;
    ``facts`` are its :data:`REASON_ATTRIBUTES` as ``(label, value)``. ``dropped_by`` is the ERROR
    span that ended last when it is another one: the ``reject`` that dropped the message.

    ``kind="broker"``: the broker dropped the message and dead-lettered it (:func:`broker_loss`);
    ``where`` is ``broker``, ``span`` the ERROR span that marks the death, ``reason`` says what
    happened in which queue after how long, and ``facts`` name the queue and who recorded it.

    The report renders a loss by these fields only.
    """

    kind: str  # service | broker
    where: str  # the service that lost it, or "broker"
    span: str
    error_type: str | None
    exception: str | None  # the exception's qualified type, when one was recorded
    reason: str
    facts: tuple[tuple[str, str], ...] = ()
    dropped_by: str | None = None  # span name
    dropped_as: str | None = None  # its error.type
    dropped_why: str = ""  # its status description


def _exception_type(span: SpanRecord) -> str | None:
    event = span.exception
    if event is None or event.get("exception.type") is None:
        return None
    recorded = str(event["exception.type"])
    # SDKs before 1.39 record the bare class name; error.type has the qualified one
    qualified = span.error_type
    if "." not in recorded and qualified and qualified.rsplit(".", 1)[-1] == recorded:
        return qualified
    return recorded


def _iso_ns(text: object) -> int | None:
    try:
        moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(moment.timestamp() * 1e9)


def broker_loss(death: SpanRecord, spans: Sequence[SpanRecord]) -> Loss:
    """The loss a dead-letter span tells: ``expired in srm.orders after 1.0 s``.

    How long the message waited before it died: its per-message TTL when it expired by one
    (``original_expiration_ms``: the broker drops it then, at the earliest); else the time of
    death (whole seconds, as the broker records it) minus the start of the order's first publish.
    """
    attributes = death.attributes
    reason = str(attributes.get(DEAD_LETTER_REASON, death.error_type or "dead-lettered"))
    queue = str(attributes.get(DEAD_LETTER_QUEUE, "?"))
    text = f"{reason} in {queue}"
    ttl = attributes.get(DEAD_LETTER_TTL)
    died = _iso_ns(attributes.get(DEAD_LETTER_TIME))
    sent = min((s.start_ns for s in spans if s.operation_type == "send"), default=None)
    if isinstance(ttl, int):
        text += f" after {ttl / 1000:.1f} s (its per-message TTL)"
    elif died is not None and sent is not None:
        text += f" after about {max(0.0, (died - sent) / 1e9):.0f} s"
    return Loss(
        kind="broker",
        where=BROKER,
        span=death.name,
        error_type=death.error_type,
        exception=None,
        reason=text,
        facts=(("queue", queue), ("recorded by", death.service)),
    )


def loss_of(spans: Sequence[SpanRecord]) -> Loss | None:
    """Why the order of ``spans`` was lost (``None`` when none of them is an ERROR span)."""
    errors = sorted((s for s in spans if s.status == ERROR), key=lambda s: (s.end_ns, -s.start_ns))
    if not errors:
        return None
    cause = errors[0]
    if cause.error_type and cause.error_type.startswith(DEAD_LETTER_ERROR):
        return broker_loss(cause, spans)
    # what dropped it: the last ERROR span, not counting the record of its dead letter (a
    # rejected message is dead-lettered too, where a queue has a dead-letter exchange)
    last = next(
        s
        for s in reversed(errors)
        if s is cause or not (s.error_type or "").startswith(DEAD_LETTER_ERROR)
    )
    event = cause.exception or {}
    reason = cause.status_message or str(event.get("exception.message") or "")
    facts = tuple(
        (label, str(cause.attributes[key]))
        for label, key in REASON_ATTRIBUTES
        if cause.attributes.get(key) not in (None, "")
    )
    error_type = next((s.error_type for s in errors if s.error_type is not None), None)
    dropped = last if last is not cause else None
    return Loss(
        kind="service",
        where=cause.service,
        span=cause.name,
        error_type=cause.error_type or error_type,
        exception=_exception_type(cause),
        reason=reason,
        facts=facts,
        dropped_by=dropped.name if dropped else None,
        dropped_as=dropped.error_type if dropped else None,
        dropped_why=dropped.status_message if dropped else "",
    )


@dataclass(frozen=True, slots=True)
class Fate:
    """Where an order went: ``completed``, ``lost`` (where, why) or ``in flight`` (last seen where)."""

    order_id: str
    status: str  # completed | lost | in flight
    service: str | None
    span: str | None  # name of the span that decided it
    error_type: str | None = None
    message: str = ""  # why it was lost (the loss's reason)
    loss: Loss | None = None


def order_fate(
    order_id: str,
    spans: Sequence[SpanRecord],
    completed: Callable[[SpanRecord], bool],
) -> Fate:
    """Decide one order's fate from its spans.

    Lost: the order has an ERROR span; :func:`loss_of` says where and why (a handler that raises
    and then gets its message rejected shows both, and the raise ended first). Completed: no
    ERROR span and some span satisfies ``completed``. Otherwise it is still in flight, last seen
    at the service of its latest span.
    """
    loss = loss_of(spans)
    if loss is not None:
        return Fate(order_id, "lost", loss.where, loss.span, loss.error_type, loss.reason, loss)
    done = [s for s in spans if completed(s)]
    if done:
        last = max(done, key=lambda s: s.end_ns)
        return Fate(order_id, "completed", last.service, last.name)
    if not spans:
        return Fate(order_id, "in flight", None, None)
    last = max(spans, key=lambda s: s.end_ns)
    return Fate(order_id, "in flight", last.service, last.name)


# -- hops: how a consumer span is tied to the publish that created its message ------------------


@dataclass(frozen=True, slots=True)
class Hop:
    """One message crossing from a publish span to the process/receive span that consumed it."""

    publish: SpanRecord
    consume: SpanRecord
    parent: bool  # the consumer span is a child of the publish span
    link: bool  # the consumer span links to the publish span

    @property
    def same_trace(self) -> bool:
        return self.publish.trace_id == self.consume.trace_id


def hops(spans: Sequence[SpanRecord]) -> list[Hop]:
    """Every consumer span (process/receive) paired with the publish span it is tied to, in time order."""
    publishes = {s.span_id: s for s in spans if s.operation_type == "send"}
    found: list[Hop] = []
    for span in spans:
        if span.operation_type not in ("process", "receive"):
            continue
        linked = {sid for _tid, sid in span.links if sid in publishes}
        parent = span.parent_span_id if span.parent_span_id in publishes else None
        found.extend(
            Hop(publishes[publish_id], span, publish_id == parent, publish_id in linked)
            for publish_id in sorted({*linked, *([parent] if parent else [])})
        )
    return sorted(found, key=lambda h: h.consume.start_ns)


def duplicate_span_ids(spans: Iterable[SpanRecord]) -> list[str]:
    """Span ids exported more than once (should be none)."""
    counts = Counter(s.span_id for s in spans)
    return sorted(span_id for span_id, n in counts.items() if n > 1)


def publishes_per_service(spans: Iterable[SpanRecord]) -> dict[str, int]:
    """How many publish (``send``) spans each service exported for one order."""
    return dict(Counter(s.service for s in spans if s.operation_type == "send"))


# -- waterfall ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WaterfallRow:
    """One line of an order's waterfall: depth in the tree, offset and duration from the order's start."""

    span: SpanRecord
    depth: int
    offset_s: float
    duration_s: float
    relation: str  # root | child | child+link | link


def waterfall(spans: Sequence[SpanRecord]) -> list[WaterfallRow]:
    """The order's spans as a tree, depth-first in start order.

    A span hangs under its parent when the parent is among ``spans``; otherwise under the span it
    links to (a hop that started its own trace, ``consumer_context="link"``); otherwise it is a root.
    """
    if not spans:
        return []
    by_id = {s.span_id: s for s in spans}
    origin = min(s.start_ns for s in spans)
    children: dict[str | None, list[tuple[SpanRecord, str]]] = defaultdict(list)
    for span in spans:
        linked_ids = [sid for _tid, sid in span.links if sid in by_id]
        if span.parent_span_id in by_id:
            relation = "child+link" if span.parent_span_id in linked_ids else "child"
            children[span.parent_span_id].append((span, relation))
        elif linked_ids:
            children[linked_ids[0]].append((span, "link"))
        else:
            children[None].append((span, "root"))
    rows: list[WaterfallRow] = []

    def visit(parent_id: str | None, depth: int) -> None:
        for span, relation in sorted(children.get(parent_id, ()), key=lambda c: c[0].start_ns):
            rows.append(
                WaterfallRow(span, depth, (span.start_ns - origin) / 1e9, span.duration_s, relation)
            )
            visit(span.span_id, depth + 1)

    visit(None, 0)
    return rows


# -- metrics -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Histogram:
    """A histogram merged over series: explicit bucket bounds and counts (``len(bounds) + 1``)."""

    bounds: tuple[float, ...]
    bucket_counts: tuple[int, ...]
    count: int
    sum: float
    min: float | None = None
    max: float | None = None


def _series_key(point: HistogramPoint | SumPoint) -> tuple[Any, ...]:
    return (
        point.service,
        point.instance,
        point.metric,
        tuple(sorted((k, str(v)) for k, v in point.attributes.items())),
    )


def _current(points: Iterable[HistogramPoint | SumPoint]) -> list[Any]:
    """Cumulative series: the latest point of each; delta points: all of them (they add up)."""
    latest: dict[tuple[Any, ...], HistogramPoint | SumPoint] = {}
    deltas: list[HistogramPoint | SumPoint] = []
    for point in points:
        if not point.cumulative:
            deltas.append(point)
            continue
        key = _series_key(point)
        seen = latest.get(key)
        if seen is None or point.time_ns >= seen.time_ns:
            latest[key] = point
    return [*latest.values(), *deltas]


def _matches(
    point: HistogramPoint | SumPoint,
    metric: str,
    service: str | None,
    where: Mapping[str, Any] | None,
) -> bool:
    if point.metric != metric or (service is not None and point.service != service):
        return False
    return all(point.attributes.get(k) == v for k, v in (where or {}).items())


def merge_histograms(
    points: Iterable[HistogramPoint],
    metric: str,
    *,
    service: str | None = None,
    where: Mapping[str, Any] | None = None,
) -> Histogram | None:
    """One histogram from every matching series (cumulative: latest point; delta: summed)."""
    selected = [p for p in points if _matches(p, metric, service, where)]
    current: list[HistogramPoint] = _current(selected)
    if not current:
        return None
    bounds = current[0].bounds
    if any(p.bounds != bounds for p in current):
        raise ValueError(f"{metric}: series with different bucket bounds cannot be merged")
    counts = [0] * (len(bounds) + 1)
    for point in current:
        for i, n in enumerate(point.bucket_counts):
            counts[i] += n
    mins = [p.min for p in current if p.min is not None and p.count]
    maxes = [p.max for p in current if p.max is not None and p.count]
    return Histogram(
        bounds,
        tuple(counts),
        sum(p.count for p in current),
        sum(p.sum for p in current),
        min(mins) if mins else None,
        max(maxes) if maxes else None,
    )


def sum_total(
    points: Iterable[SumPoint],
    metric: str,
    *,
    service: str | None = None,
    where: Mapping[str, Any] | None = None,
) -> float:
    """The total of a counter over every matching series."""
    selected = [p for p in points if _matches(p, metric, service, where)]
    current: list[SumPoint] = _current(selected)
    return sum(p.value for p in current)


def percentile(histogram: Histogram, q: float) -> float:
    """The ``q``-quantile (0..1) estimated from bucket counts, interpolating linearly in a bucket.

    The first bucket starts at the recorded minimum (else 0) and the overflow bucket ends at the
    recorded maximum (else its lower bound); the result is clamped to [min, max] when those are known.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"q must be within 0..1, got {q}")
    if histogram.count <= 0:
        return math.nan
    rank = q * histogram.count
    bounds = histogram.bounds
    low_edge = histogram.min if histogram.min is not None else 0.0
    cumulative = 0
    value = math.nan
    for i, n in enumerate(histogram.bucket_counts):
        if n == 0:
            continue
        if cumulative + n >= rank:
            lower = bounds[i - 1] if i > 0 else min(low_edge, bounds[0]) if bounds else low_edge
            if i < len(bounds):
                upper = bounds[i]
            else:
                upper = histogram.max if histogram.max is not None else lower
            value = lower + (upper - lower) * max(0.0, rank - cumulative) / n
            break
        cumulative += n
    if histogram.min is not None:
        value = max(value, histogram.min)
    if histogram.max is not None:
        value = min(value, histogram.max)
    return value


def exact_percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of raw values, interpolating between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


# -- the flow as designed ----------------------------------------------------------------------


def processed_at(service: str) -> Callable[[SpanRecord], bool]:
    """A completion test: a process/receive span of ``service`` (the last step of the flow)."""

    def completed(span: SpanRecord) -> bool:
        return span.service == service and span.operation_type in ("process", "receive")

    return completed


def flow_fates(
    spans: Sequence[SpanRecord], order_ids: Iterable[str], final_service: str
) -> dict[str, Fate]:
    """The fate of every expected order (``in flight`` for one no span mentions yet)."""
    orders = group_orders(spans)
    completed = processed_at(final_service)
    return {oid: order_fate(oid, orders.get(oid, []), completed) for oid in order_ids}


def flow_problems(
    spans: Sequence[SpanRecord],
    fates: Mapping[str, Fate],
    expected: Mapping[str, tuple[str, str, str | None]],
) -> list[str]:
    """What differs from the design; empty when the flow behaved as designed.

    ``expected`` maps each order id to ``(status, service, error_type)``; the service is only
    compared for lost orders, and a lost order's failing span must say why (a status
    description or an exception message). Also checked: no span exported twice, each order published at most
    once per service, and no span group mixing two orders.
    """
    problems = []
    for order_id, (status, service, error_type) in expected.items():
        fate = fates.get(order_id)
        if fate is None or fate.status != status:
            seen = "no fate" if fate is None else f"{fate.status} at {fate.service} ({fate.span})"
            problems.append(f"order {order_id}: expected {status}, got {seen}")
        elif status == "lost" and (fate.service, fate.error_type) != (service, error_type):
            problems.append(
                f"order {order_id}: expected lost at {service} with {error_type}, "
                f"got {fate.service} with {fate.error_type}"
            )
        elif status == "lost" and not fate.message:
            problems.append(f"order {order_id}: lost in {fate.span}, whose span does not say why")
    duplicates = duplicate_span_ids(spans)
    if duplicates:
        problems.append(f"{len(duplicates)} span id(s) exported more than once")
    orders = group_orders(spans)
    for order_id, members in orders.items():
        if order_id not in expected:
            problems.append(f"spans for an order nobody placed: {order_id}")
        repeated = {svc: n for svc, n in publishes_per_service(members).items() if n > 1}
        if repeated:
            problems.append(f"order {order_id}: published more than once by {repeated}")
        ids = {s.order_id for s in members if s.order_id is not None}
        if len(ids) > 1:
            problems.append(f"order {order_id}: its spans are tied to orders {sorted(ids)}")
    return problems
