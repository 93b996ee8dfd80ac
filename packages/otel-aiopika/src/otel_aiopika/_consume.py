"""Consume: ``Queue.consume`` callbacks, the queue iterator and ``Queue.get``.

* ``Queue.consume(callback)``: the callback is replaced by a traced one that makes a process
  span around each call and runs the callback in the message's context. aio-pika runs every
  delivery in a task of its own, so concurrent handlers never see each other's context. The
  traced callback is marked and never wrapped again; a robust queue keeps the caller's own
  callback and registers it anew after a reconnect, so restored consumers are traced once.
* The queue iterator (``async for message in queue.iterator()``): ``__anext__`` starts a receive
  span when it returns a message and makes its context current in the task that iterates, so
  the loop body runs in it; the next ``__anext__``, ``close()`` or leaving ``async with`` ends it
  and restores the previous context. The iterator registers its own ``on_message`` through
  ``Queue.consume``; that callback is left alone (it only buffers messages).
* ``Queue.get``: a receive span covering the get; the caller's context is left as it was.
* Consumers registered before ``instrument()``: aio-pika hands aiormq a
  ``partial(aio_pika.queue.consumer, callback, no_ack=...)`` per consumer, kept in the aiormq
  channel's ``consumers``. Before the channel hands its next delivery to a consumer (when it
  reads the message's content, ``_read_content``, in every aiormq release), the wrapper swaps
  every such entry whose callback is not traced yet for the same partial over a traced callback:
  those consumers are traced from their next message on. Their queue name is not on record (a delivery names the
  exchange and routing key): on the default exchange the routing key names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from time import perf_counter
from typing import Any, Callable, Final

import aio_pika.queue
import aio_pika.tools
from aio_pika.queue import QueueIterator
from aio_pika.tools import iscoroutinepartial as _iscoroutinepartial

from otel_aiopika._publish import _HEADERS_SLOT, headers_of
from otel_aiopika._state import SCOPES, OwnerState, resolve, track
from otel_messaging_core import (
    Consume,
    ContextActivation,
    Destination,
    PlainMethods,
    Shadows,
    attach,
    capture_internal_exceptions,
    delivery_queue,
    restore,
)

# aio-pika >= 9 turns a plain-function callback into a coroutine function (ensure_awaitable);
# aio-pika 8.x runs a plain function as it is, in call_soon.
_ensure_awaitable: Callable[[Any], Any] | None = getattr(aio_pika.tools, "ensure_awaitable", None)
# What Queue.consume hands aiormq, partially applied, in aio-pika 8 to 10. Without it (a release
# that registers consumers another way) consumers registered before instrument() stay untraced,
# and instrument() says so.
_aio_pika_consumer: Callable[..., Any] | None = getattr(aio_pika.queue, "consumer", None)

__all__ = [
    "consume",
    "read_content",
    "finish_iterations",
    "get",
    "iterator_anext",
    "iterator_end",
]

TRACED_MARK: Final = "_otel_aiopika_traced"
ITERATOR_ATTR: Final = "_otel_aiopika_iteration"
# on an aiormq channel: the instrumentation generation its consumers were last checked at
SWEPT_ATTR: Final = "_otel_aiopika_swept"
# What every aiormq release (6.x and 7.x) calls, on the channel, to read a delivered message's
# content, right before it looks up the delivery's consumer. (The method that dispatches the
# delivery frame is no use: aiormq 6.7 to 6.9 bind it when the channel opens.)
READ_CONTENT: Final = "_read_content"

_PROCESS: Final = capture_internal_exceptions("aio-pika process")
_RECEIVE: Final = capture_internal_exceptions("aio-pika receive")
_CONSUME: Final = capture_internal_exceptions("aio-pika consume")

Wrapped = Callable[..., Any]


def _destination(state: OwnerState, operation: str, message: Any, queue: str) -> Destination:
    """Where a delivered message came from; a consumer not seen registering (``queue`` empty)
    gets the queue its routing key names on the default exchange."""
    exchange = message.exchange
    exchange = exchange if type(exchange) is str else str(exchange or "")
    routing_key = message.routing_key
    routing_key = routing_key if type(routing_key) is str else str(routing_key or "")
    if not queue:
        queue = delivery_queue(exchange, routing_key)
    return state.destinations.get(operation, exchange, routing_key, queue)


def _begin(
    state: OwnerState,
    operation: str,
    message: Any,
    queue: str,
    manual_ack: bool,
    started: float | None = None,
) -> Consume | None:
    """Start the process/receive span of a delivered message and keep its settle record
    (callers guard)."""
    telemetry = state.telemetry
    if telemetry is None:
        return None
    destination = _destination(state, operation, message, queue)
    op = telemetry.start_consume(
        destination,
        headers_of(message),
        delivery_tag=message.delivery_tag,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        body=message.body,
        redelivered=message.redelivered,
        raw=message,
        track_delivery=manual_ack,
        started=started,
    )
    # A pulled message's context is kept for message_context(), unless no span was made (the
    # trace is not sampled and the sampler follows it): the headers then give the same context.
    if manual_ack or (operation == "receive" and op.has_span):
        track(message, telemetry, op.delivery, op.context, manual_ack)
    return op


# -- Queue.consume ------------------------------------------------------------------------------


def _queue_name(queue: Any) -> str:
    name = getattr(queue, "name", "")
    return name if type(name) is str else str(name or "")


def traced_callback(callback: Any, owner: Any, queue: str, no_ack: bool) -> Any:
    """The callback aio-pika calls instead of ``callback``: a process span around each call.

    One coroutine function traces every kind of callback; aio-pika 8.x calls a plain function
    callback as it is (in ``call_soon``), so ours is then a plain function too, which runs that
    coroutine to its end at once (it awaits nothing but the callback's own call)."""
    manual_ack = not no_ack
    plain = _ensure_awaitable is None and not _iscoroutinepartial(callback)
    if plain:

        async def inner(message: Any) -> Any:
            return callback(message)

    else:
        inner = callback if _ensure_awaitable is None else _ensure_awaitable(callback)

    # the owner's scope, looked up again only when the instrumentation changes (what resolve()
    # answers in between)
    seen = -1
    scope: OwnerState | None = None

    async def traced(message: Any) -> Any:
        nonlocal seen, scope
        op = token = None
        try:
            generation = SCOPES.generation
            if seen != generation:
                scope, seen = resolve(owner), generation
            state = scope
            telemetry = None if state is None else state.telemetry
            if state is not None and telemetry is not None:
                # the unsampled fast path, decided first (docs/architecture.md); the headers
                # read as headers_of() does, without its call
                context = telemetry.unsampled_consume(getattr(message, _HEADERS_SLOT, None))
                if context is not None:
                    token = attach(context)
                    if manual_ack:  # its settle record, as the general path keeps it
                        destination = _destination(state, "process", message, queue)
                        delivery = telemetry.unsampled_delivery(
                            context, destination, message.delivery_tag
                        )
                        track(message, telemetry, delivery, context, True)
                else:
                    op = _begin(state, "process", message, queue, manual_ack)
        except Exception as internal:
            _PROCESS.report(internal)
        if token is not None:
            try:
                return await inner(message)
            finally:
                restore(token)
        if op is None:
            return await inner(message)
        with op:  # the handler runs in the span's context; an exception ends it as ERROR
            return await inner(message)

    wrapper: Any = traced
    if plain:

        def traced_sync(message: Any) -> Any:
            run = traced(message)
            try:
                run.send(None)
            except StopIteration as done:
                return done.value
            raise RuntimeError("a plain callback's traced call suspended")  # pragma: no cover

        wrapper = traced_sync
    setattr(wrapper, TRACED_MARK, True)
    wrapper.__wrapped__ = callback
    return wrapper


def _needs_tracing(callback: Any) -> bool:
    return (
        callback is not None
        and not getattr(callback, TRACED_MARK, False)
        # the queue iterator's own buffer callback: its messages get receive spans instead
        and not isinstance(getattr(callback, "__self__", None), QueueIterator)
    )


async def consume(
    wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Queue.consume``: register a traced callback instead of the caller's."""
    with _CONSUME:
        callback = args[0] if args else kwargs.get("callback")
        if _needs_tracing(callback) and resolve(instance.channel) is not None:
            no_ack = args[1] if len(args) > 1 else kwargs.get("no_ack", False)
            traced = traced_callback(
                callback, instance.channel, _queue_name(instance), bool(no_ack)
            )
            if args:
                args = (traced, *args[1:])
            else:
                kwargs = {**kwargs, "callback": traced}
    return await wrapped(*args, **kwargs)


def _sweep(channel: Any) -> None:
    """Trace the consumers of an aiormq channel that were registered before instrumentation."""
    generation = SCOPES.generation
    if _aio_pika_consumer is not None and resolve(channel) is not None:
        consumers = channel.consumers
        for tag, entry in list(consumers.items()):
            if not isinstance(entry, functools.partial) or entry.func is not _aio_pika_consumer:
                continue  # registered with aiormq directly, or already swapped
            callback = entry.args[0] if entry.args else None
            if _needs_tracing(callback):
                no_ack = bool(entry.keywords.get("no_ack", False))
                traced = traced_callback(callback, channel, "", no_ack)
                consumers[tag] = functools.partial(
                    _aio_pika_consumer, traced, *entry.args[1:], **entry.keywords
                )
    setattr(channel, SWEPT_ATTR, generation)
    # Until instrumentation changes, this channel's deliveries have nothing more to check:
    # aiormq's own method, bound on the channel, shadows the class's wrapper, so a delivery pays
    # nothing for the check (taken back at every change of instrumentation).
    plain = _PLAIN_READ_CONTENT.of(type(channel))
    if plain is not None:
        _SWEPT.bind(channel, READ_CONTENT, plain)


def read_content(
    wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """aiormq ``Channel._read_content``: before the channel's first delivery since
    instrumentation changed is handed to its consumer, trace the consumers registered before
    (see the module docstring). Returns the original coroutine: nothing of ours runs while it is
    awaited."""
    try:
        if getattr(instance, SWEPT_ATTR, None) != SCOPES.generation:
            _sweep(instance)
    except Exception as internal:
        _CONSUME.report(internal)
    return wrapped(*args, **kwargs)


# aiormq's own _read_content under our wrapper, bound on the channels swept (see _sweep)
_PLAIN_READ_CONTENT: Final = PlainMethods(READ_CONTENT, read_content)
_SWEPT: Final = Shadows(_PLAIN_READ_CONTENT)
SCOPES.listeners.append(_SWEPT.forget)


# -- Queue.get ----------------------------------------------------------------------------------


async def get(
    wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Queue.get``: a receive span covering the get; an empty get makes none."""
    state = None
    started = perf_counter()
    try:
        state = resolve(instance.channel)
    except Exception as internal:
        _RECEIVE.report(internal)
    if state is None:
        return await wrapped(*args, **kwargs)
    message = await wrapped(*args, **kwargs)
    if message is not None:
        try:
            manual_ack = not kwargs.get("no_ack", False)
            op = _begin(state, "receive", message, _queue_name(instance), manual_ack, started)
            if op is not None:
                op.end()
        except Exception as internal:
            _RECEIVE.report(internal)
    return message


# -- the queue iterator -------------------------------------------------------------------------


class _Iteration:
    """The receive span open while the loop body handles the iterator's last message."""

    __slots__ = ("__weakref__", "activation", "busy", "op", "task")

    def __init__(self) -> None:
        self.op: Consume | None = None
        self.activation = ContextActivation()
        self.task: asyncio.Task[Any] | None = None
        self.busy = False

    def finish(self, exc: BaseException | None = None) -> None:
        """End the open receive span; restore the iterating task's context (from that task).

        Closed from another task, the span ends there, and the iterating task restores its
        context on its next call into the iterator.
        """
        if self.activation.active and self.task is _current_task():
            self.activation.deactivate()
        op = self.op
        if op is not None:
            self.op = None
            op.end(exc)

    def abandon(self) -> None:
        """The iterator's patches are being removed: nothing of ours will run at its next message,
        so end the span now and restore the iterating task's context from here.

        A task suspended in its loop body can have its context changed from outside only through
        ``Task.get_context()`` (Python >= 3.12); on older Pythons that task keeps the message's
        context until it ends (a documented limit).
        """
        task = self.task
        if self.activation.active and task is not None and task is not _current_task():
            get_context = getattr(task, "get_context", None)  # Python >= 3.12
            if get_context is not None and not task.done():
                # RuntimeError: that task is running right now (its loop is in another thread)
                with contextlib.suppress(RuntimeError):
                    get_context().run(self.activation.deactivate)
        self.finish()


# Every iterator the instrumentation has seen (weakly): uninstrument() ends their open spans.
_iterations: weakref.WeakSet[_Iteration] = weakref.WeakSet()


def finish_iterations() -> None:
    """End every open receive span of a queue iterator and restore its task's context.

    Called when the patches are removed: without them, an iterator's next message would leave
    the previous message's span open and its context current in the iterating task.
    """
    for iteration in list(_iterations):
        iteration.abandon()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop (a close from synchronous teardown code)
        return None


async def iterator_anext(
    wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``QueueIterator.__anext__``: end the previous message's receive span, start the next."""
    iteration: _Iteration | None = None
    state = queue = None
    try:
        iteration = instance.__dict__.get(ITERATOR_ATTR)
        if iteration is not None:
            if iteration.busy:  # a subclass's __anext__ calling the base one: the outer traces
                iteration = None
            else:
                iteration.finish()
                queue = getattr(instance, "_amqp_queue", None)
                state = resolve(getattr(queue, "channel", None))
        else:
            queue = getattr(instance, "_amqp_queue", None)
            state = resolve(getattr(queue, "channel", None))
            if state is not None:
                iteration = instance.__dict__[ITERATOR_ATTR] = _Iteration()
                _iterations.add(iteration)
    except Exception as internal:
        _RECEIVE.report(internal)
        state = None
    if state is None or iteration is None:
        return await wrapped(*args, **kwargs)
    generation = SCOPES.generation
    iteration.busy = True
    try:
        message = await wrapped(*args, **kwargs)
    finally:
        iteration.busy = False
    try:
        if SCOPES.generation != generation:
            # instrumentation changed while this call waited (uninstrument(), say): ask again,
            # or the span would start with nothing left to end it
            state = resolve(getattr(queue, "channel", None))
        if state is not None:
            try:
                no_ack = bool(instance._consume_kwargs.get("no_ack", False))
            except Exception:  # an iterator of another shape: assume manual acks
                no_ack = False
            op = _begin(state, "receive", message, _queue_name(queue), not no_ack)
            if op is not None and op.context is not None:
                iteration.op = op
                iteration.task = _current_task()
                iteration.activation.activate(op.context)
    except Exception as internal:
        _RECEIVE.report(internal)
    return message


async def iterator_end(
    wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``QueueIterator.close`` and ``__aexit__``: the last message's receive span ends (leaving
    ``async with``, with the body's exception)."""
    with _RECEIVE:
        iteration: _Iteration | None = instance.__dict__.get(ITERATOR_ATTR)
        if iteration is not None:
            exc = None
            if getattr(wrapped, "__name__", None) == "__aexit__":
                exc = args[1] if len(args) > 1 else kwargs.get("exc_val")
            iteration.finish(exc if isinstance(exc, BaseException) else None)
    return await wrapped(*args, **kwargs)
