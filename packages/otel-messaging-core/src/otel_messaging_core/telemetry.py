"""MessagingTelemetry: the tracer, meter and options of one instrumentor, and the ``start_*``
methods that make every per-message operation (:mod:`~otel_messaging_core.operations`).

A plugin's wrapper reads the library call's arguments, gets a :class:`Destination` from a
:class:`DestinationCache`, and then, with the guard of its place
(:class:`~otel_messaging_core.guard.capture_internal_exceptions`, made once at import)::

    op = None
    with _PUBLISH:                                  # our step before the call
        op = telemetry.start_publish(destination, headers, ...)
    if op is None:
        return original(*args, **kwargs)
    with op:                                        # ends the span, ERROR if the call raises
        return original(*args, **kwargs)            # the user's call and exception, unchanged

Every ``start_*`` method and every method of the returned operation objects also catches its own
failures (logged once per place); the plugin's guard is what holds if one of them is itself broken
(the fault-injection tests replace each with one that raises). Work that only a recording span
needs (hooks, envelopes, header capture) is skipped for unsampled messages.
"""

from __future__ import annotations

from time import perf_counter, time_ns
from typing import Any, Final, Mapping

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

from otel_messaging_core import dead_letters
from otel_messaging_core._private_api import (
    REAL_INSTRUMENT,
    SPAN_KEY,
    SUPPRESS_KEY,
    get_current,
    sampler_drops_unsampled,
)
from otel_messaging_core.attributes import (
    HEADER_ATTRIBUTE_PREFIX,
    MESSAGING_BODY_SIZE,
    MESSAGING_CONVERSATION_ID,
    MESSAGING_MESSAGE_ID,
    MESSAGING_RABBITMQ_DELIVERY_TAG,
    SYSTEM_RABBITMQ,
    Destination,
    DestinationCache,
)
from otel_messaging_core.consumer import consumer_parent, handling_parent
from otel_messaging_core.envelope import envelope_of
from otel_messaging_core.fast_path import UnsampledFastPath
from otel_messaging_core.guard import call_hook, log_internal_error
from otel_messaging_core.metrics import MessagingMetrics
from otel_messaging_core.operations import (
    Consume,
    Delivery,
    Publish,
    Settle,
    headers_to_send,
)
from otel_messaging_core.options import InstrumentationOptions
from otel_messaging_core.propagation import (
    extract_context,
    header_texts,
    inject_span,
)
from otel_messaging_core.returned import ReturnedMessages
from otel_messaging_core.sampling import UnsampledShortcut
from otel_messaging_core.settling import SettleOperations

__all__ = [
    "TRUNCATED_MARK",
    "Consume",
    "Delivery",
    "MessagingTelemetry",
    "Publish",
    "Settle",
    "is_suppressed",
]

_SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.44.0"
#: Ends a captured header value cut at ``capture_headers_max_length`` characters.
TRUNCATED_MARK: Final = "...[truncated]"
_SAMPLED: Final = int(TraceFlags.SAMPLED)
_PRODUCER: Final = SpanKind.PRODUCER
_new_object: Final = object.__new__

Attributes = dict[str, AttributeValue]


def is_suppressed(context: Context | None = None) -> bool:
    """True inside ``suppress_instrumentation()``: no spans, no metrics (publish still injects)."""
    return bool(otel_context.get_value(SUPPRESS_KEY, context))


