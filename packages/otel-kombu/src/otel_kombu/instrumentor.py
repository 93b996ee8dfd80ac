"""``KombuInstrumentor``: one list of patch targets drives both wrap and unwrap."""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, Final, Iterator, NamedTuple

import wrapt
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.instrumentation.utils import unwrap

from otel_kombu import _consume, _publish, _settle
from otel_kombu._binding import SCOPES, SKIP_CELERY_KEYWORD
from otel_kombu._celery import CELERY_KINDS, DEFAULT_SKIP
from otel_kombu._consume import forget_sweeps
from otel_kombu._package import _instruments
from otel_kombu.version import __version__
from otel_messaging_core import ClassPatches, MessagingInstrumentor, Patch, PluginOption

__all__ = ["SKIP_CELERY_MESSAGES_ENV", "KombuInstrumentor"]

_logger = logging.getLogger(__name__)

#: Environment variable for ``skip_celery_messages`` under ``opentelemetry-instrument``.
SKIP_CELERY_MESSAGES_ENV: Final = "OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES"
#: kombu's own keyword, on top of SPEC's: which kinds of Celery message are not traced
#: (``tasks``, ``control``, ``events``; ``True`` all, ``False`` none), by default Celery's control
#: and event traffic, which idle workers send all the time.
SKIP_CELERY: Final = PluginOption(
    SKIP_CELERY_KEYWORD, SKIP_CELERY_MESSAGES_ENV, default=DEFAULT_SKIP, choices=CELERY_KINDS
)


class _Patch(NamedTuple):
    module: str
    owner: str
    attribute: str
    wrapper: Callable[..., Any]


# Everything wrapped, in one place; install and removal both walk this list.
PATCHES: Final = (
    # publish: the span starts where kombu has normalised the arguments (see _publish)
    _Patch("kombu.messaging", "Producer", "publish", _publish.wrap_publish),
    _Patch("kombu.messaging", "Producer", "_publish", _publish.wrap_inner_publish),
    _Patch("amqp.channel", "Channel", "_on_basic_return", _publish.wrap_on_basic_return),
    # consume: every transport hands deliveries to Consumer._receive_callback (see _consume)
    _Patch("kombu.messaging", "Consumer", "_receive_callback", _consume.wrap_receive_callback),
    _Patch("kombu.messaging", "Consumer", "consume", _consume.wrap_consume),
    _Patch(
        "kombu.transport.pyamqp", "Channel", "message_to_python", _consume.wrap_message_to_python
    ),
    _Patch("kombu.entity", "Queue", "get", _consume.wrap_queue_get),
    _Patch("kombu.simple", "SimpleBase", "get", _consume.wrap_simple_get),
    # consumers (and basic.return listeners) set up before instrument(): rewired at the next drain
    _Patch("kombu.connection", "Connection", "drain_events", _consume.wrap_drain_events),
    # ... or at their next message, in an event loop that never calls drain_events (Celery's
    # worker): pyamqp's message_to_python above, and the virtual transports' one
    _Patch(
        "kombu.transport.virtual.base",
        "Channel",
        "message_to_python",
        _consume.wrap_virtual_message_to_python,
    ),
    # settle
    _Patch("kombu.message", "Message", "ack", _settle.wrap_ack),
    _Patch("kombu.message", "Message", "reject", _settle.wrap_reject),
    _Patch("kombu.message", "Message", "requeue", _settle.wrap_requeue),
)

# every change of instrumentation: consumers and producers are checked again
SCOPES.listeners.append(forget_sweeps)


def _owner(patch: _Patch) -> Any:
    return getattr(importlib.import_module(patch.module), patch.owner)


def _targets() -> Iterator[Patch]:
    """:data:`PATCHES` whose class can be imported."""
    for patch in PATCHES:
        try:
            owner = _owner(patch)
        except (ImportError, AttributeError):
            # a transport whose driver is not installed: nothing of it can run either
            _logger.debug("otel_kombu: %s.%s not found, not wrapped", patch.module, patch.owner)
            continue
        yield owner, patch.attribute, patch.wrapper


_PATCHES: Final = ClassPatches(_targets, wrap=wrapt.wrap_function_wrapper, unwrap=unwrap)


class KombuInstrumentor(MessagingInstrumentor, BaseInstrumentor):  # type: ignore[misc]
    """OpenTelemetry instrumentation for kombu; see :mod:`otel_kombu` for the guide.

    ``instrument(**options)`` wraps kombu for every connection; ``instrument_connection(connection,
    **options)`` records one connection only, with its own options. The options are SPEC's
    (``tracer_provider``, ``meter_provider``, ``publish_hook``, ``consume_hook``,
    ``consumer_context``, ``settle_spans``, ``capture_headers``, ``capture_headers_max_length``,
    ``baggage_attributes``) plus ``skip_celery_messages``. ``instrument()``, ``uninstrument()``
    and a second ``instrument(**options)`` follow the lifecycle every plugin shares
    (``otel_messaging_core.MessagingInstrumentor``).
    """

    _instrumentation_name = "otel_kombu"
    _library = "kombu"
    _version = __version__
    _instruments = _instruments
    _plugin_options = (SKIP_CELERY,)
    _patches = _PATCHES
    _scopes = SCOPES

    @staticmethod
    def instrument_connection(connection: Any, **kwargs: Any) -> None:
        """Record this kombu ``Connection`` only, with its own options (the same keywords).

        Producers, consumers and messages on the connection use these options, whether or not
        ``instrument()`` was called; other connections are left to ``instrument()`` (or alone).
        Connections made from it by ``clone()`` (pools, Celery) are separate connections.
        """
        KombuInstrumentor._pin(connection, kwargs)

    @staticmethod
    def uninstrument_connection(connection: Any) -> None:
        """Stop recording a connection given to :meth:`instrument_connection`."""
        KombuInstrumentor._unpin(connection)
