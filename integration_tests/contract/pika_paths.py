"""otel-pika under the contract: a BlockingConnection publisher and the callback, generator and
``basic_get`` paths (the async adapters keep their own tests in integration_tests/pika)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import pika
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.channel import Channel
from pika.exceptions import NackError

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
from otel_pika import PikaInstrumentor, message_context

# What instrument() replaces on pika's two channel classes.
PATCHED = {
    Channel: (
        "basic_publish",
        "_on_return",
        "basic_consume",
        "_on_deliver",
        "basic_get",
        "basic_ack",
        "basic_nack",
        "basic_reject",
    ),
    BlockingChannel: (
        "basic_publish",
        "_dispatch_events",
        "consume",
        "cancel",
        "basic_get",
        "basic_ack",
        "basic_nack",
        "basic_reject",
    ),
}


def patched_attributes() -> dict[str, object]:
    """Every attribute instrument() replaces on pika's channel classes, as it is now."""
    return {
        f"{owner.__name__}.{name}": owner.__dict__[name]
        for owner, names in PATCHED.items()
        for name in names
    }


def connect(broker: Broker) -> BlockingConnection:
    params = pika.URLParameters(broker.url)
    params.client_properties = {"connection_name": connection_name("contract-pika")}
    return BlockingConnection(params)


