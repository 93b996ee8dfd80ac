"""Our code can never break the user's call: each core step otel-aiopika calls is made to raise
in turn, and the user's publish, handler and ack still run with their own results and
exceptions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import trace

from integration_tests.aiopika.conftest import Connect, Instrument
from integration_tests.conftest import Fault
from integration_tests.internal_faults import STEPS

# otel-aiopika's own helpers, as its wrappers look them up at call time
AIOPIKA_STEPS = (
    "otel_aiopika._state:OwnerState.server",
    "otel_aiopika._publish:resolve",
    "otel_aiopika._publish:with_headers",
    "otel_aiopika._consume:resolve",
    "otel_aiopika._consume:traced_callback",
    "otel_aiopika._consume:track",
    "otel_aiopika._settle:deliveries_of",
)


class Boom(Exception):
    """The handler's own exception."""


def own(headers: Any) -> dict[str, Any]:
    """The headers the caller set (what the instrumentation added taken out)."""
    return {k: v for k, v in (headers or {}).items() if k != "traceparent"}


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", [*STEPS, *AIOPIKA_STEPS], indirect=True)
async def test_calls_survive_a_fault_in_each_step(
    fault: Fault, instrument: Instrument, connect: Connect, unique: Callable[[str], str]
) -> None:
    """With one core step raising, publish, a consume callback, the queue iterator with
    message.process(), Queue.get, ack, nack and a returned mandatory publish behave exactly as
    uninstrumented aio-pika: the same results, every message delivered once with the caller's
    headers, the handler's exception reaching the caller as the same object; the fault is
    logged."""
    instrument(settle_spans=True)
    connection = await connect()
    channel = await connection.channel()
    queue = await channel.declare_queue(unique("q"), exclusive=True)
    headers = {"x-tenant": "acme"}

    async def publish(n: int) -> None:
        message = aio_pika.Message(b"order-%d" % n, headers=headers, message_id=f"m-{n}")
        confirmation = await channel.default_exchange.publish(message, queue.name)
        assert isinstance(confirmation, aiormq.spec.Basic.Ack)
        assert message.headers == {"x-tenant": "acme"}

    handled: asyncio.Queue[tuple[bytes, dict[str, Any]]] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        assert await message.ack() is None
        handled.put_nowait((message.body, own(message.headers)))

    await publish(0)
    tag = await queue.consume(on_message)
    assert await asyncio.wait_for(handled.get(), 10) == (b"order-0", {"x-tenant": "acme"})
    await queue.cancel(tag)

    await publish(1)
    boom = Boom("handler bug")

    async def handle_one() -> None:
        async with queue.iterator() as messages:
            async for message in messages:
                assert (message.body, own(message.headers)) == (b"order-1", headers)
                async with message.process():  # rejects (no requeue) for the exception
                    raise boom

    with pytest.raises(Boom) as raised:
        await handle_one()
    assert raised.value is boom

    await publish(2)
    await publish(3)
    got = await queue.get(timeout=10)
    assert (got.body, own(got.headers)) == (b"order-2", headers)
    assert await got.ack() is None
    got = await queue.get(timeout=10)
    assert got.body == b"order-3"
    assert await got.nack(requeue=False) is None
    assert await queue.get(fail=False) is None
    assert headers == {"x-tenant": "acme"}

    returned = await channel.default_exchange.publish(
        aio_pika.Message(b"lost"), unique("nowhere"), mandatory=True
    )
    assert isinstance(returned, aiormq.abc.DeliveredMessage)
    assert returned.body == b"lost"
    fault.check_logged()
    assert not trace.get_current_span().get_span_context().is_valid, "a context of ours leaked"
