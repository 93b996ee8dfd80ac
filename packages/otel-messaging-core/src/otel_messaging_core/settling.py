"""Acks, nacks and rejects: :meth:`start_settle` of
:class:`~otel_messaging_core.telemetry.MessagingTelemetry`, mixed into it."""

from __future__ import annotations

from typing import Callable, Final, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from otel_messaging_core._private_api import SUPPRESS_KEY
from otel_messaging_core.attributes import (
    MESSAGING_BATCH_MESSAGE_COUNT,
    MESSAGING_RABBITMQ_DELIVERY_TAG,
    REJECTED,
    SYSTEM_RABBITMQ,
    Destination,
    DestinationCache,
)
from otel_messaging_core.guard import log_internal_error
from otel_messaging_core.operations import Delivery, Settle, set_error

__all__ = ["SettleOperations"]

Attributes = dict[str, AttributeValue]

#: What the fast path of the usual settle returns: it records nothing and ends as nothing (its
#: ``end()`` returns at once), so one object serves every call.
_NOTHING_TO_SETTLE: Final = Settle.noop()


class SettleOperations:
    """:meth:`start_settle` of :class:`~otel_messaging_core.telemetry.MessagingTelemetry`."""

    tracer: Tracer
    _settle_spans: bool
    _baggage_names: tuple[str, ...]
    _add_optional_attributes: Callable[..., None]
    quiet_settle: Callable[[], bool]
    destinations: Callable[..., DestinationCache]

    def start_settle(
        self,
        operation: str,
        deliveries: Sequence[Delivery | None],
        *,
        requeue: bool = True,
        delivery_tag: int | None = None,
        fallback: Destination | None = None,
    ) -> Settle:
        """Time an ack/nack/reject call; start its span when ``settle_spans`` or when the message is lost.

        ``deliveries`` are the records of the settled messages (several for ``multiple=True``);
        ``fallback`` names the destination when none is known (a message consumed before
        instrumentation). A nack/reject with ``requeue=False`` is always an ERROR span with
        ``error.type=rejected``: it is how a message gets dropped or dead-lettered.
        """
        try:
            # The fast path of the usual settle (an ack, or a requeue, without settle spans and
            # with no MeterProvider): nothing to record, whatever the message's trace.
            if (requeue or operation == "ack") and self.quiet_settle():
                return _NOTHING_TO_SETTLE
            if otel_context.get_value(SUPPRESS_KEY):  # suppress_instrumentation()
                return Settle.noop()
            known = [d for d in deliveries if d is not None]
            destination = known[-1].destination if known else fallback
            lost = operation != "ack" and not requeue
            error_type = REJECTED if lost else None
            if destination is None:
                return Settle(self, None, None, error_type)  # type: ignore[arg-type]  # a mixin of it
            settle_destination = self.destinations_for(destination).get(
                operation, destination.exchange, destination.routing_key, destination.queue
            )
            span: Span | None = None
            if lost or self._settle_spans:
                span = self._start_settle_span(settle_destination, known, delivery_tag)
                if lost:
                    set_error(
                        span,
                        REJECTED,
                        None,
                        f"{operation} without requeue: message dropped or dead-lettered",
                    )
            return Settle(
                self,  # type: ignore[arg-type]  # mixed into MessagingTelemetry
                span,
                settle_destination.metric_attributes,
                error_type,
            )
        except Exception as internal:
            log_internal_error("settle start", internal)
            return Settle.noop()

    def destinations_for(self, destination: Destination) -> DestinationCache:
        """The cache that made ``destination`` (same system and server)."""
        attributes = destination.attributes
        return self.destinations(
            attributes.get("server.address"),
            attributes.get("server.port"),
            str(attributes.get("messaging.system", SYSTEM_RABBITMQ)),
        )

    def _start_settle_span(
        self, destination: Destination, known: list[Delivery], delivery_tag: int | None
    ) -> Span:
        attributes: Attributes = destination.attributes.copy()  # type: ignore[attr-defined]
        if delivery_tag is None and len(known) == 1:
            delivery_tag = known[0].delivery_tag
        if delivery_tag is not None and destination.amqp:
            attributes[MESSAGING_RABBITMQ_DELIVERY_TAG] = delivery_tag
        if len(known) > 1:
            attributes[MESSAGING_BATCH_MESSAGE_COUNT] = len(known)
        if self._baggage_names:
            # SPEC: baggage entries go on every messaging span. The settled messages' own
            # entries first (an ack after the handler has no baggage current), then what is current.
            for delivery in known:
                if delivery.baggage:
                    attributes.update(delivery.baggage)
            self._add_optional_attributes(attributes, None, None)
        links = [Link(d.creation) for d in known if d.creation is not None]
        parent: Context | None = None
        if not trace.get_current_span().get_span_context().is_valid and len(known) == 1:
            # Settled outside its handler: keep it in the delivery's own trace, under its span.
            consume_sc = known[0].span_context
            if consume_sc is not None and consume_sc.is_valid:
                parent = trace.set_span_in_context(NonRecordingSpan(consume_sc))
        return self.tracer.start_span(
            destination.span_name,
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=links,
        )
