"""A plain producer: uninstrumented pika, as a service in another language or without
OpenTelemetry would publish. pika is installed in every integration session for this."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pika
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pika.adapters.blocking_connection import BlockingConnection

from broker_harness import Broker


def connection_name(prefix: str = "otel-rel") -> str:
    """A connection name no other test shares (so a fault test closes only its own)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class PlainProducer:
    """Publishes to one queue with pika, adding nothing (suppressed where pika is instrumented)."""

    def __init__(self, broker: Broker, queue: str) -> None:
        params = pika.URLParameters(broker.url)
        params.client_properties = {"connection_name": connection_name("plain")}
        self.connection = BlockingConnection(params)
        self.channel = self.connection.channel()
        self.queue = queue

    def publish(self, headers: dict[Any, Any], body: bytes, **properties: Any) -> None:
        # An empty context (a generator's receive span may be current) with instrumentation
        # suppressed: nothing is injected, the table goes out exactly as given.
        token = otel_context.attach(Context())
        try:
            with suppress_instrumentation():
                self.channel.basic_publish(
                    "",
                    self.queue,
                    body,
                    pika.BasicProperties(headers=headers, message_id="m-1", **properties),
                )
        finally:
            otel_context.detach(token)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()
