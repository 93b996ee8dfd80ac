"""The operations as context managers, as every plugin's wrapper uses them: ``with op:``,
``with op.classified(f):``, ending inside the block, and :func:`call_in`."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.trace import StatusCode

from broker_harness import Recorder
from otel_messaging_core import BROKER_NACK, UNROUTABLE, call_in, publish_failure
from otel_messaging_core.operations import Publish
from otel_messaging_core.options import InstrumentationOptions
from otel_messaging_core.telemetry import MessagingTelemetry


class Returned(Exception):
    """A client's "the broker returned the message" exception."""


class Nacked(Exception):
    """A client's "the broker nacked the message" exception."""


class ReturnedAndNacked(Returned, Nacked):
    """A client deriving its returned exception from its nack exception (aiormq does)."""


def start(otel: Recorder) -> Publish:
    options = InstrumentationOptions.from_kwargs(
        {"tracer_provider": otel.tracer_provider, "meter_provider": otel.meter_provider},
        environ={},
    )
    telemetry = MessagingTelemetry(options, instrumentation_name="otel_test", version="0.1.0")
    destination = telemetry.destinations().get("publish", "orders", "order.created")
    return telemetry.start_publish(destination, None)


def error_type(otel: Recorder) -> Any:
    (span,) = otel.spans()
    ((attrs, _),) = otel.points("messaging.client.operation.duration")
    assert (span.attributes or {}).get("error.type") == attrs.get("error.type")
    return attrs.get("error.type")


def test_with_op_ends_it_ok(otel: Recorder) -> None:
    """A block that returns ends its span OK, counted once."""
    with start(otel) as op:
        pass
    op.end()  # ended already: nothing more
    (span,) = otel.spans()
    assert span.status.status_code is StatusCode.UNSET
    assert error_type(otel) is None


def test_an_exception_leaving_the_block_is_the_callers_and_classified(otel: Recorder) -> None:
    """The exception goes on unchanged (same object); classify gives error.type, and the client's
    returned/nack exceptions map to unroutable/broker_nack, returned first."""
    classify = publish_failure(unroutable=Returned, broker_nack=Nacked)
    raised = Nacked("nack")
    with pytest.raises(Nacked) as caught, start(otel).classified(classify):
        raise raised
    assert caught.value is raised
    assert error_type(otel) == BROKER_NACK
    assert classify(ReturnedAndNacked()) == UNROUTABLE
    assert classify(Returned()) == UNROUTABLE
    assert classify(KeyError()) is None
    assert publish_failure()(Nacked()) is None


def test_an_unclassified_exception_is_named_by_its_class(otel: Recorder) -> None:
    """classify answering None (or no classify) leaves error.type to the exception's class."""
    with pytest.raises(KeyError), start(otel).classified(publish_failure(unroutable=Returned)):
        raise KeyError("sku")
    assert error_type(otel) == "KeyError"


def test_an_outcome_known_from_the_result_is_ended_inside_the_block(otel: Recorder) -> None:
    """A call that returns a failure (a returned message as its result) ends the operation inside
    the block; the block's own end then changes nothing."""
    with start(otel) as op:
        op.end(error_type=UNROUTABLE, description="returned by the broker: 312 NO_ROUTE")
    (span,) = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "returned by the broker: 312 NO_ROUTE"
    assert error_type(otel) == UNROUTABLE


def test_call_in_calls_plainly_without_an_operation_and_inside_one_otherwise(
    otel: Recorder,
) -> None:
    """call_in(None, ...) is the plain call; with an operation it is ``with op:`` around it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("fail"):
            raise ValueError("bad")
        return args, kwargs

    assert call_in(None, call, (1,), {"a": 2}) == ((1,), {"a": 2})
    assert otel.spans() == []
    assert call_in(start(otel), call, (1,), {}) == ((1,), {})
    with pytest.raises(ValueError):
        call_in(start(otel), call, (), {"fail": True})
    ok, failed = otel.spans()
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.attributes["error.type"] == "ValueError"  # type: ignore[index]


def test_a_settle_caused_by_an_exception_ends_with_it_unless_the_call_fails(
    otel: Recorder,
) -> None:
    """``with op.caused_by(exc):`` ends the settle as end(cause=exc) when the call succeeds (the
    handler's exception recorded, requeued: its type); a settle call that raises records its own."""
    options = InstrumentationOptions.from_kwargs(
        {
            "tracer_provider": otel.tracer_provider,
            "meter_provider": otel.meter_provider,
            "settle_spans": True,
        },
        environ={},
    )
    telemetry = MessagingTelemetry(options, instrumentation_name="otel_test", version="0.1.0")
    destination = telemetry.destinations().get("process", "orders", "order.created", "srm")
    with telemetry.start_settle(
        "reject", [], requeue=True, delivery_tag=1, fallback=destination
    ).caused_by(KeyError("sku")):
        pass
    with (
        pytest.raises(ConnectionError),
        telemetry.start_settle(
            "reject", [], requeue=True, delivery_tag=2, fallback=destination
        ).caused_by(KeyError("sku")),
    ):
        raise ConnectionError("closed")
    caused, failed = otel.spans()
    assert caused.attributes["error.type"] == "KeyError"  # type: ignore[index]
    assert failed.attributes["error.type"] == "ConnectionError"  # type: ignore[index]
    assert [e.attributes["exception.type"] for e in failed.events] == [  # type: ignore[index]
        "ConnectionError"
    ]
