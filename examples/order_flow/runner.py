"""Run the order flow once: topology, receiver, the service processes, wait, stop, collect.

:func:`run_flow` is what both the demo (``python -m examples.order_flow``) and the cross-process
tests call. It returns a :class:`FlowResult` holding everything the receiver got, the plan, and
each service's exit code and log, and leaves analysing it to :mod:`.analysis`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from examples.order_flow.analysis import (
    Fate,
    HistogramPoint,
    SpanRecord,
    SumPoint,
    flow_fates,
    flow_problems,
)
from examples.order_flow.domain import MES, SERVICES, SHOP, SRM, WATCHER, Order, plan_orders
from examples.order_flow.receiver import Receiver
from examples.order_flow.service import READY, ServiceConfig
from examples.order_flow.topology import Topology

__all__ = ["FlowResult", "run_flow"]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
MODULES: Final = {
    SHOP: "examples.order_flow.shop",
    SRM: "examples.order_flow.srm",
    MES: "examples.order_flow.mes",
    WATCHER: "examples.order_flow.watcher",
}
# Variables that would give the services another identity than the one they set themselves.
_DROPPED_ENV: Final = ("OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED")


@dataclass
class FlowResult:
    """One run: the plan, what the receiver got, and how the services ended."""

    topology: Topology
    consumer_context: str
    plan: list[Order]
    spans: list[SpanRecord]
    histograms: list[HistogramPoint]
    sums: list[SumPoint]
    exit_codes: dict[str, int | None]
    logs: dict[str, str]
    elapsed_s: float
    timed_out: bool
    run_id: str
    extra_endpoint: str | None = None
    name_prefix: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def order_ids(self) -> list[str]:
        return [str(o.order_id) for o in self.plan]

    @property
    def expected(self) -> dict[str, tuple[str, str, str | None]]:
        return {
            str(o.order_id): (o.expected.status, o.expected.service, o.expected.error_type)
            for o in self.plan
        }

    def fates(self) -> dict[str, Fate]:
        return flow_fates(self.spans, self.order_ids, MES)

    def problems(self) -> list[str]:
        """Everything that differs from the design (empty: the flow behaved as designed)."""
        problems = list(self.notes)
        if self.timed_out:
            problems.append("timed out before every order was accounted for")
        problems.extend(
            f"{service} exited with {code}"
            for service, code in self.exit_codes.items()
            if code != 0
        )
        problems.extend(flow_problems(self.spans, self.fates(), self.expected))
        return problems


class _ServiceProcess:
    """One service subprocess: stdin is its stop switch, stdout says ``ready``, stderr goes to a log."""

    def __init__(self, name: str, config: ServiceConfig, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                MODULES[name],
                "--consumer-context",
                config.consumer_context,
                "--config",
                config.to_json(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=REPO_ROOT,
        )
        self.ready = threading.Event()
        threading.Thread(target=self._read_stdout, name=f"{name}-stdout", daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() == READY.encode():
                self.ready.set()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.wait(0.1):
                return True
            if not self.running:
                return False
        return False

    def stop(self) -> None:
        """Close stdin: the service finishes, flushes its telemetry and exits."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            return None  # did not stop by itself

    def log(self) -> str:
        self._log.close()
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def _services(
    config: ServiceConfig, names: tuple[str, ...]
) -> Iterator[dict[str, _ServiceProcess]]:
    with tempfile.TemporaryDirectory(prefix="order-flow-") as log_dir:
        started: dict[str, _ServiceProcess] = {}
        try:
            for name in names:
                started[name] = _ServiceProcess(name, config, Path(log_dir))
            yield started
        finally:
            for service in started.values():
                service.stop()
                if service.running:
                    service.wait(30)
                service.log()


