"""The commented lists under lists/<suite>/.

Each entry is one line, and the ``#`` lines right above it (or above the run of entries it is
in) say why it is there: an entry without a comment is refused, so nothing is on a list without a reason. In expected.txt (the run with
us) and expected-suppressed.txt (the run under suppress_instrumentation()) a line reads
``<outcome without us> -> <outcome with us>  <test id>``; in deselected.txt it is a test id
prefix, as pytest's ``--deselect`` takes it; in flaky.txt a test id; in leftovers.txt a queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

OUTCOMES = frozenset(
    {"passed", "failed", "error", "skipped", "xfailed", "xpassed", "collect-error", "missing"}
)


class ListError(Exception):
    """A list file breaks the format above."""


@dataclass(frozen=True)
class Entry:
    test: str
    reason: str
    before: str = ""  # expected.txt only
    after: str = ""


def read(path: Path) -> list[Entry]:
    """The entries of one list file; a missing file is an empty list."""
    if not path.exists():
        return []
    entries: list[Entry] = []
    comment: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            comment = []
        elif line.startswith("#"):
            comment.append(line.lstrip("#").strip())
        else:
            reason = " ".join(part for part in comment if part)
            if not reason:
                raise ListError(f"{path}:{number}: entry without a comment above it: {line}")
            entries.append(_entry(path, number, line, reason))
    return entries


_EXPECTED = re.compile(r"^(?P<before>[a-z-]+)\s*->\s*(?P<after>[a-z-]+)\s+(?P<test>\S.*)$")


def _entry(path: Path, number: int, line: str, reason: str) -> Entry:
    if not path.name.startswith("expected"):
        return Entry(test=line, reason=reason)
    match = _EXPECTED.match(line)
    if not match or not {match["before"], match["after"]} <= OUTCOMES:
        raise ListError(f"{path}:{number}: expected '<outcome> -> <outcome>  <test id>': {line}")
    return Entry(test=match["test"], reason=reason, before=match["before"], after=match["after"])
