"""Messages the broker dead-lettered: why, where, how often and when they died, read from headers.

RabbitMQ keeps a message's headers when it dead-letters it (so ``traceparent`` and ``baggage``
survive) and adds what it knows about the death. The shapes, as the broker writes them:

- ``x-death``: an array of tables, the most recent death first, one per ``(queue, reason)``
  pair. Each table has ``reason`` (``expired`` / ``rejected`` / ``maxlen`` /
  ``delivery_limit``), ``queue``, ``exchange`` (the one the message was published to),
  ``routing-keys`` (array), ``count`` (deaths for this queue and reason) and ``time`` (an AMQP
  timestamp, whole seconds, of the *first* death for this queue and reason), and
  ``original-expiration`` (the per-message TTL, in ms as text) when the message had one.
  RabbitMQ 3.10 ``deps/rabbit/src/rabbit_dead_letter.erl`` (``make_msg``,
  ``update_x_death_header``); 4.x ``deps/rabbit/src/mc_amqpl.erl`` (``death_table``: ``time``
  is ``FirstTime div 1000``) and ``mc.erl`` (``record_death``).
- ``x-first-death-reason`` / ``-queue`` / ``-exchange``: the first death ever (3.x and 4.x).
- ``x-last-death-reason`` / ``-queue`` / ``-exchange``: the latest death (3.13 and later,
  ``mc.erl`` ``record_death``).
- Quorum queues: ``x-delivery-count`` (3.10 ``rabbit_fifo_client.erl``, on redelivery) and
  ``x-acquired-count`` (4.x, ``rabbit_fifo_client.erl`` ``add_delivery_count_header``).

Clients decode the same table differently: strings may be ``str`` or ``bytes`` (pika keeps a
long string that is not UTF-8 as ``bytes``), a timestamp an ``int`` or a ``datetime`` (naive
UTC or aware), keys inside nested tables ``str`` or ``bytes``. Anything else, a producer that
republished a message with a stringified ``x-death``, say, is ignored: nothing here raises, and a
malformed header is logged once per process at WARNING.

:func:`read` turns the headers into the attributes of the consume span (set before it starts,
so samplers see them); :func:`record` makes the short ERROR span under it that marks the death
as an error of the order's trace. :meth:`MessagingTelemetry.start_consume
<otel_messaging_core.telemetry.MessagingTelemetry.start_consume>` calls both, after one
membership check that a message which never died passes at no further cost.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from otel_messaging_core.attributes import ERROR_TYPE, exchange_label, low_cardinality
from otel_messaging_core.guard import log_internal_error

__all__ = ["MARKER", "Death", "read", "record"]

logger: Final = logging.getLogger("otel_messaging_core")

#: The header whose presence marks a dead-lettered message (the one membership check).
MARKER: Final = "x-death"

# Attribute names. The semantic conventions define none for dead-lettering or redelivery
# (messaging.rabbitmq.* has only destination.routing_key and message.delivery_tag), so they live
# outside the messaging. namespace, shaped like the ones other systems have there
# (messaging.servicebus.message.delivery_count, messaging.gcp_pubsub.message.delivery_attempt).
REASON: Final = "rabbitmq.dead_letter.reason"
QUEUE: Final = "rabbitmq.dead_letter.queue"
EXCHANGE: Final = "rabbitmq.dead_letter.exchange"
ROUTING_KEYS: Final = "rabbitmq.dead_letter.routing_keys"
COUNT: Final = "rabbitmq.dead_letter.count"
TIME: Final = "rabbitmq.dead_letter.time"
ORIGINAL_EXPIRATION: Final = "rabbitmq.dead_letter.original_expiration_ms"
FIRST_REASON: Final = "rabbitmq.dead_letter.first.reason"
FIRST_QUEUE: Final = "rabbitmq.dead_letter.first.queue"
FIRST_EXCHANGE: Final = "rabbitmq.dead_letter.first.exchange"
DELIVERY_COUNT: Final = "rabbitmq.message.delivery_count"
ACQUIRED_COUNT: Final = "rabbitmq.message.acquired_count"
REDELIVERED: Final = "rabbitmq.message.redelivered"
#: ``error.type`` of the span that marks a death: ``dead_letter:expired`` and so on.
ERROR_TYPE_PREFIX: Final = "dead_letter:"

_REASONS: Final = frozenset({"expired", "rejected", "maxlen", "delivery_limit"})
_MAX_TEXT: Final = 255  # AMQP short strings; a queue or exchange name is never longer
_MAX_KEYS: Final = 16  # routing keys kept (CC headers can list many)

_warned = False

Attributes = dict[str, AttributeValue]


@dataclass(frozen=True, slots=True)
class Death:
    """What the headers say about a message: its span's attributes and, when it died, why."""

    attributes: Attributes
    reason: str | None = None  # None: redelivered or counted, but never dead-lettered
    queue: str | None = None
    time: datetime.datetime | None = None


