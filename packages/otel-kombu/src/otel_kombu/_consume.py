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

import weakref
from time import perf_counter
from types import MethodType
from typing import Any, Callable, Final

from opentelemetry import context as otel_context

from otel_kombu._binding import REGISTRY, Binding, binding_for, connection_of_channel
from otel_kombu._celery import task_id
from otel_kombu._util import body_size
from otel_messaging_core import (
    Consume,
    MessageContext,
    capture_internal_exceptions,
    message_context_of,
)

__all__ = [
    "MESSAGE_ATTR",
    "SKIPPED",
    "forget_sweeps",
    "message_context",
    "wrap_drain_events",
    "wrap_virtual_message_to_python",
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
# On a kombu Connection: the instrumentation generation its consumers were last checked at.
_SWEPT_ATTR: Final = "_otel_kombu_swept"
# Connections whose drain_events is shadowed by kombu's own bound method (see _sweep)
_shadowed: weakref.WeakSet[Any] = weakref.WeakSet()

_PROCESS: Final = capture_internal_exceptions("kombu process")
_RECEIVE: Final = capture_internal_exceptions("kombu receive")
_CONSUMER: Final = capture_internal_exceptions("kombu consumer sweep")
_MESSAGE_CONTEXT: Final = capture_internal_exceptions("kombu message_context()")


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
    skip = binding.celery_skip
    if skip is not None and skip.skips(headers, exchange):
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
        # a Celery task has no message_id: its task id, as Celery's own spans record it
        message_id=properties.get("message_id") or task_id(headers),
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
    return _start(binding, "process", queue, message, track=track), None


def _end(op: Consume | None, exc: BaseException | None = None) -> None:
    if op is not None:
        try:
            op.end(exc)
        except Exception as internal:
            _PROCESS.report(internal)
            with _PROCESS:
                op.deactivate()  # whatever failed, the caller's context comes back


def wrap_receive_callback(
    wrapped: Callable[..., Any], consumer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Consumer._receive_callback``: one process span around decoding and every callback."""
    op: Consume | None = None
    pending: _Pending | None = None
    try:
        op, pending = _prepare_process(consumer, args[0] if args else kwargs["message"])
        if op is not None:
            op.activate()
    except Exception as internal:
        _PROCESS.report(internal)
    if op is None and pending is None:
        return wrapped(*args, **kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _end(pending.op if pending is not None else op, exc)
        raise
    if pending is not None:
        op = pending.op
    if op is not None:
        try:
            op.end()
        except Exception as internal:
            _PROCESS.report(internal)
            with _PROCESS:
                op.deactivate()  # whatever failed, the caller's context comes back
    return result


def wrap_message_to_python(
    wrapped: Callable[..., Any], channel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """pyamqp ``Channel.message_to_python``: start the pending process span on the kombu Message."""
    message = wrapped(*args, **kwargs)
    try:
        state = getattr(args[0] if args else kwargs.get("raw_message"), "__dict__", None)
        pending = state.pop(MESSAGE_ATTR, None) if state else None
        if type(pending) is _Pending:
            op = pending.op = _start(
                pending.binding, "process", pending.queue, message, track=pending.track
            )
            if op is not None:
                op.activate()
        else:
            # a get, or a consumer that started before instrument(): kombu's own
            # _receive_callback calls this for every message, so a consumer driven by an event
            # loop (Celery's worker never calls Connection.drain_events) is rewired here and
            # traced from its next message on
            _sweep_if_changed(connection_of_channel(channel))
    except Exception as internal:
        _PROCESS.report(internal)
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
        with _RECEIVE:
            _receive(queue.channel, queue.name, message, started)
    return message


def wrap_simple_get(
    wrapped: Callable[..., Any], simple: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``SimpleQueue.get`` / ``SimpleBuffer.get``: a receive span for the message handed out."""
    started = perf_counter()
    block = True
    with _RECEIVE:
        block = args[0] if args else kwargs.get("block", True)
        if block:
            # its deliveries reach the buffer through Consumer callbacks: no process span for those
            simple.consumer.__dict__[_SIMPLE_ATTR] = True
    if not block:
        return wrapped(*args, **kwargs)  # get_nowait -> Queue.get, traced there
    message = wrapped(*args, **kwargs)
    with _RECEIVE:
        _receive(simple.channel, simple.queue.name, message, started)
    return message


# -- consumers that were consuming before instrument() ----------------------------------------------


def _unwrapped(owner: Any, name: str) -> Any:
    """``owner.name`` as it is without our wrapper (what the wrapper wraps)."""
    found = owner.__dict__.get(name)
    return getattr(found, "__wrapped__", found)


def _rewired(callback: Any, original: Any, name: str) -> Any:
    """For a plain bound method of ``original`` (bound before instrumentation): the same
    object's ``name`` looked up anew, which is our wrapper now; else ``None``."""
    if type(callback) is not MethodType or callback.__func__ is not original:
        return None
    traced = getattr(callback.__self__, name)
    return None if type(traced) is MethodType else traced


def _sweep(connection: Any) -> None:
    """Trace what a connection set up before instrumentation (see :func:`wrap_drain_events`)."""
    generation = REGISTRY.generation
    if binding_for(connection).telemetry is not None:
        from kombu.messaging import Consumer

        receive = _unwrapped(Consumer, "_receive_callback")
        transport_connection = connection._connection
        # pyamqp: amqp.Connection.channels (by id), each with its consumer-tag -> callback map
        # and its method listeners (basic.return's is bound when the channel opens); virtual
        # transports keep a list of channels, with neither map
        channels = getattr(transport_connection, "channels", None) or ()
        for channel in list(channels.values() if isinstance(channels, dict) else channels):
            callbacks = getattr(channel, "callbacks", None)
            if isinstance(callbacks, dict):
                for tag, callback in list(callbacks.items()):
                    traced = _rewired(callback, receive, "_receive_callback")
                    if traced is not None:
                        callbacks[tag] = traced
            listeners = getattr(channel, "_callbacks", None)
            if isinstance(listeners, dict):
                from amqp.channel import Channel as AmqpChannel

                on_return = _unwrapped(AmqpChannel, "_on_basic_return")
                for method, listener in list(listeners.items()):
                    traced = _rewired(listener, on_return, "_on_basic_return")
                    if traced is not None:
                        listeners[method] = traced
        # virtual transports (Redis, memory, ...): the transport's queue -> callback map holds
        # closures over the consumer's callback (kombu.transport.virtual.Channel.basic_consume)
        for closure in list(getattr(transport_connection, "_callbacks", {}).values()):
            for cell in getattr(closure, "__closure__", None) or ():
                traced = _rewired(cell.cell_contents, receive, "_receive_callback")
                if traced is not None:
                    cell.cell_contents = traced
    connection.__dict__[_SWEPT_ATTR] = generation
    # Until instrumentation changes, this connection's drain_events has nothing more to do:
    # kombu's own method, bound on the object, shadows the class's wrapper, so a drain loop pays
    # nothing for this check (forget_sweeps() takes the shadow back).
    from kombu.connection import Connection

    connection.__dict__["drain_events"] = MethodType(
        _unwrapped(Connection, "drain_events"), connection
    )
    _shadowed.add(connection)


def forget_sweeps() -> None:
    """Instrumentation changed: every connection's drain_events checks its consumers again."""
    for connection in list(_shadowed):
        shadow = connection.__dict__.get("drain_events")
        if type(shadow) is MethodType and shadow.__self__ is connection:
            del connection.__dict__["drain_events"]
    _shadowed.clear()


def _sweep_if_changed(connection: Any) -> None:
    if connection is not None and connection.__dict__.get(_SWEPT_ATTR) != REGISTRY.generation:
        _sweep(connection)


def wrap_drain_events(
    wrapped: Callable[..., Any], connection: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``kombu.Connection.drain_events``: before the first drain since instrumentation changed,
    trace the consumers that were already consuming on this connection.

    A consumer hands the channel its bound ``_receive_callback`` when it starts consuming, so one
    that started before ``instrument()`` holds the unwrapped method; this swaps it for the wrapped
    one (per connection, once per change of instrumentation), so such consumers are traced from
    their next message on.
    """
    try:
        _sweep_if_changed(connection)
    except Exception as internal:
        _CONSUMER.report(internal)
    return wrapped(*args, **kwargs)


def wrap_virtual_message_to_python(
    wrapped: Callable[..., Any], channel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A virtual transport's ``Channel.message_to_python``: kombu's ``_receive_callback`` calls
    it for every message, traced consumer or not, so a consumer that started before
    ``instrument()`` and is driven by an event loop (Celery's worker reads through the
    transport's ``on_readable``, never ``Connection.drain_events``) is rewired here; it is
    traced from its next message on."""
    try:
        _sweep_if_changed(connection_of_channel(channel))
    except Exception as internal:
        _CONSUMER.report(internal)
    return wrapped(*args, **kwargs)


def message_context(message: Any) -> MessageContext:
    """``with otel_kombu.message_context(message):`` handle a pulled message in its own trace.

    Makes the message's receive span (or, without one, its creation context under the
    ``consumer_context`` rule) and its baggage current for the block, and restores the previous
    context afterwards. A plain context manager: works the same in sync and async code.
    """
    context = headers = telemetry = None
    try:
        op = getattr(message, MESSAGE_ATTR, None)
        context = op.context if isinstance(op, Consume) else None
        if context is None:
            headers = message.headers
            telemetry = binding_for(connection_of_channel(message.channel)).telemetry
    except Exception as internal:  # the block runs in the current context
        _MESSAGE_CONTEXT.report(internal)
        return MessageContext(otel_context.get_current())
    return message_context_of(context, headers, telemetry)
