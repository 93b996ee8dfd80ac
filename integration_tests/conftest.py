"""Shared by every integration test: the broker harness plugin provides ``rabbitmq``, ``unique`` and ``otel``;
unsampled_cases the ``manual_ack`` and ``quiet_ack`` consumers, on both paths, of each plugin's
``instrument``; this module the ``fault`` of one step made to raise."""

from __future__ import annotations

import logging

import pytest

from integration_tests.internal_faults import fault_logged, inject

pytest_plugins = ["broker_harness.pytest_plugin", "integration_tests.unsampled_cases"]


class Fault:
    """One step of the core or the plugin made to raise for the test (:func:`inject`), before
    the test instruments, with our guard's log captured."""

    def __init__(
        self, step: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        self.step = step
        self.caplog = caplog
        caplog.set_level(logging.DEBUG, logger="otel_messaging_core")
        inject(monkeypatch, step)

    def check_logged(self) -> None:
        """Our guard logged the fault: the flow really reached the step."""
        assert fault_logged(self.caplog, self.step), self.step


@pytest.fixture
def fault(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> Fault:
    """The :class:`Fault` of the step a test gives with
    ``@pytest.mark.parametrize("fault", STEPS, indirect=True)``."""
    return Fault(request.param, monkeypatch, caplog)
