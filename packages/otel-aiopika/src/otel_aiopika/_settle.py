"""Settle: ``IncomingMessage.ack`` / ``nack`` / ``reject``, and the outcome of ``message.process()``.

Spans follow SPEC: one per settle with ``settle_spans=True``; a nack/reject without requeue
always gets one, as ERROR (aio-pika's ``reject()`` and ``process()`` do not requeue by default).
``ProcessContext.__aexit__`` settles the message itself (ack on success, reject on an exception);
when an exception made it reject, that exception is recorded on the reject span.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Callable, Final

from otel_aiopika._state import (
    CHANNEL_ATTR,
    DELIVERIES_ATTR,
    SCOPES,
    Record,
    deliveries_of,
    message_channel,
    server_of,
)
from otel_messaging_core import (
    MessagingTelemetry,
    Settle,
    Wrapper,
    capture_internal_exceptions,
    delivery_queue,
    records_nothing,
)

__all__ = ["process_exit", "settle"]

Wrapped = Callable[..., Any]

# The exception raised inside ``async with message.process():`` while aio-pika rejects for it.
_PROCESS_FAILURE: Final[ContextVar[BaseException | None]] = ContextVar(
    "otel_aiopika_process_failure", default=None
)
_PROCESS_EXIT: Final = capture_internal_exceptions("aio-pika message.process() exit")


def _arguments(operation: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, bool]:
    """``(multiple, requeue)`` of an aio-pika settle call, with aio-pika's defaults."""
    count = len(args)
    if operation == "reject":  # reject(requeue=False)
        return False, bool(args[0] if count else kwargs.get("requeue", False))
    multiple = bool(args[0] if count else kwargs.get("multiple", False))
    if operation == "nack":  # nack(multiple=False, requeue=True)
        return multiple, bool(args[1] if count > 1 else kwargs.get("requeue", True))
    return multiple, True  # ack(multiple=False)


#: what a settle that records something settles: the telemetry, the records it takes from the
#: ledger (those that telemetry made), requeue, the delivery tag
Settling = tuple[MessagingTelemetry, list[Record], bool, int]


def _quiet(operation: str, message: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """The usual ack, decided first: ``ack()`` of a recorded delivery whose telemetry (still in
    use) has nothing to record for it (``quiet_settle``); its record is forgotten here. ``False``:
    :func:`_settling` decides (a nack or reject, ``multiple``, no record, ...)."""
    if operation != "ack" or (args[0] if args else kwargs.get("multiple")):  # ack(multiple=False)
        return False
    # deliveries_of(message_channel(message), create=False), without the two calls
    deliveries = getattr(getattr(message, CHANNEL_ATTR, None), DELIVERIES_ATTR, None)
    if deliveries is None:
        return False
    tag = message.delivery_tag
    records = deliveries.records
    record = records.get(tag) if type(tag) is int else None
    if record is None or record[0] not in SCOPES.live or not record[0].quiet_settle():
        return False
    del records[tag]
    return True


def _settling(
    operation: str, message: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Settling | None:
    """The records a settle call settles, taken from the ledger, and the telemetry to record it
    with; ``None``: nothing to record (not traced, or the usual ack: ``quiet_settle``)."""
    multiple, requeue = _arguments(operation, args, kwargs)
    tag = message.delivery_tag
    if type(tag) is not int:
        return None
    deliveries = deliveries_of(message_channel(message), create=False)
    records = deliveries.take(tag, multiple) if deliveries is not None else []
    live = SCOPES.live
    telemetry = None
    for record in records:  # the telemetry that recorded the delivery, if still in use
        if record[0] in live:
            telemetry = record[0]
            break
    if telemetry is None:
        if records:  # recorded by an instrumentation that was since removed
            return None
        recorded_by = deliveries.telemetry if deliveries is not None else None
        telemetry = recorded_by if recorded_by in live else SCOPES.global_
    if telemetry is None or ((requeue or operation == "ack") and telemetry.quiet_settle()):
        return None
    return telemetry, [record for record in records if record[0] is telemetry], requeue, tag


def _start(operation: str, message: Any, settling: Settling) -> Settle | None:
    telemetry, records, requeue, tag = settling
    fallback = None
    if not requeue and not records:
        # A message not seen delivered (consumed before instrumentation) is still dropped
        # or dead-lettered here: that must not be silent.
        exchange = message.exchange if type(message.exchange) is str else ""
        routing_key = message.routing_key if type(message.routing_key) is str else ""
        fallback = telemetry.destinations(*server_of(message_channel(message))).get(
            "process", exchange, routing_key, delivery_queue(exchange, routing_key)
        )
    op = telemetry.start_settle(
        operation,
        [record[1] for record in records],
        requeue=requeue,
        delivery_tag=tag,
        fallback=fallback,
    )
    return None if records_nothing(op) else op


def settle(operation: str) -> Wrapper:
    """The wrapper of ``IncomingMessage.{operation}``.

    Not a coroutine function itself: a settle with nothing to record (the usual ack) returns
    aio-pika's own coroutine for the caller to await, with no coroutine of ours around it; the
    deliveries' records are taken when the settle is called. A settle that records starts its
    span or metric in our coroutine, around aio-pika's."""
    guard = capture_internal_exceptions(f"aio-pika {operation}")

    async def recorded(
        settling: Settling,
        wrapped: Wrapped,
        message: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        op = None
        with guard:
            op = _start(operation, message, settling)
        if op is None:
            return await wrapped(*args, **kwargs)
        # inside ProcessContext.__aexit__, the exception that made it settle
        with op.caused_by(_PROCESS_FAILURE.get()):
            return await wrapped(*args, **kwargs)

    def wrapper(
        wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        settling = None
        try:
            if SCOPES.live and not _quiet(operation, instance, args, kwargs):
                settling = _settling(operation, instance, args, kwargs)
        except Exception as internal:
            guard.report(internal)
        if settling is None:
            return wrapped(*args, **kwargs)
        return recorded(settling, wrapped, instance, args, kwargs)

    return wrapper


async def process_exit(
    wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``ProcessContext.__aexit__``: the block's exception reaches the settle it causes."""
    token = None
    with _PROCESS_EXIT:
        exc = args[1] if len(args) > 1 else kwargs.get("exc_val")
        if isinstance(exc, BaseException) and SCOPES.live:
            token = _PROCESS_FAILURE.set(exc)
    if token is None:
        return await wrapped(*args, **kwargs)
    try:
        return await wrapped(*args, **kwargs)
    finally:
        with _PROCESS_EXIT:
            _PROCESS_FAILURE.reset(token)
