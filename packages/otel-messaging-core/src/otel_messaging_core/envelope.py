"""The one read-only record of a message that every plugin hands to ``publish_hook`` and ``consume_hook``."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["Envelope", "EMPTY_HEADERS"]

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
