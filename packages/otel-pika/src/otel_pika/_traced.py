"""The one shape of pika's publish and settle wrappers: the channel's state, the operation's
start, the user's call inside it (``call_in``).

``BlockingChannel`` publishes and settles through its underlying ``Channel``. The blocking
wrapper traces the call (it sees what the blocking call sees: publisher confirms) and marks the
channel's state as a ``BlockingChannel``'s, so the ``Channel`` wrapper skips that channel (which
also keeps pika's own internal rejects, of deliveries it never handed to the user, out of the
telemetry) and, for a method in ``_state.BYPASSED``, binds pika's own over it so its next calls
skip the wrapper altogether.
"""

from __future__ import annotations

from typing import Any, Callable, Final

from otel_messaging_core import (
    PlainMethods,
    Publish,
    Settle,
    Shadows,
    Wrapper,
    call_in,
    capture_internal_exceptions,
)
from otel_pika._state import SCOPES, ChannelState, bypass_if_blocking

__all__ = ["Resolver", "Start", "forget_shadows", "traced"]

Resolver = Callable[[Any], "ChannelState | None"]
#: ``start(state, args, kwargs, param)``: the operation (``None``: nothing to trace) and the
#: arguments to call pika with
Start = Callable[..., "tuple[Publish | Settle | None, tuple[Any, ...], dict[str, Any]]"]


def traced(
    start: Start,
    param: Any,
    *,
    where: str,
    blocking: bool,
    bypass: str | None = None,
    shadow: str | None = None,
) -> Callable[[Resolver], Wrapper]:
    """A wrapper factory for a method of ``BlockingChannel`` (``blocking``) or ``Channel``;
    ``param`` is passed on to every ``start``. ``shadow`` (the method's name, on a
    ``BlockingChannel``): the first call through the class wrapper binds a plain function on the
    channel object, holding the channel's state, so that its next calls skip wrapt's dispatch and
    the state's lookup (see :func:`forget_shadows`)."""
    guard = capture_internal_exceptions(where)
    plain = None if shadow is None or not blocking else PlainMethods(shadow, (start.__module__,))
    if plain is not None:
        _SHADOWS.plains.append(plain)

    def factory(resolve: Resolver) -> Wrapper:
        def wrapper(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            op = None
            try:
                state = resolve(instance._impl if blocking else instance)
                if blocking:
                    if state is not None:
                        state.blocking = True  # pika drops the link to us when it closes: keep it
                        op, args, kwargs = start(state, args, kwargs, param)
                        if plain is not None:
                            _shadow(instance, state)
                elif state is not None and not state.blocking:
                    op, args, kwargs = start(state, args, kwargs, param)
                elif bypass is not None:  # a BlockingChannel's: its next calls skip this wrapper
                    bypass_if_blocking(instance, bypass)
            except Exception as internal:
                guard.report(internal)
            return call_in(op, wrapped, args, kwargs)

        if plain is None or shadow is None:
            return _named(wrapper, start)
        name: str = shadow

        def _shadow(channel: Any, state: ChannelState) -> None:
            """Bind :func:`shadowed` on ``channel``, for a class whose method is ours unchanged.
            Its state stays the same object while the shadow is in place: every instrumentation
            change takes the shadows back (:data:`SCOPES` listeners) before a new lookup."""
            if name not in channel.__dict__ and plain.of(type(channel)) is not None:
                _SHADOWS.bind(channel, name, shadowed, (channel, state))

        def shadowed(bound: tuple[Any, ChannelState], *args: Any, **kwargs: Any) -> Any:
            channel, state = bound
            original = plain.cached(type(channel))
            if original is None:  # instrumentation changed under it: the class's own
                return getattr(type(channel), name)(channel, *args, **kwargs)
            op = None
            try:
                op, args, kwargs = start(state, args, kwargs, param)
            except Exception as internal:
                guard.report(internal)
            if op is None:  # call_in's tail, without a bound method and a call more
                return original(channel, *args, **kwargs)
            with op:
                return original(channel, *args, **kwargs)

        shadowed.__name__ = name
        return _named(wrapper, start)

    return factory


def _named(wrapper: Wrapper, start: Start) -> Wrapper:
    """``wrapper`` named after the module of what it traces (``_state.bypass_if_blocking`` and
    :class:`PlainMethods` recognise our wrappers by their module)."""
    wrapper.__module__ = start.__module__
    return wrapper


# channels holding shadows, and the PlainMethods of every shadowed method
_SHADOWS: Final = Shadows()
#: Instrumentation changed: every channel goes through its class's methods again.
forget_shadows: Final = _SHADOWS.forget


SCOPES.listeners.append(forget_shadows)
