"""What the instrumentation keeps per pika channel, and which telemetry instruments a channel now.

The state, the core :class:`~otel_messaging_core.Scope` kept by :data:`SCOPES`, lives on pika's own
``pika.channel.Channel`` object (a ``BlockingChannel`` shares the one of its underlying channel),
so it goes away with the channel. :func:`scope_of` answers which telemetry instruments a channel
now: the one ``instrument_channel()`` pinned to it, else the global one, else none. Per channel
it holds that telemetry, the destination cache of the channel's broker address, the unsettled
manual-ack deliveries (``delivery_tag`` -> core :class:`~otel_messaging_core.Delivery`, or the
:data:`Unsampled` record of one on the fast path; freed on ack/nack/reject and on channel close
or connection loss) and the queue of each consumer tag (a delivery names its exchange and routing
key, not its queue).

Nothing in this module imports pika: the package must import (for the entry point) when pika is
missing.
"""

from __future__ import annotations

import weakref
from typing import Any, Final

from opentelemetry.context import Context

from otel_messaging_core import (
    MAX_UNSETTLED,
    Consume,
    Delivery,
    DeliveryLedger,
    MessagingTelemetry,
    PlainMethods,
    Scope,
    Scopes,
    Shadows,
    capture_internal_exceptions,
    delivery_queue,
)

__all__ = [
    "SCOPES",
    "ChannelState",
    "Unsampled",
    "bypass_if_blocking",
    "recall",
    "release_bypasses",
    "remember",
    "scope_of",
    "state_of",
]

_CLOSE_CALLBACK: Final = capture_internal_exceptions("pika channel close callback")
MAX_TRACKED_DELIVERIES: Final = MAX_UNSETTLED
MAX_CONSUMERS: Final = 4096

#: What a manual-ack delivery on the unsampled fast path keeps in the ledger (issue 18): the
#: context ``unsampled_consume`` gave, pika's ``Basic.Deliver`` and the consumer's queue when its
#: basic_consume was seen (else ``None``). Made into the :class:`~otel_messaging_core.Delivery`
#: the general path keeps only when a settle records something (:meth:`ChannelState.take`); the
#: usual ack forgets it as it is.
Unsampled = tuple[Context, Any, "str | None"]


class ChannelState(Scope):
    """The instrumentation's per-channel record (see the module docstring)."""

    __slots__ = ("blocking", "deliveries", "get_pending", "pull", "queues")

    def __init__(self, impl: Any = None, *, blocking: bool = False) -> None:
        super().__init__(impl)
        self.blocking = blocking
        # unsettled manual-ack deliveries: the core ledger (multiple=True, tag 0, the bound)
        self.deliveries: DeliveryLedger[Delivery | Unsampled] = DeliveryLedger()
        self.queues: dict[str, str] = {}
        # the consume() iterator whose receive span may be open (a BlockingChannel has one at most)
        self.pull: weakref.ref[Any] | None = None
        # the async basic_get awaiting its Basic.GetOk (pika allows one at a time): queue, whether
        # it must be acked, when it was sent
        self.get_pending: tuple[str, bool, float] | None = None

    def server(self, obj: Any) -> tuple[str | None, int | None]:
        return _server_of(obj)

    def retarget(self, obj: Any, telemetry: MessagingTelemetry | None) -> None:
        """Serve ``telemetry`` from now on; what the previous one tracked is dropped."""
        self.deliveries.clear()
        super().retarget(obj, telemetry)

    def take(self, delivery_tag: int, multiple: bool) -> list[Delivery]:
        """The records settled by one ack/nack/reject, removed from the channel's ledger."""
        return [
            record if isinstance(record, Delivery) else self._delivery(*record)
            for record in self.deliveries.take(delivery_tag, multiple)
        ]

    def keep_unsampled(self, context: Context, method: Any) -> None:
        """Keep the :data:`Unsampled` settle record of a manual-ack delivery on the fast path
        (``DeliveryLedger.track`` written out: this runs per message)."""
        deliveries = self.deliveries
        deliveries[method.delivery_tag] = (context, method, self.queues.get(method.consumer_tag))
        if len(deliveries) > deliveries.limit:
            deliveries.drop_oldest()

    def _delivery(self, context: Context, method: Any, queue: str | None) -> Delivery:
        """The :class:`~otel_messaging_core.Delivery` of an :data:`Unsampled` record: what the
        general path keeps for a message whose trace is not sampled."""
        exchange = method.exchange
        routing_key = method.routing_key
        destination = self.destinations.get(
            "process", exchange, routing_key, queue or delivery_queue(exchange, routing_key)
        )
        return MessagingTelemetry.unsampled_delivery(context, destination, method.delivery_tag)

    def remember_queue(self, consumer_tag: object, queue: object) -> None:
        """The queue a consumer reads (from its basic_consume call)."""
        if type(consumer_tag) is str and type(queue) is str and queue:
            queues = self.queues
            if len(queues) >= MAX_CONSUMERS:
                queues.clear()
            queues[consumer_tag] = queue

    def queue_of(self, consumer_tag: object, exchange: str, routing_key: str) -> str:
        """The queue a delivery came from: recorded at basic_consume, else inferred.

        A consumer registered before instrumentation, or with ``queue=""`` (the channel's last
        server-named queue), was not seen; on the default exchange the routing key is the queue's
        name, otherwise the queue stays unknown and the exchange names the span.
        """
        queue = self.queues.get(consumer_tag) if type(consumer_tag) is str else None
        if queue:
            return queue
        return delivery_queue(exchange, routing_key)

    def closed(self, *_args: object) -> None:
        """Channel closed (by the user, the broker or connection loss): free what it held."""
        self.deliveries.clear()
        self.queues.clear()
        self.get_pending = None


