"""Consume: process spans around pushed messages, receive spans for pulled ones.

Where pika hands a message to user code, per channel kind:

* ``Channel._on_deliver`` (async adapters) calls the consumer callback directly: the process span
  wraps that call. Patching the dispatch, not ``basic_consume``, covers consumers registered
  before ``instrument()`` too.
* ``BlockingChannel`` queues deliveries and calls ``_ConsumerInfo.on_message_callback`` from
  ``_dispatch_events``; before each dispatch the wrapper swaps every consumer's callback for a
  :class:`_TracedCallback` (once per consumer), again whenever the consumer was registered.
* ``BlockingChannel.consume()`` returns :class:`_TracedConsume`, which keeps each message's
  receive span open and current while the loop body runs.
* ``basic_get``: on a ``BlockingChannel`` a receive span covering the get; on the async adapters
  the span runs from the get to the end of its callback, made in ``Channel._on_getok`` (the
  callback itself is left to pika as the caller gave it).
"""

from __future__ import annotations

import weakref
from time import perf_counter
from typing import Any, Callable, Final

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from otel_messaging_core import (
    Consume,
    Wrapper,
    attach,
    capture_internal_exceptions,
    restore,
)
from otel_pika._state import (
    ChannelState,
    bypass_if_blocking,
    remember,
    scope_of,
    state_of,
)

__all__ = [
    "blocking_get",
    "cancel",
    "channel_get",
    "getok",
    "consume",
    "consumer_queue",
    "deliver",
    "dispatch_events",
]

Resolver = Callable[[Any], "ChannelState | None"]

_PROCESS: Final = capture_internal_exceptions("pika process")
_RECEIVE: Final = capture_internal_exceptions("pika receive")
_CONSUMER: Final = capture_internal_exceptions("pika basic_consume")
_DISPATCH: Final = capture_internal_exceptions("pika consumer dispatch")


def _begin(
    state: ChannelState,
    operation: str,
    method: Any,
    properties: Any,
    body: Any,
    queue: str,
    manual_ack: bool,
    started: float | None = None,
) -> Consume | None:
    """Start the process/receive span of one delivery and track it for its ack (callers guard)."""
    telemetry = state.telemetry
    if telemetry is None:
        return None
    exchange = method.exchange
    routing_key = method.routing_key
    if not queue:
        consumer_tag = getattr(method, "consumer_tag", None)  # Basic.GetOk has none
        queue = state.queue_of(consumer_tag, exchange, routing_key)
    destination = state.destinations.get(operation, exchange, routing_key, queue)
    delivery_tag = method.delivery_tag
    op = telemetry.start_consume(
        destination,
        properties.headers,
        delivery_tag=delivery_tag,
        message_id=properties.message_id,
        correlation_id=properties.correlation_id,
        body=body if type(body) is bytes else None,
        redelivered=method.redelivered,
        raw=properties,
        track_delivery=manual_ack,
        started=started,
    )
    if manual_ack and op.delivery is not None:
        state.deliveries.track(delivery_tag, op.delivery)
    return op


def _unsampled(
    state: ChannelState, method: Any, properties: Any, manual_ack: bool
) -> Context | None:
    """The unsampled fast path of a pushed delivery, decided first: the context its handler runs
    in when no span is made and nothing is counted (docs/architecture.md), else ``None``. A
    manual-ack delivery's settle record goes into the channel's ledger (:data:`Unsampled`), so
    that its settle finds it as on the general path."""
    telemetry = state.telemetry
    if telemetry is None:
        return None
    context = telemetry.unsampled_consume(properties.headers)
    if context is not None and manual_ack:
        state.keep_unsampled(context, method)
    return context


