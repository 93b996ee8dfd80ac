"""Fault injection for the "our code can never break the user's call" tests of every plugin.

Each *step* is one function of the core that a plugin calls before or after the user's call
(``MessagingTelemetry.start_publish``, ``Consume.end``, ...), or one of the plugin's own helpers
(its channel lookup, its argument binding, ...). :func:`break_step` / :func:`break_plugin_step`
replace it for one test with a function that raises, so the plugin's own guard is all that stands between the
fault and the user: the core's internal try blocks are bypassed. The tests then check that the
user's publish, handler and ack run with their own results and exceptions (the same objects), and
that the fault was really hit (:func:`fault_logged`), so a step the flow never reaches cannot pass
unnoticed.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import pytest

from otel_messaging_core import Consume, DestinationCache, MessagingTelemetry, Publish, Settle

__all__ = [
    "CONSUME_STEPS",
    "FAST_PATH_STEPS",
    "PUBLISH_STEPS",
    "SETTLE_STEPS",
    "STEPS",
    "InjectedFault",
    "break_plugin_step",
    "break_step",
    "fault_logged",
    "inject",
]

_OWNERS: dict[str, Any] = {
    "MessagingTelemetry": MessagingTelemetry,
    "Publish": Publish,
    "Consume": Consume,
    "Settle": Settle,
    "DestinationCache": DestinationCache,
}

PUBLISH_STEPS = (
    "MessagingTelemetry.unsampled_publish",
    "DestinationCache.get",
    "MessagingTelemetry.start_publish",
    "Publish.end",
)
CONSUME_STEPS = (
    "MessagingTelemetry.start_consume",
    "Consume.activate",
    "Consume.end",
)
SETTLE_STEPS = (
    "MessagingTelemetry.start_settle",
    "Settle.end",
)
#: Every step a plugin calls around a user's publish, handler or ack.
STEPS = (*PUBLISH_STEPS, *CONSUME_STEPS, *SETTLE_STEPS)
#: The unsampled fast path (issue 18): reached inside an unsampled parent, and for a delivery
#: that is never settled (auto-ack / no_ack), so its tests set those up themselves.
FAST_PATH_STEPS = (
    "MessagingTelemetry.unsampled_publish",
    "MessagingTelemetry.unsampled_consume",
)


class InjectedFault(RuntimeError):
    """What a broken step raises."""


def break_step(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Make ``step`` (``"Class.method"``) raise :class:`InjectedFault` for the rest of the test."""
    owner_name, name = step.split(".")
    owner = _OWNERS[owner_name]
    getattr(owner, name)  # the step exists (a rename fails here, not silently)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise InjectedFault(f"injected fault: {step}")

    monkeypatch.setattr(owner, name, broken)


def break_plugin_step(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Make a plugin's own helper raise: ``step`` is ``"module:name"`` or
    ``"module:Class.name"`` (the name as the plugin's wrappers look it up at call time)."""
    module_name, path = step.split(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    getattr(owner, name)  # the step exists (a rename fails here, not silently)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise InjectedFault(f"injected fault: {step}")

    monkeypatch.setattr(owner, name, broken)


def inject(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """:func:`break_plugin_step` for ``"module:name"``, :func:`break_step` for ``"Class.name"``."""
    if ":" in step:
        break_plugin_step(monkeypatch, step)
    else:
        break_step(monkeypatch, step)


def fault_logged(caplog: pytest.LogCaptureFixture, step: str) -> bool:
    """True when our guard logged the fault of ``step`` (the flow really reached it)."""
    for record in caplog.records:
        exc = record.exc_info[1] if record.exc_info else None
        if (
            record.name.startswith("otel_")
            and record.levelno >= logging.DEBUG
            and isinstance(exc, InjectedFault)
            and str(exc) == f"injected fault: {step}"
        ):
            return True
    return False
