"""otel-kombu under the contract: a Producer, the ``Consumer`` callback path driven by
``drain_events``, and ``SimpleQueue.get`` (kombu's other pulls keep their own tests)."""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import wrapt
from amqp.exceptions import MessageNacked
from kombu import Connection, Consumer, Exchange, Producer, Queue
from opentelemetry.instrumentation.utils import suppress_instrumentation

from broker_harness import Broker
from integration_tests.contract.plain import connection_name
from integration_tests.contract.protocol import (
    BODY,
    DEADLINE,
    Consumed,
    Handling,
    Mode,
    Received,
    Settle,
    leftover,
    now,
)
from otel_kombu import KombuInstrumentor, message_context
from otel_kombu.instrumentor import PATCHES

# A raw body kombu sends as it is, so every plugin's message is the same bytes on the wire.
RAW = {"content_type": "application/octet-stream", "content_encoding": "binary"}


def patched_attributes() -> dict[str, object]:
    """Every attribute in the plugin's patch list, as found in its class's own ``__dict__``."""
    found: dict[str, object] = {}
    for patch in PATCHES:
        owner = getattr(importlib.import_module(patch.module), patch.owner)
        found[f"{patch.module}.{patch.owner}.{patch.attribute}"] = owner.__dict__[patch.attribute]
    return found


def connect(broker: Broker, **transport_options: Any) -> Connection:
    options = {"client_properties": {"connection_name": connection_name("contract-kombu")}}
    connection = Connection(broker.url, connect_timeout=10, transport_options=options)
    connection.transport_options.update(transport_options)
    connection.connect()
    return connection


def existing(name: str) -> Queue:
    """A queue some client declared already, reached through the default exchange."""
    return Queue(name, Exchange(""), routing_key=name, no_declare=True)


def body_of(message: Any) -> bytes:
    body = message.body
    return body.encode() if isinstance(body, str) else bytes(body)


