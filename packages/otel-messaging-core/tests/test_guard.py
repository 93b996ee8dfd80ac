"""Our own failures are logged, the user's are not touched."""

from __future__ import annotations

import logging

import pytest

from otel_messaging_core._guard import call_hook, capture_internal_exceptions


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
