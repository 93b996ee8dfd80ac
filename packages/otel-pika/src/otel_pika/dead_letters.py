"""A dead-letter watcher: record each dead letter in its original trace, then drop or park it.

For teams whose queues dead-letter to an exchange (``deploy/rabbitmq/dead-letter-policy.sh``)
that nobody consumes: every message in the dead-letter queue is consumed through the
instrumented pika consume path, so its ``process`` span joins (``consumer_context="parent"``) or
links to (``"link"``) the trace the message was sent in, with ``rabbitmq.dead_letter.*`` saying
why, where and when it died and an ERROR child marking the death (see ``docs/reference.md``).
Then, as the operator chose:

- ``ack``: the message is dropped once recorded;
- ``republish``: the message (body and properties, headers included) is published to a parking
  queue on a publisher-confirm channel, and acked only once the broker confirmed it.

A message that could not be recorded or republished is nacked with requeue: it stays in the
dead-letter queue, never lost. Unacked messages go back to the queue if the connection drops; the
watcher reconnects with backoff. It stops on SIGTERM / SIGINT (``run()``) or when ``stop`` is set.

.. code-block:: console

    opentelemetry-instrument python -m otel_pika.dead_letters --queue orders.dead
    python -m otel_pika.dead_letters --queue orders.dead --action republish --park-queue orders.parked

See ``docs/dead-letters.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import pika
import pika.exceptions
from opentelemetry import trace
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

__all__ = ["Watcher", "main", "watch"]

logger: Final = logging.getLogger("otel_pika.dead_letters")

Action = Literal["ack", "republish"]
DEFAULT_URL: Final = "amqp://guest:guest@localhost:5672/%2F"
# What a dropped connection or channel looks like in pika 1.x; all end in a reconnect.
_CONNECTION_ERRORS: Final = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.StreamLostError,
    OSError,
)


@dataclass
class Watcher:
    """Consumes one dead-letter queue until :attr:`stop` is set. :func:`watch` is the short way."""

    url: str
    queue: str
    action: Action = "ack"
    park_queue: str | None = None
    prefetch: int = 10
    stop: threading.Event = field(default_factory=threading.Event)
    backoff: tuple[float, float] = (0.5, 30.0)  # first and longest wait between reconnects
    connection_name: str = "otel-dead-letter-watcher"
    #: called after each message is settled with (outcome, method, properties): for tests and metrics
    on_settled: Callable[[str, Any, Any], None] | None = None
    handled: int = 0  # messages acked (dropped or parked)
    requeued: int = 0  # messages nacked back to the queue
    connections: int = 0  # connections opened so far
    _pause: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.action not in ("ack", "republish"):
            raise ValueError(f"action must be 'ack' or 'republish', not {self.action!r}")
        if self.action == "republish" and not self.park_queue:
            raise ValueError("action='republish' needs park_queue")
        if self.prefetch < 1:
            raise ValueError("prefetch must be at least 1")

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until :attr:`stop` is set, reconnecting with exponential backoff (jittered)."""
        first, longest = self.backoff
        delay = first
        while not self.stop.is_set():
            opened = self.connections
            lost = self._attempt()
            if lost is None or self.stop.is_set():
                continue
            if self.connections > opened:  # it was connected: start the backoff over
                delay = first
            wait = delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
            logger.warning(
                "dead-letter watcher: connection to the broker lost (%s: %s); reconnecting in %.1f s",
                type(lost).__name__,
                lost,
                wait,
            )
            self.stop.wait(wait)
            delay = min(delay * 2, longest)

    def _attempt(self) -> BaseException | None:
        """One connection's worth of consuming; what ended it, or None when stop was set."""
        try:
            self._consume()
        except _CONNECTION_ERRORS as exc:
            return exc
        return None

    def _connect(self) -> tuple[BlockingConnection, BlockingChannel]:
        params = pika.URLParameters(self.url)
        params.client_properties = {"connection_name": self.connection_name}
        connection = BlockingConnection(params)
        try:
            channel = connection.channel()
            _instrument(channel)
            channel.basic_qos(prefetch_count=self.prefetch)
            channel.queue_declare(self.queue, passive=True)  # a typo is an error, not a new queue
            if self.action == "republish":
                channel.confirm_delivery()
                channel.queue_declare(self.park_queue or "", passive=True)
        except BaseException:
            _close(connection)
            raise
        self.connections += 1
        return connection, channel

    def _consume(self) -> None:
        connection, channel = self._connect()
        logger.info(
            "dead-letter watcher: consuming %s (%s%s)",
            self.queue,
            self.action,
            f" to {self.park_queue}" if self.action == "republish" else "",
        )
        try:
            channel.basic_consume(self.queue, self._on_message, auto_ack=False)
            while not self.stop.is_set():
                connection.process_data_events(time_limit=0.2)
                if self._pause:  # a message was requeued: no hot loop on a bad message
                    self._pause = False
                    connection.sleep(min(self.backoff[0], 1.0))
        finally:
            _close(connection)  # unacked messages go back to the queue

    # -- one message --------------------------------------------------------------------------------

    def _on_message(
        self, channel: BlockingChannel, method: Any, properties: Any, body: bytes
    ) -> None:
        # Runs inside the instrumented process span: that span is the record of the dead letter.
        outcome = "requeued"
        try:
            if not _recorded():
                raise RuntimeError("no span is current: the consume path is not instrumented")
            _log_death(method, properties)
            if self.action == "republish":
                # mandatory + confirms: BlockingChannel raises UnroutableError or NackError when
                # the parking queue did not take it; then the dead letter stays where it is.
                channel.basic_publish(
                    "", self.park_queue or "", body, properties=properties, mandatory=True
                )
            outcome = "parked" if self.action == "republish" else "dropped"
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError) as exc:
            # AMQPChannelError subclasses, but the channel is fine: the broker refused the copy
            self._warn(method, exc)
        except _CONNECTION_ERRORS:
            raise  # the broker requeues it; reconnect
        except Exception as exc:
            self._warn(method, exc)
        if outcome == "requeued":
            channel.basic_nack(method.delivery_tag, requeue=True)
            self.requeued += 1
            self._pause = True
        else:
            channel.basic_ack(method.delivery_tag)
            self.handled += 1
        if self.on_settled is not None:
            self.on_settled(outcome, method, properties)

    def _warn(self, method: Any, exc: BaseException) -> None:
        logger.warning(
            "dead-letter watcher: message %s not %s (%s: %s); requeued",
            method.delivery_tag,
            "parked" if self.action == "republish" else "recorded",
            type(exc).__name__,
            exc,
        )


