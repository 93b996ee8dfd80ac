"""``AioPikaInstrumentor``: the patch list, global instrumentation and per-channel instrumentation."""

from __future__ import annotations

from typing import Any, Final

import wrapt
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.instrumentation.utils import unwrap

from otel_aiopika._package import _instruments
from otel_aiopika._state import SCOPES, recall
from otel_aiopika.version import __version__
from otel_messaging_core import (
    ClassPatches,
    InstrumentationOptions,
    MessageContext,
    MessageContexts,
    MessagingInstrumentor,
    MessagingTelemetry,
    Patch,
)

__all__ = ["AioPikaInstrumentor", "message_context"]

_INSTRUMENTATION_NAME = "otel_aiopika"


def _targets() -> list[Patch]:
    """Every patch, as (class, attribute, wrapper); the same list drives wrap and unwrap.

    The patches are on aio-pika's classes because ``Queue`` and ``IncomingMessage`` take no
    per-object attributes (``__slots__``); each wrapper asks which telemetry, if any, serves the
    object's channel (see ``_state``), so ``instrument_channel()`` still scopes telemetry to one
    channel.
    """
    from aio_pika.exchange import Exchange
    from aio_pika.message import IncomingMessage, ProcessContext
    from aio_pika.queue import Queue, QueueIterator
    from aio_pika.robust_queue import RobustQueueIterator
    from aiormq.channel import Channel as AiormqChannel

    from otel_aiopika import _consume, _publish, _settle

    targets: list[Patch] = [
        (Exchange, "publish", _publish.publish),
        (Queue, "consume", _consume.consume),
        (Queue, "get", _consume.get),
        (QueueIterator, "__anext__", _consume.iterator_anext),
        (QueueIterator, "close", _consume.iterator_end),
        (QueueIterator, "__aexit__", _consume.iterator_end),
        (IncomingMessage, "ack", _settle.settle("ack")),
        (IncomingMessage, "nack", _settle.settle("nack")),
        (IncomingMessage, "reject", _settle.settle("reject")),
        (ProcessContext, "__aexit__", _settle.process_exit),
        # consumers registered before instrument(): swapped at their channel's next delivery
        (AiormqChannel, _consume.READ_CONTENT, _consume.read_content),
    ]
    # aio-pika 10 gives the robust iterator an __anext__ of its own (waiting out reconnects)
    if "__anext__" in RobustQueueIterator.__dict__:
        targets.append((RobustQueueIterator, "__anext__", _consume.iterator_anext))
    return targets


def _telemetry(options: InstrumentationOptions) -> MessagingTelemetry:
    return AioPikaInstrumentor._make(options)


#: the class patches, installed while anything (global or a channel) is instrumented
_PATCHES: Final = ClassPatches(_targets, wrap=wrapt.wrap_function_wrapper, unwrap=unwrap)


class AioPikaInstrumentor(MessagingInstrumentor, BaseInstrumentor):  # type: ignore[misc]
    """OpenTelemetry instrumentation for aio-pika; :mod:`otel_aiopika` is its guide."""

    _instrumentation_name = _INSTRUMENTATION_NAME
    _library = "aio-pika"
    _version = __version__
    _instruments = _instruments
    _contrib_twin = True  # opentelemetry-instrumentation-aio-pika: kept off while instrumented
    _patches = _PATCHES
    _scopes = SCOPES

    @classmethod
    def _remove(cls) -> None:
        if cls._patches.installed:
            from otel_aiopika._consume import finish_iterations

            with cls._guard:
                finish_iterations()  # without the patches, nothing would end an open receive span
        super()._remove()

    @staticmethod
    def instrument_channel(channel: Any, **kwargs: Any) -> None:
        """Instrument one aio-pika channel (plain or robust) with its own options.

        Takes the keywords of :meth:`instrument`. Exchanges, queues and messages of the channel
        use these options whether or not ``instrument()`` was called; other channels are left to
        ``instrument()`` (or alone). Calling it again replaces the channel's options.
        """
        AioPikaInstrumentor._pin(channel, kwargs)

    @staticmethod
    def uninstrument_channel(channel: Any) -> None:
        """Undo :meth:`instrument_channel`: the channel is plain again (or globally instrumented)."""
        AioPikaInstrumentor._unpin(channel)


def message_context(message: Any) -> MessageContext:
    """``with message_context(message):`` makes a pulled message's context current for the block.

    ``message`` is the ``IncomingMessage`` from ``Queue.get`` (or the queue iterator). When a
    receive span was recorded for it, its context is used (the block's spans become children of
    the receive span); otherwise the context comes from the message's headers under the
    ``consumer_context`` rule. The message's baggage is current in the block either way.
    """
    return _MESSAGE_CONTEXT(message)


def _headers_of(message: Any) -> Any:
    from otel_aiopika._publish import headers_of

    return headers_of(message)


_MESSAGE_CONTEXT: Final = MessageContexts(
    "aio-pika", recall=recall, headers_of=_headers_of, telemetry_of=lambda _message: SCOPES.global_
)
