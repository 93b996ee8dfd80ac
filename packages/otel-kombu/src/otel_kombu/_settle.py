"""Settle: ``Message.ack``, ``Message.reject`` and ``Message.requeue``.

The delivery record the consume span left on the message names the queue and links the settle
span to the message's creation and its process/receive span. A message consumed without it (before
``instrument()``, or by code this package does not wrap) is named from its delivery info.
Following SPEC, a reject without requeue is always an ERROR span (``error.type=rejected``); an ack
or a requeue gets a span only with ``settle_spans=True``; every call records the duration metric.
The usual ack (no settle spans, no MeterProvider: ``quiet_settle``) is decided first and only
calls kombu.
"""

from __future__ import annotations

from typing import Any, Callable

from otel_kombu._binding import Binding, binding_for, connection_of_channel
from otel_kombu._consume import MESSAGE_ATTR, SKIPPED
from otel_messaging_core import (
    Consume,
    MessagingTelemetry,
    Settle,
    Wrapper,
    call_in,
    capture_internal_exceptions,
    records_nothing,
)

__all__ = ["wrap_ack", "wrap_reject", "wrap_requeue"]


def _start(
    message: Any,
    binding: Binding,
    telemetry: MessagingTelemetry,
    operation: str,
    requeue: bool,
) -> Settle | None:
    tracked = getattr(message, MESSAGE_ATTR, None)
    if tracked is SKIPPED:
        return None
    channel = message.channel
    if channel is None:  # kombu raises MessageStateError: nothing to settle
        return None
    if operation == "ack":
        # kombu's ack is a no-op for a message delivered to a no_ack consumer (pyamqp)
        no_ack = getattr(channel, "no_ack_consumers", None)
        if no_ack and (message.delivery_info or {}).get("consumer_tag") in no_ack:
            return None
    delivery = tracked.delivery if isinstance(tracked, Consume) else None
    fallback = None
    if delivery is None:
        info = message.delivery_info or {}
        exchange = info.get("exchange") or ""
        skip = binding.celery_skip
        if skip is not None and skip.skips(message.headers, exchange):
            return None
        fallback = binding.destinations.get("process", exchange, info.get("routing_key") or "")
    tag = message.delivery_tag
    op = telemetry.start_settle(
        operation,
        (delivery,),
        requeue=requeue,
        delivery_tag=tag if type(tag) is int else None,
        fallback=fallback,
    )
    return None if records_nothing(op) else op


def _wrapper(operation: str, requeue: bool | None, doc: str) -> Wrapper:
    """The wrapper of ``Message.<name>`` settling with ``operation``; ``requeue`` ``None``: the
    call's ``requeue`` argument (``Message.reject(requeue=False)``)."""
    guard = capture_internal_exceptions(f"kombu {operation}")

    def wrapper(
        wrapped: Callable[..., Any], message: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        op = None
        try:
            binding = binding_for(connection_of_channel(message.channel))
            telemetry = binding.telemetry
            if telemetry is not None:
                keep = requeue
                if keep is None:
                    keep = bool(args[0] if args else kwargs.get("requeue", False))
                # the usual ack, decided first: nothing to record (no ledger: the delivery's
                # record on the message goes with it)
                if not (keep and telemetry.quiet_settle()):
                    op = _start(message, binding, telemetry, operation, keep)
        except Exception as internal:
            guard.report(internal)
        if op is None:  # the usual ack: kombu's own call, without call_in's
            return wrapped(*args, **kwargs)
        return call_in(op, wrapped, args, kwargs)

    wrapper.__doc__ = doc
    return wrapper


wrap_ack: Wrapper = _wrapper("ack", True, "``Message.ack(multiple=False)``.")
wrap_reject: Wrapper = _wrapper(
    "reject",
    None,
    "``Message.reject(requeue=False)``: without requeue the message is dropped or dead-lettered.",
)
wrap_requeue: Wrapper = _wrapper("reject", True, "``Message.requeue()``: a reject with requeue.")
