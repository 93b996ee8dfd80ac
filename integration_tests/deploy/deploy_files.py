"""Read deploy/ the way the tools that run it do: compose interpolation, collector variables, TOML.

Shared by the deploy tests. Nothing here needs a Docker engine; what needs a program (the Cassandra
healthcheck's shell, the dead-letter policy script, rabbitmqctl) is run by the tests themselves.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="the deploy checks read YAML: install pyyaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCS = ROOT / "docs"

PROXY = "oauth2-proxy"
QUERY = "jaeger-query"
COLLECTOR = "jaeger-collector"
GATEWAY = "otel-gateway"
CASSANDRA = "cassandra"
SCHEMA_JOBS = ("cassandra-schema", "cassandra-schema-archive")

# What an operator writes in deploy/.env for the lines .env.example leaves empty because they are
# site-specific or secret (example values, used to expand compose.yaml).
EXAMPLE_ENV = {
    "JAEGER_UI_BIND_ADDRESS": "10.20.0.15",
    "JAEGER_UI_URL": "https://jaeger.corp.example:8443",
    "OAUTH2_PROXY_OIDC_ISSUER_URL": "https://sso.corp.example/realms/corp",
    "OAUTH2_PROXY_CLIENT_ID": "jaeger-ui",
    "OAUTH2_PROXY_CLIENT_SECRET": "x" * 32,
    "OAUTH2_PROXY_COOKIE_SECRET": "y" * 32,
    "RABBITMQ_DEFAULT_USER": "shop",
    "RABBITMQ_DEFAULT_PASS": "z" * 24,
}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} (compose interpolation)
COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
# ${env:VAR} and ${env:VAR:-default} (collector configuration)
COLLECTOR_VAR = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@functools.cache
def load_yaml(relative: str) -> dict[str, Any]:
    """A YAML file under deploy/, parsed."""
    loaded = yaml.safe_load((DEPLOY / relative).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), f"{relative} is not a YAML mapping"
    return loaded


@functools.cache
def proxy_config() -> dict[str, Any]:
    """deploy/oauth2-proxy/oauth2-proxy.cfg (TOML, as oauth2-proxy reads it)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the flow session runs on 3.12
        tomllib = pytest.importorskip("tomli", reason="the oauth2-proxy config is TOML")
    with (DEPLOY / "oauth2-proxy" / "oauth2-proxy.cfg").open("rb") as file:
        loaded: dict[str, Any] = tomllib.load(file)
    return loaded


def env_example_text() -> str:
    return (DEPLOY / ".env.example").read_text(encoding="utf-8")


@functools.cache
def env_example() -> dict[str, str]:
    """The variables deploy/.env.example sets (name -> value; commented lines left out)."""
    values: dict[str, str] = {}
    for line in env_example_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def operator_env() -> dict[str, str]:
    """.env.example as an operator fills it in: its values, plus the required ones it leaves empty."""
    return {**{k: v for k, v in env_example().items() if v}, **EXAMPLE_ENV}


def compose_text() -> str:
    return (DEPLOY / "compose.yaml").read_text(encoding="utf-8")


def compose() -> dict[str, Any]:
    return load_yaml("compose.yaml")


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def interpolate(text: str, env: dict[str, str]) -> str:
    """Expand compose variables the way ``docker compose`` does for the given env file."""

    def expand(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        # with a colon, an empty value counts as unset
        missing = not value if operator in (":-", ":?") else value is None
        if not missing:
            return str(value)
        if operator in (":?", "?"):
            raise LookupError(f"{name} is required: {argument}")
        return argument if operator in (":-", "-") else ""

    return COMPOSE_VAR.sub(expand, text.replace("$$", "\0")).replace("\0", "$")


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    """Every string value of a loaded compose file interpolated (keys are not, as in compose-go)."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def collector_default(value: Any) -> Any:
    """A collector setting as it takes effect when its ``${env:VAR:-default}`` variable is unset."""
    if isinstance(value, str):
        match = COLLECTOR_VAR.fullmatch(value.strip())
        if match:
            assert match.group(2) is not None, f"{value} has no default"
            return yaml.safe_load(match.group(2))
    return value


def networks_of(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks", [])
    return set(networks if isinstance(networks, list) else networks.keys())


def members(network: str) -> set[str]:
    return {name for name, service in services().items() if network in networks_of(service)}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of each bind mount (relative to deploy/), for the operator env."""
    found: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target = interpolate(volume, operator_env()).split(":")[:2]
        found[target] = source
    return found


def services_mounting(relative: str) -> list[str]:
    return [
        name for name, service in services().items() if f"./{relative}" in mounts(service).values()
    ]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as written (merge keys resolved, values not interpolated)."""
    found = service.get("environment", {})
    if isinstance(found, list):
        found = dict(item.split("=", 1) for item in found)
    return {str(key): str(value) for key, value in found.items()}


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port, for the example env."""
    found = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            found.append(
                (str(entry.get("host_ip", "")), int(entry["published"]), int(entry["target"]))
            )
            continue
        parts = interpolate(str(entry), EXAMPLE_ENV).split("/")[0].split(":")
        if len(parts) == 3:
            found.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            found.append(("", int(parts[0]), int(parts[1])))
        else:
            found.append(("", 0, int(parts[0])))
    return found


def seconds(duration: str) -> float:
    """A Go duration such as 60s, 2m or 1008h in seconds."""
    assert re.fullmatch(r"(\d+(\.\d+)?(ms|s|m|h))+", duration), f"not a Go duration: {duration}"
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(
        float(amount) * units[unit]
        for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    )


def hours(duration: str) -> int:
    """A TTL written as whole hours (``1008h``), the form Jaeger's Cassandra schema settings take."""
    match = re.fullmatch(r"(\d+)h", duration)
    assert match, f"TTL {duration!r} is not written as whole hours"
    return int(match.group(1))


def cassandra_backends(relative: str) -> dict[str, dict[str, Any]]:
    backends = load_yaml(relative)["extensions"]["jaeger_storage"]["backends"]
    return {name: backend["cassandra"] for name, backend in backends.items()}


def main_and_archive() -> tuple[dict[str, Any], dict[str, Any]]:
    storage = load_yaml("jaeger/query.yaml")["extensions"]["jaeger_query"]["storage"]
    backends = cassandra_backends("jaeger/query.yaml")
    return backends[storage["traces"]], backends[storage["traces_archive"]]


def sampler_services() -> list[str]:
    return services_mounting("otel/sampler.yaml")


def tail_sampling() -> dict[str, Any]:
    config: dict[str, Any] = load_yaml("otel/sampler.yaml")["processors"]["tail_sampling"]
    return config


def policies_by_type() -> dict[str, dict[str, Any]]:
    return {policy["type"]: policy for policy in tail_sampling()["policies"]}


def image_tag(service: str) -> str:
    return str(services()[service]["image"]).rpartition(":")[2]


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def doc_section(name: str, heading: str) -> str:
    """The text of one ``## heading`` section of a Markdown page (up to the next ``## ``)."""
    text = doc(name)
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]
