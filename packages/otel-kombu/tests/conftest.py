"""An SDK tracer and meter provider recording in memory, and kombu instrumented with them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker_harness import Recorder
from otel_kombu import KombuInstrumentor


@pytest.fixture
def otel() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.shutdown()


@pytest.fixture
def traced(otel: Recorder) -> Iterator[KombuInstrumentor]:
    instrumentor = KombuInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    yield instrumentor
    instrumentor.uninstrument()
