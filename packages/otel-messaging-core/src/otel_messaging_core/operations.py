"""The per-message operation objects a plugin holds around the user's call: :class:`Publish`,
:class:`Consume` (process/receive) and :class:`Settle` (ack/nack/reject), and the
:class:`Delivery` record an unsettled message keeps for its settle span.

:class:`~otel_messaging_core.telemetry.MessagingTelemetry` makes them (``start_publish`` and the
rest); a plugin ends each one exactly once. Publish and Consume share one finish
(:meth:`_Operation.end`): the error status, the span's end and the duration metric.
"""

from __future__ import annotations

from contextvars import Token
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Final, Mapping, TypeVar

from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanContext, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from otel_messaging_core.attributes import (
    BROKER_NACK,
    ERROR_TYPE,
    UNROUTABLE,
    Destination,
    error_type_of,
)
from otel_messaging_core.consumer import attach, restore
from otel_messaging_core.guard import log_internal_error
from otel_messaging_core.metrics import MessagingMetrics

if TYPE_CHECKING:
    from otel_messaging_core.telemetry import MessagingTelemetry

__all__ = [
    "Consume",
    "Delivery",
    "Publish",
    "Settle",
    "call_in",
    "headers_to_send",
    "publish_failure",
    "set_error",
]

_SETTLE_ERROR: Final = "error"
_Op = TypeVar("_Op", bound="_Operation")
_COUNT: Final[Mapping[str, Callable[..., None]]] = {
    "publish": MessagingMetrics.published,
    "process": MessagingMetrics.processed,
    "receive": MessagingMetrics.received,
}


def set_error(
    span: Span, error_type: str, exc: BaseException | None, description: str | None
) -> None:
    """Mark ``span`` ERROR with ``error.type``; record ``exc`` when there is one."""
    if not span.is_recording():
        return
    if exc is not None:
        span.record_exception(exc)
        description = description or f"{type(exc).__name__}: {exc}"
    span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, description or error_type))


class _Operation:
    """A span and its duration metric, ended once by :meth:`end`; also a context manager.

    ``with op:`` ends the operation when the block ends; an exception leaving the block ends it
    as ERROR (``error.type`` from :meth:`classified`, else the exception's qualified name) and goes
    on unchanged. A failure of our own in ``__exit__`` is logged, never raised. An outcome known
    only from the call's result (a returned message handed back as the result) is ended inside
    the block, ``op.end(error_type=UNROUTABLE, description=...)``; the block's own end then does
    nothing.
    """

    __slots__ = ("_start", "_token", "classify", "destination", "recorder", "span")

    #: the telemetry :meth:`end` records into; ``None`` once ended, or when ending records
    #: nothing (:func:`~otel_messaging_core.records_nothing`, which a hot path may read inline)
    recorder: MessagingTelemetry | None
    _start: float
    #: the context token of an activated Consume; always ``None`` on a Publish
    _token: Token[Context] | None
    destination: Destination | None
    span: Span

    #: gives the ``error.type`` of an exception leaving a ``with`` block (see :meth:`classified`)
    classify: Callable[[BaseException], str | None]
    #: where a failure of :meth:`end` is logged
    _where: ClassVar[str] = "operation end"

    def end(
        self,
        exc: BaseException | None = None,
        *,
        error_type: str | None = None,
        description: str | None = None,
    ) -> None:
        """Restore the context :meth:`Consume.activate` replaced, end the span (ERROR with
        ``exc`` or ``error_type``) and count the operation. Never raises; ends once."""
        token = self._token
        if token is not None:
            self._token = None
            restore(token)
        telemetry = self.recorder
        if telemetry is None:  # suppressed, failed to start, or ended already
            return
        self.recorder = None
        try:
            duration = perf_counter() - self._start
            if exc is not None and error_type is None:
                error_type = error_type_of(exc)
            if error_type is not None:
                set_error(self.span, error_type, exc, description)
            self.span.end()
            destination = self.destination
            assert destination is not None
            # the instrument's method by operation (publish / process / receive), called unbound
            _COUNT[destination.operation](
                telemetry.metrics, destination.metric_attributes, duration, error_type
            )
        except Exception as internal:  # pragma: no cover - defensive
            log_internal_error(self._where, internal)

    # -- context manager ---------------------------------------------------------------------------

    def classified(self: _Op, classify: Callable[[BaseException], str | None]) -> _Op:
        """Give an exception that leaves the ``with`` block the ``error.type`` ``classify(exc)``
        (``None``: the exception's qualified name), e.g. ``unroutable`` for a returned publish."""
        self.classify = classify
        return self

    def __enter__(self: _Op) -> _Op:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                self.end()
            else:
                classify = getattr(self, "classify", None)
                self.end(exc, error_type=None if classify is None else classify(exc))
        except Exception as internal:  # a broken end() never replaces the user's outcome
            log_internal_error(self._where, internal)
            token = self._token
            if token is not None:  # whatever failed, the caller's context comes back
                self._token = None
                restore(token)


