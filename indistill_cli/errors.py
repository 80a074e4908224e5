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


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
