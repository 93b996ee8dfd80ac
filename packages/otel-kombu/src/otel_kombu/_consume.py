"""Consume: a process span per message handed to a ``Consumer``, a receive span per pulled message.

``Consumer._receive_callback`` is where every transport hands a delivery to a consumer, whether
``Connection.drain_events``, ``ConsumerMixin`` or Celery's event loop drives it; it decodes the
message and calls ``on_message`` or every callback in turn. Wrapping it gives one process span
covering all of them, with the span's context current while they run and restored afterwards.

The span needs kombu's ``Message`` (its headers, and the place to keep the delivery record for a
later ack). Virtual transports (memory, Redis, ...) deliver one; pyamqp delivers an
``amqp.Message`` that ``_receive_callback`` converts first thing with the channel's
``message_to_python``. So for a traced consumer the wrapper runs kombu's few lines itself
(:func:`_process`: convert, start the span on the ``Message``, decode, call back), the one
interception per message; ``message_to_python`` stays wrapped only to find consumers that started
before ``instrument()``, and a traced consumer's conversion goes past that wrapper.

Pulls (``Queue.get``, which ``SimpleQueue.get_nowait`` uses, and ``SimpleQueue.get`` /
``SimpleBuffer.get``, which drain into a buffer) get a receive span and leave the caller's context
as it was; :func:`message_context` makes the message's context current for a block.
"""

from __future__ import annotations

from contextvars import Token
from time import perf_counter
from types import MethodType
from typing import Any, Callable, Final

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from otel_kombu._binding import SCOPES, Binding, binding_for, connection_of_channel
from otel_kombu._celery import task_id
from otel_kombu._publish import forget_shadows
from otel_kombu._util import body_size
from otel_messaging_core import (
    Consume,
    MessageContext,
    PlainMethods,
    Shadows,
    attach,
    capture_internal_exceptions,
    message_context_of,
    restore,
)

__all__ = [
    "MESSAGE_ATTR",
    "SKIPPED",
    "forget_sweeps",
    "message_context",
    "wrap_consume",
    "wrap_drain_events",
    "wrap_virtual_message_to_python",
    "wrap_message_to_python",
    "wrap_queue_get",
    "wrap_receive_callback",
    "wrap_simple_get",
]

# On a kombu Message: its Consume operation (or SKIPPED), so the ack can link to it and it is
# freed with the message.
MESSAGE_ATTR: Final = "_otel_kombu"
# On the Consumer that a SimpleQueue/SimpleBuffer owns: its deliveries get receive spans in get().
_SIMPLE_ATTR: Final = "_otel_kombu_simple"
# On a kombu Connection: the instrumentation generation its consumers were last checked at.
_SWEPT_ATTR: Final = "_otel_kombu_swept"
# _Route.channel until the consumer's channel is known
_UNKNOWN: Final = object()
# Connections whose drain_events is shadowed by kombu's own bound method (see _sweep)
_SWEPT: Final = Shadows()

_PROCESS: Final = capture_internal_exceptions("kombu process")
_RECEIVE: Final = capture_internal_exceptions("kombu receive")
_CONSUMER: Final = capture_internal_exceptions("kombu consumer sweep")
_MESSAGE_CONTEXT: Final = capture_internal_exceptions("kombu message_context()")


class _Skipped:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<not traced: skip_celery_messages>"


SKIPPED: Final = _Skipped()


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


def _converter(channel: Any) -> Any:
    """The channel's ``message_to_python`` as kombu's ``_receive_callback`` looks it up, minus our
    own wrapper (which only sweeps, :func:`wrap_message_to_python`): one interception a message."""
    found = _CONVERTER.of(type(channel))  # None: not ours, looked up as kombu does
    if found is not None and "message_to_python" not in getattr(channel, "__dict__", ()):
        return MethodType(found, channel)
    return getattr(channel, "message_to_python", None)


def _handle(consumer: Any, message: Any) -> Any:
    """The rest of kombu's ``Consumer._receive_callback`` (kombu 5.3 to 5.7), once converted."""
    on_m = consumer.on_message
    try:
        accept = consumer.accept
        if accept is not None:
            message.accept = accept
        if message.errors:
            return message._reraise_error(consumer.on_decode_error)
        decoded = None if on_m else message.decode()
    except Exception as exc:
        if not consumer.on_decode_error:
            raise
        consumer.on_decode_error(message, exc)
        return None
    return on_m(message) if on_m else consumer.receive(decoded, message)


