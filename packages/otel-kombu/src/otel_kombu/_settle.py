"""Settle: ``Message.ack``, ``Message.reject`` and ``Message.requeue``.

The delivery record the consume span left on the message names the queue and links the settle
span to the message's creation and its process/receive span. A message consumed without it (before
``instrument()``, or by code this package does not wrap) is named from its delivery info.
Following SPEC, a reject without requeue is always an ERROR span (``error.type=rejected``); an ack
or a requeue gets a span only with ``settle_spans=True``; every call records the duration metric.
"""

from __future__ import annotations

from typing import Any, Callable, Final

from otel_kombu._binding import binding_for, connection_of_channel
from otel_kombu._consume import MESSAGE_ATTR, SKIPPED
from otel_messaging_core import (
    Consume,
    Settle,
    call_in,
    capture_internal_exceptions,
    records_nothing,
)

__all__ = ["wrap_ack", "wrap_reject", "wrap_requeue"]

_SETTLE: Final = capture_internal_exceptions("kombu settle")


def _start(message: Any, operation: str, requeue: bool) -> Settle | None:
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
    binding = binding_for(connection_of_channel(channel))
    telemetry = binding.telemetry
    if telemetry is None:
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
    return None if records_nothing(op) else op  # the usual ack: nothing to end


def _settle(
    wrapped: Callable[..., Any],
    message: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    operation: str,
    requeue: bool | None,
) -> Any:
    settle: Settle | None = None
    try:
        if requeue is None:  # Message.reject(requeue=False)
            requeue = bool(args[0] if args else kwargs.get("requeue", False))
        settle = _start(message, operation, requeue)
    except Exception as internal:
        _SETTLE.report(internal)
    return call_in(settle, wrapped, args, kwargs)


def wrap_ack(
    wrapped: Callable[..., Any], message: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Message.ack(multiple=False)``."""
    return _settle(wrapped, message, args, kwargs, "ack", True)


def wrap_reject(
    wrapped: Callable[..., Any], message: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Message.reject(requeue=False)``: without requeue the message is dropped or dead-lettered."""
    return _settle(wrapped, message, args, kwargs, "reject", None)


def wrap_requeue(
    wrapped: Callable[..., Any], message: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Message.requeue()``: a reject with requeue."""
    return _settle(wrapped, message, args, kwargs, "reject", True)
