"""One measurement, in a process of its own: ``python -m benchmarks.worker '<json spec>'``.

A fresh process per measurement keeps instrumentations from leaking into each other (the contrib
packages patch classes and connection factories globally) and lets the runner interleave variants
A B A B so that machine drift cancels out. The worker prints one JSON line on stdout.

Variants:

* ``bare``: the client library alone.
* ``ours`` / ``contrib``: our plugin / the OpenTelemetry contrib package, SDK as in production:
  ``BatchSpanProcessor`` to an exporter that drops, no MeterProvider.
* ``ours_metrics``: ``ours`` plus a MeterProvider with a periodic reader (exporter that drops).
* ``ours_10pct``: ``ours`` under ``ParentBased(TraceIdRatioBased(0.1))``; consumed messages carry a
  traceparent sampled one time in ten.
* ``ours_unsampled``: ``ours`` where no message is sampled (ratio 0, consumed parents not sampled):
  the cost of an unsampled message. A publish here starts its trace, so the SDK's sampler decides
  at our span (a service publishing outside any request).
* ``ours_unsampled_parent`` (publish only): the publishes run inside a trace that was not sampled
  upstream (the service's request span was not sampled): what an unsampled publish costs where a
  request handler publishes, the architecture's case.
* ``min_recording`` (was ``inline``), ``min_unsampled``, ``min_unsampled_parent``: the
  hand-written minimum in place, per scenario (see :class:`Minimum`): the uninstrumented loop plus,
  written by hand with the public API, what any correct instrumentation must do per message, and
  nothing else. No plugin. The same SDK configuration (sampler, current trace, consumed parents) as
  ``ours`` / ``ours_unsampled`` / ``ours_unsampled_parent`` respectively.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import random
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

BODY = b"x" * 256
OURS = {"ours", "ours_metrics", "ours_10pct", "ours_unsampled", "ours_unsampled_parent"}
# the TraceIdRatioBased ratio of the sampling variants (also how often a consumed message arrives sampled)
SAMPLING_RATIO = {
    "ours_10pct": 0.1,
    "ours_unsampled": 0.0,
    "ours_unsampled_parent": 0.0,
    "min_unsampled": 0.0,
    "min_unsampled_parent": 0.0,
}
# the variants that run inside a trace that was not sampled upstream
IN_UNSAMPLED_TRACE = ("ours_unsampled_parent", "min_unsampled_parent")


# the hand-written minimum variants (what any correct instrumentation must run, and nothing else)
RECORDING_MINIMUM = "min_recording"
UNSAMPLED_MINIMUMS = ("min_unsampled", "min_unsampled_parent")
MINIMUMS = (RECORDING_MINIMUM, *UNSAMPLED_MINIMUMS)


class Minimum:
    """The hand-written minimum per message (variants ``min_*``); a no-op for the others.

    Plain code inside the uninstrumented loop, public OpenTelemetry API only, no plugin:

    * ``min_recording``: publish = one SDK span with the same attributes as ours and
      ``propagate.inject`` of its context into a new headers dict; consume = ``propagate.extract``,
      one span with the same attributes and the link to the producer, its context current around
      the handler, restored and the span ended after.
    * ``min_unsampled_parent`` (publish inside a trace not sampled upstream): read the current
      span context, see it is not sampled, write ``traceparent`` (``tracestate`` and ``baggage``
      when there are any) into a copy of the headers, call the client. No span.
    * ``min_unsampled``: publish starting a trace the sampler does not sample = the SDK's
      ``start_span`` (the sampler must decide), its context written into a copy of the headers as
      above, ``end()``; consume of a not-sampled message = read ``traceparent`` (validated as
      the W3C format requires), build the remote context (plus the message's baggage, if any),
      attach it for the handler, detach after. No span.
    """

    def __init__(self, spec: Spec) -> None:
        self.variant = spec.variant if spec.variant in MINIMUMS else None
        self.enabled = self.variant is not None
        if not self.enabled:
            return
        import re

        from opentelemetry import baggage, context, propagate, trace
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        self._tracer = trace.get_tracer("minimum")
        self._inject, self._extract = propagate.inject, propagate.extract
        self._set_span_in_context, self._get_current_span = (
            trace.set_span_in_context,
            trace.get_current_span,
        )
        self._get_current, self._attach, self._detach = (
            context.get_current,
            context.attach,
            context.detach,
        )
        self._baggage_of, self._baggage = baggage.get_all, W3CBaggagePropagator()
        self._empty = context.Context()
        self._traceparent = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
        self._span_context, self._non_recording, self._flags = (
            SpanContext,
            NonRecordingSpan,
            TraceFlags,
        )
        self._link, self._producer, self._consumer = Link, SpanKind.PRODUCER, SpanKind.CONSUMER
        common: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.destination.name": "orders",
            "messaging.rabbitmq.destination.routing_key": "orders",
            "messaging.message.body.size": len(BODY),
            "server.address": "127.0.0.1",
            "server.port": 5672,
        }
        self._publish_attributes = {
            **common,
            "messaging.operation.name": "publish",
            "messaging.operation.type": "send",
        }
        self._consume_attributes = {
            **common,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
        }

    # -- publish

    def publish(self, headers: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any] | None]:
        """Before the client call: the span to end after it (or None) and the headers to send."""
        if self.variant == "min_unsampled_parent":
            ctx = self._get_current()
            span_context = self._get_current_span(ctx).get_span_context()
            if span_context.trace_flags & 1:  # sampled after all: the recording minimum
                return self._publish_recording(headers)
            return None, self._with_context(headers, span_context, ctx)
        if self.variant == "min_unsampled":
            ctx = self._get_current()
            span = self._tracer.start_span(
                "publish orders", kind=self._producer, attributes=self._publish_attributes
            )
            return span, self._with_context(headers, span.get_span_context(), ctx)
        return self._publish_recording(headers)

    def _publish_recording(self, headers: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        span = self._tracer.start_span(
            "publish orders", kind=self._producer, attributes=self._publish_attributes
        )
        carrier: dict[str, Any] = dict(headers) if headers else {}
        self._inject(carrier, context=self._set_span_in_context(span))
        return span, carrier

    def _with_context(
        self, headers: dict[str, Any] | None, span_context: Any, ctx: Any
    ) -> dict[str, Any] | None:
        if not span_context.is_valid:
            return headers
        carrier: dict[str, Any] = dict(headers) if headers else {}
        carrier["traceparent"] = (
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{span_context.trace_flags:02x}"
        )
        if span_context.trace_state:
            carrier["tracestate"] = span_context.trace_state.to_header()
        if self._baggage_of(ctx):
            self._baggage.inject(carrier, context=ctx)
        return carrier

    # -- consume

    def consume(self, headers: Any, delivery_tag: int) -> tuple[Any, Any]:
        """Before the handler: (span or None, token to detach after it)."""
        if self.variant == "min_unsampled":
            value = headers.get("traceparent") if headers else None
            match = self._traceparent.fullmatch(value) if type(value) is str else None
            if match is not None:
                trace_id, span_id, flags = match.groups()
                span_context = self._span_context(
                    int(trace_id, 16), int(span_id, 16), True, self._flags(int(flags, 16))
                )
                if span_context.is_valid and not span_context.trace_flags & 1:
                    ctx = self._set_span_in_context(self._non_recording(span_context), self._empty)
                    if "baggage" in headers:
                        ctx = self._baggage.extract(headers, context=ctx)
                    return None, self._attach(ctx)
        ctx = self._extract(headers or {})
        attributes = {
            **self._consume_attributes,
            "messaging.rabbitmq.message.delivery_tag": delivery_tag,
        }
        span = self._tracer.start_span(
            "process orders",
            context=ctx,
            kind=self._consumer,
            attributes=attributes,
            links=[self._link(self._get_current_span(ctx).get_span_context())],
        )
        return span, self._attach(self._set_span_in_context(span, ctx))

    def consumed(self, handle: tuple[Any, Any] | None) -> None:
        """After the handler: restore the context, end the span."""
        if handle is None:
            return
        span, token = handle
        self._detach(token)
        if span is not None:
            span.end()


@dataclass
class Spec:
    lib: str  # pika | aiopika | kombu
    path: str  # publish | consume | consume_ack | pull
    variant: str
    messages: int
    warmup: int
    url: str
    memory: bool = False  # sample RSS/tracemalloc while running (slower; separate mode)
    manual_ack: bool = False  # consume with manual acks (per-delivery settle state exists)
    queue: str = ""  # consume paths: a queue the runner already filled (instruction-count mode)


# --------------------------------------------------------------------------------------------
# SDK and instrumentation per variant


class _DropSpans:
    """A SpanExporter that drops everything (what is measured is the cost up to the exporter)."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _providers(variant: str) -> tuple[Any, Any]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    ratio = SAMPLING_RATIO.get(variant)
    sampler = ParentBased(TraceIdRatioBased(ratio)) if ratio is not None else None
    tracer_provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_DropSpans()))  # type: ignore[arg-type]
    trace.set_tracer_provider(tracer_provider)
    meter_provider = None
    if variant == "ours_metrics":
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            MetricExporter,
            MetricExportResult,
            PeriodicExportingMetricReader,
        )

        class DropMetrics(MetricExporter):
            def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kw: Any) -> Any:
                return MetricExportResult.SUCCESS

            def force_flush(self, timeout_millis: float = 10_000) -> bool:
                return True

            def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
                pass

        meter_provider = MeterProvider(
            metric_readers=[PeriodicExportingMetricReader(DropMetrics(), 60_000)]
        )
        metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider


