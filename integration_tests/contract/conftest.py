"""Runs each contract test on every path of every installed plugin (or, marked ``per_plugin``,
once per installed plugin). A plugin is installed in its own nox session, with its client
library; the others are not collected there, so a missing plugin is never a skip. A test marked
``@pytest.mark.paths(predicate, plugin=predicate)`` runs on the paths (of the plugin classes)
the predicates keep; where they keep none in a session, the test is deselected there (it has
nothing to check)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from broker_harness import Broker, Recorder
from integration_tests.contract.case import Case
from integration_tests.contract.protocol import Client, Plugin

# plugin -> (its Plugin class here, the plugin's package, its client library)
PLUGINS = {
    "pika": ("integration_tests.contract.pika_paths:PikaPlugin", "otel_pika", "pika"),
    "aiopika": (
        "integration_tests.contract.aiopika_paths:AioPikaPlugin",
        "otel_aiopika",
        "aio_pika",
    ),
    "aiopika-robust": (
        "integration_tests.contract.aiopika_paths:AioPikaRobustPlugin",
        "otel_aiopika",
        "aio_pika",
    ),
    "kombu": ("integration_tests.contract.kombu_paths:KombuPlugin", "otel_kombu", "kombu"),
}
EMPTY = "got empty parameter set"


@dataclass(frozen=True)
class Target:
    """What one run of a contract test is about: a plugin (a key of PLUGINS), or one of its paths."""

    plugin: str
    path: str | None = None

    def __str__(self) -> str:
        if self.path is None:
            return self.plugin
        # "aiopika-callback" of the "aiopika-robust" plugin is "aiopika-robust-callback"
        return self.plugin + self.path[self.path.index("-") :]


def plugin_class(name: str) -> Any:
    module, _, attribute = PLUGINS[name][0].partition(":")
    return getattr(importlib.import_module(module), attribute)


def importable(name: str) -> bool:
    if name in sys.modules:  # kombu replaces its module object: no __spec__ to find then
        return True
    return importlib.util.find_spec(name) is not None


def installed() -> list[str]:
    """The plugins this session installed (the plugin and its client library importable)."""
    return [
        name
        for name, (_module, package, client) in PLUGINS.items()
        if importable(package) and importable(client)
    ]


def everything(_kind: Any) -> bool:
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "per_plugin: run the contract test once per plugin")
    config.addinivalue_line(
        "markers",
        "paths(predicate, plugin=predicate): run the contract test on the paths (of the plugins)"
        " the predicates keep",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("paths")
    keep: Callable[[Any], bool] = marker.args[0] if marker and marker.args else everything
    keep_plugin = marker.kwargs.get("plugin", everything) if marker else everything
    plugins = [name for name in installed() if keep_plugin(plugin_class(name))]
    if metafunc.definition.get_closest_marker("per_plugin") is None:
        targets = [
            Target(name, path_id)
            for name in plugins
            for path_id, path in plugin_class(name).paths.items()
            if keep(path)
        ]
    else:
        targets = [Target(name) for name in plugins]
    metafunc.parametrize("target", targets, ids=str)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    nothing = [
        item
        for item in items
        if "contract" in item.nodeid.split("::")[0]
        and any(
            str(m.kwargs.get("reason", "")).startswith(EMPTY) for m in item.iter_markers("skip")
        )
    ]
    if nothing:
        config.hook.pytest_deselected(items=nothing)
        items[:] = [item for item in items if item not in nothing]


@pytest.fixture
def plugin(target: Target, rabbitmq: Broker) -> Iterator[Plugin]:
    """The plugin under test."""
    made = plugin_class(target.plugin)(rabbitmq)
    yield made
    made.close()


@pytest.fixture
def client(plugin: Plugin) -> Iterator[Client]:
    """A publisher on its own connection, with the plugin's library."""
    made = plugin.client()
    yield made
    made.close()


@pytest.fixture
def queue(client: Client, unique: Callable[[str], str]) -> Iterator[str]:
    """A queue any connection can use (it expires unused), deleted after the test."""
    name = client.declare_queue(unique("q"), {"x-expires": 120_000})
    yield name
    client.delete_queue(name)


@pytest.fixture
def case(
    target: Target,
    plugin: Plugin,
    client: Client,
    queue: str,
    otel: Recorder,
    rabbitmq: Broker,
    instrumentation: Callable[..., Any],
    unique: Callable[[str], str],
) -> Iterator[Case]:
    """The test's :class:`Case`: on one path of one plugin (the test runs on every such path), or
    on one plugin without a path for a test marked ``per_plugin``."""
    path = plugin.path(target.path) if target.path is not None else None
    instrument = instrumentation(plugin.instrumentor)
    try:
        yield Case(plugin, client, queue, otel, rabbitmq, instrument, unique, path)
    finally:
        if path is not None:
            path.close()