class PikaClient:
    """Publishes and declares on a BlockingChannel (a second one in confirm mode on demand)."""

    def __init__(self, broker: Broker) -> None:
        self.connection = connect(broker)
        self.channel = self.connection.channel()
        self._confirming: BlockingChannel | None = None

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
        properties = pika.BasicProperties(
            headers=headers, message_id=message_id, correlation_id=correlation_id
        )
        channel = self.channel
        if confirm:
            if self._confirming is None:
                self._confirming = self.connection.channel()
                self._confirming.confirm_delivery()
            channel = self._confirming
        before = properties.headers
        channel.basic_publish(exchange, routing_key, body, properties)
        self.held_headers = (before, properties.headers)
        return properties

    def declare_queue(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        ok = self.channel.queue_declare(name, arguments=arguments)
        return str(ok.method.queue)

    def declare_exchange(self, name: str, bind: str, routing_key: str) -> None:
        self.channel.exchange_declare(name, "direct", auto_delete=True)
        self.channel.queue_bind(bind, name, routing_key)

    def delete_queue(self, name: str) -> None:
        self.channel.queue_delete(name)

    def is_broker_nack(self, error: BaseException) -> bool:
        return type(error) is NackError

    def fetch(self, queue: str) -> tuple[bytes, Mapping[str, Any]]:
        deadline = time.monotonic() + DEADLINE
        with suppress_instrumentation():
            while True:
                method, properties, body = self.channel.basic_get(queue, auto_ack=True)
                if method is not None:
                    return body, properties.headers or {}
                assert time.monotonic() < deadline, f"no message on {queue} in time"
                self.connection.sleep(0.02)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


class PikaPath:
    """The callback, generator and ``basic_get`` paths on a BlockingChannel of their own."""

    id: str
    mode: Mode
    operation: Literal["process", "receive"] = "receive"
    span_kind: Literal["CONSUMER", "CLIENT"] = "CLIENT"
    requeue_operation = "nack"
    settles: frozenset[Settle] = frozenset({"ack", "nack", "reject", "requeue"})
    settles_later = True
    # basic_reject(tag) of a delivery seen before instrument(): nothing names its queue
    names_untracked = False
    settles_multiple = True
    rejects_on_error = False
    # a callback's exception reaches start_consuming(); a generator's loop body is the
    # caller's own code, outside any pika call, so nothing of ours sees it
    marks_errors = raises_to_caller = False

    def __init__(self, broker: Broker) -> None:
        self.connection = connect(broker)
        self.channel = self.connection.channel()

    # -- the handler -------------------------------------------------------------------------

    def _handle(
        self,
        handling: Handling,
        received: list[Received],
        delivery: tuple[Any, Any, bytes],
    ) -> None:
        method, properties, body = delivery
        seen = now(body, properties.headers, method.delivery_tag, method.redelivered)
        seen.raw, seen.message = properties, method.delivery_tag
        received.append(seen)
        if handling.look is not None:
            handling.look(seen)
        if handling.forward_to is not None:
            self.channel.basic_publish("", handling.forward_to, b"next")
        how = handling.settle_now()
        if how is not None:
            self.settle(method.delivery_tag, how)
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
        run = {"push": self._callback, "loop": self._generator, "pull": self._get}[self.mode]
        received: list[Received] = []
        raised: BaseException | None = None
        try:
            run(queue, calls, handling, between, received)
        except Exception as exc:
            raised = exc
        after, after_baggage = leftover()
        if self.mode == "loop":
            self.channel.cancel()
        return Consumed(received, after, after_baggage, raised)

    def _callback(
        self,
        queue: str,
        calls: int,
        handling: Handling,
        between: Callable[[], None] | None,
        received: list[Received],
    ) -> None:
        def on_message(ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
            self._handle(handling, received, (method, properties, body))
            if len(received) == calls:
                ch.stop_consuming()

        tag = self.channel.basic_consume(queue, on_message)
        if between is not None:
            between()
        timer = self.connection.call_later(DEADLINE, self.channel.stop_consuming)
        try:
            self.channel.start_consuming()
        finally:
            self.connection.remove_timeout(timer)
            with contextlib.suppress(Exception):
                self.channel.basic_cancel(tag)
        assert len(received) == calls, f"{len(received)} of {calls} deliveries in time"

    def _generator(
        self,
        queue: str,
        calls: int,
        handling: Handling,
        between: Callable[[], None] | None,
        received: list[Received],
    ) -> None:
        if between is not None:
            between()
        for method, properties, body in self.channel.consume(queue, inactivity_timeout=DEADLINE):
            assert method is not None, "the generator yielded no message in time"
            self._handle(handling, received, (method, properties, body))
            if len(received) == calls:
                break

    def _get(
        self,
        queue: str,
        calls: int,
        handling: Handling,
        between: Callable[[], None] | None,
        received: list[Received],
    ) -> None:
        if between is not None:
            between()
        while len(received) < calls:
            method, properties, body = self._poll(queue, auto_ack=False, wait=True)
            with message_context(properties):
                self._handle(handling, received, (method, properties, body))

    def _poll(self, queue: str, *, auto_ack: bool, wait: bool) -> tuple[Any, Any, Any]:
        deadline = time.monotonic() + DEADLINE
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=auto_ack)
            if method is not None or not wait:
                return method, properties, body
            assert time.monotonic() < deadline, f"no message on {queue} in time"
            self.connection.sleep(0.02)

    def pull(self, queue: str, *, auto_ack: bool = False, wait: bool = True) -> Received | None:
        method, properties, body = self._poll(queue, auto_ack=auto_ack, wait=wait)
        if method is None:
            return None
        seen = now(body, properties.headers, method.delivery_tag, method.redelivered)
        seen.raw, seen.message = properties, method.delivery_tag
        return seen

    def message_context(self, raw: Any) -> Any:
        return message_context(raw)

    def settle(self, message: Any, how: Settle, *, multiple: bool = False) -> None:
        if how == "ack":
            self.channel.basic_ack(message, multiple=multiple)
        elif how == "nack":
            self.channel.basic_nack(message, multiple=multiple, requeue=False)
        elif how == "reject":
            self.channel.basic_reject(message, requeue=False)
        else:
            self.channel.basic_nack(message, multiple=multiple, requeue=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


class PikaCallback(PikaPath):
    id, mode, operation, span_kind = "pika-callback", "push", "process", "CONSUMER"
    marks_errors = raises_to_caller = True


class PikaGenerator(PikaPath):
    id, mode = "pika-generator", "loop"


class PikaGet(PikaPath):
    id, mode = "pika-get", "pull"


class PikaPlugin:
    server_names_queues = True
    name = "pika"
    paths: ClassVar[dict[str, type[PikaPath]]] = {
        path.id: path for path in (PikaCallback, PikaGenerator, PikaGet)
    }

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def instrumentor(self) -> PikaInstrumentor:
        return PikaInstrumentor()

    def client(self) -> PikaClient:
        return PikaClient(self.broker)

    def path(self, path_id: str) -> PikaPath:
        return self.paths[path_id](self.broker)

    def patched(self) -> dict[str, object]:
        return patched_attributes()

    def unpatched(self, before: dict[str, object], now: dict[str, object]) -> list[str]:
        return [key for key, value in before.items() if now[key] is value]

    def instrument_object(self, client: Any, **options: Any) -> None:
        PikaInstrumentor.instrument_channel(client.channel, **options)

    def published_raw_ok(self, raw: Any, given: Any, message_id: str) -> bool:
        return raw is given

    def close(self) -> None:
        pass
