"""The unsampled fast path (issue 18): what a plugin's wrapper calls first for a message whose
trace is not sampled, so that it pays only for what a non-recording message needs (the context
read, the headers written, the handler's context made current, and for a manual-ack delivery the
ledger's record that its ack/nack/reject settles, forgotten by the usual ack when it has nothing
to record: :meth:`~UnsampledFastPath.quiet_settle`). Mixed into
:class:`~otel_messaging_core.telemetry.MessagingTelemetry`; docs/architecture.md shows where each
plugin calls it.
"""

from __future__ import annotations

from typing import Any, Callable, Final, Literal, Mapping

from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, TraceFlags

from otel_messaging_core._private_api import REAL_INSTRUMENT, SPAN_KEY, SUPPRESS_KEY, get_current
from otel_messaging_core.attributes import Destination
from otel_messaging_core.guard import log_internal_error
from otel_messaging_core.operations import Consume, Delivery, Publish, Settle, headers_to_send
from otel_messaging_core.propagation import extract_context, fast_extract, inject_span

__all__ = ["UnsampledFastPath", "records_nothing"]

_SAMPLED: Final = int(TraceFlags.SAMPLED)
#: a traceparent's flags field of a not-sampled trace, as writers spell it (02: the random flag)
_UNSAMPLED_FLAGS: Final = frozenset({"00", "02"})


def records_nothing(op: Publish | Settle) -> bool:
    """True for a publish whose ``end()`` records nothing: above all one that started a trace
    its sampler did not sample while no MeterProvider is set
    (:meth:`~otel_messaging_core.telemetry.MessagingTelemetry.start_publish`), or a settle with
    no span and no MeterProvider (an ack without ``settle_spans``). A plugin can then send
    ``op.headers`` and drop the operation (no ``with`` block, no awaitable of its own), unless it
    matches returned messages to the operation's span."""
    return op.recorder is None


