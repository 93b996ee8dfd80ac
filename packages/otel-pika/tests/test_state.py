"""Per-channel records of otel-pika, without a broker: settle bookkeeping, queue names, pulled contexts."""

from __future__ import annotations

import gc

import pika
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext

from otel_messaging_core import Consume, Delivery, DestinationCache
from otel_pika import _state
from otel_pika._state import ChannelState, recall, remember


def delivery(tag: int) -> Delivery:
    return Delivery(DestinationCache().get("process", "", "q", "q"), tag, None, None)


def test_take_single_multiple_and_all() -> None:
    """ack(tag) takes one record, multiple=True every record up to the tag in any order, tag 0 all of them."""
    state = ChannelState(blocking=True)
    for tag in (3, 1, 2, 5, 4):  # consumers dispatch at different times: not in tag order
        state.deliveries.track(tag, delivery(tag))
    assert [d.delivery_tag for d in state.take(2, False) if d] == [2]
    assert state.take(2, False) == []
    assert sorted(d.delivery_tag for d in state.take(4, True) if d) == [1, 3, 4]
    assert list(state.deliveries) == [5]
    state.deliveries.track(6, delivery(6))
    assert sorted(d.delivery_tag for d in state.take(0, True) if d) == [5, 6]
    assert state.deliveries == {}


def test_records_are_bounded() -> None:
    """A consumer that never acks cannot grow the records past the cap: the oldest goes first."""
    state = ChannelState(blocking=False)
    for tag in range(1, _state.MAX_TRACKED_DELIVERIES + 11):
        state.deliveries.track(tag, delivery(tag))
    assert len(state.deliveries) == _state.MAX_TRACKED_DELIVERIES
    assert next(iter(state.deliveries)) == 11
    state.closed(None, None)
    assert state.deliveries == {}


def test_queue_names_recorded_or_inferred() -> None:
    """A consumer's queue comes from its basic_consume; unknown, the default exchange's routing key names it."""
    state = ChannelState(blocking=False)
    state.remember_queue("ctag1", "orders")
    state.remember_queue("ctag2", "")  # the channel's last server-named queue: unknown
    assert state.queue_of("ctag1", "shop", "order.created") == "orders"
    assert state.queue_of("ctag2", "", "amq.gen-abc") == "amq.gen-abc"
    assert state.queue_of("ctag3", "shop", "order.created") == ""
    assert state.queue_of(None, "", "direct-q") == "direct-q"


def test_pulled_contexts_are_remembered_by_identity_and_forgotten_with_the_message() -> None:
    """message_context's memory holds a context for the very properties object, only while it lives."""
    first = pika.BasicProperties(headers={"a": 1})
    twin = pika.BasicProperties(headers={"a": 1})  # equal, but another message
    span = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=False))
    context = trace.set_span_in_context(span, Context({"k": "v"}))
    remember(first, Consume(None, None, span, context, None))
    assert recall(first) is context
    assert recall(twin) is None
    count = len(_state._remembered)
    del first
    gc.collect()
    assert len(_state._remembered) == count - 1


def test_no_span_nothing_remembered() -> None:
    """A pulled message that got no span (its trace is not sampled) is not remembered:
    message_context() then builds its context from the headers, which gives the same one."""
    properties = pika.BasicProperties(headers={"a": 1})
    remember(properties, Consume(None, None, INVALID_SPAN, Context({"k": "v"}), None))
    assert recall(properties) is None
