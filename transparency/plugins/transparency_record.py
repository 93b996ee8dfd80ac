"""pytest plugin loaded in every run (``-p transparency_record``): one JSON line per test outcome.

Lines are written as each test finishes, so a run stopped by the session's time bound still
leaves the outcomes it reached. ``TRANSPARENCY_RECORD`` names the file.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any

import pytest

_file: IO[str] | None = None
# nodeid -> outcome so far (setup, call and teardown each report; the worst one wins)
_seen: dict[str, str] = {}
_seconds: dict[str, float] = {}


def _write(record: dict[str, Any]) -> None:
    if _file is not None:
        _file.write(json.dumps(record) + "\n")
        _file.flush()


def pytest_configure(config: pytest.Config) -> None:
    global _file
    path = os.environ.get("TRANSPARENCY_RECORD")
    if path and _file is None:
        _file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run


def pytest_unconfigure(config: pytest.Config) -> None:
    global _file
    if _file is not None:
        _file.close()
        _file = None


def _phase_outcome(report: pytest.TestReport) -> str:
    wasxfail = hasattr(report, "wasxfail")
    if report.passed:
        return "xpassed" if wasxfail else "passed"
    if report.skipped:
        return "xfailed" if wasxfail else "skipped"
    # a failure outside the test body is pytest's "error"
    return "failed" if report.when == "call" else "error"


_RANK = {"passed": 0, "xfailed": 1, "skipped": 1, "xpassed": 2, "failed": 3, "error": 4}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration
    outcome = _phase_outcome(report)
    if report.when == "teardown" and outcome in ("passed", "skipped"):
        return
    before = _seen.get(report.nodeid)
    if before is None or _RANK[outcome] > _RANK[before]:
        _seen[report.nodeid] = outcome


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    seconds = round(_seconds.pop(nodeid, 0.0), 3)
    _write({"test": nodeid, "outcome": _seen.pop(nodeid, "error"), "seconds": seconds})


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _write({"test": report.nodeid or "<collection>", "outcome": "collect-error"})


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        _write({"test": item.nodeid, "outcome": "deselected"})
