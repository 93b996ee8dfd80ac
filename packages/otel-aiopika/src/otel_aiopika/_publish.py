"""Publish: ``Exchange.publish`` (every exchange object, ``channel.default_exchange`` included).

One PRODUCER span per call. The caller's ``Message`` is never touched: the message handed to
aio-pika is a shallow copy (same body and properties) whose headers are a new dict holding the
caller's headers plus the trace context. With publisher confirms (aio-pika's default) the call
returns when the broker answered, so its outcome is the span's: a ``Basic.Nack`` raises
``aiormq.exceptions.DeliveryError`` (``error.type=broker_nack``); a mandatory message the broker
returns raises ``PublishError`` with ``on_return_raises=True`` or is returned as the call's
result otherwise (both ``error.type=unroutable``).
"""

from __future__ import annotations

from types import MethodType
from typing import Any, Callable, Final

import aio_pika.message
import aiormq
from aio_pika.message import Message

from otel_aiopika._state import SCOPES, resolve
from otel_messaging_core import (
    UNROUTABLE,
    PlainMethods,
    Publish,
    Shadows,
    capture_internal_exceptions,
    publish_failure,
)

__all__ = ["forget_shadows", "headers_of", "publish", "with_headers"]


_PUBLISH: Final = capture_internal_exceptions("aio-pika publish")
# error.type of a publish that raised: the broker's answer when it is one
_failure: Final = publish_failure(
    unroutable=aiormq.exceptions.PublishError, broker_nack=aiormq.exceptions.DeliveryError
)

# aio-pika 8.x keeps the AMQP table in ``headers_raw`` (``headers`` is a decoding proxy over it);
# aio-pika >= 9 keeps it in ``headers`` (``headers_raw`` is a deprecated, warning property).
_HEADERS_SLOT: Final = "headers_raw" if "headers_raw" in Message.__slots__ else "headers"
# aio-pika 8.x: ``headers`` reads through this proxy, which the copy must point at its headers
_HeaderProxy: Any = getattr(aio_pika.message, "HeaderProxy", None)


def headers_of(message: Any) -> Any:
    """The AMQP header table a message carries (never a decoding proxy, never a warning)."""
    return getattr(message, _HEADERS_SLOT, None)


class _Outgoing(Message):
    """What ``Exchange.publish`` is given instead of the caller's message: a view of it that
    holds other headers.

    A real copy costs far more than this one small object (docs/benchmarks.md: costs).
    ``Exchange.publish`` reads ``body`` and ``properties``; any other field reads through
    to the caller's message (``__getattr__`` runs for the view's unset slots), so the view also
    behaves as that message for subclasses and log lines. Nothing here writes to the caller's
    message or its headers.
    """

    __slots__ = ("_otel_headers", "_otel_message")

    @property
    def headers(self) -> Any:  # type: ignore[override]
        if _HEADERS_SLOT == "headers":  # aio-pika >= 9: the table itself
            return self._otel_headers
        return _HeaderProxy(self._otel_headers)  # aio-pika 8.x: a decoding proxy over it

    @property
    def headers_raw(self) -> Any:  # aio-pika 8.x keeps the table here
        return self._otel_headers

    @property
    def properties(self) -> Any:
        properties = self._otel_message.properties  # the caller's own (class's) properties
        properties.headers = self._otel_headers
        return properties

    def __getattr__(self, name: str) -> Any:
        return getattr(self._otel_message, name)

    def __repr__(self) -> str:
        return repr(self._otel_message)


_set_slot = object.__setattr__


def with_headers(message: Any, headers: Any) -> Any:
    """The message to publish in place of ``message``: the same fields, ``headers`` instead."""
    view = object.__new__(_Outgoing)
    _set_slot(view, "_otel_message", message)
    _set_slot(view, "_otel_headers", headers)
    _set_slot(view, "body", message.body)
    return view


def _returned(result: object) -> str | None:
    """With ``on_return_raises=False`` a returned mandatory message is the call's result."""
    if not isinstance(result, aiormq.abc.DeliveredMessage):
        return None
    frame = result.delivery
    if not isinstance(frame, aiormq.spec.Basic.Return):
        return None
    return f"returned by the broker: {frame.reply_code} {frame.reply_text}"