class Publish(_Operation):
    """One publish in flight: its span, and the headers to send.

    ``headers`` is a new dict (the caller's headers plus the propagation fields) when anything was
    added, else the caller's own object, ``None`` included: ``op.headers is headers`` tells a
    plugin to send the caller's message exactly as given (SPEC: no empty headers where there was
    ``None``). ``with telemetry.start_publish(...) as op:`` ends it with the block.
    """

    __slots__ = ("headers",)
    _where = "publish end"

    def __init__(
        self,
        telemetry: MessagingTelemetry | None,
        destination: Destination | None,
        span: Span,
        headers: Mapping[Any, Any] | None,
    ) -> None:
        self.recorder = telemetry
        self.destination = destination
        self.span = span
        self.headers = headers
        self._token = None
        self._start = perf_counter()

    @classmethod
    def noop(cls, headers: Mapping[Any, Any] | None) -> Publish:
        """A publish that records nothing and sends ``headers`` (suppressed, or failed to start)."""
        return cls(None, None, INVALID_SPAN, headers)


@dataclass(eq=False, slots=True)
class Delivery:
    """What a later ack/nack/reject needs to know about one delivery; small, kept per unsettled message."""

    destination: Destination
    delivery_tag: int | None
    creation: SpanContext | None
    span_context: SpanContext | None
    #: the baggage_attributes of the message, for a settle span made after its handler ended
    baggage: Mapping[str, AttributeValue] | None = None


class Consume(_Operation):
    """One delivered message: its process/receive span and the context its handler runs in.

    ``with op:`` makes the handling context current for the block and ends the span with it.
    """

    __slots__ = ("context", "delivery")
    _where = "consume end"

    def __init__(
        self,
        telemetry: MessagingTelemetry | None,
        destination: Destination | None,
        span: Span,
        context: Context | None,
        delivery: Delivery | None,
        started: float | None = None,
    ) -> None:
        self.recorder = telemetry
        self.destination = destination
        self.span = span
        self.context = context
        self.delivery = delivery
        self._token = None
        self._start = perf_counter() if started is None else started

    @classmethod
    def noop(cls) -> Consume:
        """A consume that records nothing and leaves the context alone (suppressed, or failed)."""
        return cls(None, None, INVALID_SPAN, None, None)

    @property
    def has_span(self) -> bool:
        """False when no span was made: suppressed, failed to start, or the message's trace is
        not sampled and the sampler follows it (the context then comes from the headers alone)."""
        return self.span is not INVALID_SPAN

    def activate(self) -> None:
        """Make the handling context (span + message baggage) current."""
        if self.context is not None:
            if self._token is not None:
                restore(self._token)
            self._token = attach(self.context)

    def deactivate(self) -> None:
        """Restore the context that was current before :meth:`activate`. Never raises."""
        token = self._token
        if token is not None:
            self._token = None
            restore(token)

    def __enter__(self) -> Consume:
        try:
            self.activate()
        except Exception as internal:
            log_internal_error("consume activate", internal)
        return self


