"""Destination names, span names and attribute dicts: every RabbitMQ naming rule lives here.

The plugins never format a name themselves. They hand the exchange, routing key and queue of a call
to :class:`DestinationCache`, which computes the names and the constant part of the attribute dict
once per ``(exchange, routing_key, queue)`` and hands the same frozen :class:`Destination` back on
every later message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Mapping

from opentelemetry.semconv._incubating.attributes import messaging_attributes as _msg
from opentelemetry.semconv.attributes import error_attributes as _err
from opentelemetry.semconv.attributes import server_attributes as _srv
from opentelemetry.util.types import AttributeValue

__all__ = [
    "delivery_queue",
    "BROKER_NACK",
    "REJECTED",
    "UNROUTABLE",
    "ANONYMOUS_QUEUE",
    "DEFAULT_EXCHANGE",
    "Destination",
    "DestinationCache",
    "SYSTEM_RABBITMQ",
    "consume_destination_name",
    "exchange_label",
    "is_server_named",
    "low_cardinality",
    "publish_destination_name",
]

# Attribute keys, taken from the semantic-conventions package so a rename there shows up in the
# unit tests rather than silently in users' dashboards.
MESSAGING_SYSTEM: Final = _msg.MESSAGING_SYSTEM
MESSAGING_OPERATION_NAME: Final = _msg.MESSAGING_OPERATION_NAME
MESSAGING_OPERATION_TYPE: Final = _msg.MESSAGING_OPERATION_TYPE
MESSAGING_DESTINATION_NAME: Final = _msg.MESSAGING_DESTINATION_NAME
MESSAGING_DESTINATION_ANONYMOUS: Final = _msg.MESSAGING_DESTINATION_ANONYMOUS
MESSAGING_RABBITMQ_ROUTING_KEY: Final = _msg.MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY
MESSAGING_RABBITMQ_DELIVERY_TAG: Final = _msg.MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG
MESSAGING_MESSAGE_ID: Final = _msg.MESSAGING_MESSAGE_ID
MESSAGING_CONVERSATION_ID: Final = _msg.MESSAGING_MESSAGE_CONVERSATION_ID
MESSAGING_BODY_SIZE: Final = _msg.MESSAGING_MESSAGE_BODY_SIZE
MESSAGING_BATCH_MESSAGE_COUNT: Final = _msg.MESSAGING_BATCH_MESSAGE_COUNT
SERVER_ADDRESS: Final = _srv.SERVER_ADDRESS
SERVER_PORT: Final = _srv.SERVER_PORT
ERROR_TYPE: Final = _err.ERROR_TYPE
HEADER_ATTRIBUTE_PREFIX: Final = "messaging.header."

# error.type values of RabbitMQ's own answers (SPEC), written here once for every plugin
#: a mandatory publish the broker returned (``basic.return``): no queue is bound
UNROUTABLE: Final = "unroutable"
#: a publish the broker refused to confirm (``basic.nack`` in confirm mode)
BROKER_NACK: Final = "broker_nack"
#: a nack/reject without requeue: the message is dropped or dead-lettered
REJECTED: Final = "rejected"

SYSTEM_RABBITMQ: Final = "rabbitmq"
DEFAULT_EXCHANGE: Final = "amq.default"
ANONYMOUS_QUEUE: Final = "amq.gen"
_SERVER_NAMED_PREFIX: Final = "amq.gen-"
# aio-pika's robust channels name a queue declared without a name on the client side, so the
# name survives a reconnect: "amq_" + 128 random bits in hex ("amq_0x…" in aio-pika 8).
_CLIENT_GENERATED = re.compile(r"amq_(?:0x)?[0-9a-f]{16,32}")
# Names made per process or per call hold a UUID: Celery's event receivers ("celeryev.<uuid>"),
# kombu's pidbox reply queues ("<uuid>.reply.celery.pidbox"), Celery's rpc:// result queues
# ("<uuid>"). The UUID becomes "{uuid}", as in semconv's destination templates. A pidbox node
# queue ("celery@host.celery.pidbox", one per worker host) keeps its namespace only.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PIDBOX_NODE = re.compile(r"[^@]*@.*(?=\.[^.]+\.pidbox$)")
GENERATED_PART: Final = "{uuid}"
PIDBOX_NODE: Final = "{node}"

# operation name -> semconv operation type
OPERATION_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "publish": "send",
        "process": "process",
        "receive": "receive",
        "ack": "settle",
        "nack": "settle",
        "reject": "settle",
    }
)


def is_server_named(name: str) -> bool:
    """True for a generated queue name: the broker's (``amq.gen-…``) or aio-pika's robust
    channels' (``amq_`` + 32 hex digits), which stands in for a server-named queue."""
    if name.startswith(_SERVER_NAMED_PREFIX):
        return True
    return name.startswith("amq_") and _CLIENT_GENERATED.fullmatch(name) is not None


def _per_process(name: str) -> str:
    """``name`` with a UUID in it as ``{uuid}``, a pidbox node queue as ``{node}.<ns>.pidbox``."""
    if "-" in name:
        name = _UUID.sub(GENERATED_PART, name)
    if "@" in name and name.endswith(".pidbox"):
        name = _PIDBOX_NODE.sub(PIDBOX_NODE, name, count=1)
    return name


def exchange_label(exchange: str) -> str:
    """The exchange as it appears in span names: the default exchange is ``amq.default``."""
    return exchange or DEFAULT_EXCHANGE


def delivery_queue(exchange: str, routing_key: str) -> str:
    """The queue of a delivery whose consumer was not seen registering (it started before
    ``instrument()``): the default exchange routes to the queue its routing key names; through
    any other exchange the queue stays unknown (``""``) and the exchange names the span."""
    return "" if exchange else routing_key


