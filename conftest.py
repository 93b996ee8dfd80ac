"""Loaded by every pytest run in the workspace (unit and integration): per-test time limits."""

from __future__ import annotations

import pytest

# Tests marked slow stop and restart broker connections and wait for clients to reconnect; they get
# this limit instead of the default in pyproject.toml, unless they set their own.
SLOW_TIMEOUT = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
