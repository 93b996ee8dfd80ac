"""The client test suites the session runs: where each comes from, what it needs, how it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LISTS = Path(__file__).parent / "lists"


@dataclass(frozen=True)
class Suite:
    """One pytest run of a client's own tests, done twice: without and with our plugin."""

    name: str  # also the folder under lists/ with its deselected/expected/flaky files
    dist: str  # the PyPI distribution whose release holds the tests
    version: str  # the integration matrix's newest version (noxfile *_VERSIONS, "latest")
    instrument: str  # which of our plugins the instrumented run turns on
    paths: tuple[str, ...]  # test paths, relative to the unpacked source
    tests_dir: str  # the sdist must hold this folder to be usable as the test source
    # the suite's own test requirements: files in the source (requirements lists, pyproject
    # tables), each read by sources.requirements(); minus the names in `drop`
    requirements_from: tuple[str, ...]
    drop: frozenset[str] = frozenset()
    extra_requirements: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()  # pytest plugins of ours loaded in both runs
    env: dict[str, str] = field(default_factory=dict)

    @property
    def lists(self) -> Path:
        return LISTS / self.name


# Tools that only lint, format, measure coverage or prettify output: not needed to run the tests,
# and pytest-sugar would change the output the runner reads.
_NOT_TEST_TOOLS = frozenset(
    {
        "coverage",
        "codecov",
        "coveralls",
        "pytest-cov",
        "mypy",
        "ruff",
        "yapf",
        "pre-commit",
        "pytest-sugar",
    }
)

PIKA = Suite(
    name="pika",
    dist="pika",
    version="1.4.4",
    instrument="pika",
    paths=("tests",),
    tests_dir="tests",
    requirements_from=("pyproject.toml:tool.hatch.envs.default.dependencies",),
    drop=_NOT_TEST_TOOLS,
)

AIOPIKA = Suite(
    name="aio-pika",
    dist="aio-pika",
    version="10.2.1",
    instrument="aiopika",
    paths=("tests",),
    tests_dir="tests",
    requirements_from=("pyproject.toml:dependency-groups.test",),
    drop=_NOT_TEST_TOOLS,
    plugins=("transparency_aiopika_docker",),
)

# aio-pika 9.5 (the matrix's middle version): its sdist ships no tests, and its suite declares
# its requirements as a Poetry group; run only when its source is given (--source aio-pika-9.5=).
AIOPIKA_9 = Suite(
    name="aio-pika-9.5",
    dist="aio-pika",
    version="9.5.8",
    instrument="aiopika",
    paths=("tests",),
    tests_dir="tests",
    requirements_from=("pyproject.toml:tool.poetry.group.dev.dependencies",),
    drop=_NOT_TEST_TOOLS
    | {
        # documentation, packaging and lint tools of the same group
        *("sphinx", "sphinx-autobuild", "furo", "autodoc", "sphinxcontrib-googleanalytics"),
        *("collective-checkdocs", "nox", "pylama", "types-setuptools"),
    },
    plugins=("transparency_aiopika_testcontainers",),
)

_KOMBU_REQUIREMENTS = (
    "requirements/test.txt",
    "requirements/extras/redis.txt",
    "requirements/extras/yaml.txt",
    "requirements/extras/msgpack.txt",
)

KOMBU_UNIT = Suite(
    name="kombu-unit",
    dist="kombu",
    version="5.7.0",
    instrument="kombu",
    paths=("t/unit",),
    tests_dir="t",
    requirements_from=_KOMBU_REQUIREMENTS,
    drop=_NOT_TEST_TOOLS,
)

KOMBU_INTEGRATION = Suite(
    name="kombu-integration",
    dist="kombu",
    version="5.7.0",
    instrument="kombu",
    # the transports this machine has servers for: RabbitMQ (py-amqp) and Redis
    paths=(
        "t/integration/test_py_amqp.py",
        "t/integration/test_redis.py",
        "t/integration/test_redis_brpop_qos.py",
    ),
    tests_dir="t",
    requirements_from=_KOMBU_REQUIREMENTS,
    drop=_NOT_TEST_TOOLS,
    plugins=("transparency_kombu_reset",),
    env={
        "RABBITMQ_HOST": "127.0.0.1",
        "RABBITMQ_5672_TCP": "5672",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_6379_TCP": "6379",
    },
)

# Longest first: with --jobs 2, aio-pika (about 11 minutes a run here) has a lane of its own.
SUITES = (AIOPIKA, AIOPIKA_9, PIKA, KOMBU_INTEGRATION, KOMBU_UNIT)