class Settle:
    """One ack/nack/reject call; a span only when SPEC asks for one. ``with op:`` ends it;
    ``with op.caused_by(exc):`` ends it as :meth:`end` with ``cause`` does when the call succeeds."""

    __slots__ = ("_cause", "_error_type", "_metric_attributes", "_start", "recorder", "span")

    def __init__(
        self,
        telemetry: MessagingTelemetry | None,
        span: Span | None,
        metric_attributes: Mapping[str, AttributeValue] | None,
        error_type: str | None,
    ) -> None:
        self.recorder = telemetry
        self.span = span
        self._metric_attributes = metric_attributes
        self._error_type = error_type
        self._cause: BaseException | None = None
        self._start = perf_counter()

    @classmethod
    def noop(cls) -> Settle:
        """A settle that records nothing (suppressed, or failed to start)."""
        return cls(None, None, None, None)

    def end(self, exc: BaseException | None = None, *, cause: BaseException | None = None) -> None:
        """End the settle span; a failed settle call records its exception. Never raises.

        ``cause`` is the application's exception that made it settle (aio-pika's
        ``message.process()`` rejects when its block raises): the span records it and ends ERROR,
        with ``error.type`` ``rejected`` when the message is dropped, else the exception's
        qualified name. The metric keeps the settle call's own outcome.
        """
        telemetry = self.recorder
        if telemetry is None:
            return
        self.recorder = None
        try:
            duration = perf_counter() - self._start
            error_type = error_type_of(exc) if exc is not None else self._error_type
            span = self.span
            if span is not None:
                if exc is not None:
                    set_error(span, error_type or _SETTLE_ERROR, exc, None)
                elif cause is not None:
                    set_error(span, self._error_type or error_type_of(cause), cause, None)
                span.end()
            if self._metric_attributes is not None:
                telemetry.metrics.settled(self._metric_attributes, duration, error_type)
        except Exception as internal:  # pragma: no cover - defensive
            log_internal_error("settle end", internal)

    def caused_by(self, cause: BaseException | None) -> Settle:
        """Give :meth:`end` at the ``with`` block's end ``cause`` (see there)."""
        self._cause = cause
        return self

    def __enter__(self) -> Settle:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.end(exc, cause=self._cause)
        except Exception as internal:  # a broken end() never replaces the user's outcome
            log_internal_error("settle end", internal)


def publish_failure(
    *,
    unroutable: type[BaseException] | tuple[type[BaseException], ...] = (),
    broker_nack: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> Callable[[BaseException], str | None]:
    """The ``classify`` of a client's publish (:meth:`Publish.classified`): ``unroutable`` for the
    exception a mandatory message the broker returned raises, ``broker_nack`` for a broker's
    ``basic.nack`` (checked in that order: a client may derive one from the other), else ``None``
    (the exception's qualified name)."""

    def classify(exc: BaseException) -> str | None:
        if isinstance(exc, unroutable):
            return UNROUTABLE
        if isinstance(exc, broker_nack):
            return BROKER_NACK
        return None

    return classify


def call_in(
    op: _Operation | Settle | None,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """``wrapped(*args, **kwargs)`` inside ``with op:``, or as it is when ``op`` is ``None``
    (nothing traced): the tail of every wrapper. The call's exception reaches the caller unchanged."""
    if op is None:
        return wrapped(*args, **kwargs)
    with op:
        return wrapped(*args, **kwargs)


def headers_to_send(
    carrier: dict[Any, Any], headers: Mapping[Any, Any] | None
) -> Mapping[Any, Any] | None:
    """``carrier``, or the caller's ``headers`` themselves when the propagators added nothing (no
    SDK, an invalid context, a suppressed publish with nothing current)."""
    if len(carrier) != (len(headers) if headers else 0):  # the usual case: a field was added
        return carrier
    if not carrier or carrier == headers:
        return headers
    return carrier
