"""Consume: a process span per message handed to a ``Consumer``, a receive span per pulled message.

``Consumer._receive_callback`` is where every transport hands a delivery to a consumer, whether
``Connection.drain_events``, ``ConsumerMixin`` or Celery's event loop drives it; it decodes the
message and calls ``on_message`` or every callback in turn. Wrapping it gives one process span
covering all of them, with the span's context current while they run and restored afterwards.

The span needs kombu's ``Message`` (its headers, and the place to keep the delivery record for a
later ack). Virtual transports (memory, Redis, ...) deliver one; pyamqp delivers an
``amqp.Message`` that ``_receive_callback`` converts first thing with the channel's
``message_to_python``. For those, the wrapper leaves a small pending record on the raw message and
the wrapped ``message_to_python`` starts the span on the converted ``Message``.

Pulls (``Queue.get``, which ``SimpleQueue.get_nowait`` uses, and ``SimpleQueue.get`` /
``SimpleBuffer.get``, which drain into a buffer) get a receive span and leave the caller's context
as it was; :func:`message_context` makes the message's context current for a block.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Callable, Final

from opentelemetry import context as otel_context

from otel_kombu._binding import Binding, binding_for, connection_of_channel
from otel_kombu._celery import is_celery_message
from otel_kombu._util import body_size
from otel_messaging_core import (
    Consume,
    MessageContext,
    capture_internal_exceptions,
    extract_context,
    handling_parent,
    log_internal_error,
)

__all__ = [
    "MESSAGE_ATTR",
    "SKIPPED",
    "message_context",
    "wrap_message_to_python",
    "wrap_queue_get",
    "wrap_receive_callback",
    "wrap_simple_get",
]

# On a kombu Message: its Consume operation (or SKIPPED), so the ack can link to it and it is
# freed with the message. On a raw amqp.Message: the _Pending record until conversion.
MESSAGE_ATTR: Final = "_otel_kombu"
# On the Consumer that a SimpleQueue/SimpleBuffer owns: its deliveries get receive spans in get().
_SIMPLE_ATTR: Final = "_otel_kombu_simple"


class _Skipped:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<not traced: skip_celery_messages>"


SKIPPED: Final = _Skipped()


class _Pending:
    """A raw delivery waiting for kombu to convert it; the span starts on the converted message."""

    __slots__ = ("binding", "op", "queue", "track")

    def __init__(self, binding: Binding, queue: str, track: bool) -> None:
        self.binding = binding
        self.queue = queue
        self.track = track
        self.op: Consume | None = None


def _start(
    binding: Binding,
    operation: str,
    queue: str,
    message: Any,
    started: float | None = None,
    *,
    track: bool = True,
) -> Consume | None:
    """Start the process/receive operation of a kombu Message and keep it on the message."""
    headers = message.headers
    info = message.delivery_info or {}
    exchange = info.get("exchange") or ""
    if binding.skip_celery_messages and is_celery_message(headers, exchange):
        setattr(message, MESSAGE_ATTR, SKIPPED)
        return None
    telemetry = binding.telemetry
    assert telemetry is not None
    assert binding.destinations is not None
    destination = binding.destinations.get(
        operation, exchange, info.get("routing_key") or "", queue
    )
    properties = message.properties or {}
    tag = message.delivery_tag
    body = message.body
    op = telemetry.start_consume(
        destination,
        headers,
        delivery_tag=tag if type(tag) is int else None,
        message_id=properties.get("message_id"),
        correlation_id=properties.get("correlation_id"),
        body=body if type(body) is bytes else None,
        body_size=body_size(body),
        redelivered=info.get("redelivered"),
        raw=message,
        track_delivery=track,
        started=started,
    )
    try:
        setattr(message, MESSAGE_ATTR, op)
    except Exception:  # a message object that takes no attributes: end the span, report
        op.end()
        raise
    return op


def _queue_of(consumer: Any, info: Any) -> str:
    """The name of the consumer's queue a delivery came from (the declared name: a server-named
    queue keeps its empty key in ``Consumer._queues``)."""
    queues = consumer._queues
    if len(queues) == 1:
        for queue in queues.values():
            return str(queue.name)
    if not info:
        return ""
    tag = info.get("consumer_tag")
    if tag is not None:
        for name, active in consumer._active_tags.items():
            if active == tag:
                return str(name)
    # virtual transports do not say which consumer tag a delivery is for; match the binding
    exchange, routing_key = info.get("exchange"), info.get("routing_key")
    for queue in queues.values():
        bound = queue.exchange
        if bound is not None and bound.name == exchange and queue.routing_key == routing_key:
            return str(queue.name)
    return ""


def _prepare_process(consumer: Any, message: Any) -> tuple[Consume | None, _Pending | None]:
    if consumer.__dict__.get(_SIMPLE_ATTR):
        return None, None
    channel = consumer.channel
    binding = binding_for(connection_of_channel(channel))
    if binding.telemetry is None:
        return None, None
    info = message.delivery_info
    queue = _queue_of(consumer, info)
    # a no_ack consumer's messages are never settled: no delivery record to keep (pyamqp)
    no_ack = getattr(channel, "no_ack_consumers", None)
    track = not (no_ack and info and info.get("consumer_tag") in no_ack)
    if getattr(type(message), "ack", None) is None:
        # a raw amqp.Message: the span starts on kombu's Message (wrap_message_to_python)
        pending = _Pending(binding, queue, track)
        message.__dict__[MESSAGE_ATTR] = pending
        return None, pending
    op = _start(binding, "process", queue, message, track=track)
    if op is not None:
        op.activate()
    return op, None


def wrap_receive_callback(
    wrapped: Callable[..., Any], consumer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Consumer._receive_callback``: one process span around decoding and every callback."""
    op: Consume | None = None
    pending: _Pending | None = None
    try:
        op, pending = _prepare_process(consumer, args[0] if args else kwargs["message"])
    except Exception as internal:
        log_internal_error("kombu consume", internal)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        if pending is not None:
            op = pending.op
        if op is not None:
            op.end(exc)
        raise
    if pending is not None:
        op = pending.op
    if op is not None:
        op.end()
    return result