def _end(op: Consume, exc: BaseException | None = None) -> None:
    try:
        op.end(exc)
    except Exception as internal:
        _PROCESS.report(internal)
        with _PROCESS:
            op.deactivate()  # whatever failed, the caller's context comes back


def _process(consumer: Any, binding: Binding, message: Any, m2p: Any) -> Any:
    """Kombu's ``_receive_callback`` with the process span: convert the delivery (pyamqp's raw
    ``amqp.Message``) to kombu's ``Message`` with ``m2p`` (:func:`_converter`), start the span on
    it, then decode and call back."""
    try:
        if m2p:
            message = m2p(message)
    except Exception as exc:  # as kombu: the consumer's on_decode_error, or raise
        if not consumer.on_decode_error:
            raise
        consumer.on_decode_error(message, exc)
        return None
    op: Consume | None = None
    context: Context | None = None
    token: Token[Context] | None = None
    try:
        info = message.delivery_info
        # a no_ack consumer's messages are never settled: no delivery record to keep (pyamqp)
        no_ack = getattr(consumer.channel, "no_ack_consumers", None)
        track = not (no_ack and info and info.get("consumer_tag") in no_ack)
        # the unsampled fast path (docs/architecture.md); a skipped Celery message goes the
        # general way (which marks it). A never-settled delivery (no_ack) keeps nothing on the
        # message: message_context() builds the same context from its headers.
        headers = message.headers
        skip = binding.celery_skip
        if skip is None or not skip.skips(headers, (info or {}).get("exchange") or ""):
            context = binding.telemetry.unsampled_consume(headers)  # type: ignore[union-attr]
        if context is not None:
            token = attach(context)  # the callbacks run in it
            if track:  # a settle will read the record on the message
                _track_unsampled(binding, consumer, message, info, context)
        else:
            queue = _queue_of(consumer, info)
            op = _start(binding, "process", queue, message, track=track)
            if op is not None:
                op.activate()
    except Exception as internal:
        _PROCESS.report(internal)
    if token is not None:
        try:
            return _handle(consumer, message)
        finally:
            restore(token)
    if op is None:
        return _handle(consumer, message)
    try:
        result = _handle(consumer, message)
    except BaseException as exc:
        _end(op, exc)
        raise
    _end(op)
    return result


def _track_unsampled(
    binding: Binding, consumer: Any, message: Any, info: Any, context: Context
) -> None:
    """On a delivery a later ack/reject settles: the operation :func:`_start` would leave on it
    for a message whose trace is not sampled (its settle record, its context)."""
    info = info or {}
    destination = binding.destinations.get(
        "process",
        info.get("exchange") or "",
        info.get("routing_key") or "",
        _queue_of(consumer, info),
    )
    telemetry = binding.telemetry
    assert telemetry is not None
    tag = message.delivery_tag
    tracked = telemetry.unsampled_tracked(context, destination, tag if type(tag) is int else None)
    setattr(message, MESSAGE_ATTR, tracked)


