"""Every check of the workspace. ``nox -l`` lists them; ``nox -s quick`` is the fast loop (the
default), ``nox -t ci`` runs what CI runs.

One matrix cell: ``nox -s "integration_pika(python='3.12', pika='1.3.2')"``. Extra pytest arguments go
after ``--``: ``nox -s unit -- -k naming``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # nox itself depends on tomli below 3.11
    import tomli as tomllib

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

nox.needs_version = ">=2026.8.10"  # allow_parallel= (nox -j), nox.options.download_python
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
# A session listed for a Python that is then missing fails instead of passing as "skipped", and
# nox never downloads one: the interpreters are the ones found below, or the session fails.
nox.options.error_on_missing_interpreters = True
nox.options.download_python = "never"
nox.options.sessions = ["quick"]


# --- Interpreters -------------------------------------------------------------------------------
# The one place that decides which Pythons this machine has. A Python counts only if it runs: a
# pyenv shim for a version that is not active answers `which python3.12` and then fails.

LINKS = ROOT / ".nox" / ".interpreters"  # pythonX.Y -> each interpreter found
_PROBE = (
    "import os, sys; b = getattr(sys, '_base_executable', '') or sys.executable; "
    "print('%d.%d' % sys.version_info[:2]); print(b if os.path.exists(b) else sys.executable)"
)


def _probe(candidate: str) -> tuple[str, str] | None:
    """(X.Y, the interpreter's own executable) when ``candidate`` runs ``import sys``, else None."""
    try:
        result = subprocess.run(
            [candidate, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) != 2:
        return None
    return lines[0], lines[1]


def _pyenv_root() -> Path | None:
    """``$(pyenv root)`` ($PYENV_ROOT, else ~/.pyenv) when it has versions, pyenv on PATH or not."""
    root = os.environ.get("PYENV_ROOT")
    if not root and (pyenv := shutil.which("pyenv")):
        result = subprocess.run(
            [pyenv, "root"], capture_output=True, text=True, timeout=30, check=False
        )
        root = result.stdout.strip() if result.returncode == 0 else None
    path = Path(root) if root else Path.home() / ".pyenv"
    return path if (path / "versions").is_dir() else None


def _release(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in path.parts[-3].split("."))


def _candidates(version: str, pyenv: Path | None) -> Iterator[str]:
    """Where ``pythonX.Y`` may be, most likely first: PATH, pyenv's versions, uv.

    pyenv's shims are not run: a shim runs a binary from pyenv's versions, which come next anyway,
    and a shim for a version that is not active only fails, slowly (a bash script each).
    """
    name = f"python{version}"
    # a nox started by nox (nox --parallel runs each session in one) has our links on PATH already
    skipped = {str(LINKS), str(pyenv / "shims") if pyenv else ""}
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(directory, name)
        if directory not in skipped and os.path.isfile(path) and os.access(path, os.X_OK):
            yield path
    if pyenv:
        plain = re.compile(rf"{re.escape(version)}(\.\d+)?")  # not 3.13t, 3.12-dev, virtualenvs
        builds = [
            p
            for p in (pyenv / "versions").glob(f"{version}*/bin/{name}")
            if plain.fullmatch(p.parts[-3])
        ]
        yield from (str(p) for p in sorted(builds, key=_release, reverse=True))
    if uv := shutil.which("uv"):
        result = subprocess.run(
            [uv, "python", "find", "--no-python-downloads", version],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode == 0 and result.stdout.strip():
            yield result.stdout.strip()


def _find(version: str, pyenv: Path | None) -> str | None:
    """The executable of the first candidate that runs and is ``version``; the running one first."""
    candidates: Iterator[str] = _candidates(version, pyenv)
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        candidates = itertools.chain([sys.executable], candidates)
    for candidate in candidates:
        probed = _probe(candidate)
        if probed and probed[0] == version:
            return probed[1]
    return None


def _find_interpreters() -> dict[str, str]:
    """{X.Y: executable} for every supported Python that runs here (looked for concurrently)."""
    pyenv = _pyenv_root()
    with ThreadPoolExecutor(len(SUPPORTED_PYTHONS)) as pool:
        executables = list(pool.map(lambda v: _find(v, pyenv), SUPPORTED_PYTHONS))
    return {v: e for v, e in zip(SUPPORTED_PYTHONS, executables, strict=True) if e}


def _expose(interpreters: dict[str, str]) -> None:
    """Put each interpreter found on PATH as ``pythonX.Y``, ahead of any shim, for nox, uv and
    virtualenv to find by name. Only those names are added (a symlink each): putting pyenv's
    ``versions/*/bin`` on PATH would also put their python3, pip and console scripts first.
    """
    try:
        LINKS.mkdir(parents=True, exist_ok=True)
        for version, executable in interpreters.items():
            temporary = LINKS / f".python{version}-{os.getpid()}"
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(os.path.realpath(executable))
            # atomic: a nox running at the same time sees the old link or the new one
            temporary.replace(LINKS / f"python{version}")
        directories = [str(LINKS)]
    except OSError:  # a read-only checkout: their own directories, then
        directories = list(dict.fromkeys(os.path.dirname(e) for e in interpreters.values()))
    os.environ["PATH"] = os.pathsep.join([*directories, os.environ.get("PATH", "")])


# nox -j runs each session in a nox of its own, which imports this file again: the first one's
# findings are handed down through the environment instead of being looked for again.
_FOUND = "OTEL_RABBITMQ_NOX_INTERPRETERS"
INTERPRETERS: dict[str, str] = (
    json.loads(os.environ[_FOUND]) if _FOUND in os.environ else _find_interpreters()
)
os.environ[_FOUND] = json.dumps(INTERPRETERS)
_expose(INTERPRETERS)
if missing := [v for v in SUPPORTED_PYTHONS if v not in INTERPRETERS]:
    print(
        f"noxfile: no working Python {', '.join(missing)} (looked on PATH, in pyenv's versions and "
        "through uv); "
        + (
            "CI lists their sessions, which fail"
            if os.environ.get("CI")
            else "their sessions are not listed"
        ),
        file=sys.stderr,
    )

# CI must test every supported Python, so it lists them all and a missing one fails; elsewhere the
# matrix is the Pythons this machine has.
PYTHONS = list(SUPPORTED_PYTHONS) if os.environ.get("CI") else list(INTERPRETERS)
PYTHONS = PYTHONS or list(SUPPORTED_PYTHONS)
OLDEST, NEWEST = PYTHONS[0], PYTHONS[-1]
MIDDLE = "3.12" if "3.12" in PYTHONS else NEWEST
RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"
# The demo and the quick loop run on the Python running nox when it is supported: it exists.
HERE = RUNNING if RUNNING in PYTHONS else NEWEST


def _spread(count: int) -> list[str]:
    """``count`` Pythons from oldest to newest, spread over the ones in the matrix."""
    last = len(PYTHONS) - 1
    return [PYTHONS[round(i * last / max(count - 1, 1))] for i in range(count)]


# --- Declared versions --------------------------------------------------------------------------
# The floors are read from the packages' own metadata, so the versions tested at the floor are the
# versions declared, by construction.


def _requirements(package: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / package / "pyproject.toml").read_text())["project"]
    declared = [*project.get("dependencies", ())]
    for extra in project.get("optional-dependencies", {}).values():
        declared.extend(extra)
    return [Requirement(r) for r in declared]


def _floor(name: str) -> str:
    """The lowest version any package declares for ``name`` (its ``>=`` bound), as X.Y.Z."""
    bounds = {
        spec.version
        for package in (CORE, *PLUGINS.values())
        for requirement in _requirements(package)
        if requirement.name == name
        for spec in requirement.specifier
        if spec.operator == ">="
    }
    if not bounds:
        raise LookupError(f"no package declares a >= bound for {name}")
    lowest = min(Version(b) for b in bounds)
    if lowest.pre or lowest.dev:
        return str(lowest)
    return ".".join(str(part) for part in [*lowest.release, 0, 0][:3])


# opentelemetry-api/-sdk and -instrumentation/-semantic-conventions are released together.
OTEL_API = ("opentelemetry-api", "opentelemetry-sdk")
OTEL_CONTRIB = ("opentelemetry-instrumentation", "opentelemetry-semantic-conventions")


def floor_pins() -> tuple[str, ...]:
    """Every OpenTelemetry package and wrapt pinned at the oldest version the packages declare."""
    api = _floor("opentelemetry-api")
    contrib = _floor("opentelemetry-instrumentation")
    return (
        *(f"{name}=={api}" for name in OTEL_API),
        *(f"{name}=={contrib}" for name in OTEL_CONTRIB),
        f"wrapt=={_floor('wrapt')}",
    )


TEST_REQUIREMENTS = (
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "pytest-timeout>=2.3",
    "hypothesis>=6",
    "opentelemetry-sdk>=1.29",
    "opentelemetry-instrumentation>=0.50b0",
)


def _requirement(client: str, version: str) -> str:
    return client if version == "latest" else f"{client}=={version}"


def install(
    session: nox.Session,
    *,
    plugins: tuple[str, ...] = (),
    clients: dict[str, str] | None = None,
    test: bool = True,
    floor: bool = False,
    extra: tuple[str, ...] = (),
) -> None:
    """Install the core, the harness, the given plugins and client versions, and test tools.

    Local packages are installed as built wheels, as users get them (entry points included); the
    core is always installed from the tree so a plugin never resolves it from an index. With
    ``floor``, OpenTelemetry and wrapt are installed at their declared floors in the same call.
    """
    clients = clients or {}
    requirements: list[str] = [CORE, HARNESS]
    for plugin in plugins:
        requirements.append(PLUGINS[plugin])
        requirements.append(_requirement(CLIENTS[plugin], clients.get(plugin, "latest")))
    if test:
        requirements.extend(TEST_REQUIREMENTS)
    requirements.extend(extra)
    if floor:
        requirements.extend(floor_pins())
    reinstall: list[str] = []
    if session.venv_backend == "uv":
        # uv keeps a local package's built wheel until its pyproject.toml changes, so a reused
        # venv would test stale source; pip rebuilds a local directory on every install.
        for path in requirements:
            if path.startswith("./packages/"):
                reinstall += ["--reinstall-package", Path(path).name]
    session.install(*reinstall, *requirements)


def _run_pytest(session: nox.Session, *paths: str) -> None:
    # A nox session exists to test against the broker: one that cannot find a broker fails, it
    # never passes by skipping (plain `pytest` still skips, saying how to start one).
    session.run("python", "-bb", "-m", "pytest", "--require-broker", *paths, *session.posargs)


def _existing(*paths: str) -> list[str]:
    return [p for p in paths if (ROOT / p).exists()]


def _all_plugins() -> tuple[str, ...]:
    return tuple(p for p in PLUGINS if (ROOT / PLUGINS[p] / "src").exists())


# --- Sessions -----------------------------------------------------------------------------------


@nox.session(tags=["ci"], allow_parallel=True)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=NEWEST, tags=["ci"], allow_parallel=True)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every package's source, with every client library installed."""
    install(
        session,
        plugins=tuple(p for p in PLUGINS if (ROOT / PLUGINS[p]).exists()),
        extra=("mypy>=1.13", "testcontainers>=4.8"),
    )
    sources = [str(p) for p in sorted(PACKAGES.glob("*/src"))]
    session.run("mypy", *sources)


def _unit(session: nox.Session, *, floor: bool = False) -> None:
    plugins = tuple(p for p in PLUGINS if (ROOT / PLUGINS[p] / "tests").exists())
    install(session, plugins=plugins, floor=floor)
    for tests in sorted(PACKAGES.glob("*/tests")):
        # one pytest per package: every package's tests directory is a package named "tests"
        session.run(
            "python", "-bb", "-m", "pytest", str(tests), "-p", "no:cacheprovider", *session.posargs
        )


@nox.session(python=PYTHONS, tags=["ci"], allow_parallel=True)
def unit(session: nox.Session) -> None:
    """Pure unit tests of each package (no broker), on every supported Python found."""
    _unit(session)


@nox.session(python=OLDEST, tags=["ci"], allow_parallel=True)
def unit_floor(session: nox.Session) -> None:
    """The unit tests with OpenTelemetry and wrapt at the oldest versions the packages declare."""
    _unit(session, floor=True)


@nox.session(python=MIDDLE, tags=["ci"], allow_parallel=True)
def smoke(session: nox.Session) -> None:
    """The broker harness against the real broker (and its skip/fail rules when there is none)."""
    install(session, extra=("testcontainers>=4.8",))
    _run_pytest(session, "integration_tests/harness")


def _cells(plugin: str, middle: str) -> list[nox.Param]:
    """The integration cells of one plugin, oldest Python first.

    - the declared floor of everything: the client, OpenTelemetry and wrapt (``deps='floor'``);
    - the client at its floor, at one middle release and at the newest, each with the newest
      OpenTelemetry and wrapt.
    """
    client = CLIENTS[plugin]
    floor = _floor(client)
    pythons = _spread(4)
    cells = [(floor, "floor"), (floor, "latest"), (middle, "latest"), ("latest", "latest")]
    params = []
    for python, (version, deps) in zip(pythons, cells, strict=True):
        name = f"python={python!r}, {plugin}={version!r}"
        if deps == "floor":
            name += ", deps='floor'"
        params.append(nox.param(python, version, deps, id=name))
    QUICK_CELLS.append(f"integration_{plugin}({params[-1].id})")
    return params


QUICK_CELLS: list[str] = []  # the newest cell of each plugin


def _integration(
    session: nox.Session, plugin: str, version: str, deps: str, extra: tuple[str, ...] = ()
) -> None:
    install(
        session,
        plugins=(plugin,),
        clients={plugin: version},
        floor=deps == "floor",
        extra=("testcontainers>=4.8", *extra),
    )
    session.run(
        "python",
        "-c",
        "from importlib.metadata import version as v; "
        f"print(*(f'{{n}} {{v(n)}}' for n in ({CLIENTS[plugin]!r}, 'opentelemetry-api', "
        "'opentelemetry-sdk', 'opentelemetry-instrumentation', "
        "'opentelemetry-semantic-conventions', 'wrapt')), sep=', ')",
    )
    # the contract tests run on the paths of the plugin this session installed
    paths = _existing(f"integration_tests/{plugin}", "integration_tests/contract")
    if not paths:
        session.error(f"integration_tests/{plugin} does not exist")
    _run_pytest(session, *paths)


@nox.session(tags=["ci"], allow_parallel=True)
@nox.parametrize(("python", "pika", "deps"), _cells("pika", "1.3.2"))
def integration_pika(session: nox.Session, pika: str, deps: str) -> None:
    """otel-pika against the real broker, per pika version."""
    _integration(session, "pika", pika, deps)


@nox.session(tags=["ci"], allow_parallel=True)
@nox.parametrize(("python", "aiopika", "deps"), _cells("aiopika", "9.5.8"))
def integration_aiopika(session: nox.Session, aiopika: str, deps: str) -> None:
    """otel-aiopika against the real broker, per aio-pika version (pika too, as a plain producer)."""
    _integration(session, "aiopika", aiopika, deps, extra=("pika",))


@nox.session(tags=["ci"], allow_parallel=True)
@nox.parametrize(("python", "kombu", "deps"), _cells("kombu", "5.5.4"))
def integration_kombu(session: nox.Session, kombu: str, deps: str) -> None:
    """otel-kombu against the real broker and Redis, per kombu version (with Celery and pika)."""
    _integration(
        session,
        "kombu",
        kombu,
        deps,
        extra=("pika", "redis", "celery", "opentelemetry-instrumentation-celery"),
    )


# Celery as users run it: real `celery worker` processes (solo, threads, prefork) next to
# opentelemetry-instrumentation-celery. Pinned so that a Celery release changing what its workers
# send shows up as a deliberate bump here.
CELERY_REQUIREMENTS = (
    "celery==5.7.0",
    "opentelemetry-instrumentation-celery==0.66b2",
    "testcontainers>=4.8",
)


@nox.session(python=MIDDLE, tags=["ci"], allow_parallel=True)
def integration_celery(session: nox.Session) -> None:
    """otel-kombu under real Celery workers (solo, threads, prefork) on the real broker: idle
    traffic, task ids, pools, retries, failures, rejects, link mode (what docs/celery.md says)."""
    install(session, plugins=("kombu",), clients={"kombu": "5.7.0"}, extra=CELERY_REQUIREMENTS)
    _run_pytest(session, "integration_tests/celery")


@nox.session(python=False, allow_parallel=False)  # notify() needs the sequential runner
def quick(session: nox.Session) -> None:
    """The fast loop: lint, the unit tests on one Python, the newest cell of each plugin (without
    the slow fault-injection tests, which CI runs)."""
    session.notify("lint")
    session.notify(f"unit-{HERE}", posargs=session.posargs)
    for cell in QUICK_CELLS:
        session.notify(cell, posargs=["-m", "not slow", *session.posargs])


DEMO_REQUIREMENTS = (
    "rich>=13",
    "opentelemetry-sdk>=1.29",
    "opentelemetry-proto>=1.29",
    "opentelemetry-exporter-otlp-proto-http>=1.29",
    "testcontainers>=4.8",
)
FLOW_REQUIREMENTS = (*DEMO_REQUIREMENTS, "pyyaml", "jsonschema>=4.18", "check-jsonschema==0.39.0")
CONTRIB_TESTS = "integration_tests/reliability/test_contrib_conflict.py"


@nox.session(python=MIDDLE, tags=["ci"], allow_parallel=True)
def integration_flow(session: nox.Session) -> None:
    """The order flow as three real processes against the real broker; asserts on the OTLP data."""
    install(session, plugins=_all_plugins(), extra=FLOW_REQUIREMENTS)
    paths = _existing(
        "integration_tests/flow", "integration_tests/reliability", "integration_tests/deploy"
    )
    if not paths:
        session.error("no cross-process tests")
    # the contrib side-by-side tests need the contrib packages: integration_contrib runs them
    _run_pytest(session, *paths, f"--ignore={CONTRIB_TESTS}")


# The contrib packages our pika and aio-pika plugins replace; contrib aio-pika refuses aio-pika 10.
CONTRIB_REQUIREMENTS = (
    "aio-pika>=9.5,<10",
    "opentelemetry-instrumentation-pika==0.66b1",
    "opentelemetry-instrumentation-aio-pika==0.66b1",
)


@nox.session(python=MIDDLE, tags=["ci"], allow_parallel=True)
def integration_contrib(session: nox.Session) -> None:
    """Our plugins next to opentelemetry-instrumentation-pika / -aio-pika in one process."""
    install(session, plugins=_all_plugins(), extra=(*FLOW_REQUIREMENTS, *CONTRIB_REQUIREMENTS))
    _run_pytest(session, CONTRIB_TESTS)


@nox.session(python=HERE, allow_parallel=False)  # its live progress is not buffered
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


@nox.session(python=MIDDLE, allow_parallel=False)  # timings want the machine to itself
def bench(session: nox.Session) -> None:
    """Messages/s and µs per message: uninstrumented vs ours vs contrib vs the SDK floor."""
    install(session, plugins=_all_plugins(), test=False, extra=BENCH_REQUIREMENTS)
    session.run("python", "-m", "benchmarks", *session.posargs, env={"PYTHONPATH": str(ROOT)})


PUBLISHED = (CORE, *PLUGINS.values())


@nox.session(python=HERE, tags=["ci"], allow_parallel=True)
def build(session: nox.Session) -> None:
    """Build the wheel and sdist of the core and of each plugin into dist/; twine checks them."""
    uv = session.venv_backend == "uv"
    session.install("build[uv]>=1.2" if uv else "build>=1.2", "twine>=6.1")
    dist = ROOT / "dist"
    for old in dist.glob("otel_*"):
        old.unlink()
    for package in PUBLISHED:
        installer = ("--installer=uv",) if uv else ()
        session.run("python", "-m", "build", *installer, "--outdir", str(dist), package)
    built = sorted(str(p) for p in dist.glob("otel_*"))
    session.run("twine", "check", "--strict", *built)


@nox.session(python=MIDDLE, tags=["ci"], allow_parallel=True)
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
    session.install("pip", "uv", "pytest>=8", "pytest-asyncio>=0.24", "pytest-timeout>=2.3")
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
