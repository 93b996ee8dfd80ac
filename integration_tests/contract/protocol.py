"""The small protocol every plugin and every consumption path offers to the contract tests.

A :class:`Client` publishes and declares with its plugin's own library. A :class:`Path` is one way
that library hands messages to user code (pika callback, generator, ``basic_get``; aio-pika
callback, ``message.process()``, iterator, ``Queue.get``; kombu ``Consumer``, ``SimpleQueue``).
It runs a :class:`Handling` for each delivery and reports what the handler saw as
:class:`Received`, so a behaviour is written once and checked on every path. Nothing here imports
a client library: each plugin's module does, and only sessions that install that plugin load it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from opentelemetry import baggage, trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanContext

from broker_harness import Broker

T = TypeVar("T")
Settle = Literal["ack", "nack", "reject", "requeue"]
# Delivery modes of the contract: a consumer the broker pushes to, a loop that asks for each
# message (generator, iterator), and single-message pulls handled inside message_context().
Mode = Literal["push", "loop", "pull"]
BODY = b"order 17"
DEADLINE = 30.0  # seconds any path waits for a delivery before the test fails


def poll(attempt: Callable[[], T | None], what: str) -> T:
    """Call ``attempt`` until it gives something; the test fails after :data:`DEADLINE` seconds."""
    deadline = time.monotonic() + DEADLINE
    while (found := attempt()) is None:
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE} s"
        time.sleep(0.02)
    return found


def leftover() -> tuple[SpanContext, Mapping[str, object]]:
    """The span context and baggage current here (what a handler may have left behind)."""
    return trace.get_current_span().get_span_context(), dict(baggage.get_all())


@dataclass
class Received:
    """One delivery as the handler saw it."""

    body: bytes
    headers: Mapping[str, Any]
    delivery_tag: int
    redelivered: bool
    raw: Any  # what a consume hook's ``envelope.raw`` is for this delivery
    message: Any  # what :meth:`Path.settle` takes
    # the span context and baggage current in the handler (for a pull: right after it)
    current: SpanContext = field(init=False)
    baggage: Mapping[str, object] = field(init=False)

    def __post_init__(self) -> None:
        self.body = bytes(self.body)
        self.headers = dict(self.headers or {})
        self.current, self.baggage = leftover()


@dataclass
class Consumed:
    """What a consumption run left behind."""

    received: list[Received]
    after: SpanContext  # current in the consuming thread or task once handling ended
    after_baggage: Mapping[str, object]
    raised: BaseException | None = None  # what reached the caller of the library's loop


@dataclass
class Handling:
    """What the handler does with each delivery, in this order: look, forward, settle, raise.

    ``settles`` gives the settle of each call in turn (the last one repeats); ``None`` leaves the
    delivery unsettled. ``forward_to`` publishes ``b"next"`` to that queue from the handler.
    """

    look: Callable[[Received], None] | None = None
    forward_to: str | None = None
    settles: Sequence[Settle | None] = ("ack",)
    raises: BaseException | None = None
    _calls: int = field(default=0, init=False)

    def settle_now(self) -> Settle | None:
        """The settle of the current call (then moves on to the next)."""
        chosen = self.settles[min(self._calls, len(self.settles) - 1)]
        self._calls += 1
        return chosen


@dataclass
class Run:
    """One :meth:`Path.consume`: ``calls`` deliveries from ``queue``, each handled by ``handling``."""

    queue: str
    calls: int
    handling: Handling
    between: Callable[[], None] | None
    received: list[Received] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.received) >= self.calls

    def ready(self) -> None:
        """The consumer is set up: run what the test wants done before the first delivery."""
        if self.between is not None:
            self.between()

    def begin(self, seen: Received) -> None:
        """A delivery reached the handler: record it, with what is current there, and look."""
        seen.current, seen.baggage = leftover()
        self.received.append(seen)
        if self.handling.look is not None:
            self.handling.look(seen)

    def end(self) -> None:
        """The handler is done with its delivery: raise what the test asked for."""
        if self.handling.raises is not None:
            raise self.handling.raises


@dataclass(frozen=True)
class Outgoing:
    """One message to publish, as :meth:`Client.publish` was asked."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] | None
    properties: dict[str, str]  # message_id, correlation_id: those given
    confirm: bool  # on a channel in publisher-confirm mode


