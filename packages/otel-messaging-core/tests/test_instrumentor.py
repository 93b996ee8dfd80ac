"""MessagingInstrumentor: the instrument() / re-configure / uninstrument() lifecycle every plugin
shares, on a fake plugin whose patches are a counter."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from otel_messaging_core import InstrumentationOptions, MessagingInstrumentor, MessagingTelemetry


class FakePlugin(MessagingInstrumentor, BaseInstrumentor):  # type: ignore[misc]
    """A plugin whose patches are a flag and whose global telemetry is a class attribute."""

    _instrumentation_name = "otel_fake"
    _library = "fake"
    _version = "0"
    _instruments = ()

    patched = False
    telemetry: MessagingTelemetry | None = None
    channels = 0
    fail_install = False

    @classmethod
    def _install(cls) -> None:
        if cls.fail_install:
            raise RuntimeError("install failed")
        cls.patched = True

    @classmethod
    def _remove(cls) -> None:
        cls.patched = False

    @classmethod
    def _swap_global(cls, made: Any) -> InstrumentationOptions | None:
        old, cls.telemetry = cls.telemetry, made
        return old.options if old is not None else None

    @classmethod
    def _needed_by_channels(cls) -> bool:
        return cls.channels > 0


@pytest.fixture
def plugin() -> Iterator[FakePlugin]:
    """The fake plugin's singleton, reset after the test."""
    instrumentor = FakePlugin()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    FakePlugin.patched = False
    FakePlugin.telemetry = None
    FakePlugin.channels = 0
    FakePlugin.fail_install = False


def test_instrument_and_uninstrument_patch_and_unpatch(plugin: FakePlugin) -> None:
    """instrument() installs the patches and sets a telemetry; uninstrument() takes both away."""
    plugin.instrument()
    assert FakePlugin.patched
    assert FakePlugin.telemetry is not None
    assert plugin.instrumentation_dependencies() == ()
    plugin.uninstrument()
    assert not FakePlugin.patched
    assert FakePlugin.telemetry is None


def test_a_second_instrument_with_options_applies_them_and_says_so(
    plugin: FakePlugin, caplog: pytest.LogCaptureFixture
) -> None:
    """instrument(**options) while instrumented (as under opentelemetry-instrument) swaps the live
    telemetry for one with these options and logs the change at INFO."""
    plugin.instrument()
    first = FakePlugin.telemetry
    with caplog.at_level(logging.INFO):
        plugin.instrument(settle_spans=True)
    assert FakePlugin.telemetry is not first
    assert FakePlugin.telemetry is not None
    assert FakePlugin.telemetry.options.settle_spans is True
    assert "otel_fake: instrument() called while already instrumented" in caplog.text


def test_a_wrong_keyword_raises_before_anything_is_patched(plugin: FakePlugin) -> None:
    """A mistake in code is a TypeError at once, and nothing is patched."""
    with pytest.raises(TypeError, match="unknown instrumentation keyword"):
        plugin.instrument(settle_span=True)
    assert not FakePlugin.patched


def test_a_failing_install_is_logged_and_undone(
    plugin: FakePlugin, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the keyword check instrument() never raises: a failure is logged, the library is
    left as it was."""
    FakePlugin.fail_install = True
    plugin.instrument()
    assert not FakePlugin.patched
    assert FakePlugin.telemetry is None
    assert "otel_fake: fake is not traced: instrument() failed" in caplog.text


def test_patches_stay_while_a_channel_needs_them(plugin: FakePlugin) -> None:
    """uninstrument() keeps the class patches that per-channel instrumentation relies on."""
    plugin.instrument()
    FakePlugin.channels = 1
    plugin.uninstrument()
    assert FakePlugin.patched
    assert FakePlugin.telemetry is None


def test_instrument_scope_validates_then_binds(plugin: FakePlugin) -> None:
    """instrument_channel()'s path: a wrong keyword raises; good ones bind a new telemetry."""
    bound: list[Any] = []
    with pytest.raises(TypeError):
        FakePlugin._instrument_scope(bound.append, {"settle_span": True})
    FakePlugin._instrument_scope(bound.append, {"settle_spans": True})
    (telemetry,) = bound
    assert isinstance(telemetry, MessagingTelemetry)
    assert telemetry.options.settle_spans is True
