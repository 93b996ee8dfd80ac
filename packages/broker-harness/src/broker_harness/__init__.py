"""Internal test support, shared by integration tests, the demo and the benchmarks.

* :func:`find_broker` finds a RabbitMQ: ``RABBITMQ_URL``; else one answering on 127.0.0.1:5672;
  else a testcontainers RabbitMQ when a Docker engine answers; else :class:`BrokerUnavailable`
  with a message saying how to get one.
* :func:`unique_name` gives exchange and queue names no other test or run shares.
* :class:`~broker_harness.otel.Recorder` collects what the OpenTelemetry SDK exported;
  :func:`span_summary` turns a span into a dict to compare whole, :class:`Traceparent` reads the
  context a message carries.

The pytest plugin (:mod:`broker_harness.pytest_plugin`) turns these into fixtures.
"""

from broker_harness.broker import Broker, BrokerUnavailable, find_broker, unique_name
from broker_harness.otel import (
    Recorder,
    Traceparent,
    header_text,
    messaging_attributes,
    span_summary,
)

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Recorder",
    "Traceparent",
    "find_broker",
    "header_text",
    "messaging_attributes",
    "span_summary",
    "unique_name",
]
