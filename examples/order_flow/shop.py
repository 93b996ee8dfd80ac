"""``shop-api`` (aio-pika): takes the orders and publishes each one, its id in baggage as ``order.id``.

Each order is a ``POST /orders`` request span; inside it the order id goes into baggage, so the
instrumentation copies it onto the publish span and injects it into the message headers, and every
later hop carries it. The publish is mandatory with publisher confirms, as aio-pika does by
default: an order for a region no queue is bound to comes back from the broker as returned. The
shop's code does not look at the result (that is how such orders get lost unnoticed), but the
publish span ends as ERROR with ``error.type=unroutable``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence

import aio_pika
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from examples.order_flow.analysis import ORDER_KEY
from examples.order_flow.domain import SHOP, plan_orders
from examples.order_flow.service import (
    ServiceConfig,
    instrument_options,
    parse_config,
    signal_ready,
    start_telemetry,
)
from otel_aiopika import AioPikaInstrumentor

log = logging.getLogger("shop-api")


async def publish_orders(config: ServiceConfig) -> None:
    tracer = trace.get_tracer(SHOP)
    connection = await aio_pika.connect(config.broker_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(config.topology.shop_exchange, ensure=False)
        signal_ready()
        for order in plan_orders(config.orders):
            token = otel_context.attach(baggage.set_baggage(ORDER_KEY, str(order.order_id)))
            try:
                with tracer.start_as_current_span(
                    "POST /orders",
                    kind=SpanKind.SERVER,
                    attributes={
                        "http.request.method": "POST",
                        "http.route": "/orders",
                        ORDER_KEY: str(order.order_id),
                    },
                ) as span:
                    message = aio_pika.Message(
                        json.dumps(order.payload()).encode(),
                        content_type="application/json",
                        message_id=f"order-{order.order_id}",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        # an express order: the broker drops it (dead-letters it) when nobody
                        # takes it within its TTL; aio-pika takes the expiration in seconds
                        expiration=order.ttl_ms / 1000 if order.ttl_ms else None,
                    )
                    await exchange.publish(message, routing_key=order.routing_key)
                    span.set_attribute("http.response.status_code", 202)
                    log.info("order %s accepted (%s)", order.order_id, order.routing_key)
            finally:
                otel_context.detach(token)
            await asyncio.sleep(config.publish_interval)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    telemetry = start_telemetry(SHOP, config)
    instrumentor = AioPikaInstrumentor()
    instrumentor.instrument(**instrument_options(config, telemetry))
    try:
        asyncio.run(publish_orders(config))
    finally:
        instrumentor.uninstrument()
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