def instrument(spec: Spec) -> Callable[[], None]:
    """Instrument per variant; returns a function that flushes the SDK at the end."""
    if spec.variant == "bare":
        return lambda: None
    tracer_provider, meter_provider = _providers(spec.variant)
    if spec.variant in MINIMUMS:
        return tracer_provider.shutdown  # type: ignore[no-any-return]
    kwargs: dict[str, Any] = {"tracer_provider": tracer_provider}
    if spec.variant in OURS:
        kwargs["meter_provider"] = meter_provider
        if spec.lib == "pika":
            from otel_pika import PikaInstrumentor as Instrumentor
        elif spec.lib == "aiopika":
            from otel_aiopika import AioPikaInstrumentor as Instrumentor  # type: ignore[assignment]
        else:
            from otel_kombu import KombuInstrumentor as Instrumentor  # type: ignore[assignment]
    elif spec.variant == "contrib":
        if spec.lib == "pika":
            from opentelemetry.instrumentation.pika import PikaInstrumentor as Instrumentor  # type: ignore[assignment]
        elif spec.lib == "aiopika":
            from opentelemetry.instrumentation.aio_pika import (  # type: ignore[assignment]
                AioPikaInstrumentor as Instrumentor,
            )
        else:
            raise SystemExit("no contrib instrumentation exists for kombu")
    else:
        raise SystemExit(f"unknown variant {spec.variant}")
    Instrumentor().instrument(**kwargs)

    def flush() -> None:
        tracer_provider.force_flush()
        tracer_provider.shutdown()
        if meter_provider is not None:
            meter_provider.shutdown()

    return flush


