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
    Publish,
    Wrapper,
    capture_internal_exceptions,
    publish_failure,
)
from otel_pika._state import ChannelState
from otel_pika._traced import Resolver, traced

__all__ = ["blocking_publish", "channel_publish", "returned"]

_PUBLISH: Final = capture_internal_exceptions("pika publish")
_RETURNED: Final = capture_internal_exceptions("pika returned message")
# error.type of a blocking publish that raised: the broker's answer when it is one
_failure: Final = publish_failure(unroutable=UnroutableError, broker_nack=NackError)


def _start(
    state: ChannelState,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    classify: Callable[[BaseException], str | None] | None = None,
) -> tuple[Publish | None, tuple[Any, ...], dict[str, Any]]:
    """The publish span (``None`` when nothing is traced, and on the unsampled fast path: no span,
    nothing to count), ``classify`` giving its exceptions' ``error.type``, and the call's arguments
    with a copy of the properties carrying context (the caller's own arguments when nothing was
    added to the message)."""
    telemetry = state.telemetry
    if telemetry is None:
        return None, args, kwargs
    if len(args) == 4:  # the usual call
        exchange, routing_key, body, properties = args
    else:
        exchange, routing_key, body, properties = _arguments(args, kwargs)
    headers = None if properties is None else properties.headers
    # decided first: inside an unsampled parent only the context travels (docs/architecture.md)
    sent = telemetry.unsampled_publish(headers)
    op = None
    if sent is False:
        if type(exchange) is not str or type(routing_key) is not str:
            return None, args, kwargs  # pika rejects it; let it say so
        if type(body) is not bytes:
            # pika accepts str (sent as UTF-8); anything else it rejects itself
            body = body.encode("utf-8") if type(body) is str else None
        op = telemetry.start_publish(
            state.destinations.get("publish", exchange, routing_key),
            headers,
            None if properties is None else properties.message_id,
            None if properties is None else properties.correlation_id,
            body,
            None,
            properties,
        )
        sent = op.headers
        # records_nothing(op) read inline (a call fewer per message): a trace its sampler did
        # not sample, nothing to count
        if op.recorder is None:
            op = None
        elif classify is not None:
            op.classified(classify)
    if sent is headers:
        return op, args, kwargs  # nothing added: pika gets exactly the caller's arguments
    try:
        with_context = _with_headers(properties, sent)
    except Exception as internal:  # the caller's message goes out as it is, without context
        _PUBLISH.report(internal)
        return op, args, kwargs
    if len(args) == 4:
        args = (exchange, routing_key, args[2], with_context)
    elif len(args) > 3:
        args = (*args[:3], with_context, *args[4:])
    else:
        kwargs["properties"] = with_context  # wrapt hands each call a dict of its own
    return op, args, kwargs


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """``(exchange, routing_key, body, properties)`` of a ``basic_publish`` call made with
    keywords or with ``mandatory`` (pika's defaults where one is missing: pika says what it
    rejects)."""
    count = len(args)
    return (
        args[0] if count > 0 else kwargs.get("exchange", ""),
        args[1] if count > 1 else kwargs.get("routing_key", ""),
        args[2] if count > 2 else kwargs.get("body"),
        args[3] if count > 3 else kwargs.get("properties"),
    )


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


#: ``Channel.basic_publish`` (SelectConnection, AsyncioConnection and the other adapters)
channel_publish: Final = traced(
    _start, None, where="pika publish", blocking=False, bypass="basic_publish"
)
#: ``BlockingChannel.basic_publish``, including the wait for a publisher confirm
blocking_publish: Final = traced(
    _start, _failure, where="pika publish", blocking=True, shadow="basic_publish"
)


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
