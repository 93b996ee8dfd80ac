"""Bad input: any header table and any body a plain producer sends reach every instrumented
consumer's handler unchanged, and our code never raises or logs an error of its own.

One connection per test carries every example; hypothesis draws the header tables and bodies
(see :mod:`integration_tests.reliability.amqp_tables`). In every consumption style the handler
must run once per message, see the body and every header exactly as its client library decodes
them, and run in the message's context: a child of the producer when the table carries a valid
``traceparent`` under its exact key, a fresh trace when what it carries is malformed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pika
import pika.data
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from opentelemetry import trace
from opentelemetry.trace import Span
from pika.adapters.blocking_connection import BlockingConnection

from broker_harness import Broker, Recorder
from integration_tests.contract.plain import PlainProducer
from integration_tests.reliability.amqp_tables import (
    RawLongStr,
    Table,
    ValidContext,
    bodies,
    decoded_by,
    encoded,
    extended_pika_encoder,
    tables,
)
from integration_tests.reliability.conftest import (
    Instrument,
    InternalErrors,
    connection_name,
    pika_parameters,
)

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    # no shrinking: under python -bb hypothesis' own shrinker compares bytes with ints
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Options that make the instrumentation read the odd headers too: header capture of the trace
# fields, baggage attributes, and hooks that look at every field of the envelope.
OPTIONS: dict[str, Any] = {
    "capture_headers": ("traceparent", "tracestate", "baggage", "x-missing"),
    "baggage_attributes": ("k", "a"),
}


_PARENT = ValidContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, sampled=True)
_TRACEPARENT = f"00-{_PARENT.trace_id:032x}-{_PARENT.span_id:016x}-01"
# Always run, besides what hypothesis draws: text no codec can encode once py-amqp (kombu) has
# decoded these bytes with "surrogatepass", next to a valid traceparent, and a table of nothing
# but malformed trace fields.
NASTY = (
    Table(
        {"traceparent": _TRACEPARENT, "baggage": RawLongStr(b"\xed\xa0\x80order.id=17")}, _PARENT
    ),
    Table(
        {
            "traceparent": _TRACEPARENT.encode(),
            "tracestate": RawLongStr(b"k=\xed\xb3\xbf"),
            "Baggage": [RawLongStr(b"\xed\xa0\x80"), "a=b"],
        },
        _PARENT,
    ),
    Table({"TRACEPARENT": RawLongStr(b"\xed\xa0\x80"), "baggage": "a=b," * 3000}, None),
)


def _touch_envelope(_span: Span, envelope: Any) -> None:
    dict(envelope.headers)
    len(envelope.body or b"")
    repr(envelope)


@dataclass
class Seen:
    """What the handler saw: body, headers, and the span current while it ran."""

    body: bytes
    headers: Any
    span: Span


def seen_now(body: bytes, headers: Any) -> Seen:
    return Seen(bytes(body), headers, trace.get_current_span())


class Style(Protocol):
    library: str
    span_name: str
    ends_after_handler: bool

    def deliver(self, table: dict[Any, Any], body: bytes) -> Seen: ...


# -- the consumer styles ----------------------------------------------------------------------------


class PikaCallback:
    """``basic_consume`` with a callback that acks; driven by ``process_data_events``."""

    library = "pika"
    ends_after_handler = True

    def __init__(self, broker: Broker, queue: str) -> None:
        self.connection = BlockingConnection(pika_parameters(broker.url, connection_name()))
        self.channel = self.connection.channel()
        self.channel.queue_declare(queue, exclusive=True)
        self.producer = PlainProducer(broker, queue)
        self.span_name = f"process {queue}"
        self.seen: list[Seen] = []

        def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            self.seen.append(seen_now(body, properties.headers))
            channel.basic_ack(method.delivery_tag)

        self.channel.basic_consume(queue, on_message)

    def deliver(self, table: dict[Any, Any], body: bytes) -> Seen:
        self.producer.publish(table, body)
        deadline = time.monotonic() + 30
        while not self.seen:
            assert time.monotonic() < deadline, "the handler was not called"
            self.connection.process_data_events(time_limit=0.1)
        assert len(self.seen) == 1
        return self.seen.pop()

    def close(self) -> None:
        self.producer.close()
        with contextlib.suppress(Exception):
            self.connection.close()


class PikaGenerator:
    """``BlockingChannel.consume()``: the loop body is the handler."""

    library = "pika"
    ends_after_handler = False  # the receive span ends when the next message is asked for

    def __init__(self, broker: Broker, queue: str) -> None:
        self.connection = BlockingConnection(pika_parameters(broker.url, connection_name()))
        self.channel = self.connection.channel()
        self.channel.queue_declare(queue, exclusive=True)
        self.producer = PlainProducer(broker, queue)
        self.span_name = f"receive {queue}"
        self.messages = self.channel.consume(queue, inactivity_timeout=30)

    def deliver(self, table: dict[Any, Any], body: bytes) -> Seen:
        self.producer.publish(table, body)
        method, properties, received = next(self.messages)
        assert method is not None, "the generator yielded no message"
        seen = seen_now(received, properties.headers)
        self.channel.basic_ack(method.delivery_tag)
        return seen

    def close(self) -> None:
        self.producer.close()
        with contextlib.suppress(Exception):
            self.channel.cancel()
            self.connection.close()


class AioPikaStyle:
    """aio-pika on its own event loop, run between examples: a callback or the queue iterator."""

    library = "aiopika"

    def __init__(self, broker: Broker, queue: str, iterator: bool) -> None:
        import aio_pika
        from yarl import URL

        self.iterator = iterator
        self.ends_after_handler = not iterator
        self.span_name = f"{'receive' if iterator else 'process'} {queue}"
        self.loop = asyncio.new_event_loop()
        self.seen: asyncio.Queue[Seen] | None = None
        self.messages: Any = None
        url = str(URL(broker.url).update_query(name=connection_name()))

        async def open_() -> None:
            self.seen = asyncio.Queue()
            self.connection = await aio_pika.connect(url)
            channel = await self.connection.channel()
            self.queue = await channel.declare_queue(queue, exclusive=True)
            if iterator:
                self.messages = self.queue.iterator(timeout=30)
            else:
                await self.queue.consume(self._on_message)

        self.loop.run_until_complete(open_())
        self.producer = PlainProducer(broker, queue)

    async def _on_message(self, message: Any) -> None:
        assert self.seen is not None
        self.seen.put_nowait(seen_now(message.body, message.headers))
        await message.ack()

    async def _next(self) -> Seen:
        if self.iterator:
            message = await self.messages.__anext__()
            seen = seen_now(message.body, message.headers)
            await message.ack()
            return seen
        assert self.seen is not None
        return await asyncio.wait_for(self.seen.get(), 30)

    def deliver(self, table: dict[Any, Any], body: bytes) -> Seen:
        self.producer.publish(table, body)
        return self.loop.run_until_complete(self._next())

    def close(self) -> None:
        self.producer.close()

        async def close_() -> None:
            if self.messages is not None:
                await self.messages.close()
            await self.connection.close()

        with contextlib.suppress(Exception):
            self.loop.run_until_complete(asyncio.wait_for(close_(), 10))
        self.loop.close()


class KombuConsumer:
    """A kombu ``Consumer`` with ``on_message`` that acks; driven by ``drain_events``."""

    library = "kombu"
    ends_after_handler = True

    def __init__(self, broker: Broker, queue: str) -> None:
        import kombu

        self.connection = kombu.Connection(
            broker.url,
            transport_options={"client_properties": {"connection_name": connection_name()}},
        )
        self.connection.connect()
        self.span_name = f"process {queue}"
        self.seen: list[Seen] = []

        def on_message(message: Any) -> None:
            body = message.body
            if isinstance(body, str):  # py-amqp hands over an empty body as ""
                body = body.encode("utf-8")
            self.seen.append(seen_now(body, message.headers))
            message.ack()

        self.consumer = kombu.Consumer(
            self.connection,
            queues=[kombu.Queue(queue, exclusive=True, durable=False)],
            on_message=on_message,
        )
        self.consumer.consume()
        self.producer = PlainProducer(broker, queue)

    def deliver(self, table: dict[Any, Any], body: bytes) -> Seen:
        self.producer.publish(table, body)
        deadline = time.monotonic() + 30
        while not self.seen:
            assert time.monotonic() < deadline, "the handler was not called"
            with contextlib.suppress(TimeoutError):
                self.connection.drain_events(timeout=0.2)
        assert len(self.seen) == 1
        return self.seen.pop()

    def close(self) -> None:
        self.producer.close()
        with contextlib.suppress(Exception):
            self.consumer.cancel()
            self.connection.release()


STYLES: dict[str, tuple[str, Callable[[Broker, str], Any]]] = {
    "pika-callback": ("pika", PikaCallback),
    "pika-generator": ("pika", PikaGenerator),
    "aiopika-callback": ("aiopika", lambda b, q: AioPikaStyle(b, q, iterator=False)),
    "aiopika-iterator": ("aiopika", lambda b, q: AioPikaStyle(b, q, iterator=True)),
    "kombu-consumer": ("kombu", KombuConsumer),
}


@pytest.fixture
def extended_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain producer can send floats, bytearrays and non-UTF-8 long strings too."""
    monkeypatch.setattr(pika.data, "encode_value", extended_pika_encoder(pika.data.encode_value))


