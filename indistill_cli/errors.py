"""Error types the CLI turns into one clear line and an exit code.

`BadInput` (exit 2) is for anything the user can fix: files, names, options, data.
`RunFailure` (exit 1) is for a run that started fine and then went wrong (e.g. divergence).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class IndistillError(Exception):
    exit_code = 1


class BadInput(IndistillError):
    """The user gave something unusable; message says what, where and how to fix."""

    exit_code = 2


class RunFailure(IndistillError):
    """A run failed while running (divergence, interrupted I/O)."""

    exit_code = 1


class Interrupted(IndistillError):
    """SIGINT/SIGTERM stopped a run (after saving its resume state); exit 128 + the signal number."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.5)
    if not close:
        return ""
    # difflib ties 'resnet21' between resnet20 and resnet32; fewer edits is what a typo means
    best = min(close, key=lambda c: (_edits(name.lower(), c.lower()), close.index(c)))
    return f" (did you mean '{best}'?)"


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (names are short)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
