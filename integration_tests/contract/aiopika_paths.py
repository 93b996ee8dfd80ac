"""otel-aiopika under the contract: the callback, ``message.process()``, iterator and
``Queue.get`` paths, driven from the (synchronous) contract tests on an event loop of their own.

Each call from a test runs one coroutine with ``run_until_complete``; its task starts with a copy
of the test's context (its spans and baggage), and whatever a handler leaves current is measured
inside the loop, where it would leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

import aio_pika
import aio_pika.exchange
import aio_pika.message
import aio_pika.queue
import aio_pika.robust_queue
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from opentelemetry.instrumentation.utils import suppress_instrumentation
from yarl import URL

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
from otel_aiopika import AioPikaInstrumentor, message_context

T = TypeVar("T")
MODULES = (aio_pika.exchange, aio_pika.message, aio_pika.queue, aio_pika.robust_queue)
# instrument() replaces at least these names on aio-pika's classes
MUST_PATCH = {"publish", "consume", "get", "__anext__", "ack"}


class Loop:
    """One event loop per test, shared by the plugin's client and paths, and the kind of
    connection they open (plain, or robust: aio-pika's reconnecting classes)."""

    def __init__(self, broker: Broker, robust: bool) -> None:
        self.loop = asyncio.new_event_loop()
        self.broker = broker
        self.robust = robust

    async def connect(self) -> AbstractConnection:
        url = str(URL(self.broker.url).update_query(name=connection_name("contract-aiopika")))
        return await (aio_pika.connect_robust if self.robust else aio_pika.connect)(url)

    def run(self, work: Awaitable[T]) -> T:
        return self.loop.run_until_complete(work)

    def close(self) -> None:
        self.loop.close()


class AioPikaClient:
    """Publishes and declares on a channel of its own (publisher confirms on: aio-pika's default)."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop

        async def open_() -> tuple[AbstractConnection, AbstractChannel]:
            connection = await loop.connect()
            return connection, await connection.channel()

        self.connection, self.channel = loop.run(open_())

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
        message = aio_pika.Message(
            body, headers=headers, message_id=message_id, correlation_id=correlation_id
        )

        async def send() -> None:
            target = (
                self.channel.default_exchange
                if not exchange
                else await self.channel.get_exchange(exchange, ensure=False)
            )
            await target.publish(message, routing_key=routing_key)

        before = message.headers
        self.loop.run(send())
        self.held_headers = (before, message.headers)
        return message

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

    def fetch(self, queue: str) -> tuple[bytes, Mapping[str, Any]]:
        async def get() -> tuple[bytes, Mapping[str, Any]]:
            bound = await self.channel.get_queue(queue, ensure=False)
            deadline = time.monotonic() + DEADLINE
            with suppress_instrumentation():
                while True:
                    message = await bound.get(no_ack=True, fail=False, timeout=DEADLINE)
                    if message is not None:
                        return message.body, message.headers
                    assert time.monotonic() < deadline, f"no message on {queue} in time"
                    await asyncio.sleep(0.02)

        return self.loop.run(get())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(asyncio.wait_for(self.connection.close(), 10))


class AioPikaPath:
    """One of aio-pika's four ways to hand messages over, on a connection of its own."""

    id: str
    mode: Mode
    operation: Literal["process", "receive"] = "receive"
    span_kind: Literal["CONSUMER", "CLIENT"] = "CLIENT"
    requeue_operation = "nack"
    settles: frozenset[Settle] = frozenset({"ack", "nack", "reject", "requeue"})
    settles_later = True
    names_untracked = True
    settles_multiple = True
    process = False  # the handler runs inside ``async with message.process()``
    rejects_on_error = False
    marks_errors = True
    # aio-pika logs a callback's exception; a loop body's leaves the loop to its caller
    raises_to_caller = False

    def __init__(self, loop: Loop) -> None:
        self.loop = loop

        async def open_() -> tuple[AbstractConnection, AbstractChannel]:
            connection = await loop.connect()
            return connection, await connection.channel()

        self.connection, self.channel = loop.run(open_())

    # -- the handler -------------------------------------------------------------------------

    async def _handle(
        self, handling: Handling, received: list[Received], message: AbstractIncomingMessage
    ) -> None:
        seen = now(message.body, message.headers, message.delivery_tag or 0, message.redelivered)
        seen.raw = seen.message = message
        received.append(seen)
        if handling.look is not None:
            handling.look(seen)
        if handling.forward_to is not None:
            await self.channel.default_exchange.publish(
                aio_pika.Message(b"next"), routing_key=handling.forward_to
            )
        how = handling.settle_now()
        if how is not None and not self.process:
            await self._settle(message, how)
        if handling.raises is not None:
            raise handling.raises

    async def _settle(
        self, message: AbstractIncomingMessage, how: Settle, multiple: bool = False
    ) -> None:
        if how == "ack":
            await message.ack(multiple=multiple)
        elif how == "nack":
            await message.nack(multiple=multiple, requeue=False)
        elif how == "reject":
            await message.reject(requeue=False)
        else:
            await message.nack(multiple=multiple, requeue=True)

    # -- Path ----------------------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        calls: int,
        handling: Handling,
        between: Callable[[], None] | None = None,
    ) -> Consumed:
        if self.mode == "push":
            return self._callback(queue, calls, handling, between)
        if between is not None:
            between()
        run = self._iterate if self.mode == "loop" else self._get
        return self.loop.run(run(queue, calls, handling))

    def _callback(
        self, queue: str, calls: int, handling: Handling, between: Callable[[], None] | None
    ) -> Consumed:
        received: list[Received] = []
        done = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                if self.process:
                    async with message.process():
                        await self._handle(handling, received, message)
                else:
                    await self._handle(handling, received, message)
            finally:
                if len(received) >= calls:
                    done.set()

        async def register() -> tuple[Any, str]:
            bound = await self.channel.get_queue(queue, ensure=False)
            return bound, await bound.consume(on_message)

        async def wait(bound: Any, tag: str) -> Consumed:
            try:
                await asyncio.wait_for(done.wait(), DEADLINE)
                await asyncio.sleep(0)  # let the last callback's task finish
            finally:
                await bound.cancel(tag)
            return Consumed(received, *leftover())

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # aio-pika warns about callbacks that raise
            bound, tag = self.loop.run(register())
            if between is not None:
                between()
            return self.loop.run(wait(bound, tag))

    async def _iterate(self, queue: str, calls: int, handling: Handling) -> Consumed:
        received: list[Received] = []
        raised: BaseException | None = None
        bound = await self.channel.get_queue(queue, ensure=False)
        try:
            async with bound.iterator(timeout=DEADLINE) as messages:
                async for message in messages:
                    await self._handle(handling, received, message)
                    if len(received) == calls:
                        break
        except Exception as exc:
            raised = exc
        return Consumed(received, *leftover(), raised=raised)

    async def _pull(self, queue: str, no_ack: bool, wait: bool) -> Any:
        bound = await self.channel.get_queue(queue, ensure=False)
        deadline = time.monotonic() + DEADLINE
        while True:
            message = await bound.get(no_ack=no_ack, fail=False, timeout=DEADLINE)
            if message is not None or not wait:
                return message
            assert time.monotonic() < deadline, f"no message on {queue} in time"
            await asyncio.sleep(0.02)

    async def _get(self, queue: str, calls: int, handling: Handling) -> Consumed:
        received: list[Received] = []
        raised: BaseException | None = None
        try:
            while len(received) < calls:
                message = await self._pull(queue, no_ack=False, wait=True)
                with message_context(message):
                    await self._handle(handling, received, message)
        except Exception as exc:
            raised = exc
        return Consumed(received, *leftover(), raised=raised)

    def pull(self, queue: str, *, auto_ack: bool = False, wait: bool = True) -> Received | None:
        async def one() -> Received | None:
            message = await self._pull(queue, no_ack=auto_ack, wait=wait)
            if message is None:
                return None
            seen = now(message.body, message.headers, message.delivery_tag or 0, False)
            seen.raw = seen.message = message
            return seen

        return self.loop.run(one())

    def message_context(self, raw: Any) -> Any:
        return message_context(raw)

    def settle(self, message: Any, how: Settle, *, multiple: bool = False) -> None:
        self.loop.run(self._settle(message, how, multiple))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(asyncio.wait_for(self.connection.close(), 10))