# --------------------------------------------------------------------------------------------
# Pre-filling consume queues (before instrumenting, with a plain pika connection)


def _traceparents(spec: Spec, count: int) -> list[str]:
    """What an upstream producer would have sent: sampled per the variant's sampling rate."""
    rate = SAMPLING_RATIO.get(spec.variant, 1.0)
    rng = random.Random(42)
    return [
        f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-{'01' if rng.random() < rate else '00'}"
        for _ in range(count)
    ]


def declare_and_fill(spec: Spec, queue: str, count: int) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(spec.url))
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=False, arguments={"x-expires": 600_000})
    for traceparent in _traceparents(spec, count):
        channel.basic_publish(
            "",
            queue,
            BODY,
            pika.BasicProperties(
                headers={"traceparent": traceparent},
                content_type="application/octet-stream",
                content_encoding="binary",
            ),
        )
    # wait until the broker has them all
    while channel.queue_declare(queue, passive=True).method.message_count < count:
        time.sleep(0.05)
    connection.close()


def delete_queue(spec: Spec, queue: str) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(spec.url))
    connection.channel().queue_delete(queue)
    connection.close()


# --------------------------------------------------------------------------------------------
# Memory sampling


class Sampler:
    """RSS and tracemalloc samples at fixed message counts (memory mode only)."""

    def __init__(self, spec: Spec) -> None:
        self.enabled = spec.memory
        self.every = max(1, spec.messages // 10)
        self.samples: list[tuple[int, int, int]] = []
        if self.enabled:
            tracemalloc.start()

    def __call__(self, n: int) -> None:
        if self.enabled and n % self.every == 0:
            gc.collect()
            self.samples.append((n, _rss(), tracemalloc.get_traced_memory()[0]))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------
# Workloads: each returns the Stamp (wall and CPU seconds) of spec.messages messages after
# spec.warmup untimed ones


class Stamp(NamedTuple):
    """A point in time, or a span of it: wall clock and this process's CPU time (all threads)."""

    wall: float
    cpu: float

    def __sub__(self, other: object) -> Stamp:
        assert isinstance(other, Stamp)
        return Stamp(self.wall - other.wall, self.cpu - other.cpu)


def now() -> Stamp:
    """Wall clock and process CPU time. CPU time is what the client itself spends: on a machine
    where the broker shares the cores, it varies far less from run to run than wall time."""
    return Stamp(time.perf_counter(), time.process_time())


def pika_publish(spec: Spec, sample: Sampler) -> Stamp:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(spec.url))
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    props = pika.BasicProperties(content_type="application/octet-stream")
    minimum = Minimum(spec)
    for _ in range(spec.warmup):
        channel.basic_publish("", queue, BODY, props)
    start = now()
    if minimum.enabled:
        for i in range(1, spec.messages + 1):
            span, headers = minimum.publish(props.headers)
            channel.basic_publish(
                "",
                queue,
                BODY,
                pika.BasicProperties(content_type="application/octet-stream", headers=headers),
            )
            if span is not None:
                span.end()
            sample(i)
    else:
        for i in range(1, spec.messages + 1):
            channel.basic_publish("", queue, BODY, props)
            sample(i)
    connection.process_data_events(0)
    elapsed = now() - start
    connection.close()
    return elapsed


