"""Run each client's own suite without and with our instrumentation and compare outcomes per test.

``python -m transparency --help``; ``nox -s transparency`` runs it in a venv of its own and makes
one more venv per client release under ``--workdir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from transparency import lists, sources
from transparency.suites import SUITES, Suite

ROOT = Path(__file__).resolve().parent.parent
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
OURS = {
    "pika": "packages/otel-pika",
    "aiopika": "packages/otel-aiopika",
    "kombu": "packages/otel-kombu",
}
INSTALL_TIMEOUT = 900  # seconds for one venv's installs; the session bound still applies
# downloads and venvs one at a time: two suites of one release share both
_PREPARING = threading.Lock()


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@dataclass
class Run:
    label: str
    outcomes: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    spans: int | None = None
    log: Path | None = None

    def counts(self) -> Counter[str]:
        return Counter(self.outcomes.values())


# the list of expected differences for each instrumented run
EXPECTED = {"with": "expected.txt", "suppressed": "expected-suppressed.txt"}


@dataclass
class Difference:
    run: str
    test: str
    before: str
    after: str
    kind: str  # expected, flaky, unexpected
    reason: str = ""


@dataclass
class Result:
    suite: Suite
    runs: list[Run] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    baseline_flaky: list[tuple[str, str, str]] = field(default_factory=list)
    stale_expected: list[str] = field(default_factory=list)
    not_run: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.problems) or any(d.kind == "unexpected" for d in self.differences)


class Deadline:
    """The session's time bound: every step gets what is left of it, so nothing waits forever."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    deadline = Deadline(args.budget)
    started = time.monotonic()
    given = dict(_pair(item) for item in args.source)
    chosen = [s for s in SUITES if not args.suite or s.name in args.suite]
    work = Path(args.workdir).resolve()

    def one(suite: Suite) -> Result:
        result = Result(suite)
        try:
            _run_suite(suite, result, args, given, work, deadline)
        except (subprocess.CalledProcessError, sources.SourceUnavailable, lists.ListError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            result.problems.append(f"{exc} {detail[-2000:]}".strip())
        except subprocess.TimeoutExpired as exc:
            result.problems.append(f"out of time: {exc}")
        return result

    # Suites run side by side (most of their time is waiting on the broker); the runs of one
    # suite one after the other, since a suite's tests may share fixed queue names.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one, chosen))
    _report(results, time.monotonic() - started, work)
    if any(r.failed for r in results):
        return 1
    if any(r.not_run for r in results) and not args.allow_missing_source:
        # a suite that could not run proved nothing: the session must not look green
        say("a suite was not run: give its source, or pass --allow-missing-source to accept that")
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m transparency", description=__doc__)
    parser.add_argument("--suite", action="append", choices=[s.name for s in SUITES], default=[])
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="SUITE=PATH",
        help="where a suite's tests are when its sdist has none: a folder, or a git repository"
        " (clone or bare) whose tag named like the version is read",
    )
    parser.add_argument(
        "--allow-missing-source",
        action="store_true",
        help="exit 0 when a suite could not run for want of its tests (it is still reported)",
    )
    parser.add_argument("--workdir", default=str(ROOT / ".nox" / "transparency-work"))
    parser.add_argument("--budget", type=float, default=3600.0, help="seconds for everything")
    parser.add_argument("--jobs", type=int, default=2, help="suites run at the same time")
    parser.add_argument("--test-timeout", type=int, default=60, help="seconds per test")
    parser.add_argument(
        "--baseline-runs",
        type=int,
        default=1,
        choices=(1, 2),
        help="2 runs the suite twice without us, to find flaky tests for flaky.txt",
    )
    return parser


def _pair(item: str) -> tuple[str, Path]:
    name, _, path = item.partition("=")
    if not path:
        raise SystemExit(f"--source wants SUITE=PATH, got {item!r}")
    return name, Path(path).expanduser().resolve()


