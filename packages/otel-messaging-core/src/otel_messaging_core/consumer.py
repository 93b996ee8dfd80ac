"""Which context a consumer span starts in, and making the handling context current.

Consumer context (SPEC):

* ``"parent"``: with no span active, the process/receive span is a child of the message's creation
  context and also links to it; with a span active, that span is the parent and the creation
  context is a link.
* ``"link"``: the creation context is only a link; the span starts a new trace (or, with a span
  active, continues the caller's trace, never the producer's).

In both modes the message's baggage is current while the handler runs, so a publish the handler
makes carries it on.
"""

from __future__ import annotations

import logging
from contextvars import Token
from typing import TYPE_CHECKING, Any, Callable, Final, Literal, Mapping

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, INVALID_SPAN_CONTEXT, Link, Span, SpanContext

from otel_messaging_core._private_api import SPAN_KEY, attach, detach
from otel_messaging_core.guard import capture_internal_exceptions, log_internal_error
from otel_messaging_core.propagation import extract_context

if TYPE_CHECKING:
    from otel_messaging_core.telemetry import MessagingTelemetry

__all__ = [
    "CONSUMER_CONTEXT_MODES",
    "attach",
    "ConsumerContextMode",
    "ContextActivation",
    "MessageContext",
    "MessageContexts",
    "consumer_parent",
    "creation_span_context",
    "handling_parent",
    "message_context_of",
]

_logger = logging.getLogger(__name__)

ConsumerContextMode = Literal["parent", "link"]
CONSUMER_CONTEXT_MODES: Final = ("parent", "link")


def creation_span_context(creation: Context) -> SpanContext | None:
    """The producer's span context carried by a message, or ``None`` when it carried none."""
    span_context = trace.get_current_span(creation).get_span_context()
    return span_context if span_context.is_valid else None


def consumer_parent(
    creation: Context, mode: ConsumerContextMode, current: Context
) -> tuple[Context, SpanContext, SpanContext | None]:
    """The parent-or-link rule, in the one place it is written: where a consumer span starts.

    Returns the context to start the span in (it also holds the message's baggage), that
    context's span context (``INVALID_SPAN_CONTEXT`` for a new trace), and the producer's span
    context to link to (``None`` when the message carried none). ``creation`` is what the message
    carried (from :func:`~otel_messaging_core.propagation.extract_context`).
    """
    active: Span | None = current.get(SPAN_KEY)  # type: ignore[assignment]
    if active is not None:
        active_sc = active.get_span_context()
        if active_sc.is_valid:
            # A span is active (a pull inside a request handler, a consumer loop inside a span):
            # it stays the parent in both modes; the message's baggage joins it.
            return _with_baggage_of(creation, current), active_sc, creation_span_context(creation)
    # The usual case (one message per call: every instruction counts): nothing is active, so
    # the parent is the producer (parent mode) or nothing (link mode).
    producer: Span | None = creation.get(SPAN_KEY)  # type: ignore[assignment]
    if producer is not None:
        creation_sc = producer.get_span_context()
        if creation_sc.is_valid:
            if mode == "parent":
                return creation, creation_sc, creation_sc
            # A new trace: the message's context minus its span (keeps baggage, drops the parent).
            return (
                trace.set_span_in_context(INVALID_SPAN, creation),
                INVALID_SPAN_CONTEXT,
                creation_sc,
            )
    return creation, INVALID_SPAN_CONTEXT, None


def handling_parent(
    creation: Context,
    mode: ConsumerContextMode,
    current: Context | None = None,
) -> tuple[Context, list[Link]]:
    """The context to start a consumer span in, and its links (:func:`consumer_parent`).

    ``current`` defaults to the caller's current context.
    """
    parent, _parent_sc, creation_sc = consumer_parent(
        creation, mode, otel_context.get_current() if current is None else current
    )
    return parent, [Link(creation_sc)] if creation_sc is not None else []


def _with_baggage_of(source: Context, target: Context) -> Context:
    entries = baggage.get_all(source)
    for name, value in entries.items():
        target = baggage.set_baggage(name, value, target)
    return target


