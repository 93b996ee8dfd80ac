"""``PikaInstrumentor``: the patch list, global instrumentation and per-channel instrumentation."""

from __future__ import annotations

from typing import Any, Callable, Final

import wrapt
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.instrumentation.utils import unwrap

from otel_messaging_core import (
    ClassPatches,
    MessageContext,
    MessageContexts,
    MessagingInstrumentor,
    MessagingTelemetry,
    Patch,
    Wrapper,
)
from otel_pika._package import _instruments
from otel_pika._state import SCOPES, recall, release_bypasses, scope_of
from otel_pika.version import __version__

__all__ = ["PikaInstrumentor", "message_context"]

_INSTRUMENTATION_NAME = "otel_pika"

Resolver = Callable[[Any], Any]
Factory = Callable[[Resolver], Wrapper]
Target = tuple[Any, str, Factory]


def _targets() -> tuple[list[Target], list[Target], list[Target]]:
    """Every patch, as (owner, attribute, wrapper factory): for ``pika.channel.Channel``, for
    ``BlockingChannel``, and the subset a ``BlockingChannel``'s underlying channel needs.

    The same lists drive wrap and unwrap, and ``instrument_channel()``/``uninstrument_channel()``.
    """
    from pika.adapters.blocking_connection import BlockingChannel
    from pika.channel import Channel

    from otel_pika import _consume, _publish, _settle

    def settle(verb: str) -> tuple[str, Factory, Factory]:
        plain, blocking = _settle.settle(verb, blocking=False), _settle.settle(verb, blocking=True)
        return f"basic_{verb}", plain, blocking

    # attribute: its wrapper factory on pika.channel.Channel, on BlockingChannel (None: not there)
    table: list[tuple[str, Factory | None, Factory | None]] = [
        ("basic_publish", _publish.channel_publish, _publish.blocking_publish),
        ("_on_return", _publish.returned, None),
        ("basic_consume", _consume.consumer_queue, None),
        ("_on_deliver", _consume.deliver, None),
        ("basic_get", _consume.channel_get, _consume.blocking_get),
        ("_on_getok", _consume.getok, None),
        ("_dispatch_events", None, _consume.dispatch_events),
        ("consume", None, _consume.consume),
        ("cancel", None, _consume.cancel),
        settle("ack"),
        settle("nack"),
        settle("reject"),
    ]
    channel = [(Channel, name, plain) for name, plain, _ in table if plain is not None]
    blocking = [
        (BlockingChannel, name, factory) for name, _, factory in table if factory is not None
    ]
    # what a BlockingChannel's own publish/get/settle/dispatch wrappers do not cover
    blocking_impl = [t for t in channel if t[1] in ("_on_return", "basic_consume")]
    return channel, blocking, blocking_impl


def _class_patches() -> list[Patch]:
    channel, blocking, _ = _targets()
    return [(owner, name, factory(scope_of)) for owner, name, factory in (*channel, *blocking)]


#: the class patches of ``instrument()`` (``instrument_channel()`` patches channel objects)
_PATCHES: Final = ClassPatches(_class_patches, wrap=wrapt.wrap_function_wrapper, unwrap=unwrap)


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
    """OpenTelemetry instrumentation for pika; :mod:`otel_pika` is its guide."""

    _instrumentation_name = _INSTRUMENTATION_NAME
    _library = "pika"
    _version = __version__
    _instruments = _instruments
    _contrib_twin = True  # opentelemetry-instrumentation-pika: kept off while instrumented
    _patches = _PATCHES
    _scopes = SCOPES

    @classmethod
    def _remove(cls) -> None:
        super()._remove()
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
    return _MESSAGE_CONTEXT(properties)


_MESSAGE_CONTEXT: Final = MessageContexts(
    "pika",
    recall=recall,
    headers_of=lambda properties: getattr(properties, "headers", None),
    telemetry_of=lambda _properties: SCOPES.global_,
)
