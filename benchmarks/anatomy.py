"""Where an unsampled message's instructions go: ``python -m benchmarks.anatomy [--callgrind]``.

Each *piece* is one step of the per-message work, run ``N`` times inside ``functools.reduce`` in
one process against the real broker. Under ``--callgrind`` the process runs under
``valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce
--dump-after=functools_reduce``: instructions are counted only inside each piece's loop, and each
loop is dumped on its own, so one run gives every piece's count per call (minus the empty loop's).
Pieces compare ours with parts of ours taken away (a pass-through wrapper bypassed, the core called
alone, with fewer keywords, ...) and with the hand-written minimum. Without ``--callgrind`` it only
runs the pieces once (a smoke test).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from time import perf_counter
from typing import Any

N = 1000
WARMUP = 100
URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/")
UNSAMPLED_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"

Piece = tuple[str, Callable[[], Any], Callable[[], None] | None, Callable[[], None] | None]


def _run(name: str, step: Callable[[], Any]) -> None:
    for _ in range(WARMUP):
        step()
    functools.reduce(lambda acc, _i: step(), range(N), None)  # the measured loop
    print(f"piece {name}", file=sys.stderr, flush=True)


def pieces() -> list[tuple[str, Callable[[], None]]]:
    """(name, runner) in measurement order; each runner sets up, measures one loop, tears down."""
    import kombu
    import pika
    import wrapt
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context import Context
    from pika.channel import Channel
    from pika.spec import Basic, BasicProperties

    from benchmarks.worker import Minimum, Spec, _enter_unsampled_trace, _providers
    from otel_kombu import KombuInstrumentor
    from otel_messaging_core import propagation
    from otel_pika import PikaInstrumentor, _consume, _publish
    from otel_pika._state import scope_of

    tracer_provider, _ = _providers("ours_unsampled")
    PikaInstrumentor().instrument(tracer_provider=tracer_provider)
    KombuInstrumentor().instrument(tracer_provider=tracer_provider)
    from otel_aiopika import AioPikaInstrumentor

    AioPikaInstrumentor().instrument(tracer_provider=tracer_provider)
    out: list[tuple[str, Callable[[], None]]] = []

    def piece(name: str, step: Callable[[], Any], before: Any = None, after: Any = None) -> None:
        def runner() -> None:
            if before:
                before()
            _run(name, step)
            if after:
                after()

        out.append((name, runner))

    piece("empty", lambda: None)

    # -- pika publish inside an unsampled parent ------------------------------------------------
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    props = BasicProperties(content_type="application/octet-stream")
    body = b"x" * 256
    from pika.adapters.blocking_connection import BlockingChannel

    blocking_wrapper = BlockingChannel.__dict__["basic_publish"]
    inner_wrapper = Channel.__dict__["basic_publish"]
    state = scope_of(channel._impl)
    assert state is not None
    assert state.telemetry is not None
    telemetry = state.telemetry
    destination = state.destinations.get("publish", "", queue)
    tokens: list[Any] = []

    current: dict[str, Any] = {}

    def enter_parent() -> None:
        _enter_unsampled_trace()
        current["span"] = trace.get_current_span()
        current["span_context"] = current["span"].get_span_context()
        current["context"] = otel_context.get_current()

    def bypass_inner() -> None:
        Channel.basic_publish = inner_wrapper.__wrapped__  # type: ignore[method-assign]

    def restore_inner() -> None:
        Channel.basic_publish = inner_wrapper  # type: ignore[method-assign]

    def bypass_both() -> None:
        bypass_inner()
        BlockingChannel.basic_publish = blocking_wrapper.__wrapped__  # type: ignore[method-assign]

    def restore_both() -> None:
        restore_inner()
        BlockingChannel.basic_publish = blocking_wrapper  # type: ignore[method-assign]

    def publish(*args: Any) -> Any:  # looked up per call: the pieces swap the class attributes
        return channel.basic_publish(*args)

    piece("pika.publish.ours", lambda: publish("", queue, body, props), enter_parent)
    piece(
        "pika.publish.ours_without_Channel.basic_publish",
        lambda: publish("", queue, body, props),
        bypass_inner,
        restore_inner,
    )
    minimum = Minimum(Spec("pika", "publish", "min_unsampled_parent", 0, 0, URL))

    def publish_minimum() -> None:
        _span, headers = minimum.publish(props.headers)
        channel.basic_publish(
            "",
            queue,
            body,
            BasicProperties(content_type="application/octet-stream", headers=headers),
        )

    piece("pika.publish.bare", lambda: publish("", queue, body, props), bypass_both)
    piece("pika.publish.minimum", publish_minimum)
    cached: dict[int, str] = {}

    def publish_minimum_cached() -> None:  # the minimum with a per-parent formatted header
        span_context = trace.get_current_span().get_span_context()
        traceparent = cached.get(id(span_context))
        if traceparent is None:
            traceparent = cached[id(span_context)] = (
                f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                f"{span_context.trace_flags:02x}"
            )
        channel.basic_publish(
            "",
            queue,
            body,
            BasicProperties(
                content_type="application/octet-stream", headers={"traceparent": traceparent}
            ),
        )

    piece("pika.publish.minimum_with_cache", publish_minimum_cached, None, restore_both)

    # -- kombu publish inside the unsampled parent: Producer.publish passes through to _publish --
    from kombu.messaging import Producer

    kpub_conn = kombu.Connection(URL.replace("amqp://", "pyamqp://", 1))
    kpub_channel = kpub_conn.channel()
    kpub_queue = kombu.Queue(f"otel-anatomy.{uuid.uuid4().hex[:8]}", exclusive=True)
    kpub_queue(kpub_channel).declare()
    producer = kombu.Producer(kpub_channel)
    outer, inner = Producer.__dict__["publish"], Producer.__dict__["_publish"]
    kw = {
        "routing_key": kpub_queue.name,
        "content_type": "application/octet-stream",
        "content_encoding": "binary",
    }

    def kombu_publish() -> None:
        producer.publish(body, **kw)

    def kombu_bypass_outer() -> None:
        Producer.publish = outer.__wrapped__  # type: ignore[method-assign]

    def kombu_bypass_both() -> None:
        Producer._publish = inner.__wrapped__  # type: ignore[method-assign]

    def kombu_restore() -> None:
        Producer.publish, Producer._publish = outer, inner  # type: ignore[method-assign]

    kminimum_publish = Minimum(Spec("kombu", "publish", "min_unsampled_parent", 0, 0, URL))

    def kombu_publish_minimum() -> None:
        _span, headers = kminimum_publish.publish()
        producer.publish(body, headers=headers, **kw)

    piece("kombu.publish.ours", kombu_publish)
    piece("kombu.publish.ours_without_Producer.publish", kombu_publish, kombu_bypass_outer)
    piece("kombu.publish.bare", kombu_publish, kombu_bypass_both)
    piece("kombu.publish.minimum", kombu_publish_minimum, None, kombu_restore)

    # -- aio-pika publish inside the unsampled parent (one event-loop turn per publish) --------
    import asyncio

    import aio_pika
    from aio_pika.exchange import Exchange

    from otel_aiopika import _publish as aiopika_publish

    loop = asyncio.new_event_loop()

    async def aiopika_setup() -> tuple[Any, Any, Any]:
        aconn = await aio_pika.connect(URL)
        achannel = await aconn.channel(publisher_confirms=False)
        return aconn, achannel, await achannel.declare_queue("", exclusive=True)

    _aconn, achannel, aqueue = loop.run_until_complete(aiopika_setup())
    exchange = achannel.default_exchange
    wrapped_publish = Exchange.__dict__["publish"]
    amessage = aio_pika.Message(body)

    def aiopika_publish_once() -> None:
        loop.run_until_complete(exchange.publish(amessage, aqueue.name))

    def aiopika_bypass() -> None:
        Exchange.publish = wrapped_publish.__wrapped__  # type: ignore[method-assign]

    def aiopika_restore() -> None:
        Exchange.publish = wrapped_publish  # type: ignore[method-assign]

    aminimum = Minimum(Spec("aiopika", "publish", "min_unsampled_parent", 0, 0, URL))

    def aiopika_publish_minimum() -> None:
        _span, headers = aminimum.publish()
        loop.run_until_complete(
            exchange.publish(aio_pika.Message(body, headers=headers), aqueue.name)
        )

    piece("aiopika.publish.ours", aiopika_publish_once)
    piece("aiopika.publish.bare", aiopika_publish_once, aiopika_bypass)
    piece("aiopika.publish.minimum", aiopika_publish_minimum, None, aiopika_restore)
    piece(
        "aiopika._start+end (plugin glue + core start)",
        lambda: aiopika_publish._start(exchange, (amessage, aqueue.name), {})[0].end(),  # type: ignore[index]
    )

    # the parts of ours, alone (no client call)
    piece(
        "core.start_publish+end(6 keywords, as pika)",
        lambda: telemetry.start_publish(
            destination, None, message_id=None, correlation_id=None, body=body, raw=props
        ).end(),
    )
    piece(
        "core.start_publish+end(no keywords)",
        lambda: telemetry.start_publish(destination, None).end(),
    )
    piece(
        "core.inject_span(current parent: cached fields)",
        lambda: propagation.inject_span({}, current["span"], current["context"]),
    )
    piece(
        "core.inject_span(same parent, not current: formats)",
        lambda: propagation.inject_span({}, current["span"], Context()),
    )

    def format_traceparent() -> str:
        span_context = current["span_context"]
        return (
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{span_context.trace_flags:02x}"
        )

    piece("format traceparent (f-string alone)", format_traceparent)
    piece("minimum: headers only (no client call)", lambda: minimum.publish(None))
    piece("core._skips_child_of", lambda: telemetry._skips_child_of(current["span_context"]))
    metric_attributes = destination.metric_attributes

    def timing() -> None:
        start = perf_counter()
        telemetry.metrics.published(metric_attributes, perf_counter() - start, None)

    piece("core.timing+metrics.published (no MeterProvider)", timing)
    piece("core.get_current", otel_context.get_current)

    def pika_start() -> None:
        op = _publish._start(state, ("", queue, body, props), {})[0]  # type: ignore[index]
        if op is not None:  # None: the unsampled fast path (issue 18 phase 2), nothing to end
            op.end()

    piece("pika._start (plugin glue + core start)", pika_start)
    piece(
        "pika._with_headers (properties copy)",
        lambda: _publish._with_headers(props, {"traceparent": UNSAMPLED_TRACEPARENT}),
    )
    piece("pika.destinations.get", lambda: state.destinations.get("publish", "", queue))

    # wrapt's dispatch: a pass-through wrapper vs the plain function, 4 positional arguments
    class Plain:
        def call(self, a: Any, b: Any, c: Any, d: Any) -> None:
            return None

    class Wrapped(Plain):
        pass

    def passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(Wrapped, "call", passthrough)
    plain, wrapped = Plain(), Wrapped()
    piece("plain method call (4 args)", lambda: plain.call("", queue, body, props))
    piece("wrapt pass-through method (4 args)", lambda: wrapped.call("", queue, body, props))

    # -- pika consume of a not-sampled message (BlockingChannel dispatch), nothing current ---------
    def leave_parent() -> None:
        tokens.append(otel_context.attach(Context()))

    method = Basic.Deliver(consumer_tag="ctag", delivery_tag=1, exchange="", routing_key=queue)
    message_props = BasicProperties(headers={"traceparent": UNSAMPLED_TRACEPARENT})

    def callback(ch: Any, m: Any, p: Any, b: Any) -> None:
        return None

    traced = _consume._TracedCallback(callback, False)
    piece(
        "pika.consume.callback_bare",
        lambda: callback(channel, method, message_props, body),
        leave_parent,
    )
    piece("pika.consume._TracedCallback", lambda: traced(channel, method, message_props, body))
    consume_minimum = Minimum(Spec("pika", "consume", "min_unsampled", 0, 0, URL))

    def minimum_consume() -> None:
        handle = consume_minimum.consume(message_props.headers, 1)
        callback(channel, method, message_props, body)
        consume_minimum.consumed(handle)

    piece("pika.consume.minimum", minimum_consume)
    consume_destination = state.destinations.get("process", "", queue, queue)

    def core_consume_pika_keywords() -> None:
        op = telemetry.start_consume(
            consume_destination,
            message_props.headers,
            delivery_tag=1,
            message_id=None,
            correlation_id=None,
            body=body,
            redelivered=False,
            raw=message_props,
            track_delivery=False,
            started=None,
        )
        op.activate()
        op.end()

    def core_consume_no_keywords() -> None:
        op = telemetry.start_consume(consume_destination, message_props.headers)
        op.activate()
        op.end()

    piece("core.start_consume+activate+end(10 keywords, as pika)", core_consume_pika_keywords)
    piece("core.start_consume+activate+end(no keywords)", core_consume_no_keywords)
    piece("core.extract_context", lambda: propagation.extract_context(message_props.headers))
    piece(
        "pika._begin (plugin glue + core start)",
        lambda: _consume._begin(state, "process", method, message_props, body, "", False),
    )
    # Channel._on_deliver under a BlockingChannel: our wrapper only passes through
    deliver_wrapper = _consume.deliver(scope_of)

    def noop_deliver(*_args: Any) -> None:
        return None

    bound = wrapt.FunctionWrapper(noop_deliver, deliver_wrapper)
    frame = type("F", (), {"method": method})()
    impl = channel._impl
    piece(
        "pika Channel._on_deliver pass-through (BlockingChannel)",
        lambda: deliver_wrapper(noop_deliver, impl, (frame, frame, body), {}),
    )
    piece(
        "pika Channel._on_deliver wrapt dispatch + pass-through",
        lambda: bound.__get__(impl, type(impl))(frame, frame, body),
    )

    # -- kombu consume of a not-sampled message: drain_events delivers one message per call -------
    from benchmarks.worker import declare_and_fill

    kqueue = f"otel-anatomy.{uuid.uuid4().hex[:8]}"
    spec = Spec("kombu", "consume", "ours_unsampled", 0, 0, URL)
    kconn = kombu.Connection(URL.replace("amqp://", "pyamqp://", 1))
    received = [0]

    def on_message(b: Any, message: Any) -> None:
        received[0] += 1

    kminimum = Minimum(Spec("kombu", "consume", "min_unsampled", 0, 0, URL))

    def on_message_minimum(b: Any, message: Any) -> None:
        handle = kminimum.consume(message.headers, message.delivery_tag)
        received[0] += 1
        kminimum.consumed(handle)

    consumer_box: list[Any] = []

    def kombu_setup() -> None:
        declare_and_fill(spec, kqueue, 3 * (N + WARMUP) + 10)
        consumer = kombu.Consumer(
            kconn.channel(),
            queues=[kombu.Queue(kqueue, no_declare=True)],
            callbacks=[on_message],
            no_ack=True,
            accept=["application/octet-stream"],
            prefetch_count=100,
        )
        consumer.consume()
        consumer_box.append(consumer)

    drain = lambda: kconn.drain_events(timeout=10)  # noqa: E731
    piece("kombu.consume.ours", drain, kombu_setup)
    from kombu.messaging import Consumer
    from kombu.transport.pyamqp import Channel as PyamqpChannel

    originals: dict[str, Any] = {}

    def kombu_bypass() -> None:
        originals["rc"] = Consumer.__dict__["_receive_callback"]
        originals["mtp"] = PyamqpChannel.__dict__["message_to_python"]
        Consumer._receive_callback = originals["rc"].__wrapped__
        PyamqpChannel.message_to_python = originals["mtp"].__wrapped__

    piece("kombu.consume.bare", drain, kombu_bypass)

    def kombu_minimum() -> None:
        consumer_box[0].callbacks = [on_message_minimum]

    piece("kombu.consume.minimum", drain, kombu_minimum)
    return out


def main() -> None:
    if "--callgrind" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "cg.out")
            done = subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--collect-atstart=no",
                    "--toggle-collect=functools_reduce",
                    "--dump-after=functools_reduce",
                    f"--callgrind-out-file={base}",
                    sys.executable,
                    "-m",
                    "benchmarks.anatomy",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            names = [
                line.split(" ", 1)[1]
                for line in done.stderr.splitlines()
                if line.startswith("piece ")
            ]
            parts = sorted(
                (p for p in glob.glob(base + ".*") if p.rsplit(".", 1)[1].isdigit()),
                key=lambda p: int(p.rsplit(".", 1)[1]),
            )
            totals = []
            for path in parts:
                with open(path) as f:
                    for line in f:
                        if line.startswith(("summary:", "totals:")):
                            totals.append(int(line.split()[1]))
                            break
            if done.returncode != 0 or len(totals) != len(names):
                print(done.stderr[-3000:])
                raise SystemExit(f"{len(totals)} dumps for {len(names)} pieces")
            per = {n: t / N for n, t in zip(names, totals, strict=True)}
            empty = per.pop("empty")
            for name, count in per.items():
                print(f"{(count - empty) / 1000:8.2f}k  {name}")
            print(json.dumps({"per_call": per, "empty_loop": empty}))
        return
    for _name, runner in pieces():
        runner()


if __name__ == "__main__":
    main()
