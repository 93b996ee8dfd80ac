"""Our own failures are logged, the user's are not touched."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import pytest

from otel_messaging_core import guard as _guard
from otel_messaging_core.guard import call_hook, capture_internal_exceptions


def test_internal_exception_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """An exception inside the guard becomes one warning with a traceback."""
    with (
        caplog.at_level(logging.WARNING, logger="otel_messaging_core"),
        capture_internal_exceptions("unit-test site"),
    ):
        raise RuntimeError("bug in instrumentation")
    assert "unit-test site" in caplog.text
    assert "RuntimeError" in caplog.text


def test_base_exceptions_pass_through() -> None:
    """KeyboardInterrupt and friends are never swallowed."""
    with pytest.raises(KeyboardInterrupt), capture_internal_exceptions("site"):
        raise KeyboardInterrupt


def test_raising_hook_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises on every message logs one warning, then debug lines."""

    def bad_hook(*_args: object) -> None:
        raise ValueError("hook bug")

    with caplog.at_level(logging.WARNING, logger="otel_messaging_core"):
        for _ in range(5):
            call_hook(bad_hook, None, None)
    assert caplog.text.count("raised; it is ignored") == 1


def test_a_freed_hook_is_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    """A failed hook is not remembered after it is freed, so a new hook at its address gets its own warning."""

    def make_hook() -> Callable[..., None]:
        def bad_hook(*_args: object) -> None:
            raise ValueError("hook bug")

        return bad_hook

    remembered = len(_guard._failed_hooks) + len(_guard._failed_hook_ids)
    with caplog.at_level(logging.CRITICAL, logger="otel_messaging_core"):
        hook = make_hook()
        call_hook(hook, None, None)
        assert len(_guard._failed_hooks) + len(_guard._failed_hook_ids) == remembered + 1
        del hook
        gc.collect()
    assert len(_guard._failed_hooks) + len(_guard._failed_hook_ids) == remembered


def test_one_guard_per_place_logs_its_first_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    """A place's guard, reused in ``with`` blocks and ``report()`` calls, warns once for the place
    and keeps later failures at debug level."""
    guard = capture_internal_exceptions("unit-test reused place")
    with caplog.at_level(logging.DEBUG, logger="otel_messaging_core"):
        for _ in range(3):
            with guard:
                raise RuntimeError("bug in instrumentation")
        try:
            raise ValueError("caught by a try of the same place")
        except ValueError as exc:
            guard.report(exc)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "instrumentation error in unit-test reused place; the message was handled without it"
    ]
    assert sum("(repeated)" in r.getMessage() for r in caplog.records) == 3
