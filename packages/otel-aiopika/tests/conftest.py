"""An SDK tracer and meter provider recording in memory, for the plugin's broker-free tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker_harness import Recorder


@pytest.fixture
def otel() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.shutdown()