def _warn_once(what: str) -> None:
    global _warned
    if _warned:
        logger.debug("ignored a malformed dead-letter header: %s", what)
        return
    _warned = True
    logger.warning(
        "ignored a malformed dead-letter header (%s); the message is handled without it;"
        " this is logged once",
        what,
    )


def _text(value: object) -> str | None:
    if type(value) is str:
        return value[:_MAX_TEXT]
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value)[:_MAX_TEXT].decode("utf-8", errors="replace")
        except Exception:
            return None
    return None


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value < 2**63 else None


def _time(value: object) -> datetime.datetime | None:
    """An AMQP timestamp as an aware UTC datetime: from int seconds or a (naive UTC) datetime."""
    try:
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                return value.replace(tzinfo=datetime.timezone.utc)
            return value.astimezone(datetime.timezone.utc)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        pass
    return None


def _table(value: object) -> dict[str, object] | None:
    """A nested table with text keys (bytes keys decoded), or None."""
    if not isinstance(value, Mapping):
        return None
    table: dict[str, object] = {}
    for key, item in value.items():
        name = _text(key)
        if name is not None:
            table[name] = item
    return table


def _header(headers: Mapping[Any, Any], name: str) -> object:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.encode())
    return value


def _latest(headers: Mapping[Any, Any]) -> dict[str, object] | None:
    """The first readable table of ``x-death`` (the most recent death), or None."""
    deaths = _header(headers, MARKER)
    if deaths is None:
        return None
    if not isinstance(deaths, Sequence) or isinstance(deaths, (str, bytes, bytearray)):
        _warn_once(f"{MARKER} is a {type(deaths).__name__}, not an array of tables")
        return None
    for entry in deaths[:1]:
        table = _table(entry)
        if table is None or _text(table.get("reason")) is None:
            _warn_once(f"{MARKER}[0] is not a table with a reason")
            return None
        return table
    return None


def read(headers: Mapping[Any, Any] | None, redelivered: bool | None = None) -> Death | None:
    """The attributes a consume span gets from a message's headers and redelivered flag.

    ``None`` when there is nothing to say (the usual case). Never raises.
    """
    try:
        return _read(headers, redelivered)
    except Exception as exc:  # a Mapping whose get() raises, say
        _warn_once(f"{type(exc).__name__}: {exc}")
        return None


