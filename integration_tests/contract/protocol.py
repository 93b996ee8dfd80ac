"""The small protocol every plugin and every consumption path offers to the contract tests.

A :class:`Client` publishes and declares with its plugin's own library. A :class:`Path` is one way
that library hands messages to user code (pika callback, generator, ``basic_get``; aio-pika
callback, ``message.process()``, iterator, ``Queue.get``; kombu ``Consumer``, ``SimpleQueue``).
It runs a :class:`Handling` for each delivery and reports what the handler saw as
:class:`Received`, so a behaviour is written once and checked on every path. Nothing here imports
a client library: each plugin's module does, and only sessions that install that plugin load it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from opentelemetry import baggage, trace
from opentelemetry.trace import SpanContext

Settle = Literal["ack", "nack", "reject", "requeue"]
# Delivery modes of the contract: a consumer the broker pushes to, a loop that asks for each
# message (generator, iterator), and single-message pulls handled inside message_context().
Mode = Literal["push", "loop", "pull"]
BODY = b"order 17"
DEADLINE = 30.0  # seconds any path waits for a delivery before the test fails


@dataclass
class Received:
    """One delivery as the handler saw it."""

    body: bytes
    headers: Mapping[str, Any]
    delivery_tag: int
    redelivered: bool
    current: SpanContext  # the span context current while the handler ran
    baggage: Mapping[str, object]  # the baggage current while the handler ran
    raw: Any  # what a consume hook's ``envelope.raw`` is for this delivery
    message: Any  # what :meth:`Path.settle` takes


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


def now(body: bytes, headers: Mapping[str, Any] | None, tag: int, redelivered: bool) -> Received:
    """A :class:`Received` filled with what is current in the calling handler."""
    return Received(
        body=bytes(body),
        headers=dict(headers or {}),
        delivery_tag=int(tag),
        redelivered=bool(redelivered),
        current=trace.get_current_span().get_span_context(),
        baggage=dict(baggage.get_all()),
        raw=None,
        message=None,
    )


def leftover() -> tuple[SpanContext, Mapping[str, object]]:
    """The span context and baggage current here (what a handler may have left behind)."""
    return trace.get_current_span().get_span_context(), dict(baggage.get_all())


class Client(Protocol):
    """Publishing and declaring with the plugin's own library, on a connection of its own."""

    # the headers object the caller's message (or properties) held before the last publish,
    # and the one it holds after it
    held_headers: tuple[Any, Any]

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

        The message id is given (aio-pika would make one up), so spans compare whole.

        ``confirm``: on a channel in publisher-confirm mode, so a broker nack raises.
        """
        ...

    def declare_queue(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        """Declare a queue other connections can use (it expires unused); its name."""
        ...

    def declare_exchange(self, name: str, bind: str, routing_key: str) -> None:
        """Declare an auto-deleted direct exchange and bind the queue ``bind`` to it."""
        ...

    def delete_queue(self, name: str) -> None: ...

    def is_broker_nack(self, error: BaseException) -> bool:
        """Whether ``error`` is the library's own error for a publish the broker nacked."""
        ...

    def fetch(self, queue: str) -> tuple[bytes, Mapping[str, Any]]:
        """Body and headers of the next message on ``queue``, pulled recording nothing."""
        ...

    def close(self) -> None: ...


class Path(Protocol):
    """One way the library hands messages to user code."""

    id: str
    mode: Mode
    operation: Literal["process", "receive"]
    span_kind: Literal["CONSUMER", "CLIENT"]
    settles: frozenset[Settle]  # the settles the path can make
    requeue_operation: str  # the settle span a requeue makes: "nack" or "reject"
    marks_errors: bool  # a handler's exception ends the consume span ERROR
    raises_to_caller: bool  # ... and reaches the caller of the library's loop
    rejects_on_error: bool  # ... and the library rejects the message for it
    settles_later: bool  # a delivery can be settled after its handler returned
    settles_multiple: bool  # ack(multiple=True) exists
    names_untracked: bool  # a settle of a delivery seen before instrument() names its queue

    def consume(
        self,
        queue: str,
        calls: int,
        handling: Handling,
        between: Callable[[], None] | None = None,
    ) -> Consumed:
        """Run the handler for ``calls`` deliveries from ``queue``; ``between`` runs once the
        consumer is set up (registered, for push paths) and before any delivery is handled."""
        ...

    def pull(self, queue: str, *, auto_ack: bool = False, wait: bool = True) -> Received | None:
        """Pull paths only: one message without ``message_context()`` (``current`` is what is
        current right after the pull); ``None`` when the queue is empty (``wait=False``: at once)."""
        ...

    def settle(self, message: Any, how: Settle, *, multiple: bool = False) -> None:
        """Settle a delivery outside any handler."""
        ...

    def message_context(self, raw: Any) -> AbstractContextManager[None]:
        """The plugin's ``message_context()`` for a pulled message (its :attr:`Received.raw`)."""
        ...

    def close(self) -> None: ...


class Plugin(Protocol):
    """One plugin: its instrumentor, its paths, and what instrument() patches."""

    name: str  # "pika", "aiopika", "kombu": the entry point is otel_<name>
    paths: Mapping[str, type[Path]]  # by path id
    server_names_queues: bool  # declaring a queue without a name gets the broker's amq.gen-…

    def instrumentor(self) -> Any: ...

    def client(self) -> Client: ...

    def path(self, path_id: str) -> Path: ...

    def patched(self) -> dict[str, object]:
        """Every library attribute instrument() may replace, as it is now."""
        ...

    def unpatched(self, before: dict[str, object], now: dict[str, object]) -> list[str]:
        """The attributes instrument() must replace that are still the originals."""
        ...

    def instrument_object(self, client: Client, **options: Any) -> None:
        """``instrument_channel`` / ``instrument_connection`` on the client's channel or connection."""
        ...

    def close(self) -> None: ...

    def published_raw_ok(self, raw: Any, given: Any, message_id: str) -> bool:
        """Whether a publish hook's ``envelope.raw`` is the library's own object for ``given``."""
        ...
