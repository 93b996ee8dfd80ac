"""The broker fixture: finds the real broker, and skips or fails per SPEC when there is none."""

from __future__ import annotations

import socket
import textwrap

import pytest

from broker_harness import Broker, BrokerUnavailable, find_broker, unique_name
from broker_harness.broker import amqp_handshake

pytest_plugins = ["pytester"]


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fixture_connects_to_a_real_broker(rabbitmq: Broker) -> None:
    """The fixture hands out a broker that answers the AMQP handshake."""
    assert rabbitmq.source in {"env", "local", "container"}
    assert amqp_handshake(rabbitmq.host, rabbitmq.port)


def test_rabbitmq_url_wins_and_a_dead_one_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """RABBITMQ_URL is tried first; when it does not answer the error names it instead of guessing."""
    monkeypatch.setenv("RABBITMQ_URL", f"amqp://guest:guest@127.0.0.1:{_dead_port()}/")
    with pytest.raises(BrokerUnavailable, match="RABBITMQ_URL is set"):
        find_broker()


def test_unique_names_differ() -> None:
    """Every call gives a new name, so parallel tests and runs never share queues."""
    names = {unique_name("q") for _ in range(100)}
    assert len(names) == 100


NEEDS_BROKER = textwrap.dedent(
    """
    def test_needs_broker(rabbitmq):
        pass
    """
)


@pytest.mark.parametrize(
    ("ci", "flag", "outcome"),
    [("", "", "skipped"), ("true", "", "failed"), ("", "--require-broker", "failed")],
)
def test_missing_broker_skips_or_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, flag: str, outcome: str
) -> None:
    """Without a broker a test skips with how-to-start advice, but fails under CI=true or --require-broker."""
    monkeypatch.setenv("RABBITMQ_URL", f"amqp://guest:guest@127.0.0.1:{_dead_port()}/")
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(NEEDS_BROKER)
    args = ["-p", "broker_harness.pytest_plugin", "-rs"]
    result = pytester.runpytest_subprocess(*args, *([flag] if flag else []))
    result.assert_outcomes(**{outcome if outcome != "failed" else "errors": 1})
    assert "does not answer AMQP" in result.stdout.str()