def _run_suite(
    suite: Suite,
    result: Result,
    args: argparse.Namespace,
    given: dict[str, Path],
    work: Path,
    deadline: Deadline,
) -> None:
    deselected = lists.read(suite.lists / "deselected.txt")
    flaky = lists.read(suite.lists / "flaky.txt")
    for name in EXPECTED.values():
        lists.read(suite.lists / name)  # a malformed list fails before the suite takes minutes
    say(f"=== {suite.name} ({suite.dist} {suite.version})")
    with _PREPARING:
        source = _source(suite, given, work, deadline)
        python = _venv(suite, source, work, deadline) if source is not None else None
    if source is None or python is None:
        result.not_run = (
            f"the {suite.dist} {suite.version} sdist ships no {suite.tests_dir}/ folder; give its"
            f" source with --source {suite.name}=PATH (a checkout, or a git repository with tag"
            f" {suite.version})"
        )
        return
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # a file or folder is not even collected (its imports may need what is not installed)
    deselect_args = [
        f"--deselect={e.test}" if "::" in e.test else f"--ignore={e.test}" for e in deselected
    ]
    leftovers = "\n".join(e.test for e in lists.read(suite.lists / "leftovers.txt"))
    labels = [*["without", "without-again"][: args.baseline_runs], "with", "suppressed"]
    for label in labels:
        run = _pytest(suite, python, source, label, deselect_args, leftovers, args, logs, deadline)
        result.runs.append(run)
        say(f"    {suite.name} {label}: {_format_counts(run)} ({run.seconds:.0f} s, log {run.log})")
        if run.timed_out:
            result.problems.append(f"run '{label}' hit the session's time bound and was stopped")
    _compare(result, flaky)


def _source(suite: Suite, given: dict[str, Path], work: Path, deadline: Deadline) -> Path | None:
    if suite.name in given:
        found = sources.given_source(given[suite.name], suite.dist, suite.version, work / "sources")
    else:
        archive = sources.download_sdist(suite.dist, suite.version, work / "sdists")
        found = sources.unpack(archive, work / "sources")
    return found if (found / suite.tests_dir).is_dir() else None