def _binding_to_process(consumer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The binding to trace this delivery with, or ``None``: pass it through (callers guard)."""
    if len(args) != 1 or kwargs:
        return None
    return _binding_of(consumer)


def _binding_of(consumer: Any) -> Binding | None:
    """The binding to trace ``consumer``'s deliveries with, or ``None`` (callers guard)."""
    if consumer.__dict__.get(_SIMPLE_ATTR):
        return None
    binding = binding_for(connection_of_channel(consumer.channel))
    return binding if binding.telemetry is not None else None


def wrap_receive_callback(
    wrapped: Callable[..., Any], consumer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Consumer._receive_callback``: one process span around decoding and every callback."""
    binding: Binding | None = None
    try:
        binding = _binding_to_process(consumer, args, kwargs)
    except Exception as internal:
        _PROCESS.report(internal)
    if binding is None:
        return wrapped(*args, **kwargs)
    return _process(consumer, binding, args[0], _converter(consumer.channel))


# -- one plain call a delivery ---------------------------------------------------------------------
#
# A consumer hands the channel its bound ``_receive_callback`` when it starts consuming; through
# the class wrapper that is a wrapt bound wrapper, one dispatch per delivery. Consumer.consume
# (once per consumer) binds a plain function on the consumer first, so the channel holds that
# instead; only for a class whose _receive_callback is ours unchanged. After uninstrument() it
# passes deliveries to kombu's own method (as the wrapt wrapper a channel may hold does). What a
# delivery needs of its consumer (the binding, the channel's converter) is kept on the bound
# function's _Route and looked up again when the consumer's channel (kombu revives a consumer on
# a new channel after a reconnect or failover) or the instrumentation changes.

# Consumer class -> its _receive_callback as kombu defines it, or None (not ours: keep the class's)
_RECEIVER: Final = PlainMethods("_receive_callback", wrap_receive_callback)
_receiver: Final = _RECEIVER.of
_CONSUMERS: Final = Shadows(_RECEIVER)


class _Route:
    """A shadowed consumer and what its deliveries need, looked up again when its channel or the
    instrumentation changes (or a ``SimpleQueue.get`` claims it): its binding (``None``: pass
    through) and its channel's ``message_to_python`` (:func:`_converter`)."""

    __slots__ = ("binding", "channel", "consumer", "convert", "generation")

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.channel: Any = _UNKNOWN
        self.generation = -1
        self.binding: Binding | None = None
        self.convert: Any = None

    def refresh(self, channel: Any) -> None:
        self.channel = _UNKNOWN  # until found
        self.binding = _binding_of(self.consumer)
        self.convert = _converter(channel) if self.binding is not None else None
        self.generation = SCOPES.generation
        self.channel = channel


def _shadow_receive_callback(route: _Route, *args: Any, **kwargs: Any) -> Any:
    consumer = route.consumer
    binding: Binding | None = None
    try:
        if len(args) == 1 and not kwargs:
            channel = consumer.channel
            if route.channel is not channel or route.generation != SCOPES.generation:
                route.refresh(channel)
            binding = route.binding
    except Exception as internal:
        _PROCESS.report(internal)
    if binding is not None:
        return _process(consumer, binding, args[0], route.convert)
    original = _receiver(type(consumer))
    if original is None:  # not instrumented any more: kombu's own method (or a wrapper of it)
        return type(consumer)._receive_callback(consumer, *args, **kwargs)
    return original(consumer, *args, **kwargs)


def _forget_route(consumer: Any) -> None:
    """``consumer``'s deliveries look their route up again (a SimpleQueue claimed them)."""
    bound = consumer.__dict__.get("_receive_callback")
    if type(bound) is MethodType and isinstance(bound.__self__, _Route):
        bound.__self__.channel = _UNKNOWN


def wrap_consume(
    wrapped: Callable[..., Any], consumer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Consumer.consume``: bind the plain ``_receive_callback`` on the consumer (see above)
    before kombu hands it to the channel."""
    try:
        state = consumer.__dict__
        if "_receive_callback" not in state and _receiver(type(consumer)) is not None:
            _CONSUMERS.bind(
                consumer, "_receive_callback", _shadow_receive_callback, _Route(consumer)
            )
    except Exception as internal:
        _CONSUMER.report(internal)
    return wrapped(*args, **kwargs)


def wrap_message_to_python(
    wrapped: Callable[..., Any], channel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A channel's ``message_to_python`` (pyamqp's, the virtual transports'): kombu's own
    ``_receive_callback`` calls it for every message, so a consumer that started before
    ``instrument()`` and is driven by an event loop (Celery's worker never calls
    ``Connection.drain_events``) is rewired here; it is traced from its next message on. A traced
    consumer converts its messages past this wrapper (:func:`_converter`)."""
    try:
        _sweep_if_changed(connection_of_channel(channel))
    except Exception as internal:
        _CONSUMER.report(internal)
    return wrapped(*args, **kwargs)


# kept for the patch list: the same wrapper serves every transport
wrap_virtual_message_to_python: Final = wrap_message_to_python


# Channel class -> its message_to_python as kombu defines it, or None (not ours)
_CONVERTER: Final = PlainMethods("message_to_python", wrap_message_to_python)


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
            _forget_route(simple.consumer)
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
    if type(traced) is MethodType and traced.__func__ is not _shadow_receive_callback:
        return None  # kombu's own method still (not instrumented)
    return traced


def _sweep(connection: Any) -> None:
    """Trace what a connection set up before instrumentation (see :func:`wrap_drain_events`)."""
    generation = SCOPES.generation
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

    _SWEPT.bind(connection, "drain_events", _unwrapped(Connection, "drain_events"))


def forget_sweeps() -> None:
    """Instrumentation changed: every connection's drain_events checks its consumers again, and
    every producer goes through the class's (maybe unwrapped) methods again."""
    forget_shadows()
    # a channel keeps the shadow it was given (it passes through when not instrumented)
    _CONSUMERS.forget()
    _CONVERTER.clear()
    _SWEPT.forget()


def _sweep_if_changed(connection: Any) -> None:
    if connection is not None and connection.__dict__.get(_SWEPT_ATTR) != SCOPES.generation:
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
