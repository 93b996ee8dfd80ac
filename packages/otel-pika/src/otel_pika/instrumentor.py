"""``PikaInstrumentor``: the patch list, global instrumentation and per-channel instrumentation."""

from __future__ import annotations

from typing import Any, Callable, Final

from opentelemetry import context as otel_context
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.instrumentation.utils import unwrap

from otel_messaging_core import (
    ContribGuard,
    MessageContext,
    MessagingInstrumentor,
    MessagingTelemetry,
    Wrapper,
    capture_internal_exceptions,
    message_context_of,
)
from otel_pika._package import _instruments
from otel_pika._state import SCOPES, recall, release_bypasses, scope_of
from otel_pika.version import __version__

__all__ = ["PikaInstrumentor", "message_context"]

_INSTRUMENTATION_NAME = "otel_pika"
_MESSAGE_CONTEXT: Final = capture_internal_exceptions("pika message_context()")

Resolver = Callable[[Any], Any]
Target = tuple[Any, str, Callable[[Resolver], Wrapper]]

# opentelemetry-instrumentation-pika would trace every message a second time: kept off while
# this instrumentor is instrumented (see otel_messaging_core.conflicts).
_CONTRIB = ContribGuard(
    "opentelemetry.instrumentation.pika",
    "PikaInstrumentor",
    ours="otel-pika",
    theirs="opentelemetry-instrumentation-pika",
    entry_point="pika",
)


def _targets() -> tuple[list[Target], list[Target], list[Target]]:
    """Every patch, as (owner, attribute, wrapper factory): for ``pika.channel.Channel``, for
    ``BlockingChannel``, and the subset a ``BlockingChannel``'s underlying channel needs.

    The same lists drive wrap and unwrap, and ``instrument_channel()``/``uninstrument_channel()``.
    """
    from pika.adapters.blocking_connection import BlockingChannel
    from pika.channel import Channel

    from otel_pika import _consume, _publish, _settle

    channel: list[Target] = [
        (Channel, "basic_publish", _publish.channel_publish),
        (Channel, "_on_return", _publish.returned),
        (Channel, "basic_consume", _consume.consumer_queue),
        (Channel, "_on_deliver", _consume.deliver),
        (Channel, "basic_get", _consume.channel_get),
        (Channel, "_on_getok", _consume.getok),
        (Channel, "basic_ack", _settle.settle("ack", blocking=False)),
        (Channel, "basic_nack", _settle.settle("nack", blocking=False)),
        (Channel, "basic_reject", _settle.settle("reject", blocking=False)),
    ]
    blocking: list[Target] = [
        (BlockingChannel, "basic_publish", _publish.blocking_publish),
        (BlockingChannel, "_dispatch_events", _consume.dispatch_events),
        (BlockingChannel, "consume", _consume.consume),
        (BlockingChannel, "cancel", _consume.cancel),
        (BlockingChannel, "basic_get", _consume.blocking_get),
        (BlockingChannel, "basic_ack", _settle.settle("ack", blocking=True)),
        (BlockingChannel, "basic_nack", _settle.settle("nack", blocking=True)),
        (BlockingChannel, "basic_reject", _settle.settle("reject", blocking=True)),
    ]
    # what a BlockingChannel's own publish/get/settle/dispatch wrappers do not cover
    blocking_impl = [t for t in channel if t[1] in ("_on_return", "basic_consume")]
    return channel, blocking, blocking_impl


def _channel_patches(channel: Any) -> tuple[Any, list[tuple[Any, Target]]]:
    """The ``pika.channel.Channel`` behind ``channel`` and the patches ``instrument_channel()``
    puts on the objects of ``channel``: (object, target) pairs."""
    from pika.adapters.blocking_connection import BlockingChannel

    channel_targets, blocking_targets, blocking_impl = _targets()
    if isinstance(channel, BlockingChannel):
        impl = channel._impl
        patches = [(channel, t) for t in blocking_targets] + [(impl, t) for t in blocking_impl]
        return impl, patches
    return channel, [(channel, t) for t in channel_targets]


