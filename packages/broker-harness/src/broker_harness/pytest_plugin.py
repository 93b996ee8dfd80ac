"""pytest fixtures: ``rabbitmq`` (the broker), ``unique`` (names), ``otel`` (a recorder), and
``instrumentation`` (any instrumentor with the recorder's providers, undone after the test).

Without a broker the tests that ask for ``rabbitmq`` skip with a message saying how to start one,
except under ``CI=true`` or ``--require-broker``, where they fail: CI must never go green by
skipping the tests that matter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import pytest

from broker_harness.broker import Broker, BrokerUnavailable, find_broker, stop_broker, unique_name
from broker_harness.otel import Recorder


class Instrumentor(Protocol):
    """What the fixtures need of an ``opentelemetry`` ``BaseInstrumentor``."""

    @property
    def is_instrumented_by_opentelemetry(self) -> bool: ...

    def instrument(self, **kwargs: Any) -> None: ...

    def uninstrument(self, **kwargs: Any) -> None: ...


InstrumentorT = TypeVar("InstrumentorT", bound=Instrumentor)
Instrument = Callable[..., Any]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-broker",
        action="store_true",
        default=False,
        help="fail (do not skip) tests that need RabbitMQ when none can be found; implied by CI=true",
    )


def broker_required(config: pytest.Config) -> bool:
    """True when a missing broker must fail the run."""
    ci = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
    return ci or bool(config.getoption("--require-broker"))


@pytest.fixture(scope="session")
def rabbitmq(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The broker for this run (found once per session, container stopped at the end)."""
    try:
        broker = find_broker()
    except BrokerUnavailable as exc:
        if broker_required(request.config):
            pytest.fail(f"{exc}\n(CI=true or --require-broker: a missing broker is a failure)")
        pytest.skip(str(exc))
    try:
        yield broker
    finally:
        stop_broker(broker)


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique("orders")`` gives a name for an exchange or queue that only this test uses."""
    test = request.node.name.split("[")[0][:24]

    def make(prefix: str = "q") -> str:
        return unique_name(f"{test}.{prefix}")

    return make


@pytest.fixture
def otel() -> Iterator[Recorder]:
    """A fresh tracer and meter provider recording in memory, shut down after the test."""
    recorder = Recorder()
    yield recorder
    recorder.shutdown()


@pytest.fixture
def instrumentation(otel: Recorder) -> Iterator[Callable[[Callable[[], Any]], Instrument]]:
    """``instrument = instrumentation(PikaInstrumentor)``; then ``instrument(**options)``
    instruments with the test's providers (an option may name others) and returns the
    instrumentor. Whatever is still instrumented is undone after the test."""
    made: list[Instrumentor] = []

    def bind(make: Callable[[], InstrumentorT]) -> Callable[..., InstrumentorT]:
        instrumentor = make()
        made.append(instrumentor)

        def instrument(**options: Any) -> InstrumentorT:
            options.setdefault("tracer_provider", otel.tracer_provider)
            options.setdefault("meter_provider", otel.meter_provider)
            instrumentor.instrument(**options)
            return instrumentor

        return instrument

    yield bind
    for instrumentor in made:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def instrument_fixtures(
    make: Callable[[], InstrumentorT], library: str
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The ``instrument`` and ``instrumented`` fixtures of one plugin's tests, for its conftest:
    ``instrument, instrumented = instrument_fixtures(PikaInstrumentor, "pika")``."""

    def instrument(instrumentation: Callable[..., Any]) -> Callable[..., InstrumentorT]:
        return instrumentation(make)  # type: ignore[no-any-return]

    def instrumented(instrument: Callable[..., InstrumentorT]) -> InstrumentorT:
        return instrument()

    instrument.__doc__ = (
        f"``instrument(**options)`` instruments {library} with the test's providers; undone "
        "after the test."
    )
    instrumented.__doc__ = f"{library} instrumented with the default options."
    return pytest.fixture(instrument), pytest.fixture(instrumented)
