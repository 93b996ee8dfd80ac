"""otel-kombu under the contract: a Producer, the ``Consumer`` callback path driven by
``drain_events``, and ``SimpleQueue.get`` (kombu's other pulls keep their own tests)."""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import wrapt
from amqp.exceptions import MessageNacked
from kombu import Connection, Consumer, Exchange, Producer, Queue

from broker_harness import Broker
from integration_tests.contract import protocol
from integration_tests.contract.plain import connection_name
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
    name = {"client_properties": {"connection_name": connection_name("contract-kombu")}}
    options = {**name, **transport_options}
    connection = Connection(broker.url, connect_timeout=10, transport_options=options)
    connection.connect()
    return connection


def existing(name: str) -> Queue:
    """A queue some client declared already, reached through the default exchange."""
    return Queue(name, Exchange(""), routing_key=name, no_declare=True)


def received(message: Any) -> protocol.Received:
    """A kombu Message as the handler sees it (it is the envelope's raw and what is settled)."""
    body = message.body
    return protocol.Received(
        body.encode() if isinstance(body, str) else body,  # py-amqp hands an empty body as ""
        message.headers,
        message.delivery_tag,
        message.delivery_info.get("redelivered", False),
        message,
        message,
    )


class KombuClient(protocol.Client):
    """Publishes with a Producer (a second connection in confirm mode on demand) and declares."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connection = connect(broker)
        self.channel = self.connection.default_channel
        self._confirming: Connection | None = None

    def send(self, out: protocol.Outgoing) -> Any:
        connection = self.connection
        if out.confirm:
            if self._confirming is None:
                self._confirming = connect(self.broker, confirm_publish=True)
            connection = self._confirming
        Producer(connection).publish(
            out.body,
            exchange=out.exchange,
            routing_key=out.routing_key,
            headers=out.headers,
            **RAW,
            **out.properties,
        )
        self.held_headers = (out.headers, out.headers)  # kombu takes the caller's dict itself
        return out.headers

    def get_one(self, queue: str) -> tuple[bytes, Mapping[str, Any]] | None:
        message = existing(queue)(self.channel).get(no_ack=True)
        return None if message is None else (received(message).body, message.headers)

    def declare_queue(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        bound = Queue(name, durable=False, queue_arguments=arguments)(self.channel)
        bound.declare()
        return str(bound.name)

    def declare_exchange(self, name: str, bind: str, routing_key: str) -> None:
        Exchange(name, type="direct", durable=False, auto_delete=True)(self.channel).declare()
        self.channel.queue_bind(bind, name, routing_key)

    def delete_queue(self, name: str) -> None:
        self.channel.queue_delete(name)

    def is_broker_nack(self, error: BaseException) -> bool:
        return type(error) is MessageNacked

    def close(self) -> None:
        for connection in (self.connection, self._confirming):
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.release()


class KombuPath(protocol.Path):
    """What the two kombu paths share: a connection of their own, settles on the Message."""

    # kombu's Message has ack, reject(requeue) and requeue (a reject that requeues); no nack
    settles: ClassVar[frozenset[protocol.Settle]] = frozenset({"ack", "reject", "requeue"})
    requeue_operation = "reject"
    settles_multiple = False
    # kombu knows the routing key of a delivery seen before instrument() but does not yet
    # take it for the queue on the default exchange as otel-aiopika does
    names_untracked = False

    def __init__(self, broker: Broker) -> None:
        self.connection = connect(broker)

    def forward(self, queue: str) -> None:
        Producer(self.connection).publish(b"next", routing_key=queue, **RAW)

    def settle(self, message: Any, how: protocol.Settle, *, multiple: bool = False) -> None:
        assert not multiple, "kombu's Message settles one delivery at a time"
        {"ack": message.ack, "reject": message.reject, "requeue": message.requeue}[how]()

    def message_context(self, raw: Any) -> Any:
        return message_context(raw)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.release()


class KombuConsumer(KombuPath):
    """A ``Consumer`` with a callback, driven by ``drain_events`` (which passes its errors on)."""

    id, mode, operation, span_kind = "kombu-consumer", "push", "process", "CONSUMER"
    marks_errors = raises_to_caller = True

    def run(self, run: protocol.Run) -> None:
        def callback(_body: Any, message: Any) -> None:
            self.handle(run, received(message))

        with Consumer(self.connection, [existing(run.queue)], callbacks=[callback]):
            run.ready()
            deadline = time.monotonic() + protocol.DEADLINE
            while not run.done:
                assert time.monotonic() < deadline, f"{len(run.received)} of {run.calls} in time"
                with contextlib.suppress(TimeoutError):
                    self.connection.drain_events(timeout=0.2)


class KombuSimpleQueue(KombuPath):
    """``SimpleQueue.get``, each message handled inside ``message_context()``."""

    id, mode = "kombu-simplequeue", "pull"

    def run(self, run: protocol.Run) -> None:
        run.ready()
        with self.connection.SimpleQueue(existing(run.queue)) as simple:
            while not run.done:
                seen = received(simple.get(timeout=protocol.DEADLINE))
                with message_context(seen.raw):
                    self.handle(run, seen)

    def pull(
        self, queue: str, *, auto_ack: bool = False, wait: bool = True
    ) -> protocol.Received | None:
        # a SimpleQueue consumes until closed: one per pull, so no consumer is left to take
        # the next message into a buffer nobody reads
        with self.connection.SimpleQueue(existing(queue), no_ack=auto_ack) as simple:
            try:
                return received(simple.get(timeout=protocol.DEADLINE if wait else 0.5))
            except simple.Empty:
                return None


class KombuPlugin(protocol.Plugin):
    name = "kombu"
    paths: ClassVar[Mapping[str, type[protocol.Path]]] = {
        path.id: path for path in (KombuConsumer, KombuSimpleQueue)
    }
    instrumentor_class = KombuInstrumentor
    client_class = KombuClient

    def patched(self) -> dict[str, object]:
        return patched_attributes()

    def unpatched(self, before: dict[str, object], now: dict[str, object]) -> list[str]:
        # the originals are plain functions, and instrument() wraps every one of them
        wrapped_before = [
            key for key, value in before.items() if isinstance(value, wrapt.ObjectProxy)
        ]
        plain_now = [
            key for key, value in now.items() if not isinstance(value, wrapt.FunctionWrapper)
        ]
        return wrapped_before + plain_now

    def instrument_object(self, client: Any, **options: Any) -> None:
        KombuInstrumentor.instrument_connection(client.connection, **options)

    def published_raw_ok(self, raw: Any, given: Any, message_id: str) -> bool:
        return bool(raw["message_id"] == message_id)