def _read(headers: Mapping[Any, Any] | None, redelivered: bool | None) -> Death | None:
    attributes: Attributes = {}
    if redelivered:
        attributes[REDELIVERED] = True
    if not headers:
        return Death(attributes) if attributes else None
    for name, attribute in (
        ("x-delivery-count", DELIVERY_COUNT),
        ("x-acquired-count", ACQUIRED_COUNT),
    ):
        raw = _header(headers, name)
        if raw is not None:
            count = _count(raw)
            if count is None:
                _warn_once(f"{name} is {type(raw).__name__}, not an integer")
            else:
                attributes[attribute] = count
    latest = _latest(headers)
    if latest is not None:
        reason = _text(latest.get("reason"))
        queue = _text(latest.get("queue"))
        exchange = _text(latest.get("exchange"))
        count = _count(latest.get("count"))
        died = _time(latest.get("time"))
        keys = latest.get("routing-keys")
        routing_keys = (
            [k for k in (_text(k) for k in keys[:_MAX_KEYS]) if k is not None]
            if isinstance(keys, Sequence) and not isinstance(keys, (str, bytes, bytearray))
            else None
        )
        expiration = _text(latest.get("original-expiration"))
    else:  # no usable x-death: the latest (3.13+) or first death's top-level headers
        reason = _text(_header(headers, "x-last-death-reason"))
        prefix = "x-last-death-" if reason is not None else "x-first-death-"
        reason = reason or _text(_header(headers, "x-first-death-reason"))
        queue = _text(_header(headers, prefix + "queue"))
        exchange = _text(_header(headers, prefix + "exchange"))
        count, died, routing_keys, expiration = None, None, None, None
    if reason is None:
        return Death(attributes) if attributes else None
    if reason not in _REASONS:  # a reason added by a later RabbitMQ is kept, bounded
        reason = reason[:32]
    attributes[REASON] = reason
    if queue is not None:
        attributes[QUEUE] = queue
    if exchange is not None:
        attributes[EXCHANGE] = exchange_label(exchange)
    if routing_keys:
        attributes[ROUTING_KEYS] = routing_keys
    if count is not None:
        attributes[COUNT] = count
    if died is not None:
        attributes[TIME] = died.isoformat().replace("+00:00", "Z")
    if expiration is not None and expiration.isdigit():
        attributes[ORIGINAL_EXPIRATION] = int(expiration)
    first = _text(_header(headers, "x-first-death-reason"))
    first_queue = _text(_header(headers, "x-first-death-queue"))
    if first is not None and (first, first_queue) != (reason, queue):
        # died more than once, somewhere else first: where the trouble began
        attributes[FIRST_REASON] = first
        if first_queue is not None:
            attributes[FIRST_QUEUE] = first_queue
        first_exchange = _text(_header(headers, "x-first-death-exchange"))
        if first_exchange is not None:
            attributes[FIRST_EXCHANGE] = exchange_label(first_exchange)
    return Death(attributes, reason, queue, died)


def record(tracer: Tracer, consume: Span, death: Death) -> None:
    """Mark a death as an error of the message's trace: a short ERROR child of its consume span.

    The consume span keeps the handler's own outcome (a DLQ consumer that handles the message
    well stays UNSET); this child, named ``{reason} {queue}`` (``expired srm.orders``), carries
    ``error.type=dead_letter:{reason}`` and the death's attributes, so a collector that keeps
    traces with errors keeps this one. Nothing is made for a message that never died, or
    when the consume span is not recording.
    """
    try:
        if death.reason is not None and consume.is_recording():
            _record(tracer, consume, death.reason, death)
    except Exception as internal:
        log_internal_error("dead letter", internal)


def _record(tracer: Tracer, consume: Span, reason: str, death: Death) -> None:
    attributes = {
        k: v for k, v in death.attributes.items() if k.startswith("rabbitmq.dead_letter.")
    }
    attributes[ERROR_TYPE] = ERROR_TYPE_PREFIX + reason
    where = low_cardinality(death.queue) if death.queue else "(unknown queue)"
    child = tracer.start_span(
        f"{reason} {where}",
        context=trace.set_span_in_context(consume),
        kind=SpanKind.INTERNAL,
        attributes=attributes,
    )
    when = f" at {attributes[TIME]}" if TIME in attributes else ""
    child.set_status(
        Status(StatusCode.ERROR, f"dead-lettered by the broker: {reason} in {where}{when}")
    )
    child.end()
