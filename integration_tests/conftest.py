"""Shared by every integration test: the broker harness plugin provides ``rabbitmq``, ``unique`` and ``otel``;
unsampled_cases the ``manual_ack`` and ``quiet_ack`` consumers, on both paths, of each plugin's
``instrument``."""

pytest_plugins = ["broker_harness.pytest_plugin", "integration_tests.unsampled_cases"]
