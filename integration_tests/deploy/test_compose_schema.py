"""deploy/compose.yaml is a valid Compose file for the filled-in env file, so a typo fails CI.

There is no Compose here to run ``docker compose config``, so the tests do what it does before it
starts anything (compose-go v2 loader/loader.go, loadYamlFile): parse the YAML (anchors and merge
keys resolved), interpolate every value from the env file, validate the result against the
compose-spec JSON schema, then check that every service, network and volume a service refers to
is declared (loader/validate.go, checkConsistency).

The schema is the pinned copy that check-jsonschema ships (check_jsonschema/builtin_schemas/
vendor/compose-spec.json, vendored from compose-spec/compose-spec schema/compose-spec.json,
Apache-2.0): installed from PyPI at the version below, so an upgrade of the schema is a
deliberate change of that pin (FLOW_REQUIREMENTS in noxfile.py).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from importlib import metadata, resources
from typing import Any

import jsonschema
import pytest

from .deploy_files import (
    EXAMPLE_ENV,
    compose,
    compose_text,
    env_example,
    interpolate,
    interpolate_tree,
    networks_of,
    operator_env,
)

SCHEMA_PACKAGE = "check-jsonschema"
SCHEMA_VERSION = "0.39.0"


@functools.cache
def _schema() -> dict[str, Any]:
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    ).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _validator() -> Any:
    schema = _schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def _errors(document: dict[str, Any]) -> list[str]:
    validator = _validator()
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def _rendered() -> dict[str, Any]:
    """compose.yaml as ``docker compose --env-file`` sees it with .env.example filled in."""
    rendered: dict[str, Any] = interpolate_tree(copy.deepcopy(compose()), operator_env())
    return rendered


def test_the_schema_is_the_pinned_one() -> None:
    """The tests validate against the compose-spec schema of the pinned check-jsonschema release."""
    assert metadata.version(SCHEMA_PACKAGE) == SCHEMA_VERSION
    schema = _schema()
    assert schema["title"] == "Compose Specification"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_compose_yaml_is_valid_compose_for_the_filled_in_env_example() -> None:
    """With .env.example filled in, compose.yaml passes the compose-spec schema without one error."""
    assert _errors(_rendered()) == []


def _rename_key(path: tuple[str, ...], old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        node = document
        for part in path:
            node = node[part]
        node[new] = node.pop(old)

    return mutate


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        node = document
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


TYPOS = {
    "healthcheck spelled healtcheck": _rename_key(
        ("services", "cassandra"), "healthcheck", "healtcheck"
    ),
    "a depends_on condition misspelled": _set(
        ("services", "jaeger-collector", "depends_on", "cassandra-schema", "condition"),
        "service_completed",
    ),
    "networks spelled network at the top": _rename_key((), "networks", "network"),
    "a port given as a list": _set(("services", "oauth2-proxy", "ports"), [["10.20.0.15", 8443]]),
    "mem_limit spelled mem_limt": _rename_key(("services", "cassandra"), "mem_limit", "mem_limt"),
    "a network's ipam config not a list": _set(
        ("networks", "ui", "ipam", "config"), "172.30.116.0/29"
    ),
    "restart given as a number": _set(("services", "rabbitmq", "restart"), 7),
}


@pytest.mark.parametrize("typo", sorted(TYPOS))
def test_a_typo_in_compose_yaml_fails_validation(typo: str) -> None:
    """Each kind of slip a reviewer could miss (a key, an enum value, a type) fails the schema check."""
    document = _rendered()
    TYPOS[typo](document)
    assert _errors(document), f"the schema accepted {typo}"


def test_every_service_network_and_volume_a_service_names_is_declared() -> None:
    """depends_on, networks and named volumes all resolve, as compose-go checks before `up`."""
    document = _rendered()
    services: dict[str, Any] = document["services"]
    declared_networks = set(document.get("networks", {}))
    declared_volumes = set(document.get("volumes", {}))
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name} has neither image nor build"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on undefined service {dependency}"
        undefined = networks_of(service) - declared_networks
        assert not undefined, f"{name} refers to undefined networks {undefined}"
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared_volumes, f"{name} refers to undefined volume {source}"


def test_each_required_variable_stops_compose_with_the_message_next_to_it() -> None:
    """Leaving out any variable compose.yaml marks required fails with that variable named."""
    required = {name for name, operator, _ in _compose_variables() if operator == ":?"}
    assert required, "compose.yaml requires no variable"
    assert required <= set(EXAMPLE_ENV), "every required variable has an example value"
    for name in sorted(required):
        assert env_example().get(name) == "", f".env.example must leave {name} for the operator"
        env = {k: v for k, v in operator_env().items() if k != name}
        with pytest.raises(LookupError, match=name):
            interpolate(compose_text(), env)


def _compose_variables() -> set[tuple[str, str, str]]:
    from .deploy_files import COMPOSE_VAR

    found: set[tuple[str, str, str]] = set(COMPOSE_VAR.findall(compose_text().replace("$$", "")))
    return found