class KombuClient:
    """Publishes with a Producer (a second connection in confirm mode on demand) and declares."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connection = connect(broker)
        self.channel = self.connection.default_channel
        self._confirming: Connection | None = None

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes = BODY,
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = "m-1",
        correlation_id: str | None = None,
        confirm: bool = False,
    ) -> Any:
        connection = self.connection
        if confirm:
            if self._confirming is None:
                self._confirming = connect(self.broker, confirm_publish=True)
            connection = self._confirming
        properties = {
            k: v
            for k, v in {"message_id": message_id, "correlation_id": correlation_id}.items()
            if v is not None
        }
        Producer(connection).publish(
            body, exchange=exchange, routing_key=routing_key, headers=headers, **RAW, **properties
        )
        self.held_headers = (headers, headers)  # kombu takes the caller's dict itself
        return headers

    def declare_queue(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        bound = Queue(name, durable=False, queue_arguments=arguments)(self.channel)
        bound.declare()
        return str(bound.name)

    def declare_exchange(self, name: str, bind: str, routing_key: str) -> None:
        exchange = Exchange(name, type="direct", durable=False, auto_delete=True)
        exchange(self.channel).declare()
        self.channel.queue_bind(bind, name, routing_key)

    def delete_queue(self, name: str) -> None:
        self.channel.queue_delete(name)

    def is_broker_nack(self, error: BaseException) -> bool:
        return type(error) is MessageNacked

    def fetch(self, queue: str) -> tuple[bytes, Mapping[str, Any]]:
        bound = existing(queue)(self.channel)
        deadline = time.monotonic() + DEADLINE
        with suppress_instrumentation():
            while True:
                message = bound.get(no_ack=True)
                if message is not None:
                    return body_of(message), message.headers
                assert time.monotonic() < deadline, f"no message on {queue} in time"
                time.sleep(0.02)

    def close(self) -> None:
        for connection in (self.connection, self._confirming):
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.release()


class KombuPath:
    """The Consumer callback and SimpleQueue.get paths, on a connection of their own."""

    id: str
    mode: Mode
    operation: Literal["process", "receive"] = "receive"
    span_kind: Literal["CONSUMER", "CLIENT"] = "CLIENT"
    # kombu's Message has ack, reject(requeue) and requeue (a reject that requeues); no nack
    settles: frozenset[Settle] = frozenset({"ack", "reject", "requeue"})
    requeue_operation = "reject"
    settles_later = True
    # kombu knows the routing key of a delivery seen before instrument() but does not yet
    # take it for the queue on the default exchange as otel-aiopika does
    names_untracked = False
    settles_multiple = False
    rejects_on_error = False
    marks_errors = raises_to_caller = False

    def __init__(self, broker: Broker) -> None:
        self.connection = connect(broker)

    # -- the handler -------------------------------------------------------------------------

    def _handle(self, handling: Handling, received: list[Received], message: Any) -> None:
        seen = now(
            body_of(message),
            message.headers,
            message.delivery_tag,
            message.delivery_info.get("redelivered", False),
        )
        seen.raw = seen.message = message
        received.append(seen)
        if handling.look is not None:
            handling.look(seen)
        if handling.forward_to is not None:
            Producer(self.connection).publish(b"next", routing_key=handling.forward_to, **RAW)
        how = handling.settle_now()
        if how is not None:
            self.settle(message, how)
        if handling.raises is not None:
            raise handling.raises

    # -- Path ----------------------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        calls: int,
        handling: Handling,
        between: Callable[[], None] | None = None,
    ) -> Consumed:
        received: list[Received] = []
        raised: BaseException | None = None
        try:
            if self.mode == "push":
                self._drain(queue, calls, handling, between, received)
            else:
                if between is not None:
                    between()
                with self.connection.SimpleQueue(existing(queue)) as simple:
                    while len(received) < calls:
                        message = simple.get(timeout=DEADLINE)
                        with message_context(message):
                            self._handle(handling, received, message)
        except Exception as exc:
            raised = exc
        return Consumed(received, *leftover(), raised=raised)

    def _drain(
        self,
        queue: str,
        calls: int,
        handling: Handling,
        between: Callable[[], None] | None,
        received: list[Received],
    ) -> None:
        def callback(_body: Any, message: Any) -> None:
            self._handle(handling, received, message)

        with Consumer(self.connection, [existing(queue)], callbacks=[callback]):
            if between is not None:
                between()
            deadline = time.monotonic() + DEADLINE
            while len(received) < calls:
                assert time.monotonic() < deadline, f"{len(received)} of {calls} deliveries in time"
                with contextlib.suppress(TimeoutError):
                    self.connection.drain_events(timeout=0.2)

    def pull(self, queue: str, *, auto_ack: bool = False, wait: bool = True) -> Received | None:
        # a SimpleQueue consumes until closed: one per pull, so no consumer is left to take
        # the next message into a buffer nobody reads
        with self.connection.SimpleQueue(existing(queue), no_ack=auto_ack) as simple:
            try:
                message = simple.get(timeout=DEADLINE if wait else 0.5)
            except simple.Empty:
                return None
        seen = now(
            body_of(message),
            message.headers,
            message.delivery_tag,
            message.delivery_info.get("redelivered", False),
        )
        seen.raw = seen.message = message
        return seen

    def message_context(self, raw: Any) -> Any:
        return message_context(raw)

    def settle(self, message: Any, how: Settle, *, multiple: bool = False) -> None:
        assert not multiple, "kombu's Message settles one delivery at a time"
        if how == "ack":
            message.ack()
        elif how == "reject":
            message.reject(requeue=False)
        elif how == "requeue":
            message.requeue()
        else:
            raise AssertionError(f"kombu has no {how}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.release()


class KombuConsumer(KombuPath):
    id, mode, operation, span_kind = "kombu-consumer", "push", "process", "CONSUMER"
    marks_errors = raises_to_caller = True


class KombuSimpleQueue(KombuPath):
    id, mode = "kombu-simplequeue", "pull"


class KombuPlugin:
    server_names_queues = True
    name = "kombu"
    paths: ClassVar[dict[str, type[KombuPath]]] = {
        path.id: path for path in (KombuConsumer, KombuSimpleQueue)
    }

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def instrumentor(self) -> KombuInstrumentor:
        return KombuInstrumentor()

    def client(self) -> KombuClient:
        return KombuClient(self.broker)

    def path(self, path_id: str) -> KombuPath:
        return self.paths[path_id](self.broker)

    def patched(self) -> dict[str, object]:
        return patched_attributes()

    def unpatched(self, before: dict[str, object], now: dict[str, object]) -> list[str]:
        return [key for key, value in now.items() if not isinstance(value, wrapt.FunctionWrapper)]

    def instrument_object(self, client: Any, **options: Any) -> None:
        KombuInstrumentor.instrument_connection(client.connection, **options)

    def published_raw_ok(self, raw: Any, given: Any, message_id: str) -> bool:
        return bool(raw["message_id"] == message_id)

    def close(self) -> None:
        pass
