"""Settle: ``basic_ack`` / ``basic_nack`` / ``basic_reject`` on both channel kinds.

Spans follow SPEC (every settle with ``settle_spans=True``; a nack/reject without requeue always,
as ERROR). ``BlockingChannel`` settles through its underlying ``Channel``: the async wrapper skips
channels owned by a ``BlockingChannel`` (which also keeps pika's own internal rejects, of
deliveries it never handed to the user, out of the telemetry). A ``BlockingChannel``'s first
settle binds the plain settle function on it (``traced``'s ``shadow``): its next ones skip
wrapt's dispatch.
"""

from __future__ import annotations

from typing import Any, Callable, Final

from otel_messaging_core import Settle, Wrapper, records_nothing
from otel_pika._state import ChannelState
from otel_pika._traced import Resolver, traced

__all__ = ["settle"]


def _start(
    state: ChannelState, args: tuple[Any, ...], kwargs: dict[str, Any], operation: str
) -> tuple[Settle | None, tuple[Any, ...], dict[str, Any]]:
    telemetry = state.telemetry
    if telemetry is None:
        return None, args, kwargs
    if operation == "ack" and not kwargs and len(args) == 1:  # basic_ack(delivery_tag)
        tag = args[0]
        if type(tag) is not int:
            tag = 0  # pika's default (None in older releases) means "the last message"
        if telemetry.quiet_settle():  # the usual ack: decided before anything else is read
            state.deliveries.pop(tag, None)  # DeliveryLedger.forget(tag, False), without the call
            return None, args, kwargs
        multiple = False
        requeue = True
    else:
        count = len(args)
        tag = args[0] if count > 0 else kwargs.get("delivery_tag")
        if operation == "reject":
            multiple = False
            requeue = args[1] if count > 1 else kwargs.get("requeue", True)
        else:
            multiple = args[1] if count > 1 else kwargs.get("multiple", False)
            if operation == "nack":
                requeue = args[2] if count > 2 else kwargs.get("requeue", True)
            else:
                requeue = True
        if type(tag) is not int:
            tag = 0  # pika's default (None in older releases) means "the last / every message"
        requeue = bool(requeue)
        if requeue and telemetry.quiet_settle():  # nothing to record, nothing to build
            if multiple:
                state.deliveries.forget(tag, True)
            else:  # DeliveryLedger.forget(tag, False), without the call
                state.deliveries.pop(tag, None)
            return None, args, kwargs
    deliveries = state.take(tag, bool(multiple))
    fallback = None
    if not requeue and not any(deliveries):
        # A message we did not see delivered (consumed before instrumentation) is still
        # dropped or dead-lettered here: that must not be silent.
        fallback = state.destinations.get("process", "", "", "")
    op = telemetry.start_settle(
        operation,
        deliveries,
        requeue=requeue,
        delivery_tag=tag or None,
        fallback=fallback,
    )
    if records_nothing(op):  # nothing to end
        return None, args, kwargs
    return op, args, kwargs


def _factory(operation: str, blocking: bool) -> Callable[[Resolver], Wrapper]:
    name = f"basic_{operation}"
    return traced(
        _start,
        operation,
        where=f"pika {operation}",
        blocking=blocking,
        bypass=None if blocking else name,
        shadow=name if blocking else None,
    )


# made once: a shadowed method's PlainMethods is registered when its factory is made
_FACTORIES: Final = {
    (operation, blocking): _factory(operation, blocking)
    for operation in ("ack", "nack", "reject")
    for blocking in (False, True)
}


def settle(operation: str, *, blocking: bool) -> Callable[[Resolver], Wrapper]:
    """The wrapper factory for ``basic_{operation}`` of ``BlockingChannel`` or ``Channel``."""
    return _FACTORIES[operation, blocking]