def low_cardinality(part: str) -> str:
    """One name part with server-generated names collapsed to ``amq.gen``: span names and
    metric attributes must not grow with every server-named queue."""
    # nor with every worker start: a UUID becomes {uuid}, a pidbox node {node} (_per_process)
    return ANONYMOUS_QUEUE if is_server_named(part) else _per_process(part)


def publish_destination_name(exchange: str, routing_key: str) -> str:
    """``{exchange}:{routing_key}``, empty parts dropped; ``amq.default`` when both are empty."""
    if exchange and routing_key:
        return f"{exchange}:{routing_key}"
    return exchange or routing_key or DEFAULT_EXCHANGE


def consume_destination_name(exchange: str, routing_key: str, queue: str) -> str:
    """``{exchange}:{routing_key}:{queue}``, empty parts dropped, a routing key equal to the queue kept once."""
    parts = [exchange] if exchange else []
    if routing_key and routing_key != queue:
        parts.append(routing_key)
    if queue:
        parts.append(queue)
    return ":".join(parts) if parts else DEFAULT_EXCHANGE


@dataclass(frozen=True, slots=True)
class Destination:
    """Everything about one (operation, exchange, routing key, queue) that does not change per message.

    ``attributes`` is the constant part of every span's attributes; ``metric_attributes`` is the
    low-cardinality set recorded on the four instruments. Both are read-only; callers copy
    ``attributes`` before adding per-message values.
    """

    operation: str
    exchange: str
    routing_key: str
    queue: str
    span_name: str
    attributes: Mapping[str, AttributeValue]
    metric_attributes: Mapping[str, AttributeValue]
    amqp: bool = True  # messaging.system is rabbitmq: the messaging.rabbitmq.* attributes apply


def build_destination(
    operation: str,
    exchange: str,
    routing_key: str,
    queue: str,
    *,
    system: str = SYSTEM_RABBITMQ,
    server_address: str | None = None,
    server_port: int | None = None,
) -> Destination:
    """Compute names and constant attributes for one operation on one destination."""
    op_type = OPERATION_TYPES[operation]
    is_amqp = system == SYSTEM_RABBITMQ
    if operation == "publish":
        span_name = f"publish {exchange_label(exchange)}"
        destination = publish_destination_name(exchange, routing_key)
        metric_destination = publish_destination_name(exchange, low_cardinality(routing_key))
        anonymous = is_server_named(routing_key) and not exchange
    else:
        # Consumers read from a queue; with none known (a settle of an untracked delivery) the
        # exchange names it, and with neither the operation alone does, as semconv allows.
        label = low_cardinality(queue) if queue else exchange
        span_name = f"{operation} {label}" if label else operation
        destination = consume_destination_name(exchange, routing_key, queue)
        metric_destination = consume_destination_name(
            exchange, low_cardinality(routing_key), low_cardinality(queue)
        )
        anonymous = is_server_named(queue)

    attributes: dict[str, AttributeValue] = {
        MESSAGING_SYSTEM: system,
        MESSAGING_OPERATION_NAME: operation,
        MESSAGING_OPERATION_TYPE: op_type,
        MESSAGING_DESTINATION_NAME: destination,
    }
    if anonymous:
        attributes[MESSAGING_DESTINATION_ANONYMOUS] = True
    if is_amqp and routing_key:
        attributes[MESSAGING_RABBITMQ_ROUTING_KEY] = routing_key
    metric_attributes: dict[str, AttributeValue] = {
        MESSAGING_SYSTEM: system,
        MESSAGING_OPERATION_NAME: operation,
        MESSAGING_DESTINATION_NAME: metric_destination,
    }
    if server_address:
        attributes[SERVER_ADDRESS] = server_address
        metric_attributes[SERVER_ADDRESS] = server_address
        if server_port:
            attributes[SERVER_PORT] = server_port
            metric_attributes[SERVER_PORT] = server_port
    return Destination(
        operation=operation,
        exchange=exchange,
        routing_key=routing_key,
        queue=queue,
        span_name=span_name,
        attributes=MappingProxyType(attributes),
        metric_attributes=MappingProxyType(metric_attributes),
        amqp=is_amqp,
    )


class DestinationCache:
    """A bounded memo of :func:`build_destination`.

    Routing keys can be unbounded (RPC reply queues, per-order topics), so the cache is cleared
    when it grows past ``maxsize`` instead of growing with them; a miss costs a few microseconds.
    """

    __slots__ = ("_entries", "_maxsize", "_server_address", "_server_port", "_system")

    def __init__(
        self,
        *,
        system: str = SYSTEM_RABBITMQ,
        server_address: str | None = None,
        server_port: int | None = None,
        maxsize: int = 1024,
    ) -> None:
        self._system = system
        self._server_address = server_address
        self._server_port = server_port
        self._maxsize = maxsize
        self._entries: dict[tuple[str, str, str, str], Destination] = {}

    def get(self, operation: str, exchange: str, routing_key: str, queue: str = "") -> Destination:
        """The :class:`Destination` for these names, computed on first use."""
        key = (operation, exchange, routing_key, queue)
        found = self._entries.get(key)
        if found is not None:
            return found
        if len(self._entries) >= self._maxsize:
            self._entries.clear()
        found = self._entries[key] = build_destination(
            operation,
            exchange,
            routing_key,
            queue,
            system=self._system,
            server_address=self._server_address,
            server_port=self._server_port,
        )
        return found


def error_type_of(exc: BaseException) -> str:
    """``error.type`` for an exception: its fully qualified class name (builtins unqualified)."""
    cls = type(exc)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"
