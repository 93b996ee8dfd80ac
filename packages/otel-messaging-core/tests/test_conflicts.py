"""ContribGuard: the contrib instrumentor of the same library stays off while ours is instrumented."""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types
from collections.abc import Collection, Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from otel_messaging_core.conflicts import ContribGuard

MODULE = "fake_contrib_instrumentation"


class FakeContrib(BaseInstrumentor):  # type: ignore[misc]
    """Stands in for an opentelemetry-python-contrib instrumentor: counts its patch calls."""

    patched = 0

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        type(self).patched += 1

    def _uninstrument(self, **kwargs: Any) -> None:
        type(self).patched -= 1


@pytest.fixture
def contrib() -> Iterator[FakeContrib]:
    """The fake contrib instrumentor, importable as a module; reset afterwards."""
    module = types.ModuleType(MODULE)
    module.__spec__ = importlib.machinery.ModuleSpec(MODULE, None)
    module.FakeContrib = FakeContrib  # type: ignore[attr-defined]
    sys.modules[MODULE] = module
    FakeContrib.patched = 0
    instrumentor = FakeContrib()
    yield instrumentor
    for name in ("_instrument", "_uninstrument"):
        instrumentor.__dict__.pop(name, None)
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    sys.modules.pop(MODULE, None)


def guard() -> ContribGuard:
    return ContribGuard(MODULE, "FakeContrib", ours="otel-x", theirs="contrib-x", entry_point="x")


def test_contrib_instrumented_first_is_turned_off_with_a_warning(
    contrib: FakeContrib, caplog: pytest.LogCaptureFixture
) -> None:
    """A contrib instrumentor already instrumented is uninstrumented, and the warning names both packages and how to disable it."""
    contrib.instrument()
    assert FakeContrib.patched == 1
    with caplog.at_level(logging.WARNING, logger="otel_messaging_core"):
        guard().engage()
    assert FakeContrib.patched == 0
    assert not contrib.is_instrumented_by_opentelemetry
    (record,) = caplog.records
    message = record.getMessage()
    assert "otel-x" in message
    assert "contrib-x" in message
    assert "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=x" in message


def test_contrib_instrumented_later_patches_nothing_until_released(
    contrib: FakeContrib, caplog: pytest.LogCaptureFixture
) -> None:
    """After engage(), the contrib instrument() and uninstrument() patch nothing (with a warning); after release() they work again."""
    keeper = guard()
    keeper.engage()
    with caplog.at_level(logging.WARNING, logger="otel_messaging_core"):
        contrib.instrument()
    assert FakeContrib.patched == 0
    assert "contrib-x" in caplog.text
    assert "otel-x" in caplog.text
    contrib.uninstrument()  # cannot undo anything of ours
    assert FakeContrib.patched == 0
    keeper.release()
    contrib.instrument()
    assert FakeContrib.patched == 1


def test_missing_contrib_package_is_nothing_to_guard() -> None:
    """Without the contrib package installed, engage() and release() do nothing and never raise."""
    keeper = ContribGuard(
        "no_such_package.instrumentation", "X", ours="a", theirs="b", entry_point="c"
    )
    keeper.engage()
    keeper.release()


def test_of_library_names_the_contrib_instrumentation_as_contrib_does() -> None:
    """of_library finds the contrib module, distribution and entry point from the library's name."""
    keeper = ContribGuard.of_library("aio-pika", "AioPikaInstrumentor", ours="otel-aiopika")
    assert keeper.module == "opentelemetry.instrumentation.aio_pika"
    assert keeper.class_name == "AioPikaInstrumentor"
    assert (keeper.ours, keeper.theirs) == (
        "otel-aiopika",
        "opentelemetry-instrumentation-aio-pika",
    )
    assert keeper.entry_point == "aio-pika"
