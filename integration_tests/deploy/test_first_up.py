"""The stack starts on the first ``docker compose up`` and signs people in: upstream rules, applied.

deploy/ cannot be started here (no Docker engine), so each rule that decides whether a container
starts, turns healthy or lets a user in is taken from the pinned upstream source and applied to the
files: Jaeger's validation of the Cassandra servers, the Cassandra healthcheck under password
authentication, and what oauth2-proxy needs for an internal CA and for each identity provider's
claims. Where the rule lives in a shell command, the command itself runs, with stand-ins for the
programs it calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .deploy_files import (
    CASSANDRA,
    COLLECTOR,
    PROXY,
    QUERY,
    SCHEMA_JOBS,
    cassandra_backends,
    doc_section,
    env_example,
    env_example_text,
    environment,
    interpolate,
    mounts,
    operator_env,
    proxy_config,
    services,
    yaml,
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


# --- Cassandra: healthy under password authentication ----------------------------------------------

_RECORDER = """#!/bin/sh
# stands in for {name}: records its arguments, one per line, and exits {status}
for arg in "$@"; do printf '%s\\n' "$arg"; done > "{log}"
exit {status}
"""


def _stand_in(directory: Path, name: str, *, status: int = 0) -> Path:
    """An executable called `name` in `directory` that writes its argv to `name`.args."""
    log = directory / f"{name}.args"
    program = directory / name
    program.write_text(_RECORDER.format(name=name, log=log, status=status), encoding="utf-8")
    program.chmod(0o755)
    return log


def _container_command(text: str) -> str:
    """A compose string as the container gets it: the env file's variables in, $$ turned into $."""
    return interpolate(text, operator_env())


