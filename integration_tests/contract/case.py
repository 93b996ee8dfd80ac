"""What one contract test works with, in one fixture: the plugin under test, its client, a queue,
the path (for tests run on every path), the span recorder and ``instrument(**options)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from broker_harness import Broker, Recorder
from integration_tests.contract.protocol import Client, Consumed, Handling, Path, Plugin


def by_tag(spans: Sequence[ReadableSpan]) -> dict[int, ReadableSpan]:
    """Consume or settle spans by the delivery tag they carry."""
    return {
        int((s.attributes or {})["messaging.rabbitmq.message.delivery_tag"]): s  # type: ignore[arg-type]
        for s in spans
    }


@dataclass
class Case:
    """One run of a contract test: the plugin, its client and queue, and the path under test."""

    plugin: Plugin
    client: Client
    queue: str
    otel: Recorder
    broker: Broker
    instrument: Callable[..., Any]
    unique: Callable[[str], str]
    on: Path | None  # the path under test; None for a test run once per plugin

    @property
    def path(self) -> Path:
        assert self.on is not None, "a test run once per plugin has no path"
        return self.on

    @property
    def consume_name(self) -> str:
        """The name of the consume spans of :attr:`queue` on this path."""
        return f"{self.path.operation} {self.queue}"

    def publish(self, **options: Any) -> Any:
        """Publish one message to :attr:`queue` through the default exchange."""
        return self.client.publish("", self.queue, **options)

    def consume(self, calls: int = 1, **handling: Any) -> Consumed:
        """Handle ``calls`` deliveries from :attr:`queue` (``between=``, or :class:`Handling`'s keywords)."""
        between = handling.pop("between", None)
        return self.path.consume(self.queue, calls, Handling(**handling), between)

    def requeue_then_ack(self, **options: Any) -> Consumed:
        """Instrumented with ``options``: publish one message, requeue its first delivery and ack
        the redelivery, which the broker marks redelivered."""
        self.instrument(**options)
        self.publish()
        consumed = self.consume(2, settles=("requeue", "ack"))
        assert [r.redelivered for r in consumed.received] == [False, True]
        return consumed

    def consumes(self, count: int, name: str | None = None) -> dict[int, ReadableSpan]:
        """The ``count`` consume spans (or spans called ``name``), once ended, by delivery tag."""
        return by_tag(self.otel.wait_for_count(name or self.consume_name, count))

    def span(self, name: str) -> ReadableSpan:
        """The one span called ``name``, once it ended."""
        (found,) = self.otel.wait_for_count(name, 1)
        return found
