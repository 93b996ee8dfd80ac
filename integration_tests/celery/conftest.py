"""Real Celery workers for the tests: each a ``celery worker`` process of its own on the broker,
writing its spans to a file (see ``worker.py``), stopped (or killed) when the test ends.

No test can hang on a worker: starting waits at most ``START_TIMEOUT`` for the worker to say it is
ready, stopping sends SIGTERM (Celery's warm shutdown) and kills the worker's process group after
``STOP_TIMEOUT``; the teardown does the same for a worker a failed test left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from opentelemetry.instrumentation.celery import CeleryInstrumentor

from broker_harness import Broker, Recorder
from integration_tests.celery.tasks import make_app
from otel_kombu import KombuInstrumentor

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
WAIT_TIMEOUT = 30.0


@dataclass
class Worker:
    """One ``celery worker`` process and what it wrote."""

    name: str
    spans_file: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def nodename(self) -> str:
        return f"{self.name}@{os.uname().nodename}"

    def spans(self) -> list[dict[str, Any]]:
        if not self.spans_file.exists():
            return []
        return [json.loads(line) for line in self.spans_file.read_text().splitlines() if line]

    def metric_points(self) -> list[dict[str, Any]]:
        path = Path(f"{self.spans_file}.metrics")
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> None:
        ready = Path(f"{self.spans_file}.ready")
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if self.process.poll() is not None:
                pytest.fail(
                    f"worker {self.name} exited {self.process.returncode}:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"worker {self.name} not ready in {START_TIMEOUT} s:\n{self.log_text()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM); the process group is killed if that takes too long."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"worker {self.name} did not stop in {STOP_TIMEOUT} s")
        # its pool children, if one outlived it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT)


@dataclass
class Fleet:
    """Starts workers for one test; every one is stopped or killed at the end."""

    broker: Broker
    queue: str
    directory: Path
    workers: list[Worker] = field(default_factory=list)

    def start(
        self,
        name: str,
        *,
        pool: str = "solo",
        instrument: str = "parent",
        env: dict[str, str] | None = None,
        quiet: bool = True,
    ) -> Worker:
        """A worker consuming this test's queue; ``quiet`` leaves out start-up sync and gossip
        (the tests of idle traffic want them). Heartbeats stay: their timer is what lets a warm
        shutdown end in a second or two instead of ten."""
        spans = self.directory / f"{name}.spans.jsonl"
        log = self.directory / f"{name}.log"
        environ = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OTEL_TEST_SPANS": str(spans),
            "OTEL_TEST_INSTRUMENT": instrument,
            "OTEL_TEST_BROKER": self.broker.url,
            "OTEL_TEST_QUEUE": self.queue,
            **(env or {}),
        }
        prefix = (
            [str(Path(sys.executable).parent / "opentelemetry-instrument")]
            if instrument == "opentelemetry-instrument"
            else []
        )
        command = [
            *prefix,
            sys.executable,
            "-m",
            "celery",
            "-A",
            "integration_tests.celery.worker",
            "worker",
            f"--pool={pool}",
            "--concurrency=1",
            f"--hostname={name}@%h",
            f"--queues={self.queue}",
            "--loglevel=INFO",
        ]
        if quiet:
            command += ["--without-mingle", "--without-gossip"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole if it hangs
            )
        worker = Worker(name, spans, process, log)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.kill()


@pytest.fixture
def queue(unique: Callable[[str], str]) -> str:
    return unique("tasks")


@pytest.fixture
def fleet(rabbitmq: Broker, queue: str, tmp_path: Path) -> Iterator[Fleet]:
    """``fleet.start(name, pool=..., instrument=..., env=...)``: workers stopped after the test."""
    workers = Fleet(rabbitmq, queue, tmp_path)
    yield workers
    workers.close()


@pytest.fixture
def app(rabbitmq: Broker, queue: str) -> Iterator[Celery]:
    """The test's side of the app: it sends the tasks."""
    app = make_app(rabbitmq.url, queue)
    yield app
    app.close()


@pytest.fixture
def celery_traced(otel: Recorder) -> Iterator[Recorder]:
    """opentelemetry-instrumentation-celery in this process, recording into ``otel``."""
    celery = CeleryInstrumentor()
    celery.instrument(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    yield otel
    celery.uninstrument()


@pytest.fixture
def kombu_traced(instrumentation: Callable[..., Any]) -> Callable[..., Any]:
    """``kombu_traced(**options)``: our instrumentation in this process, undone after the test."""
    return instrumentation(KombuInstrumentor)  # type: ignore[no-any-return]


@pytest.fixture
def sender(celery_traced: Recorder, kombu_traced: Callable[..., Any]) -> Recorder:
    """This process traced as the worker is (both instrumentations, default options); the
    recorder of its spans."""
    kombu_traced()
    return celery_traced


def wait_until(
    what: str, check: Callable[[], bool], worker: Worker, timeout: float = WAIT_TIMEOUT
) -> None:
    """Poll ``check`` until it holds; fail (with the worker's log) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if worker.process.poll() is not None:
            pytest.fail(
                f"worker {worker.name} exited while waiting for {what}:\n{worker.log_text()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s:\n{worker.log_text()}")
        time.sleep(0.1)