def _venv(suite: Suite, source: Path, work: Path, deadline: Deadline) -> Path:
    """A venv with the client from its source, the suite's test requirements, pytest-timeout,
    and our core and plugin (only loaded in the run with ``-p transparency_otel``)."""
    requirements: list[str] = []
    for spec in suite.requirements_from:
        requirements.extend(sources.requirements(source, spec, suite.drop))
    ours = [str(ROOT / "packages/otel-messaging-core"), str(ROOT / OURS[suite.instrument])]
    wanted = [
        str(source),
        *requirements,
        *suite.extra_requirements,
        "pytest-timeout",
        "opentelemetry-sdk>=1.29",
        *ours,
    ]
    key = hashlib.sha256("\n".join([sys.version, *wanted]).encode()).hexdigest()[:12]
    venv = work / "venvs" / f"{suite.dist}-{suite.version}-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        uv = shutil.which("uv") or "uv"
        timeout = min(INSTALL_TIMEOUT, deadline.left())
        say(f"    installing {len(wanted)} requirements into {venv}")
        subprocess.run(  # noqa: S603
            [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        # everything once per venv; on reuse only ours again (below)
        subprocess.run(  # noqa: S603
            [uv, "pip", "install", "--quiet", "--python", str(python), *wanted],
            check=True,
            capture_output=True,
            text=True,
            timeout=min(INSTALL_TIMEOUT, deadline.left()),
        )
        (venv / ".complete").touch()
    else:
        # the venv is reused across sessions; our packages come from the work tree, so they are
        # rebuilt (--reinstall-package implies uv's --refresh-package)
        subprocess.run(  # noqa: S603
            [
                *(shutil.which("uv") or "uv", "pip", "install", "--quiet", "--reinstall-package"),
                *("otel-messaging-core", "--reinstall-package", f"otel-{suite.instrument}"),
                *("--python", str(python), *ours),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=min(INSTALL_TIMEOUT, deadline.left()),
        )
    return python


def _pytest(
    suite: Suite,
    python: Path,
    source: Path,
    label: str,
    deselect_args: list[str],
    leftovers: str,
    args: argparse.Namespace,
    logs: Path,
    deadline: Deadline,
) -> Run:
    log_path = logs / f"{suite.name}-{label}.log"
    run = Run(label, log=log_path)
    record = logs / f"{suite.name}-{label}.jsonl"
    spans = logs / f"{suite.name}-{label}.spans.json"
    for stale in (record, spans):
        stale.unlink(missing_ok=True)
    instrumented = label in ("with", "suppressed")
    # a temporary folder per run: a test that leaves a file in /tmp (kombu's filesystem
    # transport moves messages there) must not change the next run's outcome. Made under the
    # system's temporary folder, short: multiprocessing's forkserver puts a Unix socket in it,
    # whose path may not exceed 107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="transparency-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(suite.env)
    env.update(
        PYTHONPATH=str(PLUGINS_DIR),
        TRANSPARENCY_RECORD=str(record),
        TRANSPARENCY_INSTRUMENT=suite.instrument,
        TRANSPARENCY_SPANS=str(spans),
        TRANSPARENCY_LEFTOVERS=leftovers,
        TRANSPARENCY_SUPPRESS="1" if label == "suppressed" else "0",
        TMPDIR=str(tmp),
    )
    plugins = ["transparency_record", *suite.plugins]
    if instrumented:
        plugins.append("transparency_otel")
    command = [
        str(python),
        "-m",
        "pytest",
        *suite.paths,
        *[arg for name in plugins for arg in ("-p", name)],
        *("-p", "no:cacheprovider", f"--timeout={args.test_timeout}", "-rN"),
        *deselect_args,
    ]
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        # a session of its own, so a stop takes the suite's child processes with it
        process = subprocess.Popen(  # noqa: S603
            command,
            cwd=source,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            run.exit_code = process.wait(timeout=deadline.left())
        except subprocess.TimeoutExpired:
            run.timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    run.seconds = time.monotonic() - started
    shutil.rmtree(tmp, ignore_errors=True)
    if record.exists():
        for line in record.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            run.outcomes[item["test"]] = item["outcome"]
    if instrumented and spans.exists():
        run.spans = int(json.loads(spans.read_text(encoding="utf-8"))["spans"])
    return run


def _compare(result: Result, flaky: list[lists.Entry]) -> None:
    """Each instrumented run against the first run without us, test by test."""
    baselines = [run for run in result.runs if run.label.startswith("without")]
    first = baselines[0]
    for again in baselines[1:]:
        for test in sorted(set(first.outcomes) | set(again.outcomes)):
            a, b = first.outcomes.get(test, "missing"), again.outcomes.get(test, "missing")
            if a != b:
                result.baseline_flaky.append((test, a, b))
    seen_flaky = {test for test, _, _ in result.baseline_flaky}
    flaky_tests = {entry.test: entry.reason for entry in flaky}
    for run in result.runs:
        if run in baselines:
            continue
        _check_spans(result, run)
        expected = lists.read(result.suite.lists / EXPECTED[run.label])
        by_test = {entry.test: entry for entry in expected}
        matched: set[str] = set()
        for test in sorted(set(first.outcomes) | set(run.outcomes)):
            before = first.outcomes.get(test, "missing")
            after = run.outcomes.get(test, "missing")
            if before == after or "deselected" in (before, after):
                continue
            entry = by_test.get(test)
            if entry is not None and (entry.before, entry.after) == (before, after):
                matched.add(test)
                kind, reason = "expected", entry.reason
            elif test in flaky_tests:
                kind, reason = "flaky", flaky_tests[test]
            elif test in seen_flaky:
                kind, reason = "flaky", "differed between the two runs without us too"
            else:
                kind, reason = "unexpected", ""
            result.differences.append(Difference(run.label, test, before, after, kind, reason))
        result.stale_expected.extend(
            f"{EXPECTED[run.label]}: {e.test}" for e in expected if e.test not in matched
        )


def _check_spans(result: Result, run: Run) -> None:
    if run.spans is None:
        result.problems.append(f"run '{run.label}' wrote no span count (did our plugin load?)")
    elif run.label == "with" and run.spans == 0:
        result.problems.append(
            "our instrumentation exported no span: the comparison proves nothing"
        )
    elif run.label == "suppressed":
        # pika's gevent and tornado adapter tests run callbacks in contexts of their own, which
        # the suppression does not reach (220 spans of 2891); as many as with us: it reached none
        with_us = next((r.spans for r in result.runs if r.label == "with"), None)
        if run.spans and with_us is not None and run.spans >= with_us:
            result.problems.append(f"suppression had no effect: {run.spans} spans exported")


_COLUMNS = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected")


def _format_counts(run: Run) -> str:
    counts = run.counts()
    shown = [f"{counts[c]} {c}" for c in _COLUMNS if counts[c] or c in ("passed", "failed")]
    other = sum(n for outcome, n in counts.items() if outcome not in _COLUMNS)
    if other:
        shown.append(f"{other} collection errors")
    if run.spans is not None:
        shown.append(f"{run.spans} spans exported")
    if run.timed_out:
        shown.append("STOPPED at the time bound")
    return ", ".join(shown)


def _report(results: list[Result], seconds: float, work: Path) -> None:
    say()
    say("=== transparency: outcomes per test, without and with our instrumentation")
    for result in results:
        suite = result.suite
        say(f"--- {suite.name} ({suite.dist} {suite.version})")
        if result.not_run:
            say(f"    NOT RUN: {result.not_run}")
            continue
        for run in result.runs:
            say(f"    {run.label:<14} {_format_counts(run)}  ({run.seconds:.0f} s)")
        for kind in ("unexpected", "expected", "flaky"):
            found = [d for d in result.differences if d.kind == kind]
            if found:
                say(f"    {len(found)} {kind} difference(s):")
            said = ""
            for d in found:
                if d.reason and d.reason != said:  # once for a run of entries with one comment
                    say(f"      # {d.reason}")
                    said = d.reason
                say(f"      [{d.run}] {d.before} -> {d.after}  {d.test}")
        for test, a, b in result.baseline_flaky:
            say(f"    flaky without us ({a} then {b}): {test}")
        for test in result.stale_expected:
            say(f"    expected difference not seen (remove it from {test}?)")
        for problem in result.problems:
            say(f"    PROBLEM: {problem}")
    failed = [r.suite.name for r in results if r.failed]
    not_run = [r.suite.name for r in results if r.not_run]
    say()
    say(f"transparency: {len(results)} suite(s) in {seconds:.0f} s")
    if not_run:
        say(f"NOT RUN (no test source): {', '.join(not_run)}")
    say(f"FAILED: {', '.join(failed)}" if failed else "no unexpected difference")
    work.mkdir(parents=True, exist_ok=True)
    (work / "report.json").write_text(json.dumps(_as_json(results, seconds), indent=2) + "\n")


def _as_json(results: list[Result], seconds: float) -> dict[str, object]:
    return {
        "seconds": round(seconds),
        "suites": [
            {
                "suite": r.suite.name,
                "dist": r.suite.dist,
                "version": r.suite.version,
                "not_run": r.not_run,
                "runs": {
                    run.label: {"counts": dict(run.counts()), "seconds": round(run.seconds)}
                    for run in r.runs
                },
                "differences": [d.__dict__ for d in r.differences],
                "baseline_flaky": r.baseline_flaky,
                "problems": r.problems,
            }
            for r in results
        ],
    }
