"""Which instrumentation serves a kombu ``Connection``: the core's scope mechanism.

Every wrapper starts from a kombu ``Connection`` (a producer's, a consumer's channel's, a message's
channel's). :func:`binding_for` answers, for that connection, which telemetry records it (the one
given to ``instrument_connection`` for it, else the global one from ``instrument()``, else none),
its ``messaging.system``, the Celery skip rule of that telemetry's options and the destination
cache for its broker address: :data:`SCOPES`, the core :class:`~otel_messaging_core.Scopes`,
caches it on the connection (``_otel_kombu_scope``) until instrumentation changes; kombu failing
over to another host re-targets it.
"""

from __future__ import annotations

from typing import Any, Final

from otel_kombu._celery import CelerySkip, celery_skip
from otel_messaging_core import MessagingTelemetry, Scope, Scopes

__all__ = [
    "SCOPES",
    "Binding",
    "binding_for",
    "connection_of_channel",
]

SYSTEM_RABBITMQ: Final = "rabbitmq"
# Transports that run in-process have no server to name.
_SERVERLESS: Final = frozenset({"memory", "filesystem"})
#: kombu's own option (``KombuInstrumentor``): which kinds of Celery message are not traced
SKIP_CELERY_KEYWORD: Final = "skip_celery_messages"


class Binding(Scope):
    """What the wrappers need about one connection; ``telemetry is None`` means: pass through."""

    __slots__ = ("celery_skip", "hostname", "system")

    def __init__(self, connection: Any) -> None:
        super().__init__(connection)
        self.celery_skip: CelerySkip | None = None  # None: every Celery message is traced
        self.system = ""
        self.hostname: object = None

    def retarget(self, connection: Any, telemetry: MessagingTelemetry | None) -> None:
        self.telemetry = telemetry
        self.hostname = getattr(connection, "hostname", None)
        if telemetry is None:
            self.celery_skip = None
            return
        try:
            system = system_of(connection)
            host, port = _server_of(connection, system)
        except AttributeError:  # no connection (or not a kombu one): no server known
            system, host, port = SYSTEM_RABBITMQ, None, None
        self.system = system
        self.destinations = telemetry.destinations(host, port, system)
        kinds = telemetry.options.plugin.get(SKIP_CELERY_KEYWORD, ())
        self.celery_skip = celery_skip(kinds)  # type: ignore[arg-type]


SCOPES: Final = Scopes("kombu", Binding)
# the connection of a call with no connection to be found: nothing instruments it
_OFF: Final = Binding(None)


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


_UNBOUND: dict[int, Binding] = {}


def _unbound() -> Binding:
    """A binding for a call whose connection cannot be found without side effects (no server known)."""
    generation = SCOPES.generation
    found = _UNBOUND.get(generation)
    if found is None:
        _UNBOUND.clear()
        found = _UNBOUND[generation] = Binding(None)
        found.retarget(None, SCOPES.global_)
        found.system = SYSTEM_RABBITMQ
        found.generation = generation
    return found


def binding_for(connection: Any) -> Binding:
    """The binding of a kombu ``Connection`` (``None``: the global instrumentation, server unknown)."""
    if connection is None:
        return _unbound()
    binding = SCOPES.of(connection)
    if binding is None:
        return _OFF
    try:
        hostname = connection.hostname
    except AttributeError:  # not a kombu Connection after all
        return binding
    if binding.hostname != hostname:  # kombu failed over to another host
        binding.retarget(connection, binding.telemetry)
    return binding


def connection_of_channel(channel: Any) -> Any:
    """The kombu ``Connection`` behind a transport channel (``None`` when closed or unknown)."""
    try:
        return channel.connection.client
    except AttributeError:
        return None