def run_flow(
    broker_url: str,
    *,
    orders: int = 20,
    consumer_context: str = "parent",
    timeout: float = 90.0,
    topology: Topology | None = None,
    name_prefix: str = "",
    publish_interval: float = 0.05,
    idle_timeout: float = 20.0,
    on_progress: Callable[[Mapping[str, Fate]], None] | None = None,
) -> FlowResult:
    """Run the three services and the dead-letter watcher against ``broker_url`` until every order is accounted for (or ``timeout``).

    The consumers start first and say when they consume; then the shop publishes. When every
    order is completed or lost, the consumers are told to stop (stdin closed), flush and exit.
    The wait also ends when the shop has finished and no span arrived for ``idle_timeout``
    seconds (something is broken: the result says which orders are unaccounted for).
    Without ``topology`` the run names its own, ``order-flow.<run id>.<role>``; with one,
    ``name_prefix`` is what its names share, which the report leaves out.
    """
    if consumer_context not in ("parent", "link"):
        raise ValueError(f"consumer_context must be 'parent' or 'link', got {consumer_context!r}")
    run_id = uuid.uuid4().hex[:8]
    if topology is None:
        name_prefix = f"order-flow.{run_id}."
        topology = Topology.named(lambda role: f"{name_prefix}{role}")
    plan = plan_orders(orders)
    order_ids = [str(o.order_id) for o in plan]
    topology.declare(broker_url)
    started = time.monotonic()
    timed_out = False
    notes: list[str] = []
    exit_codes: dict[str, int | None] = {}
    logs: dict[str, str] = {}
    try:
        with Receiver() as receiver:
            config = ServiceConfig(
                broker_url=broker_url,
                topology=topology,
                receiver=receiver.endpoint,
                run_id=run_id,
                orders=orders,
                consumer_context=consumer_context,
                publish_interval=publish_interval,
            )
            deadline = started + timeout
            with _services(config, (MES, SRM, WATCHER)) as consumers:
                notes.extend(
                    f"{service.name} did not become ready"
                    for service in consumers.values()
                    if not service.wait_ready(max(1.0, deadline - time.monotonic()))
                )
                with _services(config, (SHOP,)) as shop:
                    services = {**consumers, **shop}
                    seen, last_new = 0, time.monotonic()
                    while True:
                        spans = receiver.spans()
                        if len(spans) != seen:
                            seen, last_new = len(spans), time.monotonic()
                        fates = flow_fates(spans, order_ids, MES)
                        if on_progress is not None:
                            on_progress(fates)
                        if all(f.status != "in flight" for f in fates.values()):
                            break
                        now = time.monotonic()
                        if now > deadline:
                            timed_out = True
                            break
                        if not shop[SHOP].running and now - last_new > idle_timeout:
                            # the shop is done and nothing moved for a while: it will not change
                            timed_out = True
                            notes.append(f"no new spans for {idle_timeout:.0f} s")
                            break
                        died = [
                            s.name for s in services.values() if s.name != SHOP and not s.running
                        ]
                        if died or (not shop[SHOP].running and shop[SHOP].process.returncode):
                            notes.append(f"stopped early: {', '.join(died) or SHOP} exited")
                            break
                        time.sleep(0.2)
                    # stop the consumers too before leaving: the with-blocks wait for each exit
                    for service in services.values():
                        service.stop()
                    for service in services.values():
                        exit_codes[service.name] = service.wait(30)
                        logs[service.name] = service.log()
            # every process has exited, so its final export has been answered
            spans, histograms, sums = receiver.spans(), receiver.histograms(), receiver.sums()
    finally:
        topology.delete(broker_url)
    return FlowResult(
        topology=topology,
        consumer_context=consumer_context,
        plan=plan,
        spans=spans,
        histograms=histograms,
        sums=sums,
        exit_codes={name: exit_codes.get(name) for name in SERVICES},
        logs=logs,
        elapsed_s=time.monotonic() - started,
        timed_out=timed_out,
        run_id=run_id,
        extra_endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        name_prefix=name_prefix,
        notes=notes,
    )
