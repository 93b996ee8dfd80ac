"""The runner's own rules: the list format, the comparison, the requirement reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from transparency import lists, runner, sources
from transparency.suites import Suite

_SUITE = Suite(
    name="demo",
    dist="demo",
    version="1",
    instrument="pika",
    paths=("tests",),
    tests_dir="tests",
    requirements_from=(),
)


def test_an_entry_without_a_comment_is_refused(tmp_path: Path) -> None:
    """A list entry with no comment above it is an error naming the file and line."""
    path = tmp_path / "deselected.txt"
    path.write_text("# why\ntests/a.py::t1\n\ntests/b.py::t2\n")
    with pytest.raises(lists.ListError, match=r"deselected.txt:4"):
        lists.read(path)


def test_one_comment_covers_the_run_of_entries_below_it(tmp_path: Path) -> None:
    """Entries right under one comment share its reason; a blank line ends it."""
    path = tmp_path / "expected.txt"
    path.write_text("# header compared\npassed -> failed  t::a[x y]\nfailed -> error  t::b\n")
    entries = lists.read(path)
    assert [(e.before, e.after, e.test, e.reason) for e in entries] == [
        ("passed", "failed", "t::a[x y]", "header compared"),
        ("failed", "error", "t::b", "header compared"),
    ]


def test_an_expected_line_needs_two_known_outcomes(tmp_path: Path) -> None:
    """An expected.txt line without '<outcome> -> <outcome>' is refused."""
    path = tmp_path / "expected.txt"
    path.write_text("# why\npassed -> broken  t::a\n")
    with pytest.raises(lists.ListError):
        lists.read(path)


def _result(tmp_path: Path, without: dict[str, str], **runs: dict[str, str]) -> runner.Result:
    result = runner.Result(_SUITE)
    result.runs.append(runner.Run("without", outcomes=without))
    for label, outcomes in runs.items():
        result.runs.append(runner.Run(label, outcomes=outcomes, spans=5 if label == "with" else 0))
    return result


def test_differences_are_expected_only_when_listed_with_the_same_outcomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listed test with the listed outcomes is expected; any other change is unexpected."""
    monkeypatch.setattr(Suite, "lists", property(lambda self: tmp_path))
    (tmp_path / "expected.txt").write_text("# compares headers\npassed -> failed  t::h\n")
    result = _result(
        tmp_path,
        {"t::h": "passed", "t::g": "passed", "t::s": "passed"},
        **{
            "with": {"t::h": "failed", "t::g": "error", "t::s": "passed"},
            "suppressed": {"t::h": "failed", "t::g": "passed", "t::s": "passed"},
        },
    )
    runner._compare(result, flaky=[])
    kinds = {(d.run, d.test): d.kind for d in result.differences}
    assert kinds == {
        ("with", "t::h"): "expected",
        ("with", "t::g"): "unexpected",
        # expected.txt does not apply to the suppressed run: there we add nothing
        ("suppressed", "t::h"): "unexpected",
    }
    assert result.failed


def test_a_listed_flaky_test_is_reported_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A difference on a test in flaky.txt is flaky; the suite does not fail for it."""
    monkeypatch.setattr(Suite, "lists", property(lambda self: tmp_path))
    result = _result(tmp_path, {"t::f": "passed"}, **{"with": {"t::f": "failed"}})
    runner._compare(result, flaky=[lists.Entry(test="t::f", reason="timing")])
    assert [(d.kind, d.reason) for d in result.differences] == [("flaky", "timing")]
    assert not result.failed


def test_a_run_with_us_that_made_no_span_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal outcomes prove nothing when our instrumentation exported no span."""
    monkeypatch.setattr(Suite, "lists", property(lambda self: tmp_path))
    result = _result(tmp_path, {"t::a": "passed"}, **{"with": {"t::a": "passed"}})
    result.runs[-1].spans = 0
    runner._compare(result, flaky=[])
    assert result.failed
    assert "no span" in result.problems[0]


def test_requirements_follow_includes_and_drop_tools(tmp_path: Path) -> None:
    """Requirement files are read with -r includes; lint and coverage tools are left out."""
    (tmp_path / "extras").mkdir()
    (tmp_path / "extras" / "redis.txt").write_text("redis>=4.5  # comment\n")
    (tmp_path / "test.txt").write_text("pytest==9.1\npytest-cov\n-r extras/redis.txt\n\n")
    (tmp_path / "pyproject.toml").write_text(
        '[dependency-groups]\ntest = ["aiomisc", {include-group = "lint"}, "Coverage"]\n'
    )
    drop = frozenset({"pytest-cov", "coverage"})
    assert sources.requirements(tmp_path, "test.txt", drop) == ["pytest==9.1", "redis>=4.5"]
    spec = "pyproject.toml:dependency-groups.test"
    assert sources.requirements(tmp_path, spec, drop) == ["aiomisc"]


def test_poetry_constraints_become_pep_508() -> None:
    """Poetry's caret bounds the first non-zero part; '*' is any version."""
    assert sources._from_poetry("aiomisc", "^17.5") == "aiomisc>=17.5,<18"
    assert sources._from_poetry("pytest-rst", "^0.0") == "pytest-rst>=0.0,<0.1"
    assert sources._from_poetry("x", "^0.5.1") == "x>=0.5.1,<0.6"
    assert sources._from_poetry("nox", "*") == "nox"
    assert sources._from_poetry("y", ">=2") == "y>=2"
