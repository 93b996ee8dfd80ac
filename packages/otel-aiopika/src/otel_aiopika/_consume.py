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
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from time import perf_counter
from typing import Any, Callable, Final

import aio_pika.tools
from aio_pika.queue import QueueIterator
from aio_pika.tools import iscoroutinepartial as _iscoroutinepartial

from otel_aiopika._publish import headers_of
from otel_aiopika._state import OwnerState, registry, resolve, track
from otel_messaging_core import Consume, ContextActivation, log_internal_error

# aio-pika >= 9 turns a plain-function callback into a coroutine function (ensure_awaitable);
# aio-pika 8.x runs a plain function as it is, in call_soon.
_ensure_awaitable: Callable[[Any], Any] | None = getattr(aio_pika.tools, "ensure_awaitable", None)

__all__ = [
    "consume",
    "finish_iterations",
    "get",
    "iterator_anext",
    "iterator_close",
    "iterator_exit",
]

TRACED_MARK: Final = "_otel_aiopika_traced"
ITERATOR_ATTR: Final = "_otel_aiopika_iteration"

Wrapped = Callable[..., Any]


def _begin(
    state: OwnerState,
    operation: str,
    message: Any,
    queue: str,
    manual_ack: bool,
    started: float | None = None,
) -> Consume | None:
    """Start the process/receive span of a delivered message and keep its settle record."""
    try:
        telemetry = state.telemetry
        if telemetry is None:
            return None
        exchange = message.exchange
        routing_key = message.routing_key
        destination = state.destinations.get(
            operation,
            exchange if type(exchange) is str else str(exchange or ""),
            routing_key if type(routing_key) is str else str(routing_key or ""),
            queue,
        )
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
    except Exception as exc:
        log_internal_error(operation, exc)
        return None


# -- Queue.consume ------------------------------------------------------------------------------


def _queue_name(queue: Any) -> str:
    name = getattr(queue, "name", "")
    return name if type(name) is str else str(name or "")


def traced_callback(callback: Any, owner: Any, queue: str, no_ack: bool) -> Any:
    """The callback aio-pika calls instead of ``callback``: a process span around each call."""
    manual_ack = not no_ack

    if _ensure_awaitable is not None or _iscoroutinepartial(callback):
        inner = _ensure_awaitable(callback) if _ensure_awaitable is not None else callback

        async def traced(message: Any) -> Any:
            state = resolve(owner)
            op = _begin(state, "process", message, queue, manual_ack) if state else None
            if op is None:
                return await inner(message)
            op.activate()
            try:
                result = await inner(message)
            except BaseException as exc:
                op.end(exc)
                raise
            op.end()
            return result

        wrapper: Any = traced
    else:  # aio-pika 8.x calls a plain function as it is (in call_soon)

        def traced_sync(message: Any) -> Any:
            state = resolve(owner)
            op = _begin(state, "process", message, queue, manual_ack) if state else None
            if op is None:
                return callback(message)
            op.activate()
            try:
                result = callback(message)
            except BaseException as exc:
                op.end(exc)
                raise
            op.end()
            return result

        wrapper = traced_sync
    setattr(wrapper, TRACED_MARK, True)
    wrapper.__wrapped__ = callback
    return wrapper


async def consume(
    wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Queue.consume``: register a traced callback instead of the caller's."""
    try:
        callback = args[0] if args else kwargs.get("callback")
        if (
            callback is not None
            and not getattr(callback, TRACED_MARK, False)
            # the queue iterator's own buffer callback: its messages get receive spans instead
            and not isinstance(getattr(callback, "__self__", None), QueueIterator)
            and resolve(instance.channel) is not None
        ):
            no_ack = args[1] if len(args) > 1 else kwargs.get("no_ack", False)
            traced = traced_callback(
                callback, instance.channel, _queue_name(instance), bool(no_ack)
            )
            if args:
                args = (traced, *args[1:])
            else:
                kwargs = {**kwargs, "callback": traced}
    except Exception as exc:
        log_internal_error("consume", exc)
    return await wrapped(*args, **kwargs)


# -- Queue.get ----------------------------------------------------------------------------------


async def get(
    wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``Queue.get``: a receive span covering the get; an empty get makes none."""
    state = resolve(instance.channel)
    if state is None:
        return await wrapped(*args, **kwargs)
    started = perf_counter()
    message = await wrapped(*args, **kwargs)
    if message is not None:
        manual_ack = not kwargs.get("no_ack", False)
        op = _begin(state, "receive", message, _queue_name(instance), manual_ack, started)
        if op is not None:
            op.end()
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
    iteration: _Iteration | None = instance.__dict__.get(ITERATOR_ATTR)
    if iteration is not None:
        if iteration.busy:  # a subclass's __anext__ calling the base one: the outer call traces
            return await wrapped(*args, **kwargs)
        iteration.finish()
    queue = getattr(instance, "_amqp_queue", None)
    state = resolve(getattr(queue, "channel", None))
    if state is None:
        return await wrapped(*args, **kwargs)
    if iteration is None:
        iteration = instance.__dict__[ITERATOR_ATTR] = _Iteration()
        _iterations.add(iteration)
    generation = registry.generation
    iteration.busy = True
    try:
        message = await wrapped(*args, **kwargs)
    finally:
        iteration.busy = False
    if registry.generation != generation:
        # instrumentation changed while this call waited (uninstrument(), say): ask again, or
        # the span would start with nothing left to end it
        state = resolve(getattr(queue, "channel", None))
        if state is None:
            return message
    try:
        no_ack = bool(instance._consume_kwargs.get("no_ack", False))
    except Exception:
        no_ack = False
    op = _begin(state, "receive", message, _queue_name(queue), not no_ack)
    if op is not None and op.context is not None:
        iteration.op = op
        iteration.task = _current_task()
        iteration.activation.activate(op.context)
    return message


async def iterator_close(
    wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``QueueIterator.close``: the last message's receive span ends."""
    iteration: _Iteration | None = instance.__dict__.get(ITERATOR_ATTR)
    if iteration is not None:
        iteration.finish()
    return await wrapped(*args, **kwargs)


async def iterator_exit(
    wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``QueueIterator.__aexit__``: the last message's span ends, with the body's exception."""
    iteration: _Iteration | None = instance.__dict__.get(ITERATOR_ATTR)
    if iteration is not None:
        exc = args[1] if len(args) > 1 else kwargs.get("exc_val")
        iteration.finish(exc if isinstance(exc, BaseException) else None)
    return await wrapped(*args, **kwargs)
