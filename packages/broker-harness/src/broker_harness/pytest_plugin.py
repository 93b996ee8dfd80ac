"""pytest fixtures: ``rabbitmq`` (the broker), ``unique`` (names), ``otel`` (a recorder).

Without a broker the tests that ask for ``rabbitmq`` skip with a message saying how to start one,
except under ``CI=true`` or ``--require-broker``, where they fail: CI must never go green by
skipping the tests that matter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from broker_harness.broker import Broker, BrokerUnavailable, find_broker, stop_broker, unique_name
from broker_harness.otel import Recorder


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