class MessagingTelemetry(UnsampledFastPath, ReturnedMessages, SettleOperations):
    """Tracer, meter and options of one instrumentor; makes the spans of every operation.

    One instance per ``instrument()`` / ``instrument_channel()`` call. Plugins keep a
    :class:`DestinationCache` per connection (from :meth:`destinations`) so names and constant
    attributes are built once per destination, not per message.
    """

    def __init__(
        self,
        options: InstrumentationOptions,
        *,
        instrumentation_name: str,
        version: str,
    ) -> None:
        self.options = options
        self.tracer = trace.get_tracer(
            instrumentation_name, version, options.tracer_provider, schema_url=_SCHEMA_URL
        )
        self.metrics = MessagingMetrics(
            instrumentation_name, version, options.meter_provider, schema_url=_SCHEMA_URL
        )
        self._publish_hook = options.publish_hook
        self._consume_hook = options.consume_hook
        self._parent_mode = options.consumer_context
        self._settle_spans = options.settle_spans
        self._capture = tuple(options.capture_headers)
        self._capture_max = options.capture_headers_max_length
        self._baggage_names = tuple(options.baggage_attributes)
        self._caches: dict[tuple[str, str | None, int | None], DestinationCache] = {}
        # the sampler shortcut, bound once: one call per message, as when it was a method here
        shortcut = UnsampledShortcut(options.tracer_provider)
        self._skips_child_of = shortcut.skips_child_of
        self._drops_unsampled = shortcut.drops_unsampled
        # An explicit provider's sampler does not change: whether it drops every span under a
        # not-sampled parent is decided here, once (None: the global provider, asked each time).
        sampler = getattr(options.tracer_provider, "sampler", None)
        self._drops_fixed = None if sampler is None else sampler_drops_unsampled(sampler)
        # the proxy instrument behind MessagingMetrics.idle (None: metrics always recorded)
        self._meter_proxy = self.metrics._proxy

    # -- names ---------------------------------------------------------------------------------

    def destinations(
        self,
        server_address: str | None = None,
        server_port: int | None = None,
        system: str = SYSTEM_RABBITMQ,
    ) -> DestinationCache:
        """The destination cache shared by every channel of one broker address."""
        key = (system, server_address, server_port)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = DestinationCache(
                system=system, server_address=server_address, server_port=server_port
            )
        return cache

    # -- per-message helpers ---------------------------------------------------------------------

    def _message_attributes(
        self,
        destination: Destination,
        headers: Mapping[Any, Any] | None,
        context: Context | None,
        message_id: object,
        correlation_id: object,
        body: bytes | None,
        body_size: int | None,
        delivery_tag: int | None,
    ) -> Attributes:
        """The span attributes of one message: the destination's constant ones, the message's own
        (its size is ``len(body)`` unless ``body_size`` is given), and the optional ones (the
        baggage entries of ``context``, the captured ``headers``)."""
        # the read-only view's copy() is the underlying dict's (docs/benchmarks.md: costs)
        attributes: Attributes = destination.attributes.copy()  # type: ignore[attr-defined]
        if message_id:
            attributes[MESSAGING_MESSAGE_ID] = (
                message_id if type(message_id) is str else str(message_id)
            )
        if correlation_id:
            attributes[MESSAGING_CONVERSATION_ID] = (
                correlation_id if type(correlation_id) is str else str(correlation_id)
            )
        if body_size is not None:
            attributes[MESSAGING_BODY_SIZE] = body_size
        elif body is not None:
            attributes[MESSAGING_BODY_SIZE] = len(body)
        if delivery_tag is not None and destination.amqp:
            attributes[MESSAGING_RABBITMQ_DELIVERY_TAG] = delivery_tag
        if self._capture or self._baggage_names:
            self._add_optional_attributes(attributes, headers, context)
        return attributes

    def _add_optional_attributes(
        self, attributes: Attributes, headers: Mapping[Any, Any] | None, context: Context | None
    ) -> None:
        if self._baggage_names:
            entries = baggage.get_all(context)
            if entries:
                for name in self._baggage_names:
                    value = entries.get(name)
                    if value is not None:
                        attributes[name] = str(value)
        if self._capture and headers:
            limit = self._capture_max
            for name, text in header_texts(headers, self._capture).items():
                if len(text) > limit:  # a 20 kB header is not a span attribute
                    text = text[:limit] + TRUNCATED_MARK
                attributes[HEADER_ATTRIBUTE_PREFIX + name] = text

    # -- publish -----------------------------------------------------------------------------------

    def start_publish(
        self,
        destination: Destination,
        headers: Mapping[Any, Any] | None,
        message_id: object = None,
        correlation_id: object = None,
        body: bytes | None = None,
        body_size: int | None = None,
        raw: Any = None,
    ) -> Publish:
        """Start the PRODUCER span and build the headers to send: a copy with the context injected.

        ``message_id``, ``correlation_id``: the message's ids (``None`` or empty: none), ``body``
        its bytes (or ``body_size`` alone, when the bytes are not at hand), ``raw`` the library's
        own message object for the publish hook's envelope. Plugins pass them positionally, every
        one, also when they are ``None``: one call shape for every message, and a keyword call
        costs more per message than a positional one.
        """
        try:
            current = get_current()
            carrier = dict(headers) if headers else {}
            if current.get(SUPPRESS_KEY):
                propagate.inject(carrier, context=current)
                return Publish.noop(headers_to_send(carrier, headers))
            parent: Span | None = current.get(SPAN_KEY)  # type: ignore[assignment]
            if parent is not None and self._skips_child_of(parent.get_span_context()):
                # Not sampled upstream, and the sampler follows the parent: the span would be a
                # no-op, so send the parent's context on as it is (the trace id and the
                # not-sampled flag reach the next hop all the same) and only count the message.
                inject_span(carrier, parent, current)
                if len(carrier) == (len(headers) if headers else 0):  # nothing added, maybe
                    return Publish(
                        self, destination, INVALID_SPAN, headers_to_send(carrier, headers)
                    )
                return Publish(self, destination, INVALID_SPAN, carrier)
            attributes = self._message_attributes(
                destination, headers, current, message_id, correlation_id, body, body_size, None
            )
            # positional, in the order of the API's Tracer.start_span: (name, context, kind,
            # attributes); a keyword call costs more per message
            span = self.tracer.start_span(destination.span_name, current, _PRODUCER, attributes)
            inject_span(carrier, span, current)
            if span.is_recording():
                if self._publish_hook is not None:
                    envelope = envelope_of(
                        destination, body, carrier, message_id, correlation_id, raw
                    )
                    call_hook(self._publish_hook, span, envelope)
            elif (proxy := self._meter_proxy) is not None and getattr(
                proxy, REAL_INSTRUMENT
            ) is None:
                # MessagingMetrics.idle, read without a call: not sampled and nothing to count,
                # so nothing to end or time (the span, which ends as a no-op, stays on the
                # operation for a plugin matching returns). Made without Publish.__init__: its
                # clock read is for end(), which returns at once for it (no telemetry)
                op: Publish = _new_object(Publish)
                op.recorder = None
                op._token = None
                op.destination = destination
                op.span = span
                if len(carrier) != (len(headers) if headers else 0):  # the usual case
                    op.headers = carrier
                else:
                    op.headers = headers_to_send(carrier, headers)
                return op
            if len(carrier) == (len(headers) if headers else 0):  # nothing added, maybe
                return Publish(self, destination, span, headers_to_send(carrier, headers))
            return Publish(self, destination, span, carrier)
        except Exception as internal:
            log_internal_error("publish start", internal)
            return Publish.noop(headers)

    # -- consume -----------------------------------------------------------------------------------

    def start_consume(
        self,
        destination: Destination,
        headers: Mapping[Any, Any] | None,
        *,
        delivery_tag: int | None = None,
        message_id: object = None,
        correlation_id: object = None,
        body: bytes | None = None,
        body_size: int | None = None,
        redelivered: bool | None = None,
        raw: Any = None,
        track_delivery: bool = False,
        started: float | None = None,
    ) -> Consume:
        """Start the process (CONSUMER) or receive (CLIENT) span of a delivered message.

        The returned :class:`Consume` carries the handling context; the plugin makes it current
        around the user's handler (:meth:`Consume.activate`/:meth:`Consume.end`) or, for a single
        pull, leaves the caller's context alone. ``track_delivery=True`` (manual acks) keeps a
        small :class:`Delivery` record for the settle span. ``started`` is a
        :func:`time.perf_counter` value taken when a pull began: the receive span and its
        duration then cover the pull, although the span can only start once the message (and so
        its parent) is known.
        """
        try:
            current = otel_context.get_current()
            if current.get(SUPPRESS_KEY):
                return Consume.noop()
            creation = extract_context(headers)
            parent, parent_span_context, creation_sc = consumer_parent(
                creation, self._parent_mode, current
            )
            if self._skips_child_of(parent_span_context):
                # The message's trace is not sampled and the sampler follows the parent: no span,
                # the handler runs in the message's own (non-recording) context; counted only.
                delivery = None
                if track_delivery:
                    delivery = Delivery(destination, delivery_tag, creation_sc, parent_span_context)
                # nothing to count (no MeterProvider): nothing to time or end, only the context
                counted = None if self.metrics.idle else self
                return Consume(counted, destination, INVALID_SPAN, parent, delivery, started)
            links = [] if creation_sc is None else [Link(creation_sc)]
            attributes = self._message_attributes(
                destination, headers, parent, message_id, correlation_id, body, body_size,
                delivery_tag,
            )  # fmt: skip
            death = None  # broker-side losses (dead_letters): one check for most messages
            if destination.amqp and (redelivered or (headers and dead_letters.MARKER in headers)):
                death = dead_letters.read(headers, redelivered)
                if death is not None:
                    attributes.update(death.attributes)
            span = self.tracer.start_span(
                destination.span_name,
                context=parent,
                kind=SpanKind.CONSUMER if destination.operation == "process" else SpanKind.CLIENT,
                attributes=attributes,
                links=links,
                start_time=(
                    None if started is None else time_ns() - int((perf_counter() - started) * 1e9)
                ),
            )
            if death is not None and death.reason is not None:
                dead_letters.record(self.tracer, span, death)
            if self._consume_hook is not None and span.is_recording():
                envelope = envelope_of(
                    destination, body, headers, message_id, correlation_id, raw, delivery_tag,
                    redelivered,
                )  # fmt: skip
                call_hook(self._consume_hook, span, envelope)
            delivery = None
            if track_delivery:
                delivery = Delivery(
                    destination,
                    delivery_tag,
                    creation_sc,
                    span.get_span_context(),
                    {n: attributes[n] for n in self._baggage_names if n in attributes} or None
                    if self._baggage_names
                    else None,
                )
            return Consume(
                self, destination, span, trace.set_span_in_context(span, parent), delivery, started
            )
        except Exception as internal:
            log_internal_error("consume start", internal)
            return Consume.noop()

    # -- pulled messages ---------------------------------------------------------------------------

    def handling_context(self, headers: Mapping[Any, Any] | None) -> Context:
        """The context to handle a message in when no receive span was recorded for it."""
        parent, _links = handling_parent(extract_context(headers), self._parent_mode)
        return parent