@pytest.fixture
def style(
    request: pytest.FixtureRequest,
    rabbitmq: Broker,
    unique: Callable[[str], str],
    otel: Recorder,
    extended_encoder: None,
) -> Iterator[Style]:
    """The consumer style under test, instrumented (options that read every header) and open."""
    plugin, make = STYLES[request.param]
    instrument: Instrument = request.getfixturevalue(f"instrument_{plugin}")
    instrument(**OPTIONS, publish_hook=_touch_envelope, consume_hook=_touch_envelope)
    opened = make(rabbitmq, unique("q"))
    yield opened
    opened.close()


def check(style: Style, table: Table, body: bytes, seen: Seen) -> None:
    """The handler saw the body and headers unchanged, in the context SPEC asks for."""
    assert seen.body == body
    expected = decoded_by(style.library, encoded(table.headers))
    assert seen.headers == expected  # every user header as sent, nothing added or taken away
    span = seen.span
    context = span.get_span_context()
    producer = table.context
    if producer is not None and not producer.sampled:
        # not sampled upstream: no span of ours; the handler runs in the producer's context
        assert not span.is_recording()
        assert (context.trace_id, context.span_id) == (producer.trace_id, producer.span_id)
        assert not context.trace_flags.sampled
        return
    assert getattr(span, "name", None) == style.span_name
    attributes = span.attributes  # type: ignore[attr-defined]
    assert attributes["messaging.message.body.size"] == len(body)
    links = [link.context for link in span.links]  # type: ignore[attr-defined]
    parent = span.parent  # type: ignore[attr-defined]
    if producer is None:  # malformed or missing: a fresh trace, no link
        assert parent is None
        assert links == []
    else:
        assert (parent.trace_id, parent.span_id) == (producer.trace_id, producer.span_id)
        assert [(c.trace_id, c.span_id) for c in links] == [(producer.trace_id, producer.span_id)]
    if style.ends_after_handler:
        assert not span.is_recording()  # ended when the handler returned
        assert span.status.is_unset  # type: ignore[attr-defined]
        assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.parametrize("style", list(STYLES), indirect=True)
def test_any_header_table_and_body_reach_the_handler_unchanged(
    style: Style, otel: Recorder, internal_errors: InternalErrors
) -> None:
    """Whatever header table and body a plain producer sends, the instrumented handler runs once with both unchanged, in the producer's trace or (malformed context) a fresh one, and our code logs no error."""
    binary_keys = style.library in ("pika", "kombu")  # pamqp itself cannot decode such keys

    @EXAMPLES
    @given(table=tables(binary_keys=binary_keys), body=bodies)
    @example(table=NASTY[0], body=b"")
    @example(table=NASTY[1], body=b"x" * 131_073)
    @example(table=NASTY[2], body=b"order 17")
    def one_message(table: Table, body: bytes) -> None:
        seen = style.deliver(table.headers, body)
        check(style, table, body, seen)
        assert internal_errors.records() == []

    one_message()
    otel.tracer_provider.force_flush()
    for span in otel.spans():
        assert span.status.is_unset, span.name
        assert [e.name for e in span.events] == []
