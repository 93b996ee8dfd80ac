"""Data hygiene: no message body, no header value and no credential is ever exported, unless
the user asked for that header with ``capture_headers``; ``server.address`` is the host alone.

Each plugin runs every path it has (publish to a named and the default exchange, push consume,
pull, iterate, ack, nack, reject, a returned message, a channel error, a connection the broker
closes) over a connection whose URL holds the password of a RabbitMQ user made for the test,
with a distinctive body and distinctive header values. Then every exported span name, status,
attribute, event, link, resource and scope, and every metric point's attributes, is scanned.
The header named in ``capture_headers`` must be found: that shows the scan sees attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context

from broker_harness import Broker, Recorder
from broker_harness.broker import close_connections, rabbitmqctl
from integration_tests.reliability.conftest import Instrument, connection_name

# Opted in: this header's value may be exported, and must be (the scan's positive control).
OPTIONS: dict[str, Any] = {
    "settle_spans": True,
    "capture_headers": ("x-visible",),
    "baggage_attributes": ("order.id",),
}


@dataclass(frozen=True)
class Secrets:
    """A RabbitMQ user for this module, and the distinctive values no export may contain."""

    user: str
    password: str
    body: bytes
    header: str
    authorization: str
    visible: str
    host: str
    url: str

    def headers(self) -> dict[str, Any]:
        return {
            "x-secret": self.header,
            "authorization": self.authorization,
            "Proxy-Authorization": self.authorization,
            "x-visible": self.visible,
        }

    def hidden(self) -> dict[str, str]:
        """What must never be exported, by what it is."""
        return {
            "password": self.password,
            "body": self.body.decode(),
            "header value": self.header,
            "authorization header": self.authorization,
            "user:password": f"{self.user}:{self.password}",
        }


@pytest.fixture(scope="module")
def secrets(rabbitmq: Broker) -> Iterator[Secrets]:
    """A RabbitMQ user with a distinctive password (deleted afterwards), and distinctive values."""
    if not rabbitmq.local:
        pytest.skip("needs the local broker: rabbitmqctl adds a user for the test")
    tag = uuid.uuid4().hex
    user = f"otel-rel-{tag[:8]}"
    password = f"Pw{tag}Secret"
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", rabbitmq.vhost, user, ".*", ".*", ".*")
        vhost = quote(rabbitmq.vhost, safe="")
        url = f"amqp://{user}:{password}@{rabbitmq.host}:{rabbitmq.port}/{vhost}"
        yield Secrets(
            user=user,
            password=password,
            body=f"BODY-{tag}-order-17".encode(),
            header=f"HDR-{tag}-card-4111",
            authorization=f"Bearer AUTH-{tag}",
            visible=f"VISIBLE-{tag}",
            host=rabbitmq.host,
            url=url,
        )
    finally:
        with contextlib.suppress(Exception):
            rabbitmqctl("delete_user", user)


def exported_texts(otel: Recorder) -> list[tuple[str, str]]:
    """``(where, text)`` for every piece of exported telemetry a secret could hide in."""
    found: list[tuple[str, str]] = []

    def add(where: str, value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for item in value:
                add(where, item)
        elif isinstance(value, (bytes, bytearray)):
            found.append((where, bytes(value).decode("utf-8", errors="replace")))
        else:
            found.append((where, str(value)))

    def add_attributes(where: str, attributes: Any) -> None:
        for key, value in dict(attributes or {}).items():
            add(f"{where} key", key)
            add(f"{where} {key}", value)

    otel.tracer_provider.force_flush()
    for span in otel.spans():
        where = f"span {span.name!r}"
        add(f"{where} name", span.name)
        add(f"{where} status", span.status.description or "")
        add_attributes(f"{where} attribute", span.attributes)
        for event in span.events:
            add(f"{where} event", event.name)
            add_attributes(f"{where} event {event.name}", event.attributes)
        for link in span.links:
            add_attributes(f"{where} link", link.attributes)
        add_attributes(f"{where} resource", span.resource.attributes)
        scope = span.instrumentation_scope
        if scope is not None:
            add(f"{where} scope", f"{scope.name} {scope.version} {scope.schema_url}")
    data = otel.reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        add_attributes("metric resource", resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                add("metric", f"{metric.name} {metric.description} {metric.unit}")
                for point in metric.data.data_points:
                    add_attributes(f"metric {metric.name}", point.attributes)
    return found


def check_exports(otel: Recorder, secrets: Secrets, operations: set[str]) -> None:
    """Nothing hidden was exported; the opted-in header was; server.address is the host only."""
    texts = exported_texts(otel)
    for what, secret in secrets.hidden().items():
        leaks = [where for where, text in texts if secret in text]
        assert leaks == [], f"the {what} was exported in {leaks}"
    assert any(secrets.visible in text for _, text in texts), "the scan saw no captured header"
    spans = otel.spans()
    assert any(e.name == "exception" for s in spans for e in s.events), "no exception recorded"
    seen = {str((s.attributes or {}).get("messaging.operation.name")) for s in spans}
    assert operations <= seen, f"paths not exercised: {operations - seen}"
    addresses = {(s.attributes or {}).get("server.address") for s in spans}
    addresses |= {a.get("server.address") for a, _ in otel.points("messaging.client.sent.messages")}
    assert addresses == {secrets.host}


def close_named(name: str) -> None:
    """Close a connection from the broker's side (the listing can lag behind a new connection)."""
    deadline = time.monotonic() + 30
    while not close_connections(name, "otel reliability hygiene test"):
        assert time.monotonic() < deadline, f"the broker never listed connection {name}"
        time.sleep(0.3)