def _run(shell: str, script: str, env: dict[str, str], bin_dir: Path) -> int:
    executable = shutil.which(shell)
    if executable is None:
        pytest.skip(f"{shell} is not installed here")
    full_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    done = subprocess.run(
        [executable, "-c", script],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode


def _healthcheck() -> str:
    kind, command = services()[CASSANDRA]["healthcheck"]["test"]
    assert kind == "CMD-SHELL", "the check needs the container's shell to read the credentials"
    return _container_command(command)


def test_cassandra_gets_the_credentials_the_stack_logs_in_with() -> None:
    """Cassandra's container has the same CASSANDRA_USERNAME/PASSWORD as the schema jobs and Jaeger."""
    expected = {
        key: environment(services()[COLLECTOR])[key]
        for key in ("CASSANDRA_USERNAME", "CASSANDRA_PASSWORD")
    }
    for name in (CASSANDRA, QUERY, *SCHEMA_JOBS):
        env = environment(services()[name])
        assert {key: env.get(key) for key in expected} == expected, name
    for relative in ("jaeger/collector.yaml", "jaeger/query.yaml"):
        for backend in cassandra_backends(relative).values():
            assert backend["connection"]["auth"]["basic"] == {
                "username": "${env:CASSANDRA_USERNAME}",
                "password": "${env:CASSANDRA_PASSWORD}",
            }


def test_the_cassandra_healthcheck_logs_in_when_a_password_is_set(tmp_path: Path) -> None:
    """With CASSANDRA_PASSWORD set the healthcheck runs cqlsh -u USER -p PASSWORD, so it can pass."""
    log = _stand_in(tmp_path, "cqlsh")
    password = 'p4ss word"$x'
    status = _run(
        "sh",
        _healthcheck(),
        {"CASSANDRA_USERNAME": "jaeger", "CASSANDRA_PASSWORD": password},
        tmp_path,
    )
    assert status == 0
    assert log.read_text(encoding="utf-8").splitlines() == [
        "-u",
        "jaeger",
        "-p",
        password,
        "-e",
        "describe keyspaces",
    ]


def test_the_cassandra_healthcheck_needs_no_credentials_without_authentication(
    tmp_path: Path,
) -> None:
    """With no password configured the healthcheck runs plain cqlsh, as before authentication."""
    log = _stand_in(tmp_path, "cqlsh")
    assert (
        _run("sh", _healthcheck(), {"CASSANDRA_USERNAME": "", "CASSANDRA_PASSWORD": ""}, tmp_path)
        == 0
    )
    assert log.read_text(encoding="utf-8").splitlines() == ["-e", "describe keyspaces"]


def test_the_cassandra_healthcheck_fails_when_cqlsh_fails(tmp_path: Path) -> None:
    """A refused login (cqlsh exit status 1) makes the healthcheck fail, not pass silently."""
    _stand_in(tmp_path, "cqlsh", status=1)
    env = {"CASSANDRA_USERNAME": "jaeger", "CASSANDRA_PASSWORD": "wrong"}
    assert _run("sh", _healthcheck(), env, tmp_path) != 0


def _cassandra_start(tmp_path: Path, authenticator: str) -> tuple[Path, Path]:
    """Run the cassandra service's command with a stand-in entrypoint; (cassandra.yaml, its args)."""
    command = services()[CASSANDRA]["command"]
    assert command[:2] == ["bash", "-c"], command
    conf = tmp_path / "conf"
    conf.mkdir()
    cassandra_yaml = conf / "cassandra.yaml"
    # the shape of the key in Cassandra 5's own cassandra.yaml
    cassandra_yaml.write_text(
        "cluster_name: 'Test Cluster'\nauthenticator:\n  class_name : org.apache.cassandra.auth."
        "AllowAllAuthenticator\nauthorizer:\n  class_name : AllowAllAuthorizer\n",
        encoding="utf-8",
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    args = _stand_in(bin_dir, "docker-entrypoint.sh")
    env = {"CASSANDRA_CONF": str(conf), "CASSANDRA_AUTHENTICATOR": authenticator}
    assert _run("bash", _container_command(command[2]), env, bin_dir) == 0
    return cassandra_yaml, args


def test_cassandra_starts_with_the_authenticator_the_env_file_names(tmp_path: Path) -> None:
    """CASSANDRA_AUTHENTICATOR=PasswordAuthenticator ends up as cassandra.yaml's authenticator."""
    cassandra_yaml, args = _cassandra_start(tmp_path, "PasswordAuthenticator")
    # SnakeYAML, like PyYAML, keeps the last of duplicate keys
    assert yaml.safe_load(cassandra_yaml.read_text(encoding="utf-8"))["authenticator"] == (
        "PasswordAuthenticator"
    )
    assert args.read_text(encoding="utf-8").splitlines() == ["cassandra", "-f"]


def test_cassandra_starts_as_the_image_does_without_an_authenticator(tmp_path: Path) -> None:
    """With CASSANDRA_AUTHENTICATOR empty, cassandra.yaml is untouched and the entrypoint runs as usual."""
    cassandra_yaml, args = _cassandra_start(tmp_path, "")
    assert "\nauthenticator: " not in cassandra_yaml.read_text(encoding="utf-8")
    assert args.read_text(encoding="utf-8").splitlines() == ["cassandra", "-f"]
    assert env_example()["CASSANDRA_AUTHENTICATOR"] == ""


def test_the_authentication_procedure_creates_the_role_before_the_stack_logs_in_with_it() -> None:
    """docs/deploy.md enables PasswordAuthenticator, creates the role, then sets it in the env file."""
    section = doc_section("deploy.md", "Storage: Cassandra, the schema jobs and the TTLs")
    steps = [
        section.index("CASSANDRA_AUTHENTICATOR=PasswordAuthenticator"),
        section.index("CREATE ROLE"),
        section.index("CASSANDRA_USERNAME="),
    ]
    assert steps == sorted(steps), "enable, create the role, then log in with it"
    assert "CASSANDRA_AUTHENTICATOR" in env_example_text()


# --- oauth2-proxy: the first sign-in ---------------------------------------------------------------

_IDP_DIR = "/etc/oauth2-proxy/idp"


def test_an_internal_ca_for_the_idp_is_one_env_line_and_never_blocks_a_public_one() -> None:
    """The proxy reads its IdP CA from an env-file path inside a mounted directory, empty by default."""
    proxy = services()[PROXY]
    assert environment(proxy)["OAUTH2_PROXY_PROVIDER_CA_FILES"] == (
        "${OAUTH2_PROXY_PROVIDER_CA_FILES:-}"
    )
    assert env_example()["OAUTH2_PROXY_PROVIDER_CA_FILES"] == "", (
        "a listed CA file that is missing stops oauth2-proxy: no default path"
    )
    assert _IDP_DIR in mounts(proxy), "the CA needs a way into the distroless container"
    (raw,) = [v for v in proxy["volumes"] if f":{_IDP_DIR}:" in v]
    assert raw.endswith(":ro")
    documented = [
        line.split("=", 1)[1]
        for line in env_example_text().splitlines()
        if line.lstrip("# ").startswith("OAUTH2_PROXY_PROVIDER_CA_FILES=/")
    ]
    assert documented, ".env.example shows where the CA file goes"
    assert all(path.startswith(f"{_IDP_DIR}/") for path in documented), documented
    config = proxy_config()
    assert config["use_system_trust_store"] is True, (
        "public CAs stay trusted next to the internal one"
    )
    assert "provider_ca_files" not in config, (
        "a path in the config file would be required of every IdP"
    )


def test_an_unverified_address_lets_a_member_in_because_email_authorizes_nothing() -> None:
    """Sign-in accepts email_verified=false only while access is decided by group alone."""
    config = proxy_config()
    assert config["insecure_oidc_allow_unverified_email"] is True
    assert config["email_domains"] == ["*"], "an unverified address must not pass a domain check"
    for by_email in ("authenticated_emails_file", "htpasswd_file"):
        assert by_email not in config
    assert config["allowed_groups"], "the group check is what grants access"


def test_the_docs_give_each_identity_providers_group_and_email_settings() -> None:
    """docs/deploy.md says what Keycloak, Entra ID and Google Workspace need so members are not refused."""
    section = doc_section("deploy.md", "Access: the UI behind oauth2-proxy")
    rows = {
        line.split("|")[1].strip(): line
        for line in section.splitlines()
        if line.startswith("| ") and line.count("|") >= 4
    }
    assert '"/developers"' in rows["Keycloak"], "Keycloak sends group paths"
    assert "Object IDs" in rows["Entra ID"], "Entra ID sends group IDs"
    assert "oidc_email_claim" in rows["Entra ID"]
    assert "google_groups" in rows["Google Workspace"], "Google tokens carry no groups"
    assert f"{_IDP_DIR}/" in rows["Google Workspace"], "the key goes where compose mounts it"
    assert "OAUTH2_PROXY_PROVIDER_CA_FILES" in section
