"""An SDK tracer and meter provider recording in memory, for the core's pure unit tests: the
``otel`` fixture of the broker harness (``broker_harness.pytest_plugin``)."""

from __future__ import annotations

from broker_harness.pytest_plugin import otel

__all__ = ["otel"]
