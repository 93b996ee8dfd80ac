"""Every check of the workspace. ``nox -l`` lists them; ``nox -t ci`` runs what CI runs.

One matrix cell: ``nox -s "integration_pika(python='3.12', pika='1.3.2')"``. Extra pytest arguments go
after ``--``: ``nox -s unit -- -k naming``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = ROOT / "packages"
CORE = "./packages/otel-messaging-core"
HARNESS = "./packages/broker-harness"
PLUGINS = {
    "pika": "./packages/otel-pika",
    "aiopika": "./packages/otel-aiopika",
    "kombu": "./packages/otel-kombu",
}
CLIENTS = {"pika": "pika", "aiopika": "aio-pika", "kombu": "kombu"}
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")

# Client versions of the integration matrix: the oldest supported, one middle, the newest.
PIKA_VERSIONS = ("1.1.0", "1.3.2", "latest")
AIOPIKA_VERSIONS = ("8.3.0", "9.5.8", "latest")
KOMBU_VERSIONS = ("5.3.7", "5.5.4", "latest")

TEST_REQUIREMENTS = (
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "hypothesis>=6",
    "opentelemetry-sdk>=1.29",
    "opentelemetry-instrumentation>=0.50b0",
)

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "unit"]


def _found_pythons() -> list[str]:
    """The supported Pythons this machine has, so CI (which errors on a missing one) runs them all."""
    found = [v for v in SUPPORTED_PYTHONS if shutil.which(f"python{v}")]
    if not found and shutil.which("uv"):
        for version in SUPPORTED_PYTHONS:
            probe = subprocess.run(
                ["uv", "python", "find", "--no-python-downloads", version],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                found.append(version)
    return found or ["3.12"]


PYTHONS = _found_pythons()
OLDEST, NEWEST = PYTHONS[0], PYTHONS[-1]
MIDDLE = "3.12" if "3.12" in PYTHONS else NEWEST


def _matrix(versions: tuple[str, ...]) -> list[tuple[str, str]]:
    """(python, client version): oldest client on the oldest Python, newest on the newest."""
    return list(zip((OLDEST, MIDDLE, NEWEST), versions, strict=True))


def _requirement(client: str, version: str) -> str:
    return client if version == "latest" else f"{client}=={version}"


def install(
    session: nox.Session,
    *,
    plugins: tuple[str, ...] = (),
    clients: dict[str, str] | None = None,
    test: bool = True,
    extra: tuple[str, ...] = (),
) -> None:
    """Install the core, the harness, the given plugins and client versions, and test tools.

    Local packages are installed as built wheels, as users get them (entry points included); the
    core is always installed from the tree so a plugin never resolves it from an index.
    """
    clients = clients or {}
    requirements: list[str] = [CORE, HARNESS]
    for plugin in plugins:
        requirements.append(PLUGINS[plugin])
        requirements.append(_requirement(CLIENTS[plugin], clients.get(plugin, "latest")))
    if test:
        requirements.extend(TEST_REQUIREMENTS)
    requirements.extend(extra)
    session.install(*requirements)


def _run_pytest(session: nox.Session, *paths: str) -> None:
    session.run("python", "-bb", "-m", "pytest", *paths, *session.posargs)


def _existing(*paths: str) -> list[str]:
    return [p for p in paths if (ROOT / p).exists()]


@nox.session(tags=["ci"])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=NEWEST, tags=["ci"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every package's source, with every client library installed."""
    install(
        session,
        plugins=tuple(p for p in PLUGINS if (ROOT / PLUGINS[p]).exists()),
        extra=("mypy>=1.13", "testcontainers>=4.8"),
    )
    sources = [str(p) for p in sorted(PACKAGES.glob("*/src"))]
    session.run("mypy", *sources)


@nox.session(python=PYTHONS, tags=["ci"])
def unit(session: nox.Session) -> None:
    """Pure unit tests of each package (no broker), on every supported Python found."""
    plugins = tuple(p for p in PLUGINS if (ROOT / PLUGINS[p] / "tests").exists())
    install(session, plugins=plugins)
    for tests in sorted(PACKAGES.glob("*/tests")):
        # one pytest per package: every package's tests directory is a package named "tests"
        session.run(
            "python", "-bb", "-m", "pytest", str(tests), "-p", "no:cacheprovider", *session.posargs
        )


@nox.session(python=MIDDLE, tags=["ci"])
def smoke(session: nox.Session) -> None:
    """The broker harness against the real broker (and its skip/fail rules when there is none)."""
    install(session, extra=("testcontainers>=4.8",))
    _run_pytest(session, "integration_tests/harness")


def _integration(
    session: nox.Session, plugin: str, version: str, extra: tuple[str, ...] = ()
) -> None:
    install(
        session, plugins=(plugin,), clients={plugin: version}, extra=("testcontainers>=4.8", *extra)
    )
    session.run(
        "python",
        "-c",
        f"import {CLIENTS[plugin].replace('-', '_')} as m; print('client', m.__name__, getattr(m, '__version__', '?'))",
    )
    paths = _existing(f"integration_tests/{plugin}")
    if not paths:
        session.skip(f"integration_tests/{plugin} does not exist yet")
    _run_pytest(session, *paths)


