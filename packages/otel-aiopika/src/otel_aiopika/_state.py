"""Which telemetry instruments a channel, and what is kept per channel and per delivery.

aio-pika objects point at their channel: ``Exchange.channel`` and ``Queue.channel`` are the
aio-pika channel (aio-pika >= 9) or the underlying ``aiormq`` channel (aio-pika 8.x); a
delivered ``IncomingMessage`` keeps the ``aiormq`` channel. The instrumentation keeps:

* on the channel an exchange or queue points at: an :class:`OwnerState` (the core
  :class:`~otel_messaging_core.Scope`, kept by :data:`SCOPES`) caching which telemetry applies
  (the channel's own from ``instrument_channel()``, else the global one) and that telemetry's
  destination cache for the channel's broker address. It is re-resolved only when
  instrumentation changes (a generation counter), so the per-message cost is one attribute read;
* on the ``aiormq`` channel of deliveries: :class:`Deliveries`, the core
  :class:`~otel_messaging_core.Delivery` of each unsettled manual-ack message (by delivery tag,
  removed by its ack/nack/reject) and the handling context of pulled messages for
  ``message_context()``. aio-pika >= 9 gives ``IncomingMessage`` ``__slots__`` without
  ``__weakref__``, so nothing can be attached to (or weakly keyed by) the message itself; the
  delivery tag names it uniquely on its channel. The map lives on the ``aiormq`` channel object,
  so it is freed with that channel (a robust reconnect opens a new one), is cleared when the
  channel closes, and is bounded.

Nothing here imports aio-pika: the package must import (for the entry point) without it.
"""

from __future__ import annotations

import weakref
from typing import Any, Final

from opentelemetry.context import Context

from otel_messaging_core import (
    MAX_UNSETTLED,
    Delivery,
    DeliveryLedger,
    MessagingTelemetry,
    Scope,
    Scopes,
    capture_internal_exceptions,
)

__all__ = [
    "Deliveries",
    "OwnerState",
    "deliveries_of",
    "message_channel",
    "SCOPES",
    "recall",
    "resolve",
    "track",
]

DELIVERIES_ATTR: Final = "_otel_aiopika_deliveries"
#: where an ``IncomingMessage`` keeps its ``aiormq`` channel (see :func:`message_channel`)
CHANNEL_ATTR: Final = "_IncomingMessage__channel"
MAX_TRACKED: Final = MAX_UNSETTLED
# Contexts of auto-ack pulls are only for message_context(); a few recent ones are enough.
MAX_PULLED: Final = 256

_DELIVERY_RECORDS: Final = capture_internal_exceptions("aio-pika delivery records")


class OwnerState(Scope):
    """The telemetry (``None``: not instrumented) and destination cache of one channel."""

    __slots__ = ()

    def server(self, obj: Any) -> tuple[str | None, int | None]:
        return server_of(obj)


def _pinned_owner(owner: Any) -> Any:
    """aio-pika 8.x: exchanges and queues point at the aiormq channel, which a robust channel
    replaces on reconnect; the pinned aio-pika channel it currently belongs to."""
    for channel in list(SCOPES.pinned):
        if underlay(channel) is owner:
            return channel
    return None


#: the global telemetry, the channels with their own (``instrument_channel()``), the generation
SCOPES: Final = Scopes("aiopika", OwnerState, owner_of=_pinned_owner)
#: the state of the channel an exchange or queue points at; ``None`` when not instrumented
resolve: Final = SCOPES.of


def underlay(channel: Any) -> Any:
    """The ``aiormq`` channel under an aio-pika channel (``None`` while it is (re)opening)."""
    return getattr(getattr(channel, "_channel", None), "channel", None)


def server_of(owner: Any) -> tuple[str | None, int | None]:
    """``server.address`` and ``server.port`` of a channel's connection URL (never credentials)."""
    connection = getattr(owner, "_connection", None)  # aio-pika channel
    if connection is None:
        connection = getattr(owner, "connection", None)  # aiormq channel
    url = getattr(connection, "url", None)
    host = getattr(url, "host", None)
    port = getattr(url, "port", None)
    return (
        host if isinstance(host, str) and host else None,
        port if isinstance(port, int) and not isinstance(port, bool) else None,
    )


# -- deliveries ---------------------------------------------------------------------------------


#: what a settle needs of one delivery: the telemetry that made it, its record, its context
Record = tuple[MessagingTelemetry, "Delivery | None", "Context | None"]


class Deliveries:
    """Per ``aiormq`` channel: unsettled manual-ack deliveries and recently pulled contexts."""

    __slots__ = ("__weakref__", "pulled", "records", "telemetry")

    def __init__(self) -> None:
        self.telemetry: MessagingTelemetry | None = None
        # unsettled manual-ack deliveries: the core ledger (multiple=True, tag 0, the bound)
        self.records: DeliveryLedger[Record] = DeliveryLedger(MAX_TRACKED)
        self.pulled: DeliveryLedger[Context] = DeliveryLedger(MAX_PULLED)

    def take(self, delivery_tag: int, multiple: bool) -> list[Record]:
        """The records one ack/nack/reject settles, removed from the ledger."""
        return self.records.take(delivery_tag, multiple)

    def clear(self, *_args: object) -> None:
        """The channel closed: nothing it delivered can be settled any more."""
        self.records.clear()
        self.pulled.clear()


def message_channel(message: Any) -> Any:
    """The ``aiormq`` channel a message was delivered on (the property raises once it closed)."""
    return getattr(message, CHANNEL_ATTR, None)


def deliveries_of(channel: Any, create: bool) -> Deliveries | None:
    """The :class:`Deliveries` kept on an ``aiormq`` channel (created on first use)."""
    found: Deliveries | None = getattr(channel, DELIVERIES_ATTR, None)
    if found is not None or not create or channel is None:
        return found
    found = Deliveries()
    with _DELIVERY_RECORDS:  # a channel object that takes no attributes: nothing is tracked
        setattr(channel, DELIVERIES_ATTR, found)
        closing = getattr(channel, "closing", None)
        if closing is not None and hasattr(closing, "add_done_callback"):
            ref = weakref.ref(found)
            closing.add_done_callback(lambda _f: _clear(ref))
        return found
    return None


def _clear(ref: weakref.ref[Deliveries]) -> None:
    found = ref()
    if found is not None:
        found.clear()


def track(
    message: Any,
    telemetry: MessagingTelemetry,
    delivery: Delivery | None,
    context: Context | None,
    manual_ack: bool,
) -> None:
    """Keep what a later settle (manual ack) or ``message_context()`` (a pull) needs."""
    tag = getattr(message, "delivery_tag", None)
    if type(tag) is not int:
        return
    deliveries = deliveries_of(message_channel(message), create=True)
    if deliveries is None:
        return
    deliveries.telemetry = telemetry
    if manual_ack:
        deliveries.records.track(tag, (telemetry, delivery, context))
    elif context is not None:
        deliveries.pulled.track(tag, context)


def recall(message: Any) -> Context | None:
    """The handling context recorded for a delivered message, if it is still known."""
    tag = getattr(message, "delivery_tag", None)
    if type(tag) is not int:
        return None
    deliveries = deliveries_of(message_channel(message), create=False)
    if deliveries is None:
        return None
    record = deliveries.records.get(tag)
    if record is not None and record[2] is not None:
        return record[2]
    return deliveries.pulled.get(tag)
