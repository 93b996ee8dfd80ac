"""``mes`` (pika, callbacks): consumes production jobs, processes each order's file, acks.

``basic_consume`` callbacks make the instrumentation's ``process`` spans, so
``messaging.process.duration`` measures the file processing (a short sleep that varies per order).
A file whose checksum does not match is rejected without requeue: the instrumentation always makes
an ERROR ``reject`` span (``error.type=rejected``) for that, since it drops or dead-letters the
message. Why it was rejected only MES knows, so its ``process file`` span says so: ERROR with the
mismatch as status description, the expected and actual sha256 as ``mes.file.checksum.expected``
and ``mes.file.checksum.actual``, and the ``CorruptFile`` exception event.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import pika
from opentelemetry import trace

from examples.order_flow.analysis import ORDER_KEY
from examples.order_flow.domain import (
    CHECKSUM_ACTUAL_KEY,
    CHECKSUM_EXPECTED_KEY,
    MES,
    CorruptFile,
    verify_file,
)
from examples.order_flow.service import (
    instrument_options,
    parse_config,
    record_failure,
    signal_ready,
    start_telemetry,
    stop_event,
)
from otel_pika import PikaInstrumentor

log = logging.getLogger("mes")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    telemetry = start_telemetry(MES, config)
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(**instrument_options(config, telemetry))
    stop = stop_event()
    tracer = trace.get_tracer(MES)

    def on_job(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        job = json.loads(body)
        order_id = str(job.get("order_id"))
        corrupt: CorruptFile | None = None
        with tracer.start_as_current_span(
            "process file", attributes={ORDER_KEY: order_id, "mes.file.bytes": len(body)}
        ) as span:
            try:
                verify_file(job)
            except CorruptFile as exc:
                corrupt = exc
                # The reject below is all the instrumentation can see (error.type=rejected);
                # why the job is rejected is known only here, so it goes on this span.
                record_failure(
                    span,
                    exc,
                    # short ids here, the full values in the attributes and the exception
                    f"file checksum mismatch: expected sha256 {exc.expected[:12]}, "
                    f"got {exc.actual[:12]}",
                    {CHECKSUM_EXPECTED_KEY: exc.expected, CHECKSUM_ACTUAL_KEY: exc.actual},
                )
            else:
                time.sleep(int(job.get("work_ms", 50)) / 1000)
        if corrupt is not None:
            log.warning("%s; rejecting the job", corrupt)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        channel.basic_ack(method.delivery_tag)
        log.info("order %s produced", order_id)

    connection = pika.BlockingConnection(pika.URLParameters(config.broker_url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(config.topology.mes_queue, on_job)
        signal_ready()
        while not stop.is_set():
            connection.process_data_events(time_limit=0.1)
    finally:
        if connection.is_open:
            connection.close()
        instrumentor.uninstrument()
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