@nox.session(tags=["ci"])
@nox.parametrize(("python", "pika"), _matrix(PIKA_VERSIONS))
def integration_pika(session: nox.Session, pika: str) -> None:
    """otel-pika against the real broker, per pika version."""
    _integration(session, "pika", pika)


@nox.session(tags=["ci"])
@nox.parametrize(("python", "aiopika"), _matrix(AIOPIKA_VERSIONS))
def integration_aiopika(session: nox.Session, aiopika: str) -> None:
    """otel-aiopika against the real broker, per aio-pika version (pika too, as a plain producer)."""
    _integration(session, "aiopika", aiopika, extra=("pika",))


@nox.session(tags=["ci"])
@nox.parametrize(("python", "kombu"), _matrix(KOMBU_VERSIONS))
def integration_kombu(session: nox.Session, kombu: str) -> None:
    """otel-kombu against the real broker and Redis, per kombu version (with Celery and pika)."""
    _integration(
        session,
        "kombu",
        kombu,
        extra=("pika", "redis", "celery", "opentelemetry-instrumentation-celery"),
    )


def _all_plugins() -> tuple[str, ...]:
    return tuple(p for p in PLUGINS if (ROOT / PLUGINS[p] / "src").exists())


DEMO_REQUIREMENTS = (
    "rich>=13",
    "opentelemetry-sdk>=1.29",
    "opentelemetry-proto>=1.29",
    "opentelemetry-exporter-otlp-proto-http>=1.29",
    "testcontainers>=4.8",
)
FLOW_REQUIREMENTS = (*DEMO_REQUIREMENTS, "pyyaml")


@nox.session(python=MIDDLE, tags=["ci"])
def integration_flow(session: nox.Session) -> None:
    """The order flow as three real processes against the real broker; asserts on the OTLP data."""
    install(session, plugins=_all_plugins(), extra=FLOW_REQUIREMENTS)
    paths = _existing(
        "integration_tests/flow", "integration_tests/reliability", "integration_tests/deploy"
    )
    if not paths:
        session.skip("no cross-process tests yet")
    _run_pytest(session, *paths)


# The contrib packages our pika and aio-pika plugins replace; contrib aio-pika refuses aio-pika 10.
CONTRIB_REQUIREMENTS = (
    "aio-pika>=9.5,<10",
    "opentelemetry-instrumentation-pika==0.66b1",
    "opentelemetry-instrumentation-aio-pika==0.66b1",
)


@nox.session(python=MIDDLE, tags=["ci"])
def integration_contrib(session: nox.Session) -> None:
    """Our plugins next to opentelemetry-instrumentation-pika / -aio-pika in one process."""
    install(session, plugins=_all_plugins(), extra=(*FLOW_REQUIREMENTS, *CONTRIB_REQUIREMENTS))
    _run_pytest(session, "integration_tests/reliability/test_contrib_conflict.py")


@nox.session(python=MIDDLE)
def demo(session: nox.Session) -> None:
    """Run the shop -> SRM -> MES order flow (about 20 orders) and print where each order went."""
    install(session, plugins=_all_plugins(), test=False, extra=DEMO_REQUIREMENTS)
    session.run(
        "python", "-m", "examples.order_flow", *session.posargs, env={"PYTHONPATH": str(ROOT)}
    )


BENCH_REQUIREMENTS = (
    # the contrib packages are measured in the same run
    *CONTRIB_REQUIREMENTS,
    "opentelemetry-sdk>=1.29",
    "testcontainers>=4.8",
)


@nox.session(python=MIDDLE)
def bench(session: nox.Session) -> None:
    """Messages/s and µs per message: uninstrumented vs ours vs contrib vs the SDK floor."""
    install(session, plugins=_all_plugins(), test=False, extra=BENCH_REQUIREMENTS)
    session.run("python", "-m", "benchmarks", *session.posargs, env={"PYTHONPATH": str(ROOT)})


@nox.session(python=MIDDLE, tags=["ci"])
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs (furo) with warnings as errors."""
    install(
        session, plugins=_all_plugins(), test=False, extra=("sphinx>=7", "furo", "myst-parser>=3")
    )
    build = ROOT / "docs" / "_build"
    session.run(
        "sphinx-build", "-W", "--keep-going", "-n", "-b", "html", "docs", str(build / "html")
    )


@nox.session(python=MIDDLE)
def transparency(session: nox.Session) -> None:
    """The clients' own test suites, without and with our instrumentation: fails on any outcome
    difference not in transparency/lists (see transparency/README.md). Extra arguments go to the
    runner, e.g. ``-- --suite pika --source pika=PATH``. Not in ``-t ci``: about 33 minutes."""
    # pip downloads the sdists, uv makes one venv per release; pytest runs the runner's own tests
    session.install("pip", "uv", "pytest>=8", "pytest-asyncio>=0.24")
    session.run("python", "-m", "pytest", "transparency/tests", "-q", "-p", "no:cacheprovider")
    session.run(
        "python",
        "-m",
        "transparency",
        "--workdir",
        str(Path(session.virtualenv.location) / "work"),
        *session.posargs,
        env={"PYTHONPATH": str(ROOT)},
    )
