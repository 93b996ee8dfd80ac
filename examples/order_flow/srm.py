"""``srm-api`` (kombu in, pika out): consumes orders, checks stock, publishes a production job.

The order handler is a plain kombu callback, so the instrumentation's ``process`` span is current
while it runs: the ``check stock`` span and the pika publish of the job join the order's trace,
and the order's baggage rides on to MES. A SKU the stock list does not know raises
:class:`~examples.order_flow.domain.UnknownSku`: the handler records why on its ``check stock``
span (ERROR, "unknown SKU 'SKU-404': not in srm-api's stock list", ``srm.sku``, the exception
event) and lets it escape, where the instrumentation records it on the ``process`` span too
(ERROR, ``error.type`` = the exception's qualified name). The consume loop then rejects
that message without requeue, so it is not redelivered forever.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import pika
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Consumer
from opentelemetry import trace

from examples.order_flow.analysis import ORDER_KEY
from examples.order_flow.domain import (
    SKU_KEY,
    SRM,
    UnknownSku,
    check_stock,
    job_for,
    stock_check_seconds,
)
from examples.order_flow.service import (
    instrument_options,
    parse_config,
    record_failure,
    signal_ready,
    start_telemetry,
    stop_event,
)
from otel_kombu import KombuInstrumentor
from otel_pika import PikaInstrumentor

log = logging.getLogger("srm-api")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    telemetry = start_telemetry(SRM, config)
    options = instrument_options(config, telemetry)
    kombu_instrumentor, pika_instrumentor = KombuInstrumentor(), PikaInstrumentor()
    kombu_instrumentor.instrument(**options)
    pika_instrumentor.instrument(**options)
    stop = stop_event()
    tracer = trace.get_tracer(SRM)
    topology = config.topology

    production = pika.BlockingConnection(pika.URLParameters(config.broker_url))
    jobs = production.channel()
    jobs.confirm_delivery()
    in_hand: list[Any] = []  # the message being handled, for the reject below

    def on_order(body: dict[str, Any], message: Any) -> None:
        in_hand[:] = [message]
        order_id = str(body.get("order_id"))
        with tracer.start_as_current_span(
            "check stock",
            attributes={ORDER_KEY: order_id, SKU_KEY: str(body.get("sku"))},
            record_exception=False,  # record_failure does it, with the reason
            set_status_on_exception=False,
        ) as span:
            try:
                units = check_stock(body)
            except UnknownSku as exc:
                # the order dies here: say why on this span; the raise then reaches the
                # instrumentation, which marks the process span and the loop rejects the message
                record_failure(span, exc, f"unknown SKU {exc.sku!r}: not in srm-api's stock list")
                raise
            time.sleep(stock_check_seconds(body))  # a bulk order is counted by hand: slow
        jobs.basic_publish(
            topology.production_exchange,
            topology.job_key,
            job_for(body),
            pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                message_id=f"job-{order_id}",
            ),
            mandatory=True,
        )
        message.ack()
        log.info("order %s: %d units in stock, job sent to MES", order_id, units)

    try:
        with Connection(config.broker_url, heartbeat=0) as connection:  # type: ignore[no-untyped-call]
            queue = Queue(topology.srm_queue, no_declare=True)  # type: ignore[no-untyped-call]
            with Consumer(  # type: ignore[no-untyped-call]
                connection, queues=[queue], callbacks=[on_order], accept=["json"], prefetch_count=1
            ):
                signal_ready()
                while not stop.is_set():
                    try:
                        connection.drain_events(timeout=0.1)
                    except TimeoutError:  # noqa: PERF203 - one poll per loop, not per message
                        production.process_data_events(0)  # keep the pika connection serviced
                    except Exception:
                        message = in_hand.pop() if in_hand else None
                        if message is None or message.acknowledged:
                            raise  # not the handler's failure: a connection problem
                        # The instrumentation has recorded the handler's exception on the process
                        # span; reject without requeue so the order is not redelivered forever.
                        log.exception("order handler failed; rejecting the message")
                        message.reject(requeue=False)
    finally:
        production.close()
        kombu_instrumentor.uninstrument()
        pika_instrumentor.uninstrument()
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