class Client:
    """Publishing and declaring with the plugin's own library, on a connection of its own."""

    # the headers object the caller's message (or properties) held before the last publish,
    # and the one it holds after it
    held_headers: tuple[Any, Any] = (None, None)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes = BODY,
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = "m-1",
        correlation_id: str | None = None,
        confirm: bool = False,
    ) -> Any:
        """Publish one message; returns the object the caller handed over (a publish hook's raw).

        The message id is given by default (aio-pika would make one up), so spans compare whole.
        ``confirm``: on a channel in publisher-confirm mode, so a broker nack raises.
        """
        properties = {"message_id": message_id, "correlation_id": correlation_id}
        given = {k: v for k, v in properties.items() if v is not None}
        return self.send(Outgoing(exchange, routing_key, body, headers, given, confirm))

    def send(self, out: Outgoing) -> Any:
        """The library's publish of ``out``; sets :attr:`held_headers`."""
        raise NotImplementedError

    def fetch(self, queue: str) -> tuple[bytes, Mapping[str, Any]]:
        """Body and headers of the next message on ``queue``, pulled recording nothing."""
        with suppress_instrumentation():
            return poll(lambda: self.get_one(queue), f"message on {queue}")

    def get_one(self, queue: str) -> tuple[bytes, Mapping[str, Any]] | None:
        """One auto-ack pull: body and headers, or None when the queue is empty."""
        raise NotImplementedError

    def declare_queue(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        """Declare a queue other connections can use; its name (the broker's, for ``""``)."""
        raise NotImplementedError

    def declare_exchange(self, name: str, bind: str, routing_key: str) -> None:
        """Declare an auto-deleted direct exchange and bind the queue ``bind`` to it."""
        raise NotImplementedError

    def delete_queue(self, name: str) -> None:
        raise NotImplementedError

    def is_broker_nack(self, error: BaseException) -> bool:
        """Whether ``error`` is the library's own error for a publish the broker nacked."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Path:
    """One way the library hands messages to user code, on a connection of its own."""

    id: ClassVar[str]
    mode: ClassVar[Mode]
    operation: ClassVar[Literal["process", "receive"]] = "receive"
    span_kind: ClassVar[Literal["CONSUMER", "CLIENT"]] = "CLIENT"
    settles: ClassVar[frozenset[Settle]] = frozenset({"ack", "nack", "reject", "requeue"})
    requeue_operation: ClassVar[str] = "nack"  # the settle span of a requeue: nack or reject
    marks_errors: ClassVar[bool] = False  # a handler's exception ends the consume span ERROR
    raises_to_caller: ClassVar[bool] = False  # ... and reaches the caller of the library's loop
    rejects_on_error: ClassVar[bool] = False  # ... and the library rejects the message for it
    settles_later: ClassVar[bool] = True  # a delivery can be settled after its handler returned
    settles_multiple: ClassVar[bool] = True  # ack(multiple=True) exists
    names_untracked: ClassVar[bool] = False  # a reject of a delivery seen before instrument()
    # names its queue

    def consume(
        self,
        queue: str,
        calls: int,
        handling: Handling,
        between: Callable[[], None] | None = None,
    ) -> Consumed:
        """Run the handler for ``calls`` deliveries from ``queue``; ``between`` runs once the
        consumer is set up (registered, for push paths) and before any delivery is handled."""
        return self.consume_run(Run(queue, calls, handling, between))

    def consume_run(self, run: Run) -> Consumed:
        """:meth:`consume`: :meth:`run`, then what it left current, then :meth:`finish`."""
        raised: BaseException | None = None
        try:
            self.run(run)
        except Exception as exc:
            raised = exc
        consumed = Consumed(run.received, *leftover(), raised=raised)
        self.finish()
        return consumed

    def run(self, run: Run) -> None:
        """Consume as the path does, calling :meth:`handle` in the handler."""
        raise NotImplementedError

    def finish(self) -> None:
        """After a run, once what it left current was measured."""

    def handle(self, run: Run, seen: Received) -> None:
        """The handler: look, forward, settle, raise (see :class:`Handling`)."""
        run.begin(seen)
        if run.handling.forward_to is not None:
            self.forward(run.handling.forward_to)
        how = run.handling.settle_now()
        if how is not None:
            self.settle(seen.message, how)
        run.end()

    def forward(self, queue: str) -> None:
        """Publish ``b"next"`` to ``queue`` from inside the handler."""
        raise NotImplementedError

    def pull(self, queue: str, *, auto_ack: bool = False, wait: bool = True) -> Received | None:
        """Pull paths only: one message without ``message_context()`` (``current`` is what is
        current right after the pull); ``None`` when the queue is empty (``wait=False``: at once)."""
        raise NotImplementedError

    def settle(self, message: Any, how: Settle, *, multiple: bool = False) -> None:
        """Settle a delivery outside any handler."""
        raise NotImplementedError

    def message_context(self, raw: Any) -> AbstractContextManager[None]:
        """The plugin's ``message_context()`` for a pulled message (its :attr:`Received.raw`)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Plugin:
    """One plugin: its instrumentor, its client, its paths, and what instrument() patches."""

    name: ClassVar[str]  # the entry point is otel_<name>
    paths: ClassVar[Mapping[str, type[Path]]]  # by path id
    server_names_queues: ClassVar[bool] = True  # a queue declared as "" gets the broker's amq.gen-…

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    instrumentor_class: ClassVar[Callable[[], Any]]  # the plugin's instrumentor
    client_class: ClassVar[Callable[[Broker], Client]]  # its Client, on the test's broker

    def instrumentor(self) -> Any:
        return self.instrumentor_class()

    def client(self) -> Client:
        return self.client_class(self.broker)

    def path(self, path_id: str) -> Path:
        return self.paths[path_id](self.broker)  # type: ignore[call-arg]

    def first(self, mode: Mode) -> Path:
        """A new instance of the plugin's first path of ``mode``."""
        return self.path(next(i for i, p in self.paths.items() if p.mode == mode))

    def patched(self) -> dict[str, object]:
        """Every library attribute instrument() may replace, as it is now."""
        raise NotImplementedError

    def unpatched(self, before: dict[str, object], now: dict[str, object]) -> list[str]:
        """The attributes instrument() must replace that are still the originals."""
        return [key for key, value in before.items() if now[key] is value]

    def instrument_object(self, client: Client, **options: Any) -> None:
        """``instrument_channel`` / ``instrument_connection`` on the client's channel or connection."""
        raise NotImplementedError

    def published_raw_ok(self, raw: Any, given: Any, message_id: str) -> bool:
        """Whether a publish hook's ``envelope.raw`` is the library's own object for ``given``."""
        raise NotImplementedError

    def close(self) -> None:
        """After the test, once its client and paths are closed."""
