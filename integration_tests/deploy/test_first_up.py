"""The stack starts on the first ``docker compose up`` and signs people in: upstream rules, applied.

deploy/ cannot be started here (no Docker engine), so each rule that decides whether a container
starts, turns healthy or lets a user in is taken from the pinned upstream source and applied to the
files: Jaeger's validation of the Cassandra servers, the Cassandra healthcheck under password
authentication, and what oauth2-proxy needs for an internal CA and for each identity provider's
claims. Where the rule lives in a shell command, the command itself runs, with stand-ins for the
programs it calls.
"""

from __future__ import annotations

import pytest

from .deploy_files import (
    cassandra_backends,
    services,
)
from .upstream import govalidator_is_url

# --- Jaeger: the Cassandra servers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "valid"),
    [
        # jaegertracing/jaeger v2.8.0, internal/storage/cassandra/config/config_test.go
        ("not a url", False),
        ("localhost:9200", True),
        # DefaultConfiguration() in config.go
        ("127.0.0.1", True),
        # the two spellings of this stack's node
        ("cassandra", False),
        ("cassandra:9042", True),
    ],
)
def test_the_ported_url_rule_agrees_with_jaegers_own_cases(server: str, valid: bool) -> None:
    """The Python port of govalidator.IsURL gives Jaeger's own test cases their upstream verdict."""
    assert govalidator_is_url(server) is valid


def test_every_cassandra_server_passes_jaegers_url_validation() -> None:
    """Each `servers` entry is host:port (or dotted), so jaeger_storage does not refuse to start."""
    for relative in ("jaeger/collector.yaml", "jaeger/query.yaml"):
        for name, backend in cassandra_backends(relative).items():
            servers = backend["connection"]["servers"]
            assert servers, f"{relative}:{name}: servers is required"
            for server in servers:
                assert govalidator_is_url(server), (
                    f"{relative}:{name}: Jaeger 2.8.0 rejects servers entry {server!r} "
                    '(valid:"required,url"); write it as host:port'
                )
                host, _, port = server.rpartition(":")
                assert host in services(), f"{server} is not a service of compose.yaml"
                assert port == str(backend["connection"]["port"]) == "9042"
