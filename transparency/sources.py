"""Getting a suite's source release and reading its own test requirements from it."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import tomllib


class SourceUnavailable(Exception):
    """The release's source holds no tests and no other source was given."""


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs)  # noqa: S603


def download_sdist(dist: str, version: str, into: Path) -> Path:
    """The sdist of ``dist==version`` from the package index, as pip fetches it."""
    into.mkdir(parents=True, exist_ok=True)
    found = _sdist_in(into, dist, version)
    if found is None:
        _run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
                *("--no-binary", dist, "--dest", str(into), f"{dist}=={version}"),
            ]
        )
        found = _sdist_in(into, dist, version)
    if found is None:
        raise SourceUnavailable(f"pip download {dist}=={version} left no sdist in {into}")
    return found


def _sdist_in(folder: Path, dist: str, version: str) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", dist).lower()
    wanted = f"{stem}-{version}.tar.gz"
    for path in folder.glob("*.tar.gz"):
        name, _, rest = path.name.partition("-")
        if f"{re.sub(r'[-_.]+', '_', name).lower()}-{rest}" == wanted:
            return path
    return None


def unpack(archive: Path, into: Path) -> Path:
    """The archive's single top folder, unpacked under ``into`` (once)."""
    with tarfile.open(archive) as tar:
        top = {name.split("/", 1)[0] for name in tar.getnames()}
        if len(top) != 1:
            raise SourceUnavailable(f"{archive.name} does not have one top folder")
        target = into / top.pop()
        if not target.exists():
            tar.extractall(into, filter="data")
    return target


def from_git(git_dir: Path, name: str, tag: str, into: Path) -> Path:
    """The tree of ``tag`` in a git repository (a bare mirror or a clone), written under ``into``."""
    target = into / f"{name}-{tag}-git"
    if not target.exists():
        target.mkdir(parents=True)
        raw = subprocess.run(  # noqa: S603
            ["git", "--git-dir", str(git_dir), "archive", "--format=tar", tag],  # noqa: S607
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=raw, check=True)  # noqa: S603, S607
    return target


def given_source(path: Path, name: str, tag: str, into: Path) -> Path:
    """A source named on the command line: a folder with the tests, or a git repository and tag."""
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        return from_git(path, name, tag, into)
    if (path / ".git").exists():
        return from_git(path / ".git", name, tag, into)
    return path


def requirements(source: Path, spec: str, drop: frozenset[str]) -> list[str]:
    """Requirement strings from a source file: a requirements list (``-r`` followed), or
    ``pyproject.toml:<dotted table path>`` naming a list in pyproject.toml; names in ``drop`` left out.
    """
    if ":" in spec:
        file, dotted = spec.split(":", 1)
        node: Any = tomllib.loads((source / file).read_text(encoding="utf-8"))
        for key in dotted.split("."):
            node = node[key]
        if isinstance(node, dict):  # a Poetry group: {name: constraint}
            lines = [_from_poetry(name, constraint) for name, constraint in node.items()]
        else:  # a PEP 735 group or a list of requirement strings; include-group tables skipped
            lines = [item for item in node if isinstance(item, str)]
    else:
        lines = _requirement_lines(source / spec)
    return [line for line in lines if _name(line) not in drop]


def _requirement_lines(path: Path) -> list[str]:
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            lines.extend(_requirement_lines(path.parent / line[2:].strip()))
        elif not line.startswith("-"):
            lines.append(line)
    return lines


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else requirement


def _from_poetry(name: str, constraint: Any) -> str:
    """A Poetry dependency as a PEP 508 requirement: ``^1.2`` is ``>=1.2,<2``, ``^0.5`` is
    ``>=0.5,<0.6``, ``*`` (or a table, which only the project's own table uses) is any version."""
    if not isinstance(constraint, str) or constraint.strip() == "*":
        return name
    text = constraint.strip()
    if text.startswith("^"):
        parts = [int(p) for p in text[1:].split(".")]
        first = next((i for i, p in enumerate(parts) if p != 0), len(parts) - 1)
        upper = [*parts[:first], parts[first] + 1]
        return f"{name}>={text[1:]},<{'.'.join(map(str, upper))}"
    return f"{name}{text}" if text[0] in "<>=!~" else f"{name}=={text}"
