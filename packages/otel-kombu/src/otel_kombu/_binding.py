"""Which instrumentation serves a kombu ``Connection``, worked out once per connection.

Every wrapper starts from a kombu ``Connection`` (a producer's, a consumer's channel's, a message's
channel's). :func:`binding_for` answers, for that connection, which telemetry records it (the one
given to ``instrument_connection`` for it, else the global one from ``instrument()``, else none),
its ``messaging.system``, and the destination cache for its broker address. The answer is cached
on the connection object and recomputed only when instrumentation changes (a generation counter)
or kombu fails over to another host.
"""

from __future__ import annotations

import weakref
from typing import Any, Final

from otel_kombu._celery import CelerySkip
from otel_messaging_core import DestinationCache, MessagingTelemetry

__all__ = [
    "REGISTRY",
    "Binding",
    "Instrumentation",
    "binding_for",
    "connection_of_channel",
]

SYSTEM_RABBITMQ: Final = "rabbitmq"
# Transports that run in-process have no server to name.
_SERVERLESS: Final = frozenset({"memory", "filesystem"})

PINNED_ATTR: Final = "_otel_kombu_instrumentation"
_BINDING_ATTR: Final = "_otel_kombu_binding"


class Instrumentation:
    """One ``instrument()`` or ``instrument_connection()`` call: its telemetry and plugin options."""

    __slots__ = ("celery_skip", "telemetry")

    def __init__(self, telemetry: MessagingTelemetry, *, celery_skip: CelerySkip | None) -> None:
        self.telemetry = telemetry
        self.celery_skip = celery_skip  # None: every Celery message is traced


class _Registry:
    """Process-wide state: the global instrumentation and the connections instrumented one by one."""

    def __init__(self) -> None:
        self.instrumentation: Instrumentation | None = None
        self.generation = 0
        self.pinned: weakref.WeakSet[Any] = weakref.WeakSet()

    def changed(self) -> None:
        """Invalidate every cached binding (instrumentation was added or removed)."""
        self.generation += 1


REGISTRY: Final = _Registry()


class Binding:
    """What the wrappers need about one connection; ``telemetry is None`` means: pass through."""

    __slots__ = (
        "celery_skip",
        "destinations",
        "generation",
        "hostname",
        "system",
        "telemetry",
    )

    def __init__(
        self,
        instrumentation: Instrumentation | None,
        destinations: DestinationCache | None,
        system: str,
        hostname: object,
        generation: int,
    ) -> None:
        self.telemetry = instrumentation.telemetry if instrumentation is not None else None
        self.celery_skip = instrumentation.celery_skip if instrumentation is not None else None
        self.destinations = destinations
        self.system = system
        self.hostname = hostname
        self.generation = generation


def system_of(connection: Any) -> str:
    """``rabbitmq`` for the AMQP transports (pyamqp, amqp, librabbitmq), else the transport's name."""
    transport = connection.transport
    driver_type = getattr(transport, "driver_type", None)
    if driver_type == "amqp":
        return SYSTEM_RABBITMQ
    if isinstance(driver_type, str) and driver_type and driver_type != "N/A":
        return driver_type
    name = connection.transport_cls
    return name if isinstance(name, str) and name else type(transport).__module__.rsplit(".", 1)[-1]


def _server_of(connection: Any, system: str) -> tuple[str | None, int | None]:
    """Host and port only: kombu keeps credentials in separate attributes, never in ``hostname``."""
    host = connection.hostname
    if not host or not isinstance(host, str) or system in _SERVERLESS:
        return None, None
    port = connection.port or getattr(connection.transport, "default_port", None)
    return host, port if isinstance(port, int) and port > 0 else None


def _bind(connection: Any) -> Binding:
    instrumentation = connection.__dict__.get(PINNED_ATTR) or REGISTRY.instrumentation
    generation = REGISTRY.generation
    hostname = connection.hostname
    if instrumentation is None:
        binding = Binding(None, None, "", hostname, generation)
    else:
        system = system_of(connection)
        host, port = _server_of(connection, system)
        destinations = instrumentation.telemetry.destinations(host, port, system)
        binding = Binding(instrumentation, destinations, system, hostname, generation)
    connection.__dict__[_BINDING_ATTR] = binding
    return binding


_UNBOUND: dict[int, Binding] = {}


def _unbound() -> Binding:
    """A binding for a call whose connection cannot be found without side effects (no server known)."""
    generation = REGISTRY.generation
    found = _UNBOUND.get(generation)
    if found is None:
        _UNBOUND.clear()
        instrumentation = REGISTRY.instrumentation
        destinations = (
            instrumentation.telemetry.destinations(None, None, SYSTEM_RABBITMQ)
            if instrumentation is not None
            else None
        )
        found = _UNBOUND[generation] = Binding(
            instrumentation, destinations, SYSTEM_RABBITMQ, None, generation
        )
    return found


def binding_for(connection: Any) -> Binding:
    """The binding of a kombu ``Connection`` (``None``: the global instrumentation, server unknown)."""
    if connection is None:
        return _unbound()
    try:
        binding: Binding | None = connection.__dict__.get(_BINDING_ATTR)
    except AttributeError:  # not a kombu Connection after all
        return _unbound()
    if (
        binding is not None
        and binding.generation == REGISTRY.generation
        and binding.hostname == connection.hostname
    ):
        return binding
    return _bind(connection)


def connection_of_channel(channel: Any) -> Any:
    """The kombu ``Connection`` behind a transport channel (``None`` when closed or unknown)."""
    try:
        return channel.connection.client
    except AttributeError:
        return None
