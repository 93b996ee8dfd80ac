"""OpenTelemetry tracing and metrics for aio-pika (draft guide, completed below)."""

from otel_aiopika.instrumentor import AioPikaInstrumentor, message_context
from otel_aiopika.version import __version__

__all__ = ["AioPikaInstrumentor", "__version__", "message_context"]