def _in_context(
    context: Context, handler: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call ``handler`` with ``context`` current, and restore the previous context after."""
    try:
        token = attach(context)
    except Exception as internal:  # pragma: no cover - defensive: the handler runs all the same
        _PROCESS.report(internal)
        return handler(*args, **kwargs)
    try:
        return handler(*args, **kwargs)
    finally:
        restore(token)


# -- basic_consume: remember which queue each consumer reads -------------------------------------


def consumer_queue(resolve: Resolver) -> Wrapper:
    """``Channel.basic_consume`` (a ``BlockingChannel`` registers through it as well)."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        consumer_tag = wrapped(*args, **kwargs)
        with _CONSUMER:
            state = resolve(instance)
            if state is not None:
                state.remember_queue(consumer_tag, args[0] if args else kwargs.get("queue"))
        return consumer_tag

    return wrapper


# -- push: async adapters -------------------------------------------------------------------------


def deliver(resolve: Resolver) -> Wrapper:
    """``Channel._on_deliver``: the process span around the consumer callback."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        op = context = None
        try:
            state = resolve(instance)
            if state is not None and not state.blocking:  # a BlockingChannel only queues it here
                method = args[0].method
                consumer_tag = method.consumer_tag
                if consumer_tag in instance._consumers and consumer_tag not in instance._cancelled:
                    properties = args[1].properties
                    manual_ack = consumer_tag not in instance._consumers_with_noack
                    context = _unsampled(state, method, properties, manual_ack)
                    if context is None:
                        op = _begin(state, "process", method, properties, args[2], "", manual_ack)
        except Exception as internal:
            _PROCESS.report(internal)
        if context is not None:
            return _in_context(context, wrapped, args, kwargs)
        if op is None:
            with _PROCESS:  # a BlockingChannel's: its next deliveries skip this wrapper
                bypass_if_blocking(instance, "_on_deliver")
            return wrapped(*args, **kwargs)
        with op:
            return wrapped(*args, **kwargs)

    return wrapper


# -- push: BlockingChannel ------------------------------------------------------------------------


class _TracedCallback:
    """Stands in for a ``BlockingChannel`` consumer's callback: the process span around it."""

    __slots__ = ("callback", "manual_ack")

    def __init__(self, callback: Callable[..., Any], manual_ack: bool) -> None:
        self.callback = callback
        self.manual_ack = manual_ack

    def __call__(self, channel: Any, method: Any, properties: Any, body: Any) -> Any:
        op = token = None
        try:
            state = scope_of(channel._impl)
            if state is not None:  # else uninstrumented since: a plain call
                # the unsampled fast path first (written out here: this runs per message)
                telemetry = state.telemetry
                context = None
                if telemetry is not None:
                    context = telemetry.unsampled_consume(properties.headers)
                    if context is not None and self.manual_ack:
                        state.keep_unsampled(context, method)
                if context is not None:
                    token = attach(context)
                else:
                    op = _begin(state, "process", method, properties, body, "", self.manual_ack)
        except Exception as internal:
            _PROCESS.report(internal)
        if token is not None:
            try:
                return self.callback(channel, method, properties, body)
            finally:
                restore(token)
        if op is None:
            return self.callback(channel, method, properties, body)
        with op:
            return self.callback(channel, method, properties, body)


def dispatch_events(resolve: Resolver) -> Wrapper:
    """``BlockingChannel._dispatch_events``: trace the callback of every consumer before dispatch.

    Consumers registered before ``instrument()`` are covered too: their callbacks are swapped at
    the next dispatch.
    """

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            infos = instance._consumer_infos
            if infos and resolve(instance._impl) is not None:
                for info in infos.values():
                    callback = info.on_message_callback
                    if callback is not None and type(callback) is not _TracedCallback:
                        info.on_message_callback = _TracedCallback(callback, not info.auto_ack)
        except Exception as internal:
            _DISPATCH.report(internal)
        return wrapped(*args, **kwargs)

    return wrapper


# -- pull: the consume() generator ----------------------------------------------------------------


class _TracedConsume:
    """What ``BlockingChannel.consume()`` returns when instrumented: pika's generator, traced.

    Each yielded message gets a receive span that stays open, and current, while the loop body
    runs; it ends (and the previous context comes back) when the next message is requested, at an
    inactivity-timeout ``(None, None, None)``, when the generator ends or is closed, when
    ``channel.cancel()`` is called outside the loop body, or when the iterator is dropped (a
    ``break`` out of ``for ... in channel.consume(...)``).
    """

    __slots__ = ("__weakref__", "_channel", "_gen", "_manual_ack", "_op", "_queue")

    def __init__(self, gen: Any, channel: Any, queue: str, manual_ack: bool) -> None:
        self._gen = gen
        self._channel = channel
        self._queue = queue
        self._manual_ack = manual_ack
        self._op: Consume | None = None

    def __iter__(self) -> _TracedConsume:
        return self

    def __next__(self) -> Any:
        if self._op is not None:
            self._finish()
        item = next(self._gen)
        self._start(item)
        return item

    def send(self, value: Any) -> Any:
        if self._op is not None:
            self._finish()
        item = self._gen.send(value)
        self._start(item)
        return item

    def throw(self, *args: Any) -> Any:
        if self._op is not None:
            self._finish()
        item = self._gen.throw(*args)
        self._start(item)
        return item

    def close(self) -> None:
        if self._op is not None:
            self._finish()
        self._gen.close()

    def __del__(self) -> None:
        if getattr(self, "_op", None) is not None:
            self._finish()

    def _start(self, item: Any) -> None:
        try:
            method, properties, body = item
            if method is None:  # inactivity timeout: nothing to trace, nothing current
                return
            state = scope_of(self._channel._impl)
            if state is None:
                return
            op = _begin(state, "receive", method, properties, body, self._queue, self._manual_ack)
            if op is None:
                return
            self._op = op
            remember(properties, op)
            op.activate()
        except Exception as internal:
            _RECEIVE.report(internal)

    def _finish(self) -> None:
        op = self._op
        self._op = None
        if op is not None:
            try:
                op.end()
            except Exception as internal:
                _RECEIVE.report(internal)
                with _RECEIVE:
                    op.deactivate()  # whatever failed, the caller's context comes back

    def finish_if_current(self) -> None:
        """End the open receive span if its context is the current one (cancel() after a loop).

        Called from inside the loop body with other context on top, it leaves the span to the
        iterator: detaching there would pull the context out from under the caller's own.
        """
        op = self._op
        with _RECEIVE:
            current = otel_context.get_current()
            if op is not None and op.context is not None and current is op.context:
                self._finish()


def consume(resolve: Resolver) -> Wrapper:
    """``BlockingChannel.consume``: the generator, traced."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        gen = wrapped(*args, **kwargs)
        traced = None
        with _RECEIVE:
            state = resolve(instance._impl)
            if state is not None:
                queue = args[0] if args else kwargs.get("queue", "")
                auto_ack = args[1] if len(args) > 1 else kwargs.get("auto_ack", False)
                traced = _TracedConsume(
                    gen, instance, queue if type(queue) is str else "", not auto_ack
                )
                state.pull = weakref.ref(traced)
        return gen if traced is None else traced

    return wrapper


def cancel(resolve: Resolver) -> Wrapper:
    """``BlockingChannel.cancel`` (also reached from ``close()``): end the generator's open span."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        with _RECEIVE:
            state = state_of(instance._impl)
            pull = state.pull if state is not None else None
            traced = pull() if pull is not None else None
            if traced is not None:
                traced.finish_if_current()
        return wrapped(*args, **kwargs)

    return wrapper


# -- pull: basic_get ------------------------------------------------------------------------------


def _get_args(args: tuple[Any, ...], kwargs: dict[str, Any], auto_ack_at: int) -> tuple[str, bool]:
    queue = args[0] if args else kwargs.get("queue", "")
    auto_ack = args[auto_ack_at] if len(args) > auto_ack_at else kwargs.get("auto_ack", False)
    return (queue if type(queue) is str else ""), not auto_ack


def blocking_get(resolve: Resolver) -> Wrapper:
    """``BlockingChannel.basic_get``: a receive span covering the get; the caller's context stays."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        state = None
        started = perf_counter()
        try:
            state = resolve(instance._impl)
            if state is not None:
                state.blocking = True
        except Exception as internal:
            _RECEIVE.report(internal)
        if state is None:
            return wrapped(*args, **kwargs)
        result = wrapped(*args, **kwargs)
        try:
            method, properties, body = result
            if method is not None:  # an empty queue gives (None, None, None): no message, no span
                queue, manual_ack = _get_args(args, kwargs, 1)
                op = _begin(state, "receive", method, properties, body, queue, manual_ack, started)
                if op is not None:
                    remember(properties, op)
                    op.end()
        except Exception as internal:
            _RECEIVE.report(internal)
        return result

    return wrapper


def channel_get(resolve: Resolver) -> Wrapper:
    """``Channel.basic_get`` (async adapters): note what the get asked for, for ``_on_getok``.

    The caller's callback is handed to pika as it is (pika keeps it in ``_on_getok_callback``,
    where the caller may look for it); the receive span is made around pika's own call of it.
    """

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        started = perf_counter()
        result = wrapped(*args, **kwargs)  # raises (and notes nothing) for a get already pending
        with _RECEIVE:
            state = resolve(instance)
            if state is not None and not state.blocking:  # BlockingChannel.basic_get traces
                queue, manual_ack = _get_args(args, kwargs, 2)
                state.get_pending = (queue, manual_ack, started)
        return result

    return wrapper


def getok(resolve: Resolver) -> Wrapper:
    """``Channel._on_getok`` (async adapters): a receive span from the get to the end of the
    get's callback, which runs in the message's context."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        op = None
        try:
            state = resolve(instance)
            if (
                state is not None
                and not state.blocking
                and instance._on_getok_callback is not None  # else pika only logs an error
            ):
                # a get sent before instrument() has no note: queue unknown, not tracked
                pending, state.get_pending = state.get_pending, None
                queue, manual_ack, started = pending or ("", False, None)
                method_frame, header_frame, body = args[:3]
                properties = header_frame.properties
                op = _begin(
                    state,
                    "receive",
                    method_frame.method,
                    properties,
                    body,
                    queue,
                    manual_ack,
                    started,
                )
                if op is not None:
                    remember(properties, op)
        except Exception as internal:
            _RECEIVE.report(internal)
        if op is None:
            return wrapped(*args, **kwargs)
        with op:
            return wrapped(*args, **kwargs)

    return wrapper
