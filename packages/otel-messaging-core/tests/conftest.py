"""An SDK tracer and meter provider recording in memory, for the core's pure unit tests: the
``otel`` fixture of the broker harness (``broker_harness.pytest_plugin``).

Hypothesis' ``too_slow`` health check times example generation, which on a loaded 2-core CI
machine (other sessions run beside the unit tests) says nothing about the code under test: it is
suppressed for every property test here; the properties and their example counts are unchanged.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from broker_harness.pytest_plugin import otel

__all__ = ["otel"]

settings.register_profile("otel-core", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("otel-core")
