"""Messages the broker returned as unroutable (``basic.return``) after their publish call ended.
Mixed into :class:`~otel_messaging_core.telemetry.MessagingTelemetry`."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Tracer

from otel_messaging_core._private_api import SUPPRESS_KEY
from otel_messaging_core.attributes import UNROUTABLE, Destination
from otel_messaging_core.consumer import creation_span_context
from otel_messaging_core.guard import log_internal_error
from otel_messaging_core.operations import set_error
from otel_messaging_core.propagation import extract_context

__all__ = ["ReturnedMessages"]


class ReturnedMessages:
    """:meth:`record_returned` of :class:`~otel_messaging_core.telemetry.MessagingTelemetry`."""

    tracer: Tracer

    _message_attributes: Callable[..., dict[str, Any]]

    def record_returned(
        self,
        destination: Destination,
        headers: Mapping[Any, Any] | None,
        *,
        reply_code: object = None,
        reply_text: object = None,
        message_id: object = None,
        correlation_id: object = None,
        body: bytes | None = None,
        body_size: int | None = None,
    ) -> None:
        """Record a mandatory publish that the broker returned as unroutable (``basic.return``).

        Where the return reaches the client after the publish call has finished (callbacks of
        pika's async adapters, say), the publish span has already ended OK. This makes a short
        PRODUCER span named like the publish, ERROR with ``error.type=unroutable``, in the
        publisher's trace: the returned message carries the headers the publish injected, so the
        span becomes a child of that publish span. ``destination`` is the publish destination
        (the return's exchange and routing key). Nothing is counted in the metrics (the publish
        was counted when it was sent). Never raises.
        """
        try:
            if otel_context.get_value(SUPPRESS_KEY):
                return
            creation = extract_context(headers)
            parent = creation if creation_span_context(creation) is not None else None
            attributes = self._message_attributes(
                destination, headers, creation, message_id, correlation_id, body, body_size, None
            )
            span = self.tracer.start_span(
                destination.span_name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes
            )
            reason = " ".join(str(p) for p in (reply_code, reply_text) if p is not None)
            set_error(
                span,
                UNROUTABLE,
                None,
                f"returned by the broker: {reason}" if reason else "returned by the broker",
            )
            span.end()
        except Exception as internal:
            log_internal_error("returned message", internal)
