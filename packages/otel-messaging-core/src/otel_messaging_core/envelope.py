"""The one read-only record of a message that every plugin hands to ``publish_hook`` and ``consume_hook``."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from otel_messaging_core.attributes import Destination

__all__ = ["EMPTY_HEADERS", "Envelope", "envelope_of", "opt_str", "readonly_headers"]

EMPTY_HEADERS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message as the hook sees it, the same shape in every plugin.

    ``headers`` is a read-only view (on publish: the headers actually sent, trace context
    included). ``raw`` is the library's own object: pika's ``BasicProperties``, aio-pika's
    ``Message``/``IncomingMessage``, kombu's ``Message`` (or the publish keyword arguments).
    Fields a given operation does not have are ``None``.
    """

    exchange: str
    routing_key: str
    queue: str | None = None
    body: bytes | None = None
    headers: Mapping[str, Any] = field(default_factory=lambda: EMPTY_HEADERS)
    message_id: str | None = None
    correlation_id: str | None = None
    delivery_tag: int | None = None
    redelivered: bool | None = None
    raw: Any = None


def opt_str(value: object) -> str | None:
    """``value`` as an Envelope field: ``None`` stays ``None``, anything else a ``str``."""
    if value is None:
        return None
    return value if type(value) is str else str(value)


def readonly_headers(headers: Mapping[Any, Any] | None) -> Mapping[Any, Any]:
    """A read-only copy of ``headers`` for a hook (the hook cannot change what is sent)."""
    if not headers:
        return EMPTY_HEADERS
    return MappingProxyType(dict(headers))


def envelope_of(
    destination: Destination,
    body: bytes | None,
    headers: Mapping[Any, Any] | None,
    message_id: object,
    correlation_id: object,
    raw: Any,
    delivery_tag: int | None = None,
    redelivered: bool | None = None,
) -> Envelope:
    """The hook's record of a message at ``destination`` (``queue`` set for a consume)."""
    return Envelope(
        exchange=destination.exchange,
        routing_key=destination.routing_key,
        queue=destination.queue if destination.operation != "publish" else None,
        body=body,
        headers=readonly_headers(headers),
        message_id=opt_str(message_id),
        correlation_id=opt_str(correlation_id),
        delivery_tag=delivery_tag,
        redelivered=redelivered,
        raw=raw,
    )