def pika_consume(spec: Spec, sample: Sampler, queue: str) -> Stamp:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(spec.url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)
    total = spec.warmup + spec.messages
    state = {"n": 0, "start": 0.0, "end": 0.0}
    manual = spec.manual_ack
    minimum = Minimum(spec)

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        handle = (
            minimum.consume(properties.headers, method.delivery_tag) if minimum.enabled else None
        )
        n = state["n"] = state["n"] + 1
        if manual:
            ch.basic_ack(method.delivery_tag)
        if n == spec.warmup:
            state["start"] = now()
        elif n > spec.warmup:
            sample(n - spec.warmup)
        minimum.consumed(handle)
        if n == total:
            state["end"] = now()
            ch.stop_consuming()

    channel.basic_consume(queue, on_message, auto_ack=not manual)
    if spec.warmup == 0:
        state["start"] = now()
    channel.start_consuming()
    connection.close()
    return state["end"] - state["start"]


def pika_pull(spec: Spec, sample: Sampler, queue: str) -> Stamp:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(spec.url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)
    total = spec.warmup + spec.messages
    start = now()
    messages = channel.consume(queue, auto_ack=not spec.manual_ack, inactivity_timeout=30)
    for n, (method, _props, _body) in enumerate(messages, start=1):
        if method is None:
            raise SystemExit("pull: the queue ran dry")
        if spec.manual_ack:
            channel.basic_ack(method.delivery_tag)
        if n == spec.warmup:
            start = now()
        elif n > spec.warmup:
            sample(n - spec.warmup)
        if n == total:
            break
    elapsed = now() - start
    channel.cancel()
    connection.close()
    return elapsed


async def _aiopika_publish(spec: Spec, sample: Sampler) -> Stamp:
    import aio_pika

    connection = await aio_pika.connect(spec.url)
    # Without publisher confirms: with them every publish waits a broker round trip (~0.5 ms
    # here) and the instrumentation's cost disappears in it; this is the CPU-bound worst case.
    channel = await connection.channel(publisher_confirms=False)
    queue = await channel.declare_queue("", exclusive=True)
    exchange = channel.default_exchange
    minimum = Minimum(spec)
    for _ in range(spec.warmup):
        await exchange.publish(aio_pika.Message(BODY), queue.name)
    start = now()
    if minimum.enabled:
        for i in range(1, spec.messages + 1):
            span, headers = minimum.publish()
            await exchange.publish(aio_pika.Message(BODY, headers=headers), queue.name)
            if span is not None:
                span.end()
            sample(i)
    else:
        for i in range(1, spec.messages + 1):
            await exchange.publish(aio_pika.Message(BODY), queue.name)
            sample(i)
    elapsed = now() - start
    await connection.close()
    return elapsed