_OURS: Final = ("otel_pika._publish", "otel_pika._consume", "otel_pika._settle")


def _plain(bound: Any) -> Any:
    """A channel's method as pika defines it: without our class-level wrapper, which a channel
    with its own instrumentation must not go through (it would trace the call a second time)."""
    if getattr(getattr(bound, "_self_wrapper", None), "__module__", None) in _OURS:
        return bound.__wrapped__
    return bound


class _Bound:
    """A wrapper installed on one channel object by ``instrument_channel()``."""

    __slots__ = ("__wrapped__", "_instance", "_wrapper")

    def __init__(self, wrapper: Wrapper, bound: Callable[..., Any], instance: Any) -> None:
        self._wrapper = wrapper
        self.__wrapped__ = bound
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapper(self.__wrapped__, self._instance, args, kwargs)


class PikaInstrumentor(MessagingInstrumentor, BaseInstrumentor):  # type: ignore[misc]
    """OpenTelemetry instrumentation for pika (see the module documentation of :mod:`otel_pika`).

    ``instrument()``, ``uninstrument()`` and a second ``instrument(**options)`` follow the
    lifecycle every plugin shares (``otel_messaging_core.MessagingInstrumentor``).
    """

    _instrumentation_name = _INSTRUMENTATION_NAME
    _library = "pika"
    _version = __version__
    _instruments = _instruments
    _contrib = _CONTRIB
    _scopes = SCOPES

    @classmethod
    def _install(cls) -> None:
        import wrapt

        channel, blocking, _ = _targets()
        for owner, name, factory in (*channel, *blocking):
            wrapt.wrap_function_wrapper(owner, name, factory(scope_of))

    @classmethod
    def _remove(cls) -> None:
        channel, blocking, _ = _targets()
        for owner, name, _factory in (*channel, *blocking):
            unwrap(owner, name)
        release_bypasses()

    @classmethod
    def _needed_by_channels(cls) -> bool:
        return False  # a channel's own instrumentation is patched onto the channel object

    @staticmethod
    def instrument_channel(channel: Any, **kwargs: Any) -> None:
        """Instrument one ``BlockingChannel`` or ``pika.channel.Channel`` without global patching.

        Takes the keywords of :meth:`instrument`. Calling it again on the same channel replaces
        its options; a globally instrumented channel switches to these options.
        """

        def bind(telemetry: MessagingTelemetry) -> None:
            impl, patches = _channel_patches(channel)
            SCOPES.pin(impl, telemetry)
            for obj, (_owner, name, factory) in patches:
                if not isinstance(obj.__dict__.get(name), _Bound):
                    setattr(obj, name, _Bound(factory(scope_of), _plain(getattr(obj, name)), obj))
            state = scope_of(impl)
            if state is not None and impl is not channel:
                state.blocking = True  # pika drops the link to the BlockingChannel on close

        PikaInstrumentor._instrument_scope(bind, kwargs)

    @staticmethod
    def uninstrument_channel(channel: Any) -> None:
        """Undo :meth:`instrument_channel`: the channel is plain again (or globally instrumented)."""
        impl, patches = _channel_patches(channel)
        for obj, (_owner, name, _factory) in patches:
            if isinstance(obj.__dict__.get(name), _Bound):
                delattr(obj, name)
        SCOPES.unpin(impl)


def message_context(properties: Any) -> MessageContext:
    """``with message_context(properties):`` makes a pulled message's context current for the block.

    ``properties`` is the message's ``pika.spec.BasicProperties`` (from ``basic_get`` or the
    ``consume()`` generator). When a receive span was recorded for that message, its context is
    used (so the block's spans are children of the receive span); otherwise the context comes
    from the message's headers under the ``consumer_context`` rule. The message's baggage is
    current in the block either way.
    """
    context = headers = telemetry = None
    try:
        context = recall(properties)
        if context is None:
            headers = getattr(properties, "headers", None)
            telemetry = SCOPES.global_
    except Exception as internal:  # the block runs in the current context
        _MESSAGE_CONTEXT.report(internal)
        return MessageContext(otel_context.get_current())
    return message_context_of(context, headers, telemetry)
