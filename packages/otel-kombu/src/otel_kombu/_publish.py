"""Publish: one PRODUCER span per ``Producer.publish`` call, however many attempts kombu makes.

Like dd-trace-py's kombu integration, the span starts in ``Producer._publish``: kombu has already
serialised and compressed the body there and reduced the exchange to its name, so the attributes
cost no guessing. ``Producer.publish`` with ``retry=True`` hands ``_publish`` to
``Connection.ensure``, which calls it again after every recoverable error; so ``publish`` is
wrapped too, and for a retrying call it holds the operation that the first ``_publish`` started,
the later attempts reuse it (same span, same headers) and ``publish`` ends it once, with the
outcome the caller sees.

A message returned by the broker (``mandatory=True``) is known while the publish call is still
running only when the channel waits for a confirm (pyamqp ``confirm_publish=True``): amqp then
dispatches ``basic.return`` before ``basic.ack`` on the same thread, and the wrapped
``amqp.Channel._on_basic_return`` marks that publish ``unroutable``. Without confirms the return
arrives at some later ``drain_events``; the publish span has ended, so the core records a short
ERROR span under it (``record_returned``). A nack raises ``amqp.exceptions.MessageNacked``, which
becomes ``broker_nack``.
"""

from __future__ import annotations

import inspect
import threading
from types import MethodType
from typing import Any, Callable, Final

from otel_kombu._binding import Binding, binding_for, connection_of_channel
from otel_kombu._celery import task_id
from otel_kombu._util import body_size
from otel_messaging_core import (
    UNROUTABLE,
    PlainMethods,
    Publish,
    Shadows,
    capture_internal_exceptions,
    creation_span_context,
    extract_context,
    publish_failure,
)

__all__ = ["forget_shadows", "wrap_inner_publish", "wrap_on_basic_return", "wrap_publish"]

# Producer.publish(body, routing_key, delivery_mode, mandatory, immediate, priority, content_type,
#                  content_encoding, serializer, headers, compression, exchange, retry, ...)
_PUBLISH_HEADERS: Final = 9
_PUBLISH_COMPRESSION: Final = 10
_PUBLISH_RETRY: Final = 12
# Producer._publish(body, priority, content_type, content_encoding, headers, properties,
#                   routing_key, mandatory, immediate, exchange, declare, ...): the same positions
# in kombu 5.3 to 5.7, always passed positionally by Producer.publish.
_BODY: Final = 0
_HEADERS: Final = 4
_PROPERTIES: Final = 5
_ROUTING_KEY: Final = 6
_MANDATORY: Final = 7
_EXCHANGE: Final = 9
_REQUIRED: Final = 11


_PUBLISH: Final = capture_internal_exceptions("kombu publish")
_RETURNED: Final = capture_internal_exceptions("kombu basic.return")

try:  # kombu depends on amqp; the guard only keeps a broken install from breaking kombu
    from amqp.exceptions import MessageNacked as _MessageNacked
except ImportError:  # pragma: no cover
    _failure: Callable[[BaseException], str | None] = publish_failure()
else:
    _failure = publish_failure(broker_nack=_MessageNacked)


class _Call:
    """One publish in flight: its operation, the headers it was given, whether the broker returned it.

    ``with call:`` ends the operation (if one was started by then) with the call's outcome.
    """

    __slots__ = ("headers_in", "op", "producer", "returned")

    def __init__(self, producer: Any, op: Publish | None = None, headers_in: Any = None) -> None:
        self.producer = producer
        self.op = op
        self.headers_in = headers_in
        self.returned = False

    def failure(self, exc: BaseException) -> str | None:
        """``error.type`` of the publish that raised ``exc``."""
        return UNROUTABLE if self.returned else _failure(exc)

    def __enter__(self) -> _Call:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        op = self.op
        if op is None:  # a retrying publish whose first attempt started nothing
            return
        if exc is None and self.returned:  # returned without failing the call (no confirm error)
            op.end(error_type=UNROUTABLE, description="returned by the broker: no queue is bound")
        op.classified(self.failure).__exit__(exc_type, exc, tb)


