"""otel-aiopika under the contract: the callback, ``message.process()``, iterator and
``Queue.get`` paths, driven from the (synchronous) contract tests on an event loop of their own.

Each call from a test runs one coroutine with ``run_until_complete``; its task starts with a copy
of the test's context (its spans and baggage), and whatever a handler leaves current is measured
inside the loop, where it would leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
import warnings
from collections.abc import Awaitable, Mapping
from typing import Any, ClassVar, TypeVar

import aio_pika
import aio_pika.exchange
import aio_pika.message
import aio_pika.queue
import aio_pika.robust_queue
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from yarl import URL

from broker_harness import Broker
from integration_tests.contract import protocol
from integration_tests.contract.plain import connection_name
from otel_aiopika import AioPikaInstrumentor, message_context

T = TypeVar("T")
MODULES = (aio_pika.exchange, aio_pika.message, aio_pika.queue, aio_pika.robust_queue)
# instrument() replaces at least these names on aio-pika's classes
MUST_PATCH = {"publish", "consume", "get", "__anext__", "ack"}


def class_attributes() -> dict[str, object]:
    """Every attribute defined on every aio-pika class that the plugin could patch."""
    found: dict[str, object] = {}
    for module in MODULES:
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for name, value in vars(cls).items():
                found[f"{module.__name__}.{cls_name}.{name}"] = value
    return found


def received(message: AbstractIncomingMessage) -> protocol.Received:
    """An IncomingMessage as the handler sees it (it is the envelope's raw and what is settled)."""
    tag, redelivered = message.delivery_tag or 0, bool(message.redelivered)
    return protocol.Received(message.body, message.headers, tag, redelivered, message, message)


class Loop:
    """One event loop per test, shared by the plugin's client and paths, and the kind of
    connection they open (plain, or robust: aio-pika's reconnecting classes)."""

    def __init__(self, broker: Broker, robust: bool) -> None:
        self.loop = asyncio.new_event_loop()
        self.broker = broker
        self.robust = robust

    def run(self, work: Awaitable[T]) -> T:
        return self.loop.run_until_complete(work)

    def open(self) -> tuple[AbstractConnection, AbstractChannel]:
        """A named connection of the test's kind and a channel on it."""

        async def open_() -> tuple[AbstractConnection, AbstractChannel]:
            url = str(URL(self.broker.url).update_query(name=connection_name("contract-aiopika")))
            connection = await (aio_pika.connect_robust if self.robust else aio_pika.connect)(url)
            return connection, await connection.channel()

        return self.run(open_())

    def close(self, connection: AbstractConnection) -> None:
        with contextlib.suppress(Exception):
            self.run(asyncio.wait_for(connection.close(), 10))


class AioPikaClient(protocol.Client):
    """Publishes and declares on a channel of its own (publisher confirms on: aio-pika's default)."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.connection, self.channel = loop.open()

    def send(self, out: protocol.Outgoing) -> Any:
        message = aio_pika.Message(out.body, headers=out.headers, **out.properties)  # type: ignore[arg-type]

        async def send() -> None:
            target = self.channel.default_exchange
            if out.exchange:
                target = await self.channel.get_exchange(out.exchange, ensure=False)
            await target.publish(message, routing_key=out.routing_key)

        before = message.headers
        self.loop.run(send())
        self.held_headers = (before, message.headers)
        return message

    def get_one(self, queue: str) -> tuple[bytes, Mapping[str, Any]] | None:
        async def get() -> AbstractIncomingMessage | None:
            bound = await self.channel.get_queue(queue, ensure=False)
            return await bound.get(no_ack=True, fail=False, timeout=protocol.DEADLINE)

        message = self.loop.run(get())
        return None if message is None else (message.body, message.headers)

    def declare_queue(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        queue = self.loop.run(self.channel.declare_queue(name, arguments=arguments))
        return str(queue.name)

    def declare_exchange(self, name: str, bind: str, routing_key: str) -> None:
        async def declare() -> None:
            exchange = await self.channel.declare_exchange(name, "direct", auto_delete=True)
            queue = await self.channel.get_queue(bind, ensure=False)
            await queue.bind(exchange, routing_key)

        self.loop.run(declare())

    def delete_queue(self, name: str) -> None:
        self.loop.run(self.channel.queue_delete(name))

    def is_broker_nack(self, error: BaseException) -> bool:
        return type(error) is aiormq.exceptions.DeliveryError and isinstance(
            error.frame, aiormq.spec.Basic.Nack
        )

    def close(self) -> None:
        self.loop.close(self.connection)


class AioPikaPath(protocol.Path):
    """What aio-pika's four paths share: the loop, settles on the message, the async handler.

    A consume first starts the path (``start``: a consumer is registered, for push paths), then
    runs what the test does ``between``, then ``drive`` handles the deliveries, all on the loop.
    """

    names_untracked = True
    marks_errors = True
    process = False  # the handler runs inside ``async with message.process()``

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.connection, self.channel = loop.open()

    def consume_run(self, run: protocol.Run) -> protocol.Consumed:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # aio-pika warns about callbacks that raise
            started = self.loop.run(self.start(run))
            run.ready()
            return self.loop.run(self.measured(run, started))

    async def start(self, run: protocol.Run) -> Any:
        return await self.channel.get_queue(run.queue, ensure=False)

    async def measured(self, run: protocol.Run, started: Any) -> protocol.Consumed:
        raised: BaseException | None = None
        try:
            await self.drive(run, started)
        except Exception as exc:
            raised = exc
        return protocol.Consumed(run.received, *protocol.leftover(), raised=raised)

    async def drive(self, run: protocol.Run, started: Any) -> None:
        raise NotImplementedError

    async def handle_async(self, run: protocol.Run, message: AbstractIncomingMessage) -> None:
        """:meth:`protocol.Path.handle`, awaiting aio-pika's publish and settles."""
        run.begin(received(message))
        if run.handling.forward_to is not None:
            await self.channel.default_exchange.publish(
                aio_pika.Message(b"next"), routing_key=run.handling.forward_to
            )
        how = run.handling.settle_now()
        if how is not None and not self.process:
            await self.settle_async(message, how)
        run.end()

    async def settle_async(
        self, message: Any, how: protocol.Settle, multiple: bool = False
    ) -> None:
        if how == "reject":
            await message.reject(requeue=False)
        else:  # nack(requeue=...) makes both the nack and the requeue
            nack = functools.partial(message.nack, requeue=how == "requeue")
            await (message.ack if how == "ack" else nack)(multiple=multiple)

    def settle(self, message: Any, how: protocol.Settle, *, multiple: bool = False) -> None:
        self.loop.run(self.settle_async(message, how, multiple))

    def message_context(self, raw: Any) -> Any:
        return message_context(raw)

    def close(self) -> None:
        self.loop.close(self.connection)


class AioPikaCallback(AioPikaPath):
    """``Queue.consume`` with a callback (aio-pika logs what it raises)."""

    id, mode, operation, span_kind = "aiopika-callback", "push", "process", "CONSUMER"

    async def start(self, run: protocol.Run) -> Any:
        done = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                if self.process:
                    async with message.process():
                        await self.handle_async(run, message)
                else:
                    await self.handle_async(run, message)
            finally:
                if run.done:
                    done.set()

        bound = await super().start(run)
        return bound, await bound.consume(on_message), done

    async def drive(self, run: protocol.Run, started: Any) -> None:
        bound, tag, done = started
        try:
            await asyncio.wait_for(done.wait(), protocol.DEADLINE)
            await asyncio.sleep(0)  # let the last callback's task finish
        finally:
            await bound.cancel(tag)


class AioPikaProcess(AioPikaCallback):
    """The callback inside ``async with message.process()``: it acks, or rejects on an exception."""

    id = "aiopika-process"
    process = rejects_on_error = True
    settles = frozenset({"ack"})
    settles_later = settles_multiple = False


class AioPikaIterator(AioPikaPath):
    """``async with queue.iterator()``: the loop body is the handler; its errors leave the loop."""

    id, mode = "aiopika-iterator", "loop"
    raises_to_caller = True

    async def drive(self, run: protocol.Run, started: Any) -> None:
        async with started.iterator(timeout=protocol.DEADLINE) as messages:
            async for message in messages:
                await self.handle_async(run, message)
                if run.done:
                    break


class AioPikaGet(AioPikaPath):
    """``Queue.get``, each message handled inside ``message_context()``."""

    id, mode = "aiopika-get", "pull"
    marks_errors = False

    async def drive(self, run: protocol.Run, started: Any) -> None:
        while not run.done:
            message = await self.get(run.queue, no_ack=False, wait=True)
            with message_context(message):
                await self.handle_async(run, message)

    async def get(self, queue: str, no_ack: bool, wait: bool) -> Any:
        bound = await self.channel.get_queue(queue, ensure=False)
        deadline = time.monotonic() + protocol.DEADLINE
        message = await bound.get(no_ack=no_ack, fail=False, timeout=protocol.DEADLINE)
        while message is None and wait:
            assert time.monotonic() < deadline, (
                f"no message on {queue} within {protocol.DEADLINE} s"
            )
            await asyncio.sleep(0.02)
            message = await bound.get(no_ack=no_ack, fail=False, timeout=protocol.DEADLINE)
        return message

    def pull(
        self, queue: str, *, auto_ack: bool = False, wait: bool = True
    ) -> protocol.Received | None:
        message = self.loop.run(self.get(queue, no_ack=auto_ack, wait=wait))
        return None if message is None else received(message)


class AioPikaPlugin(protocol.Plugin):
    name = "aiopika"
    paths: ClassVar[Mapping[str, type[protocol.Path]]] = {
        path.id: path for path in (AioPikaCallback, AioPikaProcess, AioPikaIterator, AioPikaGet)
    }
    robust = False
    instrumentor_class = AioPikaInstrumentor

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker)
        self.loop = Loop(broker, self.robust)

    def client(self) -> AioPikaClient:
        return AioPikaClient(self.loop)

    def path(self, path_id: str) -> protocol.Path:
        return self.paths[path_id](self.loop)  # type: ignore[call-arg]

    def patched(self) -> dict[str, object]:
        return class_attributes()

    def unpatched(self, before: dict[str, object], now: dict[str, object]) -> list[str]:
        replaced = {key.rsplit(".", 1)[1] for key in before if now[key] is not before[key]}
        return sorted(MUST_PATCH - replaced)

    def instrument_object(self, client: Any, **options: Any) -> None:
        AioPikaInstrumentor.instrument_channel(client.channel, **options)

    def published_raw_ok(self, raw: Any, given: Any, message_id: str) -> bool:
        return isinstance(raw, aio_pika.Message) and raw.message_id == message_id

    def close(self) -> None:
        self.loop.loop.close()


class AioPikaRobustPlugin(AioPikaPlugin):
    """The same on robust connections: their channels, exchanges and queues are other classes."""

    robust = True
    # a robust channel names an unnamed queue itself, to declare it again after a reconnect
    server_names_queues = False
