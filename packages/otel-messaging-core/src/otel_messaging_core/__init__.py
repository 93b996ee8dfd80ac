"""Shared core of the otel-pika, otel-aiopika and otel-kombu instrumentations.

It never imports a client library. It holds every RabbitMQ rule the plugins share: destination and
span names (:mod:`~otel_messaging_core.attributes`), header propagation tolerant of any header
content (:mod:`~otel_messaging_core.propagation`), the consumer-context policy
(:mod:`~otel_messaging_core.consumer`), the hook :class:`~otel_messaging_core.envelope.Envelope`,
the four semconv instruments (:mod:`~otel_messaging_core.metrics`), the validated options
(:mod:`~otel_messaging_core.options`), the per-message operations
(:mod:`~otel_messaging_core.telemetry`), and the one guard idiom that keeps our own failures out of
the user's calls (:mod:`~otel_messaging_core.guard`), and the instrumentor lifecycle every
plugin shares (:mod:`~otel_messaging_core.instrumentor`), and which telemetry serves a library
object (:mod:`~otel_messaging_core.scope`). Plugins import only what this module
exports. ``_private_api`` holds every use of OpenTelemetry's private API, each with a public
fallback.
"""

from otel_messaging_core.attributes import (
    BROKER_NACK,
    REJECTED,
    UNROUTABLE,
    Destination,
    DestinationCache,
    delivery_queue,
)
from otel_messaging_core.conflicts import ContribGuard
from otel_messaging_core.consumer import (
    ContextActivation,
    MessageContext,
    MessageContexts,
    attach,
    creation_span_context,
    handling_parent,
    message_context_of,
    restore,
)
from otel_messaging_core.envelope import Envelope
from otel_messaging_core.fast_path import records_nothing
from otel_messaging_core.guard import call_hook, capture_internal_exceptions, log_internal_error
from otel_messaging_core.instrumentor import ClassPatches, MessagingInstrumentor, Patch
from otel_messaging_core.ledger import MAX_UNSETTLED, DeliveryLedger
from otel_messaging_core.operations import call_in, publish_failure
from otel_messaging_core.options import (
    InstrumentationOptions,
    PluginOption,
    has_options,
    log_reconfigured,
)
from otel_messaging_core.propagation import extract_context, headers_getter
from otel_messaging_core.scope import PlainMethods, Scope, Scopes, Shadows
from otel_messaging_core.telemetry import (
    Consume,
    Delivery,
    MessagingTelemetry,
    Publish,
    Settle,
    is_suppressed,
)
from otel_messaging_core.version import __version__
from otel_messaging_core.wrappers import Wrapper

__all__ = [
    "log_reconfigured",
    "has_options",
    "creation_span_context",
    "ClassPatches",
    "ContribGuard",
    "MAX_UNSETTLED",
    "BROKER_NACK",
    "REJECTED",
    "UNROUTABLE",
    "Consume",
    "ContextActivation",
    "Delivery",
    "DeliveryLedger",
    "Destination",
    "DestinationCache",
    "Envelope",
    "InstrumentationOptions",
    "MessageContext",
    "MessageContexts",
    "MessagingInstrumentor",
    "MessagingTelemetry",
    "Patch",
    "PlainMethods",
    "PluginOption",
    "Publish",
    "Scope",
    "Scopes",
    "Shadows",
    "Settle",
    "Wrapper",
    "__version__",
    "call_hook",
    "call_in",
    "capture_internal_exceptions",
    "delivery_queue",
    "extract_context",
    "handling_parent",
    "headers_getter",
    "is_suppressed",
    "log_internal_error",
    "message_context_of",
    "publish_failure",
    "records_nothing",
    "attach",
    "restore",
]