def in_baggage(value: str) -> object:
    """Attach a context whose baggage holds ``order.id`` (opted in); returns the token."""
    return otel_context.attach(baggage.set_baggage("order.id", value))


# -- pika -------------------------------------------------------------------------------------------


def test_pika_exports_no_body_header_value_or_credential(
    instrument_pika: Instrument,
    otel: Recorder,
    secrets: Secrets,
    pika_connect: Callable[..., pika.BlockingConnection],
    unique: Callable[[str], str],
) -> None:
    """Every otel-pika path, over a URL with a password, exports no body, no header value (but the opted-in one) and no credential."""
    instrument_pika(**OPTIONS)
    name = connection_name("otel-rel-hygiene-pika")
    connection = pika_connect(name, url=secrets.url)
    channel = connection.channel()
    queue, exchange = unique("q"), unique("ex")
    channel.queue_declare(queue, exclusive=True)
    channel.exchange_declare(exchange, "direct", auto_delete=True)
    channel.queue_bind(queue, exchange, routing_key="order.created")

    def properties() -> pika.BasicProperties:
        return pika.BasicProperties(headers=secrets.headers(), message_id="m-1", correlation_id="c")

    token = in_baggage("17")
    try:
        for _ in range(4):
            channel.basic_publish(exchange, "order.created", secrets.body, properties())
        channel.basic_publish("", queue, secrets.body, properties())
    finally:
        otel_context.detach(token)  # type: ignore[arg-type]

    handled = []

    def on_message(ch: Any, method: Any, _properties: Any, body: bytes) -> None:
        handled.append(body)
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    # Each consumer on a channel of its own, closed afterwards: deliveries it held go back.
    pushed = connection.channel()
    pushed.basic_qos(prefetch_count=1)
    pushed.basic_consume(queue, on_message)
    pushed.start_consuming()
    pushed.close()
    pulled = connection.channel()
    pulled.basic_qos(prefetch_count=1)
    for method, _properties, _body in pulled.consume(queue, inactivity_timeout=10):
        assert method is not None
        pulled.basic_nack(method.delivery_tag, requeue=False)
        break
    pulled.close()
    for settle in ("reject", "ack", "nack"):
        method, _properties, _body = channel.basic_get(queue)
        assert method is not None
        getattr(channel, f"basic_{settle}")(method.delivery_tag)
    # returned (no confirms): an ERROR span when the return arrives
    channel.basic_publish(exchange, "nowhere", secrets.body, properties(), mandatory=True)
    deadline = time.monotonic() + 10
    while not any((s.attributes or {}).get("error.type") == "unroutable" for s in otel.spans()):
        assert time.monotonic() < deadline, "the return was not recorded"
        connection.process_data_events(time_limit=0.1)
    # a channel error and a connection the broker closes: exceptions recorded on spans
    confirming = connection.channel()
    confirming.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        confirming.basic_publish(unique("missing"), "x", secrets.body, properties())
    close_named(name)

    def publish_on_the_dropped_connection() -> None:
        for _ in range(10):  # pika sees the close on its next I/O
            channel.basic_publish(exchange, "order.created", secrets.body, properties())
            connection.process_data_events(time_limit=0.2)

    with pytest.raises(pika.exceptions.AMQPError):
        publish_on_the_dropped_connection()

    assert handled == [secrets.body]
    check_exports(otel, secrets, {"publish", "process", "receive", "ack", "nack", "reject"})


# -- aio-pika ---------------------------------------------------------------------------------------