async def _aiopika_consume(spec: Spec, sample: Sampler, queue_name: str) -> Stamp:
    import aio_pika

    connection = await aio_pika.connect(spec.url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.declare_queue(queue_name, passive=True)
    total = spec.warmup + spec.messages
    done = asyncio.get_running_loop().create_future()
    state = {"n": 0, "start": now()}
    manual = spec.manual_ack
    minimum = Minimum(spec)

    async def on_message(message: Any) -> None:
        handle = minimum.consume(message.headers, message.delivery_tag) if minimum.enabled else None
        n = state["n"] = state["n"] + 1
        if manual:
            await message.ack()
        if n == spec.warmup:
            state["start"] = now()
        elif n > spec.warmup:
            sample(n - spec.warmup)
        if n == total and not done.done():
            done.set_result(now())
        minimum.consumed(handle)

    await queue.consume(on_message, no_ack=not manual)
    end = await asyncio.wait_for(done, 300)
    await connection.close()
    return end - state["start"]


async def _aiopika_pull(spec: Spec, sample: Sampler, queue_name: str) -> Stamp:
    import aio_pika

    connection = await aio_pika.connect(spec.url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.declare_queue(queue_name, passive=True)
    total = spec.warmup + spec.messages
    start = now()
    n = 0
    async with queue.iterator(no_ack=not spec.manual_ack) as messages:
        async for message in messages:
            n += 1
            if spec.manual_ack:
                await message.ack()
            if n == spec.warmup:
                start = now()
            elif n > spec.warmup:
                sample(n - spec.warmup)
            if n == total:
                break
    elapsed = now() - start
    await connection.close()
    return elapsed


def _kombu_connection(spec: Spec) -> Any:
    import kombu

    return kombu.Connection(spec.url.replace("amqp://", "pyamqp://", 1))


def kombu_publish(spec: Spec, sample: Sampler) -> Stamp:
    import kombu

    with _kombu_connection(spec) as connection:
        channel = connection.channel()
        queue = kombu.Queue(f"bench.{uuid.uuid4().hex}", exclusive=True, channel=channel)
        queue.declare()
        producer = kombu.Producer(channel)
        publish = producer.publish
        kw = {
            "routing_key": queue.name,
            "content_type": "application/octet-stream",
            "content_encoding": "binary",
        }
        minimum = Minimum(spec)
        for _ in range(spec.warmup):
            publish(BODY, **kw)
        start = now()
        if minimum.enabled:
            for i in range(1, spec.messages + 1):
                span, headers = minimum.publish()
                publish(BODY, headers=headers, **kw)
                if span is not None:
                    span.end()
                sample(i)
        else:
            for i in range(1, spec.messages + 1):
                publish(BODY, **kw)
                sample(i)
        return now() - start


def kombu_consume(spec: Spec, sample: Sampler, queue_name: str) -> Stamp:
    import kombu

    total = spec.warmup + spec.messages
    state = {"n": 0, "start": now()}
    manual = spec.manual_ack
    minimum = Minimum(spec)

    def on_message(body: Any, message: Any) -> None:
        handle = minimum.consume(message.headers, message.delivery_tag) if minimum.enabled else None
        n = state["n"] = state["n"] + 1
        if manual:
            message.ack()
        if n == spec.warmup:
            state["start"] = now()
        elif n > spec.warmup:
            sample(n - spec.warmup)
        minimum.consumed(handle)

    with _kombu_connection(spec) as connection:
        queue = kombu.Queue(queue_name, no_declare=True)
        consumer = kombu.Consumer(
            connection.channel(),
            queues=[queue],
            callbacks=[on_message],
            no_ack=not manual,
            accept=["application/octet-stream"],
            prefetch_count=1000,
        )
        with consumer:
            while state["n"] < total:
                connection.drain_events(timeout=30)
        return now() - state["start"]


def kombu_pull(spec: Spec, sample: Sampler, queue_name: str) -> Stamp:
    import kombu
    from kombu.simple import SimpleQueue

    total = spec.warmup + spec.messages
    with _kombu_connection(spec) as connection:
        queue = SimpleQueue(
            connection, kombu.Queue(queue_name, no_declare=True), no_ack=not spec.manual_ack
        )
        start = now()
        for n in range(1, total + 1):
            message = queue.get(block=True, timeout=30)
            if spec.manual_ack:
                message.ack()
            if n == spec.warmup:
                start = now()
            elif n > spec.warmup:
                sample(n - spec.warmup)
        elapsed = now() - start
        queue.close()
        return elapsed


def floor(spec: Spec) -> Stamp:
    """The bare SDK cost the goals are measured against: one span with the same attributes plus
    inject (publish) or extract (consume), no broker, no client library, no instrumentation.
    Consumer spans also carry the link to the producer that SPEC requires."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, get_current_span

    tracer_provider, _ = _providers("ours")
    tracer = tracer_provider.get_tracer("floor")
    # the attributes our spans carry on these paths (SPEC), so the floor is the same span
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "publish" if spec.path == "publish" else "process",
        "messaging.operation.type": "send" if spec.path == "publish" else "process",
        "messaging.destination.name": "orders",
        "messaging.rabbitmq.destination.routing_key": "orders",
        "messaging.message.body.size": 256,
        "server.address": "127.0.0.1",
        "server.port": 5672,
    }
    if spec.path != "publish":
        attributes["messaging.rabbitmq.message.delivery_tag"] = 1
    parents = [{"traceparent": tp} for tp in _traceparents(spec, 1000)]
    set_span_in_context = trace.set_span_in_context
    inject, extract = propagate.inject, propagate.extract
    total = spec.warmup + spec.messages
    start = now()
    for n in range(total):
        if n == spec.warmup:
            start = now()
        if spec.path == "publish":
            span = tracer.start_span(
                "publish orders", kind=SpanKind.PRODUCER, attributes=attributes
            )
            inject({}, context=set_span_in_context(span))
        else:
            # SPEC: the consumer span is a child of the producer and links to it
            ctx = extract(parents[n % 1000])
            span = tracer.start_span(
                "process orders",
                context=ctx,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=[Link(get_current_span(ctx).get_span_context())],
            )
        span.end()
    elapsed = now() - start
    tracer_provider.shutdown()
    return elapsed


def _enter_unsampled_trace() -> None:
    """Make a not-sampled remote parent current, as in a request handler whose trace was not sampled."""
    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext

    rng = random.Random(7)
    parent = SpanContext(rng.getrandbits(128), rng.getrandbits(64), is_remote=True)
    context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))


def run(spec: Spec) -> dict[str, Any]:
    if spec.lib == "floor":
        took = floor(spec)
        return {
            "lib": "floor",
            "path": spec.path,
            "variant": "floor",
            "messages": spec.messages,
            "seconds": took.wall,
            "cpu_seconds": took.cpu,
            "rate": spec.messages / took.wall,
        }
    path = spec.path
    if path == "consume_ack":  # push consume with manual acks (the ledger keeps each delivery)
        spec = dataclasses.replace(spec, path="consume", manual_ack=True)
    sample = Sampler(spec)
    queue = spec.queue
    if spec.path != "publish" and not queue:
        queue = f"otel-bench.{spec.lib}.{spec.path}.{uuid.uuid4().hex[:10]}"
        declare_and_fill(spec, queue, spec.warmup + spec.messages)
    flush = instrument(spec)
    if spec.variant in IN_UNSAMPLED_TRACE:
        _enter_unsampled_trace()
    try:
        if spec.lib == "pika":
            took = (
                pika_publish(spec, sample)
                if spec.path == "publish"
                else (pika_consume if spec.path == "consume" else pika_pull)(spec, sample, queue)
            )
        elif spec.lib == "aiopika":
            if spec.path == "publish":
                took = asyncio.run(_aiopika_publish(spec, sample))
            else:
                fn = _aiopika_consume if spec.path == "consume" else _aiopika_pull
                took = asyncio.run(fn(spec, sample, queue))
        else:
            took = (
                kombu_publish(spec, sample)
                if spec.path == "publish"
                else (kombu_consume if spec.path == "consume" else kombu_pull)(spec, sample, queue)
            )
        flush()
    finally:
        if queue:
            delete_queue(spec, queue)
    result: dict[str, Any] = {
        "lib": spec.lib,
        "path": path,
        "variant": spec.variant,
        "messages": spec.messages,
        "seconds": took.wall,
        "cpu_seconds": took.cpu,
        "rate": spec.messages / took.wall,
    }
    if spec.memory:
        result["memory"] = sample.samples
    return result


def main(argv: list[str]) -> None:
    if argv[1] == "fill":  # python -m benchmarks.worker fill '<spec>': declare and fill only
        spec = Spec(**json.loads(argv[2]))
        declare_and_fill(spec, spec.queue, spec.warmup + spec.messages)
        return
    spec = Spec(**json.loads(argv[1]))
    print(json.dumps(run(spec)))


if __name__ == "__main__":
    main(sys.argv)