def _recorded() -> bool:
    """True when the instrumented consume path made the message's context current (a valid span;
    not necessarily sampled)."""
    return trace.get_current_span().get_span_context().is_valid


def _log_death(method: Any, properties: Any) -> None:
    headers = properties.headers or {}
    deaths = headers.get("x-death")
    latest = (
        deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    )
    span_context = trace.get_current_span().get_span_context()
    logger.info(
        "dead letter: reason=%s queue=%s message_id=%s trace_id=%032x",
        _text(latest.get("reason")),
        _text(latest.get("queue")),
        properties.message_id,
        span_context.trace_id,
    )


def _text(value: object) -> str | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return None if value is None else str(value)


def _instrument(channel: BlockingChannel) -> None:
    """Trace this channel: through the global instrumentation when pika is instrumented (the
    options of ``opentelemetry-instrument`` or of the application apply), else this channel only."""
    from otel_pika import PikaInstrumentor

    if not PikaInstrumentor().is_instrumented_by_opentelemetry:
        PikaInstrumentor.instrument_channel(channel)


def _close(connection: BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # noqa: S110 - already gone: nothing to close
        pass


def watch(
    url: str,
    queue: str,
    *,
    action: Action = "ack",
    park_queue: str | None = None,
    prefetch: int = 10,
    stop: threading.Event | None = None,
) -> Watcher:
    """Watch ``queue`` until ``stop`` is set (forever without one); returns the :class:`Watcher`."""
    watcher = Watcher(url, queue, action, park_queue, prefetch, stop or threading.Event())
    watcher.run()
    return watcher


# -- python -m otel_pika.dead_letters -------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m otel_pika.dead_letters",
        description="Record each message of a dead-letter queue in its original trace, then drop"
        " it (ack) or park it (republish). Run under opentelemetry-instrument to export the spans.",
    )
    parser.add_argument(
        "--url", default=env("RABBITMQ_URL", DEFAULT_URL), help="broker URL (env RABBITMQ_URL)"
    )
    parser.add_argument(
        "--queue",
        default=env("DEAD_LETTER_QUEUE", "orders.dead"),
        help="the dead-letter queue (env DEAD_LETTER_QUEUE; default orders.dead)",
    )
    parser.add_argument(
        "--action",
        choices=("ack", "republish"),
        default=env("DEAD_LETTER_ACTION", "ack"),
        help="ack: drop once recorded; republish: park in --park-queue (env DEAD_LETTER_ACTION)",
    )
    parser.add_argument(
        "--park-queue",
        default=env("DEAD_LETTER_PARK_QUEUE"),
        help="the parking queue for --action republish (env DEAD_LETTER_PARK_QUEUE)",
    )
    parser.add_argument("--prefetch", type=int, default=int(env("DEAD_LETTER_PREFETCH", "10")))
    parser.add_argument("--log-level", default=env("DEAD_LETTER_LOG_LEVEL", "INFO"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: watch until SIGTERM or SIGINT; 0 then, 2 for bad arguments."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # no SDK: nothing would be recorded, and unrecorded dead letters are never dropped
        logger.error(
            "dead-letter watcher: no tracer provider is configured; run it under"
            " opentelemetry-instrument (or set one up in code and call watch())"
        )
        return 2
    stop = threading.Event()
    try:
        watcher = Watcher(args.url, args.queue, args.action, args.park_queue, args.prefetch, stop)
    except ValueError as exc:
        logger.error("dead-letter watcher: %s", exc)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("dead-letter watcher: %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    watcher.run()
    logger.info(
        "dead-letter watcher: stopped; %d handled, %d requeued", watcher.handled, watcher.requeued
    )
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):  # flush the last spans (opentelemetry-instrument's SDK provider)
        shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
