"""``dead-letters``: the dead-letter watcher of the run (``otel_pika.dead_letters``).

The broker dead-letters what it drops from srm-api's and MES's queues (the run's
``dead_exchange`` -> ``dead_queue``; a deployment sets this for every queue with
``deploy/rabbitmq/dead-letter-policy.sh``). This process runs the ready-made watcher on that
queue, with pika instrumented like the other services: each dead letter's ``process`` span joins
the order's trace (or links to it), carries ``rabbitmq.dead_letter.*`` and has an ERROR child,
``expired <queue>``, which is how the report finds an order the broker lost. Then it acks the
dead letter (``action="ack"``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

from examples.order_flow.domain import WATCHER
from examples.order_flow.service import (
    instrument_options,
    parse_config,
    signal_ready,
    start_telemetry,
    stop_event,
)
from otel_pika import PikaInstrumentor
from otel_pika.dead_letters import Watcher


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    telemetry = start_telemetry(WATCHER, config)
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(**instrument_options(config, telemetry))
    watcher = Watcher(
        config.broker_url,
        config.topology.dead_queue,
        "ack",
        stop=stop_event(),
        connection_name=f"order-flow-{config.run_id}-{WATCHER}",
    )
    thread = threading.Thread(target=watcher.run, name=WATCHER)
    try:
        thread.start()
        signal_ready()  # dead letters wait in their queue until it consumes: no need to wait here
        thread.join()
    finally:
        watcher.stop.set()
        thread.join()
        instrumentor.uninstrument()
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
