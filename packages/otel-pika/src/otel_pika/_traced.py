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

from typing import Any, Callable

from otel_messaging_core import Publish, Settle, Wrapper, call_in, capture_internal_exceptions
from otel_pika._state import ChannelState, bypass_if_blocking

__all__ = ["Resolver", "Start", "traced"]

Resolver = Callable[[Any], "ChannelState | None"]
#: ``start(state, args, kwargs, param)``: the operation (``None``: nothing to trace) and the
#: arguments to call pika with
Start = Callable[..., "tuple[Publish | Settle | None, tuple[Any, ...], dict[str, Any]]"]


def traced(
    start: Start, param: Any, *, where: str, blocking: bool, bypass: str | None = None
) -> Callable[[Resolver], Wrapper]:
    """A wrapper factory for a method of ``BlockingChannel`` (``blocking``) or ``Channel``;
    ``param`` is passed on to every ``start``."""
    guard = capture_internal_exceptions(where)

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
                elif state is not None and not state.blocking:
                    op, args, kwargs = start(state, args, kwargs, param)
                elif bypass is not None:  # a BlockingChannel's: its next calls skip this wrapper
                    bypass_if_blocking(instance, bypass)
            except Exception as internal:
                guard.report(internal)
            return call_in(op, wrapped, args, kwargs)

        # named after the module of what it traces (``_state.bypass_if_blocking`` recognises our
        # publish wrapper by its module)
        wrapper.__module__ = start.__module__
        return wrapper

    return factory
