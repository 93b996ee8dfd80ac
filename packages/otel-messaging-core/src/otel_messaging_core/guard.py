"""The one guard idiom: our own failures are logged, never raised into the user's call.

After sentry-python's ``capture_internal_exceptions()``. Every piece of instrumentation code that
runs around a user's call (before it, after it, or in a callback the client library calls) is a
*place*, and each place has one guard, made once when its module is imported::

    _PUBLISH = capture_internal_exceptions("pika publish")

    with _PUBLISH:                        # any path
        op = telemetry.start_publish(...)

    try:                                  # a per-message path: a try costs nothing until it raises
        op = telemetry.start_publish(...)
    except Exception as exc:
        _PUBLISH.report(exc)

Both forms log the same way: the first failure of a place once, at WARNING with its traceback,
later ones at DEBUG, so a bug on the per-message path costs one log line and our own span, never
the message. The guard is stateless, so one object serves every thread and task. Only
``Exception`` is caught: ``KeyboardInterrupt``, ``SystemExit`` and ``CancelledError`` go on.

The user's own exceptions are never caught here: a wrapper calls the original outside of any
guard and re-raises what it raised, unchanged (the same object).
"""

from __future__ import annotations

import logging
import weakref
from types import TracebackType
from typing import Callable, Final

__all__ = ["call_hook", "capture_internal_exceptions", "log_internal_error"]

logger: Final = logging.getLogger("otel_messaging_core")

_reported: set[str] = set()
_MAX_REPORTED: Final = 256


def log_internal_error(where: str, exc: BaseException | None = None) -> None:
    """Log a failure of our own code: once with its traceback per place, at debug level afterwards."""
    if where in _reported:
        logger.debug("instrumentation error in %s (repeated)", where, exc_info=exc)
        return
    if len(_reported) < _MAX_REPORTED:
        _reported.add(where)
    logger.warning(
        "instrumentation error in %s; the message was handled without it",
        where,
        exc_info=exc if exc is not None else True,
    )


class capture_internal_exceptions:  # noqa: N801 - used like a function: ``with capture_internal_exceptions(...)``
    """The guard of one place of ours: an ``Exception`` raised in its ``with`` block is logged
    (see :func:`log_internal_error`) and swallowed; :meth:`report` logs one caught in a ``try``.

    A class rather than ``@contextmanager`` because it sits on per-message paths (the cost is in
    docs/benchmarks.md); make it once per place (a module constant) and reuse it: it holds
    nothing but the place's name.
    """

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        log_internal_error(self.where, exc)
        return True

    def report(self, exc: BaseException) -> None:
        """Log ``exc``, caught by an ``except Exception`` of this place (the ``try`` form)."""
        log_internal_error(self.where, exc)

    def __repr__(self) -> str:
        return f"capture_internal_exceptions({self.where!r})"


# Hooks that raised, held weakly: keyed by id() alone, a new hook that reuses a dead hook's
# address (the next test, a re-instrumented service) would never have its first failure logged.
_failed_hooks: weakref.WeakSet[Callable[..., object]] = weakref.WeakSet()
_failed_hook_ids: set[int] = set()  # hooks that cannot be weakly referenced


def _seen_failing(hook: Callable[..., object]) -> bool:
    """True when ``hook`` failed before; remembers it otherwise."""
    try:
        if hook in _failed_hooks:
            return True
        _failed_hooks.add(hook)
    except TypeError:  # not weakly referenceable
        key = id(hook)
        if key in _failed_hook_ids:
            return True
        _failed_hook_ids.add(key)
    return False


def call_hook(hook: Callable[..., object], *args: object) -> None:
    """Call a user hook; one that raises is logged once (per hook) and the message goes on."""
    try:
        hook(*args)
    except Exception:
        if _seen_failing(hook):
            logger.debug("hook %r raised again", hook, exc_info=True)
            return
        logger.warning(
            "hook %r raised; it is ignored and the message goes on (logged once per hook)",
            hook,
            exc_info=True,
        )
