"""An SDK tracer and meter provider recording in memory (the broker harness's ``otel``), and
kombu instrumented with them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker_harness import Recorder
from broker_harness.pytest_plugin import otel
from otel_kombu import KombuInstrumentor

__all__ = ["otel"]


@pytest.fixture
def traced(otel: Recorder) -> Iterator[KombuInstrumentor]:
    instrumentor = KombuInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    yield instrumentor
    instrumentor.uninstrument()