class _Local(threading.local):
    # the retrying Producer.publish call of this thread, if any
    call: _Call | None = None
    # the mandatory publish of this thread waiting in basic_publish, for basic.return
    inflight: _Call | None = None


_local: Final = _Local()


def _producer_connection(producer: Any) -> Any:
    """The producer's kombu Connection, without forcing a lazy channel open (that may raise)."""
    connection = producer.__connection__
    if connection is not None:
        return connection
    channel = producer._channel
    if channel is None or not hasattr(channel, "connection"):  # a ChannelPromise not yet resolved
        return None
    return connection_of_channel(channel)


_signatures: dict[Any, inspect.Signature] = {}


def _positional(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``_publish`` arguments with the required ones positional (someone passed keywords)."""
    func = getattr(wrapped, "__func__", wrapped)
    signature = _signatures.get(func)
    if signature is None:
        signature = _signatures[func] = inspect.signature(wrapped)
    bound = signature.bind(*args, **kwargs)
    return bound.args, bound.kwargs


# -- one plain call a layer ---------------------------------------------------------------------
#
# A wrapt wrapper costs a dispatch per call (binding, then the call through the proxy), twice per
# publish here (publish, then _publish). The first call through the class wrapper binds two plain
# functions on the producer itself, which shadow the class's wrappers: kombu's publish looks up
# ``self._publish`` on the instance. Only for a class whose publish and _publish are ours
# unchanged (a subclass that overrides either keeps the class wrappers); forget_shadows() takes
# them back whenever instrumentation changes.

# per Producer class: publish and _publish as kombu defines them under our class wrappers
_plain_publish: Final = PlainMethods("publish", ("otel_kombu._publish",))
_plain_inner: Final = PlainMethods("_publish", ("otel_kombu._publish",))
_SHADOWS: Final = Shadows(_plain_publish, _plain_inner)


class _Route:
    """A producer, and the binding of its channel, looked up again only when the channel changes
    (kombu revives a producer onto a new channel after a connection error or a failover; a lazy
    channel is resolved on first use). A shadowed producer's two shadows share one, kept until
    instrumentation changes (which takes the shadows back: :func:`forget_shadows`); a call
    through a class wrapper makes its own."""

    __slots__ = ("binding", "channel", "inner", "producer", "publish")

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.channel: Any = None
        self.binding: Binding | None = None
        #: the producer's plain publish and _publish, bound once (shadowed producers only)
        self.publish: Callable[..., Any] | None = None
        self.inner: Callable[..., Any] | None = None

    def binding_now(self) -> Binding:
        """The binding of the producer's connection now."""
        producer = self.producer
        channel = producer._channel
        binding = self.binding
        if binding is None or channel is not self.channel:
            binding = self.binding = binding_for(_producer_connection(producer))
            self.channel = channel
        return binding


def _shadow_publish(route: _Route, *args: Any, **kwargs: Any) -> Any:
    # kombu's own publish, bound when the shadow was: still kombu's own after an instrumentation
    # change under a call in flight (the change takes the shadows back, not the functions)
    return _publish(route, route.publish, args, kwargs)  # type: ignore[arg-type]


def _shadow_inner_publish(route: _Route, *args: Any, **kwargs: Any) -> Any:
    return _inner_publish(route, route.inner, args, kwargs)  # type: ignore[arg-type]


# what kombu and its callers see as the methods' names (Connection.ensure names its retry loop)
_shadow_publish.__name__ = "publish"
_shadow_inner_publish.__name__ = "_publish"


def _shadowed(producer: Any) -> _Route:
    """Bind the plain wrappers on ``producer`` (see above), sharing the route returned; for a
    producer that cannot take them, a route for this call alone."""
    route = _Route(producer)
    with _PUBLISH:
        state = getattr(producer, "__dict__", None)
        kind = type(producer)
        if state is None or "publish" in state or "_publish" in state:
            return route
        plain_publish = _plain_publish.of(kind)
        plain_inner = _plain_inner.of(kind)
        if plain_publish is None or plain_inner is None:
            return route
        route.publish = MethodType(plain_publish, producer)
        route.inner = MethodType(plain_inner, producer)
        _SHADOWS.bind(producer, "publish", _shadow_publish, route)
        _SHADOWS.bind(producer, "_publish", _shadow_inner_publish, route)
    return route


#: Instrumentation changed: every producer goes through the class's attributes again.
forget_shadows: Final = _SHADOWS.forget


def wrap_publish(
    wrapped: Callable[..., Any], producer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Producer.publish``, the class wrapper: shadows the producer's methods, then as they do."""
    return _publish(_shadowed(producer), wrapped, args, kwargs)


def wrap_inner_publish(
    wrapped: Callable[..., Any], producer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Producer._publish``, the class wrapper (a producer without shadows)."""
    return _inner_publish(_Route(producer), wrapped, args, kwargs)


def _publish(
    route: _Route, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Producer.publish``: keep the caller's headers unchanged; hold one span across retries."""
    producer = route.producer
    call: _Call | None = None
    sent_args, sent_kwargs = args, kwargs
    try:
        retry = args[_PUBLISH_RETRY] if len(args) > _PUBLISH_RETRY else kwargs.get("retry")
        compression = (
            args[_PUBLISH_COMPRESSION]
            if len(args) > _PUBLISH_COMPRESSION
            else kwargs.get("compression")
        )
        # without retries or compression, _publish does all the work
        if (
            retry or compression or producer.compression
        ) and route.binding_now().telemetry is not None:
            if compression or producer.compression:
                # kombu writes the ``compression`` header into the headers dict it was given
                sent_args, sent_kwargs = _copy_headers(args, kwargs)
            if retry:
                call = _Call(producer)
    except Exception as internal:
        _PUBLISH.report(internal)
        call, sent_args, sent_kwargs = None, args, kwargs
    if call is None:
        return wrapped(*sent_args, **sent_kwargs)
    previous = _local.call
    _local.call = call
    try:
        with call:
            return wrapped(*sent_args, **sent_kwargs)
    finally:
        _local.call = previous


def _copy_headers(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if len(args) > _PUBLISH_HEADERS:
        headers = args[_PUBLISH_HEADERS]
        if headers:
            args = (*args[:_PUBLISH_HEADERS], dict(headers), *args[_PUBLISH_HEADERS + 1 :])
    else:
        headers = kwargs.get("headers")
        if headers:
            kwargs = {**kwargs, "headers": dict(headers)}
    return args, kwargs


def _start(route: _Route, args: tuple[Any, ...]) -> tuple[Publish | None, Any]:
    """The publish operation and the headers to send; ``(None, headers)`` when nothing was
    started (not instrumented, a skipped Celery message, or the unsampled fast path: no span,
    nothing to count, only the context travels, docs/architecture.md)."""
    headers = args[_HEADERS]
    binding = route.binding_now()
    telemetry = binding.telemetry
    if telemetry is None:
        return None, headers
    exchange = args[_EXCHANGE] or ""
    skip = binding.celery_skip
    if skip is not None and skip.skips(headers, exchange):
        return None, headers
    sent = telemetry.unsampled_publish(headers)
    if sent is not False:
        return None, sent
    properties = args[_PROPERTIES] or {}
    destination = binding.destinations.get("publish", exchange, args[_ROUTING_KEY] or "")
    body = args[_BODY]
    # a Celery task has no message_id: its task id, as Celery's own spans record it
    message_id = properties.get("message_id") or (task_id(headers) if headers else None)
    correlation_id = properties.get("correlation_id")
    if type(body) is bytes:
        size: int | None = len(body)
    else:
        size, body = body_size(body), None
    op = telemetry.start_publish(
        destination, headers, message_id, correlation_id, body, size, properties
    )
    return op, op.headers


def _inner_publish(
    route: _Route, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Producer._publish``: start the span, send a copy of the headers with the context injected."""
    producer = route.producer
    op: Publish | None = None
    call = _local.call
    given_args, given_kwargs = args, kwargs
    first_of_retries = False
    watch: _Call | None = None
    try:
        if len(args) < _REQUIRED:
            try:
                args, kwargs = _positional(wrapped, args, kwargs)
            except TypeError:  # arguments kombu rejects: let it say so, untraced
                return wrapped(*given_args, **given_kwargs)
        headers = args[_HEADERS]
        if call is not None and call.op is not None and call.headers_in is headers:
            # Connection.ensure calling again for the same publish: same span, same headers
            args = (*args[:_HEADERS], call.op.headers, *args[_HEADERS + 1 :])
            op = call.op
            first_of_retries = True  # ended by Producer.publish, not here
        else:
            op, sent = _start(route, args)
            if sent is not headers:
                args = (*args[:_HEADERS], sent, *args[_HEADERS + 1 :])
            if op is not None and call is None and not args[_MANDATORY] and op.recorder is None:
                # records_nothing(op) read inline: a trace its sampler did not sample, nothing
                # to count, no retry
                op = None
            if op is not None:
                if call is not None and call.op is None and call.producer is producer:
                    # first attempt of a retrying publish: Producer.publish ends the span
                    call.op = op
                    call.headers_in = headers
                    first_of_retries = True
                    watch = call if args[_MANDATORY] else None
                elif args[_MANDATORY]:
                    watch = _Call(producer, op, headers)
    except Exception as internal:
        _PUBLISH.report(internal)
        if op is None:  # nothing of ours started: the call exactly as it came
            args, kwargs = given_args, given_kwargs
    if op is None:
        return wrapped(*args, **kwargs)
    if first_of_retries:
        if watch is None:
            return wrapped(*args, **kwargs)
        return _call_watching_returns(wrapped, args, kwargs, watch)
    if watch is None:  # the usual publish
        with op.classified(_failure):
            return wrapped(*args, **kwargs)
    with watch:
        return _call_watching_returns(wrapped, args, kwargs, watch)


def _call_watching_returns(
    wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], call: _Call
) -> Any:
    previous = _local.inflight
    _local.inflight = call
    try:
        return wrapped(*args, **kwargs)
    finally:
        _local.inflight = previous


def _return_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """``(reply_code, reply_text, exchange, routing_key, message)`` of ``_on_basic_return``."""
    names = ("reply_code", "reply_text", "exchange", "routing_key", "message")
    return tuple(args[i] if len(args) > i else kwargs.get(name) for i, name in enumerate(names))


def _is_this_publish(call: _Call, exchange: Any, routing_key: Any, message: Any) -> bool:
    """True when the returned message is the one this thread is publishing (its context says so)."""
    op = call.op
    if op is None:
        return False
    returned = creation_span_context(extract_context(getattr(message, "headers", None)))
    if returned is not None:
        return returned.span_id == op.span.get_span_context().span_id
    destination = op.destination
    return (
        destination is not None
        and exchange == destination.exchange
        and routing_key == destination.routing_key
    )


def _on_return(channel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    reply_code, reply_text, exchange, routing_key, message = _return_arguments(args, kwargs)
    call = _local.inflight
    if call is not None and _is_this_publish(call, exchange, routing_key, message):
        call.returned = True  # the publish span, still open, ends ERROR
        return
    connection = connection_of_channel(channel)
    if connection is None:  # py-amqp used without kombu
        return
    binding = binding_for(connection)
    telemetry = binding.telemetry
    if telemetry is None:
        return
    headers = getattr(message, "headers", None)
    exchange = exchange or ""
    skip = binding.celery_skip
    if skip is not None and skip.skips(headers, exchange):
        return
    # returned after its publish call ended: a short ERROR span under that publish span
    properties = getattr(message, "properties", None) or {}
    telemetry.record_returned(
        binding.destinations.get("publish", exchange, routing_key or ""),
        headers,
        reply_code=reply_code,
        reply_text=reply_text,
        message_id=properties.get("message_id") or task_id(headers),
        correlation_id=properties.get("correlation_id"),
        body_size=body_size(getattr(message, "body", None)),  # amqp may decode it to str
    )


def wrap_on_basic_return(
    wrapped: Callable[..., Any], channel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``amqp.Channel._on_basic_return``: the publish in flight ends unroutable, a late return is recorded."""
    with _RETURNED:
        _on_return(channel, args, kwargs)
    return wrapped(*args, **kwargs)
