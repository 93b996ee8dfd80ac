"""Dead-letter headers: read as each client decodes them, any malformed shape ignored with one
warning, and a dead-lettered message's consume span carries the death and an ERROR child."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.trace import SpanKind, StatusCode

from broker_harness import Recorder
from otel_messaging_core import dead_letters
from otel_messaging_core.options import InstrumentationOptions
from otel_messaging_core.telemetry import MessagingTelemetry

DIED = datetime.datetime(2026, 11, 30, 15, 20, 1, tzinfo=datetime.timezone.utc)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def x_death(**entry: Any) -> list[dict[str, Any]]:
    """One x-death table as RabbitMQ 3.10 writes it (rabbit_dead_letter.erl make_msg)."""
    table: dict[str, Any] = {
        "count": 1,
        "reason": "expired",
        "queue": "srm.orders",
        "time": DIED.replace(tzinfo=None),  # pika and py-amqp: a naive UTC datetime
        "exchange": "",
        "routing-keys": ["srm.orders"],
        "original-expiration": "50",
    }
    table.update(entry)
    return [{k: v for k, v in table.items() if v is not None}]


def headers(**entry: Any) -> dict[str, Any]:
    return {
        "traceparent": TRACEPARENT,
        "x-death": x_death(**entry),
        "x-first-death-reason": entry.get("reason", "expired"),
        "x-first-death-queue": "srm.orders",
        "x-first-death-exchange": "",
    }


EXPIRED = {
    "rabbitmq.dead_letter.reason": "expired",
    "rabbitmq.dead_letter.queue": "srm.orders",
    "rabbitmq.dead_letter.exchange": "amq.default",
    "rabbitmq.dead_letter.routing_keys": ("srm.orders",),
    "rabbitmq.dead_letter.count": 1,
    "rabbitmq.dead_letter.time": "2026-11-30T15:20:01Z",
    "rabbitmq.dead_letter.original_expiration_ms": 50,
}


def attributes(death: dead_letters.Death | None) -> dict[str, Any]:
    assert death is not None
    return {k: tuple(v) if isinstance(v, list) else v for k, v in death.attributes.items()}


@pytest.fixture(autouse=True)
def _warn_again() -> None:
    dead_letters._warned = False


def test_a_message_that_never_died_says_nothing() -> None:
    """Headers without dead-letter fields, and no redelivery, give no attributes at all."""
    assert dead_letters.read({"traceparent": TRACEPARENT}, False) is None
    assert dead_letters.read(None, None) is None
    assert dead_letters.read({}, False) is None


@pytest.mark.parametrize(
    "time",
    [
        DIED.replace(tzinfo=None),  # pika, py-amqp (kombu)
        DIED,  # aiormq/pamqp may give an aware one
        int(DIED.timestamp()),  # a client that keeps the raw seconds
        DIED.astimezone(datetime.timezone(datetime.timedelta(hours=2))),
    ],
    ids=["naive-utc", "aware-utc", "int-seconds", "aware-other-zone"],
)
def test_the_time_of_death_reads_the_same_from_every_client_shape(time: object) -> None:
    """An AMQP timestamp decoded as a naive UTC datetime, an aware one, or int seconds gives the same UTC time."""
    assert attributes(dead_letters.read(headers(time=time))) == EXPIRED


def test_bytes_values_and_keys_inside_the_table_are_decoded() -> None:
    """A client that keeps long strings and nested keys as bytes gives the same attributes."""
    table = {k.encode(): v.encode() if isinstance(v, str) else v for k, v in x_death()[0].items()}
    table[b"routing-keys"] = [b"srm.orders"]
    got = dead_letters.read(
        {
            "x-death": [table],
            "x-first-death-reason": b"expired",
            "x-first-death-queue": b"srm.orders",
        }
    )
    assert attributes(got) == EXPIRED


@pytest.mark.parametrize("reason", ["expired", "rejected", "maxlen", "delivery_limit"])
def test_each_reason_is_named(reason: str) -> None:
    """Every reason the broker gives becomes rabbitmq.dead_letter.reason; original-expiration only when present."""
    got = dead_letters.read(headers(reason=reason, **{"original-expiration": None}))
    assert got is not None
    assert got.reason == reason
    assert got.attributes["rabbitmq.dead_letter.reason"] == reason
    assert "rabbitmq.dead_letter.original_expiration_ms" not in got.attributes


def test_the_latest_death_is_described_and_the_first_one_named_when_it_differs() -> None:
    """With two deaths, x-death[0] (the latest) describes the death and x-first-death-* says where it began."""
    first = x_death(reason="rejected", queue="srm.retry", count=3)[0]
    latest = x_death(reason="expired", queue="srm.orders", exchange="orders")[0]
    got = dead_letters.read(
        {
            "x-death": [latest, first],
            "x-first-death-reason": "rejected",
            "x-first-death-queue": "srm.retry",
            "x-first-death-exchange": "orders",
        }
    )
    values = attributes(got)
    assert values["rabbitmq.dead_letter.reason"] == "expired"
    assert values["rabbitmq.dead_letter.exchange"] == "orders"
    assert values["rabbitmq.dead_letter.first.reason"] == "rejected"
    assert values["rabbitmq.dead_letter.first.queue"] == "srm.retry"
    assert values["rabbitmq.dead_letter.first.exchange"] == "orders"


def test_the_last_death_headers_of_rabbitmq_4_stand_in_for_a_missing_x_death() -> None:
    """Without a readable x-death, x-last-death-* (3.13+) and else x-first-death-* name the death."""
    last = dead_letters.read(
        {
            "x-last-death-reason": "delivery_limit",
            "x-last-death-queue": "q",
            "x-first-death-reason": "expired",
        }
    )
    assert attributes(last) == {
        "rabbitmq.dead_letter.reason": "delivery_limit",
        "rabbitmq.dead_letter.queue": "q",
        "rabbitmq.dead_letter.first.reason": "expired",
    }
    first = dead_letters.read({"x-first-death-reason": "maxlen", "x-first-death-exchange": ""})
    assert attributes(first) == {
        "rabbitmq.dead_letter.reason": "maxlen",
        "rabbitmq.dead_letter.exchange": "amq.default",
    }


def test_redelivery_and_quorum_counts_are_attributes() -> None:
    """The redelivered flag and a quorum queue's x-delivery-count / x-acquired-count become attributes, with no death."""
    got = dead_letters.read({"x-delivery-count": 2, "x-acquired-count": 3}, True)
    assert got is not None
    assert got.reason is None
    assert got.attributes == {
        "rabbitmq.message.redelivered": True,
        "rabbitmq.message.delivery_count": 2,
        "rabbitmq.message.acquired_count": 3,
    }