class ContextActivation:
    """Make a context current and restore the previous one; safe from sync code, generators and tasks.

    ``deactivate()`` is idempotent and never raises. If it runs in another execution context than
    ``activate()`` (a generator closed by the garbage collector, an iterator closed from another
    asyncio task), there is nothing of ours left to restore there and it only logs at debug level.
    """

    __slots__ = ("_token",)

    def __init__(self) -> None:
        self._token: Token[Context] | None = None

    @property
    def active(self) -> bool:
        """True between :meth:`activate` and :meth:`deactivate`."""
        return self._token is not None

    def activate(self, context: Context) -> None:
        """Make ``context`` current, replacing (and first undoing) a previous activation."""
        if self._token is not None:
            self.deactivate()
        self._token = attach(context)

    def deactivate(self) -> None:
        """Restore the context that was current before :meth:`activate`."""
        token = self._token
        if token is not None:
            self._token = None
            restore(token)


def restore(token: Token[Context]) -> None:
    """Undo ``otel_context.attach()``; quiet when run in another execution context. Never raises."""
    try:
        # the runtime context's own detach: otel_context.detach() would log a traceback for the
        # ValueError of a token reset from another execution context, which is expected here
        detach(token)
    except ValueError:
        _logger.debug("handling context ended in another execution context; nothing to restore")
    except Exception:  # pragma: no cover - defensive: never raise into user code
        _logger.debug("could not restore the previous context", exc_info=True)


class MessageContext:
    """``with MessageContext(ctx):`` makes a message's handling context current for the block.

    The object behind each plugin's ``message_context(message)``: a plain (sync) context manager,
    so it works the same in sync code and inside coroutines.
    """

    __slots__ = ("_activation", "_context")

    def __init__(self, context: Context) -> None:
        self._context = context
        self._activation = ContextActivation()

    def __enter__(self) -> Context:
        self._activation.activate(self._context)
        return self._context

    def __exit__(self, *exc_info: object) -> None:
        self._activation.deactivate()


def message_context_of(
    known: Context | None,
    headers: Mapping[Any, Any] | None,
    telemetry: MessagingTelemetry | None,
) -> MessageContext:
    """What every plugin's ``message_context(message)`` returns, written once.

    ``known`` is the handling context of the message's receive span when the plugin recorded
    one (the block's spans become its children). Otherwise the context comes from the message's
    ``headers`` under the instrumentor's ``consumer_context`` rule (``"parent"`` when nothing
    instruments the message's channel any more); the message's baggage is current either way.
    If even that fails, the block runs in the current context. Never raises.
    """
    context = known
    if context is None:
        try:
            if telemetry is not None:
                context = telemetry.handling_context(headers)
            else:
                context, _links = handling_parent(extract_context(headers), "parent")
        except Exception as internal:
            log_internal_error("message_context()", internal)
    return MessageContext(context if context is not None else otel_context.get_current())


class MessageContexts:
    """A plugin's ``message_context(message)``, written once: ``MessageContexts("pika", recall=...,
    headers_of=..., telemetry_of=...)(message)``.

    ``recall(message)`` gives the handling context of the message's receive span when the plugin
    recorded one; otherwise ``headers_of(message)`` and ``telemetry_of(message)`` (the telemetry
    serving the message, ``None`` when nothing instruments it any more) go to
    :func:`message_context_of`. A failure of the lookups is logged once for the plugin's place
    (``"<library> message_context()"``) and the block runs in the current context. Never raises.
    """

    __slots__ = ("_guard", "_headers_of", "_recall", "_telemetry_of")

    def __init__(
        self,
        library: str,
        *,
        recall: Callable[[Any], Context | None],
        headers_of: Callable[[Any], Mapping[Any, Any] | None],
        telemetry_of: Callable[[Any], MessagingTelemetry | None],
    ) -> None:
        self._guard = capture_internal_exceptions(f"{library} message_context()")
        self._recall = recall
        self._headers_of = headers_of
        self._telemetry_of = telemetry_of

    def __call__(self, message: Any) -> MessageContext:
        context = headers = telemetry = None
        try:
            context = self._recall(message)
            if context is None:
                headers = self._headers_of(message)
                telemetry = self._telemetry_of(message)
        except Exception as internal:  # the block runs in the current context
            self._guard.report(internal)
            return MessageContext(otel_context.get_current())
        return message_context_of(context, headers, telemetry)
