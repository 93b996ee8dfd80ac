"""What the three services share: their configuration, OpenTelemetry setup, and start/stop protocol.

Protocol with the runner: a service gets its configuration as JSON in ``--config``, prints the
line ``ready`` on stdout once it consumes (or, for the shop, once it is connected), and stops
when its stdin reaches end-of-file. The runner closes stdin to stop it; if the runner dies, the
pipe closes too, so no service outlives it. On stopping, a service closes its connections and
shuts its providers down, which flushes the last spans and the final metric points.

Why an operation failed goes on its span, not only into the log: :func:`record_failure` records
the exception, sets ``error.type`` and an ERROR status whose description says why in one line.
Jaeger shows all three on the span, and the demo's report prints them.

Telemetry: each process has its own ``service.name`` and exports over OTLP/HTTP to the runner's
receiver (``BatchSpanProcessor``, a periodic metric reader). With ``OTEL_EXPORTER_OTLP_ENDPOINT``
set, it *also* exports there (a Jaeger or a collector), configured by the usual OTLP variables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from examples.order_flow.analysis import ORDER_KEY
from examples.order_flow.domain import error_type_of
from examples.order_flow.topology import Topology

__all__ = [
    "READY",
    "ServiceConfig",
    "ServiceTelemetry",
    "instrument_options",
    "parse_config",
    "record_failure",
    "signal_ready",
    "start_telemetry",
    "stop_event",
]

READY: Final = "ready"
EXTRA_ENDPOINT_VAR: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"


@dataclass(frozen=True)
class ServiceConfig:
    """Everything a service needs to know about one run."""

    broker_url: str
    topology: Topology
    receiver: str  # OTLP/HTTP base URL of the runner's receiver
    run_id: str
    orders: int = 20
    consumer_context: str = "parent"
    publish_interval: float = 0.05
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k != "topology"}
        data["topology"] = self.topology.to_dict()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServiceConfig:
        data = json.loads(text)
        data["topology"] = Topology.from_dict(data["topology"])
        return cls(**data)


def parse_config(argv: Sequence[str] | None = None) -> ServiceConfig:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="the run's configuration, as JSON")
    parser.add_argument(
        "--consumer-context",
        choices=("parent", "link"),
        help="the instrumentation's consumer_context (default: the configuration's)",
    )
    args = parser.parse_args(argv)
    config = ServiceConfig.from_json(args.config)
    if args.consumer_context:
        config = dataclasses.replace(config, consumer_context=args.consumer_context)
    return config


@dataclass
class ServiceTelemetry:
    """One service's providers (also installed as the global ones)."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def shutdown(self) -> None:
        """Flush and stop both providers: the last spans and the final metric points go out."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def start_telemetry(service_name: str, config: ServiceConfig) -> ServiceTelemetry:
    """Providers exporting to the receiver (and to ``OTEL_EXPORTER_OTLP_ENDPOINT`` when set)."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {service_name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pika", "aio_pika", "aiormq", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    resource = Resource.create(
        {
            "service.name": service_name,
            "service.namespace": "order-flow",
            "service.instance.id": f"{service_name}-{os.getpid()}",
            "order_flow.run_id": config.run_id,
        }
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{config.receiver}/v1/traces"), schedule_delay_millis=200
        )
    )
    readers: list[MetricReader] = [
        PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{config.receiver}/v1/metrics"),
            export_interval_millis=1000,
        )
    ]
    if os.environ.get(EXTRA_ENDPOINT_VAR):
        # endpoint, headers, compression and timeout from the standard OTLP variables
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        readers.append(
            PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=5000)
        )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return ServiceTelemetry(tracer_provider, meter_provider)


def instrument_options(config: ServiceConfig, telemetry: ServiceTelemetry) -> dict[str, Any]:
    """The keywords every service passes to its instrumentors' ``instrument()``."""
    return {
        "tracer_provider": telemetry.tracer_provider,
        "meter_provider": telemetry.meter_provider,
        "baggage_attributes": (ORDER_KEY,),
        "consumer_context": config.consumer_context,
    }


def record_failure(
    span: Span,
    exc: BaseException,
    description: str,
    attributes: dict[str, AttributeValue] | None = None,
) -> None:
    """Mark ``span`` as the operation that failed and say why, where Jaeger shows it.

    The exception event (type, message, stack trace), ``error.type`` = the exception's qualified
    class name (what the instrumentation sets when a handler raises), ``attributes`` with the
    facts behind the failure, and an ERROR status whose ``description`` is the reason in one line.
    A span started with ``start_as_current_span`` should pass ``record_exception=False,
    set_status_on_exception=False`` when the exception escapes it, so the SDK neither records it
    twice nor replaces this description with its own.
    """
    span.record_exception(exc)
    span.set_attribute("error.type", error_type_of(type(exc)))
    if attributes:
        span.set_attributes(attributes)
    span.set_status(Status(StatusCode.ERROR, description))


def stop_event() -> threading.Event:
    """An event set when stdin reaches end-of-file (the runner stopped us, or went away)."""
    event = threading.Event()

    def wait_for_eof() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        event.set()

    threading.Thread(target=wait_for_eof, name="stop-on-eof", daemon=True).start()
    return event


def signal_ready() -> None:
    """Tell the runner this service is consuming (one line on stdout)."""
    print(READY, flush=True)