MALFORMED: list[Any] = [
    "x-death as text",  # a producer that republished it stringified (rabbitmq-server#767)
    b"\xff\xfe",
    17,
    {"reason": "expired"},  # a table, not an array
    [],
    ["not a table"],
    [{"count": 1}],  # no reason
    [{"reason": 5, "queue": b"\xff"}],
    [{"reason": "expired", "time": "yesterday", "count": "1", "routing-keys": "q"}],
    [{"reason": "expired", "time": 10**30, "count": -1, "routing-keys": [1, None, b"k"]}],
]


@pytest.mark.parametrize("value", MALFORMED)
def test_a_malformed_x_death_is_ignored_and_logged_once(
    value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed x-death never raises: what is readable is kept, the rest ignored, and at most one WARNING is logged."""
    with caplog.at_level(logging.DEBUG, logger="otel_messaging_core"):
        for _ in range(3):
            got = dead_letters.read({"x-death": value, "x-delivery-count": "two"}, False)
    assert got is None or "rabbitmq.dead_letter.time" not in got.attributes
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 1


class Exploding(dict[str, Any]):
    def get(self, *_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("broken mapping")


def test_a_mapping_that_raises_is_ignored() -> None:
    """A headers object whose lookups raise gives no attributes instead of an exception."""
    assert dead_letters.read(Exploding({"x-death": []})) is None


table_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=20),
        st.datetimes(),
        st.sampled_from(["expired", "rejected", "maxlen", "delivery_limit"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=12), st.binary(max_size=12)), children, max_size=6
        ),
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["reason", "queue", "exchange", "count", "time", "routing-keys", "original-expiration"]
)


@settings(max_examples=300, deadline=None)
@given(
    deaths=st.lists(st.dictionaries(field_names, table_values, max_size=7), max_size=3)
    | table_values,
    top=st.dictionaries(
        st.sampled_from(
            [
                "x-first-death-reason",
                "x-first-death-queue",
                "x-last-death-reason",
                "x-delivery-count",
                "x-acquired-count",
            ]
        ),
        table_values,
    ),
    redelivered=st.one_of(st.none(), st.booleans()),
)
def test_any_header_content_reads_without_raising(
    deaths: Any, top: dict[str, Any], redelivered: bool | None
) -> None:
    """Whatever the tables hold, read() returns attributes of valid OpenTelemetry types or None."""
    got = dead_letters.read({"x-death": deaths, **top}, redelivered)
    if got is not None:
        for value in got.attributes.values():
            assert isinstance(value, (str, bool, int, list))


# -- the hook in start_consume ----------------------------------------------------------------


def make(otel: Recorder, **kwargs: Any) -> MessagingTelemetry:
    options = InstrumentationOptions.from_kwargs(
        {"tracer_provider": otel.tracer_provider, "meter_provider": otel.meter_provider, **kwargs},
        environ={},
    )
    return MessagingTelemetry(options, instrumentation_name="otel_test", version="0.1.0")


@pytest.mark.parametrize("mode", ["parent", "link"])
def test_a_dead_letter_is_an_error_of_its_trace_while_its_handler_succeeds(
    otel: Recorder, mode: str
) -> None:
    """A dead-lettered message's consume span carries the death (set before it starts) and ends as its handler did; an ERROR child named after the reason and queue marks the death in the same trace."""
    telemetry = make(otel, consumer_context=mode)
    destination = telemetry.destinations().get("process", "", "orders.dead", "orders.dead")
    telemetry.start_consume(destination, headers(), delivery_tag=1).end()
    consume = otel.named("process orders.dead")[0]
    (death,) = otel.named("expired srm.orders")
    assert consume.status.status_code is StatusCode.UNSET
    assert {k: v for k, v in (consume.attributes or {}).items() if k.startswith("rabbitmq.")} == (
        EXPIRED
    )
    assert death.kind is SpanKind.INTERNAL
    assert death.parent is not None
    assert death.parent.span_id == consume.context.span_id
    assert death.status.status_code is StatusCode.ERROR
    assert (death.attributes or {})["error.type"] == "dead_letter:expired"
    trace_id = int(TRACEPARENT.split("-")[1], 16)
    if mode == "parent":
        assert consume.context.trace_id == trace_id
    else:
        assert consume.context.trace_id != trace_id
        assert [link.context.trace_id for link in consume.links] == [trace_id]
    assert [a.get("error.type") for a, _ in otel.points("messaging.process.duration")] == [None]


def test_a_redelivered_message_says_so_and_makes_no_error(otel: Recorder) -> None:
    """A redelivery is an attribute of the consume span, not an error."""
    telemetry = make(otel)
    destination = telemetry.destinations().get("receive", "", "q", "q")
    telemetry.start_consume(destination, {"x-delivery-count": 1}, redelivered=True).end()
    (span,) = otel.spans()
    assert (span.attributes or {})["rabbitmq.message.redelivered"] is True
    assert (span.attributes or {})["rabbitmq.message.delivery_count"] == 1


def test_an_ordinary_message_gets_no_dead_letter_attributes(otel: Recorder) -> None:
    """A message that never died or was redelivered has no rabbitmq.* attribute and no extra span."""
    telemetry = make(otel)
    destination = telemetry.destinations().get("receive", "", "q", "q")
    telemetry.start_consume(destination, {"traceparent": TRACEPARENT}, redelivered=False).end()
    (span,) = otel.spans()
    assert not [k for k in span.attributes or {} if k.startswith("rabbitmq.")]


def test_kombu_on_another_transport_gets_no_rabbitmq_attributes(otel: Recorder) -> None:
    """A redelivered message on a non-AMQP transport (kombu on Redis, say) gets no rabbitmq.* attribute."""
    telemetry = make(otel)
    destination = telemetry.destinations(system="redis").get("receive", "", "q", "q")
    telemetry.start_consume(destination, headers(), redelivered=True).end()
    (span,) = otel.spans()
    assert not [k for k in span.attributes or {} if k.startswith("rabbitmq.")]
