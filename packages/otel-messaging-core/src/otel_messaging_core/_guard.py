"""Our own failures are logged, never raised into the user's publish or handler.

Inspired by sentry-python's ``capture_internal_exceptions()``: every piece of instrumentation code
that runs inside a user's call is wrapped so that a bug in it costs a log line, not a lost message.
The user's own exceptions are never caught here: wrappers call the original outside of a guard and
re-raise what it raised, unchanged.
"""

from __future__ import annotations

import logging
import weakref
from types import TracebackType
from typing import Callable, Final

__all__ = ["capture_internal_exceptions", "call_hook", "log_internal_error"]

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
    """Context manager: an ``Exception`` raised in its block is logged and swallowed.

    A class rather than ``@contextmanager`` because it sits on the per-message path and a
    generator-based context manager costs several times more.
    """

    __slots__ = ("_where",)

    def __init__(self, where: str) -> None:
        self._where = where

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
        log_internal_error(self._where, exc)
        return True


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