def wrap_message_to_python(
    wrapped: Callable[..., Any], channel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """pyamqp ``Channel.message_to_python``: start the pending process span on the kombu Message."""
    message = wrapped(*args, **kwargs)
    state = getattr(args[0] if args else kwargs.get("raw_message"), "__dict__", None)
    if state:
        pending = state.pop(MESSAGE_ATTR, None)
        if type(pending) is _Pending:
            try:
                op = pending.op = _start(
                    pending.binding, "process", pending.queue, message, track=pending.track
                )
                if op is not None:
                    op.activate()
            except Exception as internal:
                log_internal_error("kombu consume", internal)
    return message


def _receive(channel: Any, queue: str, message: Any, started: float) -> None:
    binding = binding_for(connection_of_channel(channel))
    if binding.telemetry is None or getattr(message, MESSAGE_ATTR, None) is not None:
        return
    op = _start(binding, "receive", queue, message, started)
    if op is not None:
        op.end()


def wrap_queue_get(
    wrapped: Callable[..., Any], queue: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``kombu.Queue.get`` (basic_get; also ``SimpleQueue.get_nowait``): a receive span per message."""
    started = perf_counter()
    message = wrapped(*args, **kwargs)
    if message is not None:
        with capture_internal_exceptions("kombu receive"):
            _receive(queue.channel, queue.name, message, started)
    return message


def wrap_simple_get(
    wrapped: Callable[..., Any], simple: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``SimpleQueue.get`` / ``SimpleBuffer.get``: a receive span for the message handed out."""
    block = args[0] if args else kwargs.get("block", True)
    if not block:
        return wrapped(*args, **kwargs)  # get_nowait -> Queue.get, traced there
    started = perf_counter()
    with capture_internal_exceptions("kombu receive"):
        # its deliveries reach the buffer through Consumer callbacks: no process span for those
        simple.consumer.__dict__[_SIMPLE_ATTR] = True
    message = wrapped(*args, **kwargs)
    with capture_internal_exceptions("kombu receive"):
        _receive(simple.channel, simple.queue.name, message, started)
    return message


def message_context(message: Any) -> MessageContext:
    """``with otel_kombu.message_context(message):`` handle a pulled message in its own trace.

    Makes the message's receive span (or, without one, its creation context under the
    ``consumer_context`` rule) and its baggage current for the block, and restores the previous
    context afterwards. A plain context manager: works the same in sync and async code.
    """
    try:
        op = getattr(message, MESSAGE_ATTR, None)
        context = op.context if isinstance(op, Consume) else None
        if context is None:
            headers = message.headers
            binding = binding_for(connection_of_channel(message.channel))
            if binding.telemetry is not None:
                context = binding.telemetry.handling_context(headers)
            else:
                context, _ = handling_parent(extract_context(headers), "parent")
    except Exception:
        log_internal_error("kombu message_context")
        context = otel_context.get_current()
    return MessageContext(context)