class UnsampledFastPath:
    """The two fast-path methods of :class:`~otel_messaging_core.telemetry.MessagingTelemetry`,
    which sets the attributes below once per instrumentor."""

    _meter_proxy: Any  # MessagingMetrics' proxy instrument (None: metrics always recorded)
    _settle_spans: bool
    _parent_mode: Literal["parent", "link"]
    _drops_fixed: bool | None  # an explicit provider's sampler decision; None: ask each time
    _drops_unsampled: Callable[[], bool]

    def unsampled_publish(
        self, headers: Mapping[Any, Any] | None
    ) -> Mapping[Any, Any] | Literal[False] | None:
        """The fast path of a publish inside a span that was not sampled: the headers to send,
        or ``False`` when the publish takes the general path (:meth:`start_publish`).

        It applies when the current span is valid and not sampled, the sampler follows the
        parent (no span would be recorded: :mod:`~otel_messaging_core.sampling`), nothing
        suppresses instrumentation and no MeterProvider is set (so there is nothing to count or
        time). The returned headers are then a copy of ``headers`` carrying the parent's context
        and the current baggage, or ``headers`` itself when nothing was added (``sent is
        headers``: send the caller's message as given), exactly as :meth:`start_publish` would
        send them; the caller sends them and does nothing else. Called first by a plugin's
        publish wrapper, before it reads anything else of the call (docs/architecture.md).
        """
        try:
            current = get_current()
            parent: Span | None = current.get(SPAN_KEY)  # type: ignore[assignment]
            if parent is None:
                return False
            span_context = parent.get_span_context()
            proxy = self._meter_proxy  # MessagingMetrics.idle, read without a call
            if (
                span_context.trace_flags & _SAMPLED
                or not span_context.is_valid
                or current.get(SUPPRESS_KEY)
                or proxy is None
                or getattr(proxy, REAL_INSTRUMENT) is not None
                or not (self._drops_unsampled() if self._drops_fixed is None else self._drops_fixed)
            ):
                return False
            carrier = dict(headers) if headers else {}
            inject_span(carrier, parent, current)
            return headers_to_send(carrier, headers)
        except Exception as internal:
            log_internal_error("unsampled publish", internal)
            return False

    def unsampled_consume(self, headers: Mapping[Any, Any] | None) -> Context | None:
        """The fast path of a pushed message whose trace was not sampled: the context to run its
        handler in, or ``None`` when the message takes the general path (:meth:`start_consume`).

        It applies when the message carries a ``traceparent`` with the not-sampled flag, no span
        is current, ``consumer_context="parent"``, the sampler follows the parent (no span would
        be recorded), nothing suppresses instrumentation and no MeterProvider is set. The
        context is the message's own (its span context and baggage), what the general path
        makes current when it skips the span; the caller makes it current around the handler
        (``attach`` / ``restore``) and does nothing else; for a manual-ack delivery it also
        keeps :meth:`unsampled_delivery`'s record in the channel's ledger, so that the later
        ack/nack/reject settles as on the general path.
        """
        try:
            if not headers:
                return None
            try:
                value = headers.get("traceparent")
            except Exception:  # an exotic mapping, bytes keys under python -bb: the general path
                return None
            # not sampled: flags "00", or "02" (the random-trace-id flag of W3C Trace Context
            # level 2, which opentelemetry-sdk 1.4x writes on every trace it starts); a sampled
            # or malformed one, or another spelling of the key, goes the general way
            if (
                type(value) is not str
                or value[-2:] not in _UNSAMPLED_FLAGS
                or self._parent_mode != "parent"
            ):
                return None
            current = get_current()
            proxy = self._meter_proxy  # MessagingMetrics.idle, read without a call
            if (
                # a consumer's usual context is the empty one: nothing to read in it
                (current and (current.get(SPAN_KEY) is not None or current.get(SUPPRESS_KEY)))
                or proxy is None
                or getattr(proxy, REAL_INSTRUMENT) is not None
                or not (self._drops_unsampled() if self._drops_fixed is None else self._drops_fixed)
            ):
                return None
            # The usual message (a traceparent alone) is read directly: its flags are the ones
            # seen above and its ids were checked, so it is what we want as it is.
            creation = fast_extract(headers, value)
            if creation is None:  # baggage, tracestate, ...: read in full, then checked
                creation = extract_context(headers)
                producer: Span | None = creation.get(SPAN_KEY)  # type: ignore[assignment]
                if producer is None:
                    return None
                span_context = producer.get_span_context()
                if span_context.trace_flags & _SAMPLED or not span_context.is_valid:
                    return None
            return creation
        except Exception as internal:
            log_internal_error("unsampled consume", internal)
            return None

    def quiet_settle(self) -> bool:
        """True when an ack, or a nack/reject that requeues, records nothing: no ``settle_spans``
        and no MeterProvider (the usual settle, whatever the message's trace). The plugin's settle
        wrapper asks it first, before it builds anything: it then only forgets the settled
        deliveries' records (:meth:`~otel_messaging_core.DeliveryLedger.forget`) and calls the
        client, what :meth:`start_settle` would come to after more work. A nack/reject without
        requeue always takes :meth:`start_settle` (it is an ERROR span)."""
        proxy = self._meter_proxy  # MessagingMetrics.idle, read without a call
        return (
            not self._settle_spans and proxy is not None and getattr(proxy, REAL_INSTRUMENT) is None
        )

    @staticmethod
    def unsampled_delivery(
        context: Context, destination: Destination, delivery_tag: int | None
    ) -> Delivery:
        """The settle record of a manual-ack delivery that took :meth:`unsampled_consume`'s fast
        path (``context`` is what it returned): the record :meth:`start_consume` keeps for a
        message that makes no span, so its ack/nack/reject (:meth:`start_settle`) records what
        it would after the general path. No span was made, so the message's producer is both
        the link and the parent of a settle span made outside the handler."""
        producer: Span = context[SPAN_KEY]  # type: ignore[assignment]  # checked by unsampled_consume
        span_context = producer.get_span_context()
        return Delivery(destination, delivery_tag, span_context, span_context)

    @staticmethod
    def unsampled_tracked(
        context: Context, destination: Destination, delivery_tag: int | None
    ) -> Consume:
        """For a plugin that keeps the operation on the message (kombu): the :class:`Consume`
        :meth:`start_consume` returns for a message that makes no span and counts nothing, with
        :meth:`unsampled_delivery`'s record; its ``end()`` does nothing (so it reads no clock)."""
        producer: Span = context[SPAN_KEY]  # type: ignore[assignment]  # checked by unsampled_consume
        span_context = producer.get_span_context()
        delivery = Delivery(destination, delivery_tag, span_context, span_context)
        return Consume(None, destination, INVALID_SPAN, context, delivery, 0.0)