class AioPikaCallback(AioPikaPath):
    id, mode, operation, span_kind = "aiopika-callback", "push", "process", "CONSUMER"


class AioPikaProcess(AioPikaPath):
    # message.process() settles by how its block ends: ack, or a reject on an exception
    id, mode, operation, span_kind = "aiopika-process", "push", "process", "CONSUMER"
    process = rejects_on_error = True
    settles = frozenset({"ack"})
    settles_later = settles_multiple = False


class AioPikaIterator(AioPikaPath):
    id, mode = "aiopika-iterator", "loop"
    raises_to_caller = True


class AioPikaGet(AioPikaPath):
    id, mode = "aiopika-get", "pull"
    marks_errors = False


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


class AioPikaPlugin:
    name = "aiopika"
    paths: ClassVar[dict[str, type[AioPikaPath]]] = {
        path.id: path for path in (AioPikaCallback, AioPikaProcess, AioPikaIterator, AioPikaGet)
    }

    robust = False
    server_names_queues = True

    def __init__(self, broker: Broker) -> None:
        self.loop = Loop(broker, self.robust)

    def instrumentor(self) -> AioPikaInstrumentor:
        return AioPikaInstrumentor()

    def client(self) -> AioPikaClient:
        return AioPikaClient(self.loop)

    def path(self, path_id: str) -> AioPikaPath:
        return self.paths[path_id](self.loop)

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
        self.loop.close()


class AioPikaRobustPlugin(AioPikaPlugin):
    """The same on robust connections: their channels, exchanges and queues are other classes."""

    robust = True
    # a robust channel names an unnamed queue itself, to declare it again after a reconnect
    server_names_queues = False