def _start(
    instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Publish | None, tuple[Any, ...], dict[str, Any]]:
    """The publish span (``None`` when nothing is traced, and on the unsampled fast path: no span,
    nothing to count), and the call's arguments with a view of the message that carries the
    context (the caller's own arguments when nothing was added to the message)."""
    state = resolve(instance.channel)
    if state is None:
        return None, args, kwargs
    telemetry = state.telemetry
    assert telemetry is not None
    message = args[0] if args else kwargs["message"]
    headers = headers_of(message)
    # decided first: inside an unsampled parent only the context travels (docs/architecture.md)
    sent = telemetry.unsampled_publish(headers)
    op = None
    if sent is False:
        routing_key = args[1] if len(args) > 1 else kwargs.get("routing_key", "")
        exchange = instance.name
        destination = state.destinations.get(
            "publish",
            exchange if type(exchange) is str else str(exchange or ""),
            routing_key if type(routing_key) is str else str(routing_key or ""),
        )
        op = telemetry.start_publish(
            destination,
            headers,
            message.message_id,
            message.correlation_id,
            message.body,
            None,
            message,
        )
        sent = op.headers
        # records_nothing(op) read inline (a call fewer per message): a trace its sampler did
        # not sample, nothing to count
        if op.recorder is None:
            op = None  # aio-pika's own coroutine is returned, no awaitable of ours
        else:
            op.classified(_failure)
    if sent is not headers:
        try:
            view = with_headers(message, sent)
        except Exception as internal:  # the caller's message goes out as it is, without context
            _PUBLISH.report(internal)
            return op, args, kwargs
        if args:
            args = (view, *args[1:])
        else:
            kwargs = {**kwargs, "message": view}
    return op, args, kwargs


async def _published(op: Publish, sending: Any) -> Any:
    """Await aio-pika's own publish coroutine, then end the span with its outcome."""
    with op:
        result = await sending
        if result is not None:
            with _PUBLISH:
                description = _returned(result)
                if description is not None:  # the block's end then does nothing
                    op.end(error_type=UNROUTABLE, description=description)
        return result


def publish(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Exchange.publish``: one PRODUCER span; the context travels in a copy of the message.

    Not a coroutine function itself: the span starts when ``publish()`` is called (the caller's
    context), and the awaitable returned is aio-pika's own coroutine when nothing is traced, else
    one coroutine that awaits it and ends the span: no second layer of wrapping.
    """
    op = None
    try:
        if "publish" not in getattr(instance, "__dict__", ("publish",)):  # the class wrapper
            _shadow(instance)
        op, args, kwargs = _start(instance, args, kwargs)
    except Exception as internal:
        _PUBLISH.report(internal)
    if op is None:
        return wrapped(*args, **kwargs)
    try:
        sending = wrapped(*args, **kwargs)
    except BaseException:  # arguments aio-pika's publish rejects (TypeError): ends the span
        with op:
            raise
    return _published(op, sending)


# -- one plain call -------------------------------------------------------------------------------
#
# A wrapt wrapper costs a dispatch per call. The first publish through the class wrapper binds a
# plain function on the exchange object itself (``channel.default_exchange`` and declared
# exchanges are long-lived), which shadows the class's wrapper; only for a class whose publish is
# ours unchanged (a subclass that overrides it keeps the class wrapper). Whenever
# instrumentation changes, forget_shadows() takes them back.

# Exchange class -> its publish as aio-pika defines it, or None (keep the class wrapper)
_PLAIN: Final = PlainMethods("publish", publish)
_SHADOWS: Final = Shadows(_PLAIN)


def _shadow_publish(exchange: Any, *args: Any, **kwargs: Any) -> Any:
    original = _PLAIN.cached(type(exchange))
    if original is None:  # instrumentation changed under it: the class's own
        return type(exchange).publish(exchange, *args, **kwargs)
    return publish(MethodType(original, exchange), exchange, args, kwargs)


_shadow_publish.__name__ = "publish"


def _shadow(exchange: Any) -> None:
    """Bind the plain wrapper on ``exchange`` (see above); callers guard."""
    if _PLAIN.of(type(exchange)) is None:
        return
    _SHADOWS.bind(exchange, "publish", _shadow_publish)


#: Instrumentation changed: every exchange goes through its class's publish again.
forget_shadows: Final = _SHADOWS.forget


SCOPES.listeners.append(forget_shadows)