def _server_of(impl: Any) -> tuple[str | None, int | None]:
    """``server.address`` (host only, never credentials) and ``server.port`` of a channel."""
    params = getattr(getattr(impl, "connection", None), "params", None)
    host = getattr(params, "host", None)
    port = getattr(params, "port", None)
    return (
        host if isinstance(host, str) and host else None,
        port if isinstance(port, int) and not isinstance(port, bool) else None,
    )


def _new_state(impl: Any) -> ChannelState:
    """A channel's state, made on its first lookup (and freed on channel close)."""
    from pika.adapters.blocking_connection import BlockingChannel

    state = ChannelState(blocking=isinstance(impl._get_cookie(), BlockingChannel))
    with _CLOSE_CALLBACK:  # a channel already torn down: nothing will be tracked for long
        if not impl.is_closed:  # a closed channel's callbacks are never called nor cleaned up
            impl.add_on_close_callback(state.closed)
    return state


#: the global telemetry and the channels ``instrument_channel()`` pinned (their ``pika.channel.Channel``)
SCOPES: Final = Scopes("pika", _new_state)
#: the state of whatever instruments a ``pika.channel.Channel`` now; ``None``: not instrumented
scope_of: Final = SCOPES.of
#: the state already kept on a ``pika.channel.Channel``, if any (no lookup)
state_of: Final = SCOPES.cached


# -- the pass-through wrappers of a BlockingChannel's underlying channel ---------------------------

#: Class-level wrappers of ``pika.channel.Channel`` that only pass through on a ``BlockingChannel``'s
#: underlying channel (the ``BlockingChannel``'s own wrappers make those spans): a publish and every
#: delivery would pay a wrapt dispatch for nothing (11k instructions each; docs/benchmarks.md).
BYPASSED: Final = ("basic_publish", "_on_deliver", "basic_ack", "basic_nack", "basic_reject")
# our class-level patch, and only that (never another library's wrapper above or below it)
_OURS: Final = ("otel_pika._publish", "otel_pika._consume", "otel_pika._settle")
_PLAIN: Final = {name: PlainMethods(name, _OURS) for name in BYPASSED}
# underlying channels on which pika's own methods, bound to them, shadow the class's wrappers
_BYPASSES: Final = Shadows(*_PLAIN.values())


def bypass_if_blocking(impl: Any, name: str) -> None:
    """On a ``BlockingChannel``'s underlying channel, bind pika's own ``name`` over the class's
    wrapper (one of :data:`BYPASSED`), so the next calls skip it; :func:`release_bypasses` (at
    ``uninstrument()``) takes the shadows back. Anything else is left alone."""
    state = state_of(impl)
    if state is None or not state.blocking or name in impl.__dict__:
        return
    found = _PLAIN[name].of(type(impl))
    if found is not None:
        _BYPASSES.bind(impl, name, found)


#: Remove every shadow :func:`bypass_if_blocking` set: the channels are as pika made them.
release_bypasses: Final = _BYPASSES.forget


# -- contexts of pulled messages, for message_context() -------------------------------------------

# pika's BasicProperties compare by __dict__ (so they are unhashable, and an attribute set on
# them would change their equality and repr): remember by identity, forget when they die.
_remembered: dict[int, tuple[weakref.KeyedRef[Any, int], Context]] = {}


def _forget(ref: weakref.KeyedRef[Any, int]) -> None:
    entry = _remembered.get(ref.key)
    if entry is not None and entry[0] is ref:
        _remembered.pop(ref.key, None)


def remember(properties: Any, op: Consume) -> None:
    """Remember the receive span's context of a pulled message, for as long as its properties live.

    Not when no span was made (suppressed, or the message's trace is not sampled and the sampler
    follows it): :func:`recall` then finds nothing and ``message_context()`` builds the same
    context from the headers.
    """
    context = op.context
    if context is None or properties is None or not op.has_span:
        return
    key = id(properties)
    try:
        ref = weakref.KeyedRef(properties, _forget, key)
    except TypeError:  # not weak-referenceable: message_context() falls back to the headers
        return
    _remembered[key] = (ref, context)


def recall(properties: Any) -> Context | None:
    """The context remembered for these properties (the very same object), if any."""
    entry = _remembered.get(id(properties))
    if entry is not None and entry[0]() is properties:
        return entry[1]
    return None
