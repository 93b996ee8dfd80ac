"""otel-pika under the contract: a BlockingConnection client and the callback, generator and
``basic_get`` paths (the async adapters keep their own tests in integration_tests/pika)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.channel import Channel
from pika.exceptions import NackError

from broker_harness import Broker
from integration_tests.contract import protocol
from integration_tests.contract.plain import connection_name
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


class Connected:
    """A BlockingConnection of its own, named, and one channel on it."""

    def __init__(self, broker: Broker) -> None:
        params = pika.URLParameters(broker.url)
        params.client_properties = {"connection_name": connection_name("contract-pika")}
        self.connection = BlockingConnection(params)
        self.channel = self.connection.channel()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


def received(delivery: tuple[Any, Any, bytes]) -> protocol.Received:
    """A delivery as pika hands it over: method, properties (the envelope's raw), body."""
    method, properties, body = delivery
    return protocol.Received(
        body,
        properties.headers,
        method.delivery_tag,
        method.redelivered,
        properties,
        method.delivery_tag,
    )


class PikaClient(Connected, protocol.Client):
    """Publishes and declares on a BlockingChannel (a second one in confirm mode on demand)."""

    _confirming: BlockingChannel | None = None

    def send(self, out: protocol.Outgoing) -> Any:
        given = pika.BasicProperties(headers=out.headers, **out.properties)
        channel = self.channel
        if out.confirm:
            if self._confirming is None:
                self._confirming = self.connection.channel()
                self._confirming.confirm_delivery()
            channel = self._confirming
        before = given.headers
        channel.basic_publish(out.exchange, out.routing_key, out.body, given)
        self.held_headers = (before, given.headers)
        return given

    def get_one(self, queue: str) -> tuple[bytes, Mapping[str, Any]] | None:
        method, properties, body = self.channel.basic_get(queue, auto_ack=True)
        return None if method is None else (body, properties.headers or {})

    def declare_queue(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        return str(self.channel.queue_declare(name, arguments=arguments).method.queue)

    def declare_exchange(self, name: str, bind: str, routing_key: str) -> None:
        self.channel.exchange_declare(name, "direct", auto_delete=True)
        self.channel.queue_bind(bind, name, routing_key)

    def delete_queue(self, name: str) -> None:
        self.channel.queue_delete(name)

    def is_broker_nack(self, error: BaseException) -> bool:
        return type(error) is NackError


class PikaPath(Connected, protocol.Path):
    """What the three pika paths share: settles on the channel, a forward on it too."""

    # basic_reject(tag) of a delivery seen before instrument(): nothing names its queue
    names_untracked = False

    def forward(self, queue: str) -> None:
        self.channel.basic_publish("", queue, b"next")

    def settle(self, message: Any, how: protocol.Settle, *, multiple: bool = False) -> None:
        if how == "reject":
            self.channel.basic_reject(message, requeue=False)
        elif how == "ack":
            self.channel.basic_ack(message, multiple=multiple)
        else:
            self.channel.basic_nack(message, multiple=multiple, requeue=how == "requeue")

    def message_context(self, raw: Any) -> Any:
        return message_context(raw)


class PikaCallback(PikaPath):
    """``basic_consume`` with a callback, driven by ``start_consuming()``."""

    id, mode, operation, span_kind = "pika-callback", "push", "process", "CONSUMER"
    # the callback's exception reaches start_consuming()
    marks_errors = raises_to_caller = True

    def run(self, run: protocol.Run) -> None:
        def on_message(ch: BlockingChannel, *delivery: Any) -> None:
            self.handle(run, received(delivery))
            if run.done:
                ch.stop_consuming()

        tag = self.channel.basic_consume(run.queue, on_message)
        run.ready()
        timer = self.connection.call_later(protocol.DEADLINE, self.channel.stop_consuming)
        try:
            self.channel.start_consuming()
        finally:
            self.connection.remove_timeout(timer)
            with contextlib.suppress(Exception):
                self.channel.basic_cancel(tag)
        assert run.done, f"{len(run.received)} of {run.calls} deliveries in time"


class PikaGenerator(PikaPath):
    """``BlockingChannel.consume()``: the loop body is the handler (pika never sees its errors)."""

    id, mode = "pika-generator", "loop"

    def run(self, run: protocol.Run) -> None:
        run.ready()
        for delivery in self.channel.consume(run.queue, inactivity_timeout=protocol.DEADLINE):
            assert delivery[0] is not None, "the generator yielded no message in time"
            self.handle(run, received(delivery))
            if run.done:
                break

    def finish(self) -> None:
        self.channel.cancel()


class PikaGet(PikaPath):
    """``basic_get``, each message handled inside ``message_context()``."""

    id, mode = "pika-get", "pull"

    def run(self, run: protocol.Run) -> None:
        run.ready()
        while not run.done:
            seen = protocol.poll(
                lambda: self.pull(run.queue, wait=False), f"message on {run.queue}"
            )
            with message_context(seen.raw):
                self.handle(run, seen)

    def pull(
        self, queue: str, *, auto_ack: bool = False, wait: bool = True
    ) -> protocol.Received | None:
        if wait:
            return protocol.poll(lambda: self.pull(queue, auto_ack=auto_ack, wait=False), "message")
        delivery = self.channel.basic_get(queue, auto_ack=auto_ack)
        return None if delivery[0] is None else received(delivery)


class PikaPlugin(protocol.Plugin):
    name = "pika"
    paths: ClassVar[Mapping[str, type[protocol.Path]]] = {
        path.id: path for path in (PikaCallback, PikaGenerator, PikaGet)
    }
    instrumentor_class = PikaInstrumentor
    client_class = PikaClient

    def patched(self) -> dict[str, object]:
        return patched_attributes()

    def instrument_object(self, client: Any, **options: Any) -> None:
        PikaInstrumentor.instrument_channel(client.channel, **options)

    def published_raw_ok(self, raw: Any, given: Any, message_id: str) -> bool:
        return raw is given
