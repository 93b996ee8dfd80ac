"""Shared by every integration test: the broker harness plugin provides ``rabbitmq``, ``unique`` and ``otel``."""

pytest_plugins = ["broker_harness.pytest_plugin"]