def test_aiopika_exports_no_body_header_value_or_credential(
    instrument_aiopika: Instrument,
    otel: Recorder,
    secrets: Secrets,
    unique: Callable[[str], str],
) -> None:
    """Every otel-aiopika path, over a URL with a password, exports no body, no header value (but the opted-in one) and no credential."""
    import aio_pika
    import aiormq
    from yarl import URL

    instrument_aiopika(**OPTIONS)
    name = connection_name("otel-rel-hygiene-aiopika")

    def message() -> aio_pika.Message:
        return aio_pika.Message(
            secrets.body, headers=secrets.headers(), message_id="m-1", correlation_id="c"
        )

    async def run() -> None:
        connection = await aio_pika.connect(str(URL(secrets.url).update_query(name=name)))
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(unique("q"), exclusive=True)
            exchange = await channel.declare_exchange(
                unique("ex"), aio_pika.ExchangeType.DIRECT, auto_delete=True
            )
            await queue.bind(exchange, "order.created")
            token = in_baggage("17")
            try:
                for _ in range(4):
                    await exchange.publish(message(), "order.created")
                await channel.default_exchange.publish(message(), queue.name)
            finally:
                otel_context.detach(token)  # type: ignore[arg-type]
            handled: list[bytes] = []
            first = asyncio.Event()

            async def on_message(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
                if not handled:  # later deliveries go back when the channel closes
                    handled.append(incoming.body)
                    await incoming.ack()
                    first.set()

            # each consumer on a channel of its own, closed afterwards: what it held goes back
            pushed = await connection.channel()
            await pushed.set_qos(prefetch_count=1)
            await (await pushed.get_queue(queue.name, ensure=False)).consume(on_message)
            await asyncio.wait_for(first.wait(), 10)
            assert handled == [secrets.body]
            await pushed.close()
            pulled = await connection.channel()
            await pulled.set_qos(prefetch_count=1)
            iterated = await pulled.get_queue(queue.name, ensure=False)
            async with iterated.iterator() as messages:
                async for incoming in messages:
                    await incoming.nack(requeue=False)
                    break
            await pulled.close()
            for settle in ("reject", "ack", "nack"):
                incoming = await queue.get(timeout=10)
                await getattr(incoming, settle)()
            returned = await exchange.publish(message(), "nowhere", mandatory=True)
            assert isinstance(returned, aiormq.abc.DeliveredMessage)
            other = await connection.channel()
            missing = await other.get_exchange(unique("missing"), ensure=False)
            with pytest.raises(aiormq.exceptions.AMQPError):
                await missing.publish(message(), "x")
            await asyncio.to_thread(close_named, name)
            await asyncio.sleep(0.5)  # aiormq sees the close
            with pytest.raises((aiormq.exceptions.AMQPError, RuntimeError, ConnectionError)):
                await exchange.publish(message(), "order.created", timeout=5)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    asyncio.run(run())
    check_exports(otel, secrets, {"publish", "process", "receive", "ack", "nack", "reject"})


# -- kombu ------------------------------------------------------------------------------------------


def test_kombu_exports_no_body_header_value_or_credential(
    instrument_kombu: Instrument,
    otel: Recorder,
    secrets: Secrets,
    unique: Callable[[str], str],
) -> None:
    """Every otel-kombu path, over a URL with a password, exports no body, no header value (but the opted-in one) and no credential."""
    import kombu
    import kombu.exceptions

    instrument_kombu(**OPTIONS)
    name = connection_name("otel-rel-hygiene-kombu")
    connection = kombu.Connection(
        secrets.url,
        transport_options={"client_properties": {"connection_name": name}, "confirm_publish": True},
    )
    try:
        exchange = kombu.Exchange(unique("ex"), "direct", durable=False, auto_delete=True)
        # not auto-deleted when a consumer leaves (pulls follow), expires when unused for 2 min
        queue = kombu.Queue(
            unique("q"), exchange, routing_key="order.created", durable=False, expires=120
        )
        producer = connection.Producer()

        def publish(routing_key: str = "order.created", **extra: Any) -> None:
            producer.publish(
                secrets.body,
                exchange=exchange,
                routing_key=routing_key,
                headers=secrets.headers(),
                message_id="m-1",
                correlation_id="c",
                declare=[queue],
                **extra,
            )

        token = in_baggage("17")
        try:
            for _ in range(5):
                publish()
        finally:
            otel_context.detach(token)  # type: ignore[arg-type]
        bound = queue(connection.default_channel)
        for settle in ("requeue", "ack", "reject"):
            message = None
            deadline = time.monotonic() + 10
            while message is None:
                assert time.monotonic() < deadline, "no message to pull"
                message = bound.get()
            getattr(message, settle)()
        handled: list[Any] = []

        def on_message(body: Any, message: Any) -> None:
            handled.append(body)
            message.ack()

        pushed = connection.channel()  # closed afterwards: what it held goes back
        with kombu.Consumer(pushed, [queue], callbacks=[on_message], accept=None, prefetch_count=1):
            deadline = time.monotonic() + 10
            while not handled:
                assert time.monotonic() < deadline, "the consumer got nothing"
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)
        pushed.close()
        simple = connection.SimpleQueue(queue)
        simple.get(timeout=10).reject()
        simple.close()
        bound.delete()
        with contextlib.suppress(Exception):  # unroutable: recorded whatever kombu does next
            publish("nowhere", mandatory=True)
        close_named(name)
        with pytest.raises(Exception):  # noqa: B017 - any error of the dropped connection
            publish()
    finally:
        with contextlib.suppress(Exception):
            connection.release()
    assert handled
    assert set(handled) == {secrets.body}  # kombu may dispatch one more on cancel
    check_exports(otel, secrets, {"publish", "process", "receive", "ack", "reject"})
