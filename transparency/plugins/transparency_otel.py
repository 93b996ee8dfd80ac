"""pytest plugin for the instrumented run (``-p transparency_otel``): our instrumentation on for
the whole session, exporting to memory, as a user's process would have it.

``TRANSPARENCY_INSTRUMENT`` names the plugin (``pika``, ``aiopika``, ``kombu``);
``TRANSPARENCY_SPANS`` names a file that gets the number of spans exported, so the runner can
tell a run in which our code really ran from one in which it silently did nothing.

With ``TRANSPARENCY_SUPPRESS=1`` the whole run is under ``suppress_instrumentation()`` (the main
thread from the start, every thread from its start): our wrappers are in place but must add
nothing, so every test must behave exactly as without us, header comparisons included.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from typing import Any

import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_INSTRUMENTORS = {
    "pika": ("otel_pika", "PikaInstrumentor"),
    "aiopika": ("otel_aiopika", "AioPikaInstrumentor"),
    "kombu": ("otel_kombu", "KombuInstrumentor"),
}

_exporter = InMemorySpanExporter()
_instrumentor: Any = None
_held: list[Any] = []


def pytest_configure(config: pytest.Config) -> None:
    """Instrument before any test module imports the client, as ``opentelemetry-instrument`` does."""
    global _instrumentor
    module_name, class_name = _INSTRUMENTORS[os.environ["TRANSPARENCY_INSTRUMENT"]]
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    _instrumentor = getattr(importlib.import_module(module_name), class_name)()
    # settle_spans: every ack/nack/reject goes through our wrappers too, not only the default ones
    _instrumentor.instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider, settle_spans=True
    )
    if not _instrumentor.is_instrumented_by_opentelemetry:
        raise pytest.UsageError(f"{class_name}.instrument() did not instrument")
    if os.environ.get("TRANSPARENCY_SUPPRESS") == "1":
        _suppress_everywhere()


def _suppress_everywhere() -> None:
    """suppress_instrumentation() for the rest of the process: threads do not inherit the main
    thread's context, so each thread's run() enters it too (asyncio tasks copy it on creation)."""
    _held.append(suppress_instrumentation())  # held: a collected generator would detach it
    _held[0].__enter__()
    run = threading.Thread.run

    def suppressed_run(self: threading.Thread) -> None:
        with suppress_instrumentation():
            run(self)

    threading.Thread.run = suppressed_run  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    spans = _exporter.get_finished_spans()
    path = os.environ.get("TRANSPARENCY_SPANS")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"spans": len(spans), "names": sorted({s.name for s in spans})[:50]}, out)
