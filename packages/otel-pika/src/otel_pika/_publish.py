"""Publish: one PRODUCER span per user call, and an ERROR span for a message the broker returns.

``BlockingChannel.basic_publish`` delegates to ``Channel.basic_publish`` of its underlying channel.
The blocking wrapper makes the span (it sees the publisher-confirm outcome: ``UnroutableError``,
``NackError``); the async wrapper skips channels owned by a ``BlockingChannel``, so there is
exactly one span per user call on every adapter.
"""

from __future__ import annotations

from typing import Any, Callable, Final

from pika.exceptions import NackError, UnroutableError
from pika.spec import BasicProperties

from otel_messaging_core import (
    BROKER_NACK,
    UNROUTABLE,
    Publish,
    Wrapper,
    capture_internal_exceptions,
    records_nothing,
)
from otel_pika._state import ChannelState, bypass_if_blocking

__all__ = ["blocking_publish", "channel_publish", "returned"]

Resolver = Callable[[Any], "ChannelState | None"]

_PUBLISH: Final = capture_internal_exceptions("pika publish")
_RETURNED: Final = capture_internal_exceptions("pika returned message")


def _start(
    state: ChannelState, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Publish | None, tuple[Any, ...], dict[str, Any]] | None:
    """The publish span (``None`` on the unsampled fast path: no span, nothing to count), and
    the call's arguments with a copy of the properties carrying context (the caller's own
    arguments when nothing was added to the message)."""
    telemetry = state.telemetry
    if telemetry is None:
        return None
    count = len(args)
    properties = args[3] if count > 3 else kwargs.get("properties")
    headers = None if properties is None else properties.headers
    # decided first: inside an unsampled parent only the context travels (docs/architecture.md)
    sent = telemetry.unsampled_publish(headers)
    op = None
    if sent is False:
        exchange = args[0] if count > 0 else kwargs.get("exchange", "")
        routing_key = args[1] if count > 1 else kwargs.get("routing_key", "")
        body = args[2] if count > 2 else kwargs.get("body")
        if type(exchange) is not str or type(routing_key) is not str:
            return None  # pika rejects it; let it say so
        if type(body) is not bytes:
            # pika accepts str (sent as UTF-8); anything else it rejects itself
            body = body.encode("utf-8") if type(body) is str else None
        destination = state.destinations.get("publish", exchange, routing_key)
        if properties is None:
            op = telemetry.start_publish(destination, None, body=body, raw=None)
        else:
            op = telemetry.start_publish(
                destination,
                headers,
                message_id=properties.message_id,
                correlation_id=properties.correlation_id,
                body=body,
                raw=properties,
            )
        sent = op.headers
        if records_nothing(op):  # a trace its sampler did not sample, nothing to count
            op = None
    if sent is headers:
        return op, args, kwargs  # nothing added: pika gets exactly the caller's arguments
    try:
        with_context = _with_headers(properties, sent)
    except Exception as internal:  # the caller's message goes out as it is, without context
        _PUBLISH.report(internal)
        return op, args, kwargs
    if count > 3:
        args = (*args[:3], with_context, *args[4:])
    else:
        kwargs["properties"] = with_context  # wrapt hands each call a dict of its own
    return op, args, kwargs


def _with_headers(properties: Any, headers: Any) -> Any:
    """Properties to send: ``properties`` with ``headers``, as a shallow copy; the caller's
    object and headers stay as they were (they are often reused for many publishes)."""
    if properties is None:
        return BasicProperties(headers=headers)
    cls: Any = type(properties)
    sent = cls.__new__(cls)
    fields = properties.__dict__.copy()
    fields["headers"] = headers
    sent.__dict__ = fields
    return sent


def channel_publish(resolve: Resolver) -> Wrapper:
    """``Channel.basic_publish`` (SelectConnection, AsyncioConnection and the other adapters)."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        started = None
        try:
            state = resolve(instance)
            # a BlockingChannel's publish made the span
            if state is not None and not state.blocking:
                started = _start(state, args, kwargs)
        except Exception as internal:
            _PUBLISH.report(internal)
        if started is None:
            with _PUBLISH:  # a BlockingChannel's: its next publishes skip this wrapper
                bypass_if_blocking(instance, "basic_publish")
            return wrapped(*args, **kwargs)
        op, args, kwargs = started
        if op is None:
            return wrapped(*args, **kwargs)
        with op:
            return wrapped(*args, **kwargs)

    return wrapper


def _failure(exc: BaseException) -> str | None:
    """``error.type`` of a blocking publish that raised: the broker's answer when it is one."""
    if isinstance(exc, UnroutableError):
        return UNROUTABLE
    if isinstance(exc, NackError):
        return BROKER_NACK
    return None


def blocking_publish(resolve: Resolver) -> Wrapper:
    """``BlockingChannel.basic_publish``, including the wait for a publisher confirm."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        started = None
        try:
            state = resolve(instance._impl)
            if state is not None:
                state.blocking = True  # pika drops the link to us when the channel closes: keep it
                started = _start(state, args, kwargs)
        except Exception as internal:
            _PUBLISH.report(internal)
        if started is None:
            return wrapped(*args, **kwargs)
        op, args, kwargs = started
        if op is None:
            return wrapped(*args, **kwargs)
        with op.classified(_failure):
            return wrapped(*args, **kwargs)

    return wrapper


def _record_return(state: ChannelState, instance: Any, args: tuple[Any, ...]) -> None:
    telemetry = state.telemetry
    if telemetry is None:
        return
    if state.blocking and getattr(instance._get_cookie(), "_delivery_confirmation", False):
        return  # confirm mode: the blocking publish raises UnroutableError on its own span
    method_frame, header_frame, body = args[:3]
    method = method_frame.method
    properties = header_frame.properties
    destination = state.destinations.get("publish", method.exchange, method.routing_key)
    telemetry.record_returned(
        destination,
        properties.headers,
        reply_code=method.reply_code,
        reply_text=method.reply_text,
        message_id=properties.message_id,
        correlation_id=properties.correlation_id,
        body=body if type(body) is bytes else None,
    )


def returned(resolve: Resolver) -> Wrapper:
    """``Channel._on_return``: every ``basic.return`` passes here, whether or not the user
    registered a return callback; the user's callbacks run afterwards, untouched."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        with _RETURNED:
            state = resolve(instance)
            if state is not None:
                _record_return(state, instance, args)
        return wrapped(*args, **kwargs)

    return wrapper
