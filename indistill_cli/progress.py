"""Rich output on stderr: progress bars, tables, one-line notices. stdout is for data only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, emoji=False)  # "--method kd:-1:" is text, not an emoji code
_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


@contextmanager
def silenced() -> Iterator[None]:
    """No progress, notices or tables inside (a command that runs others for their numbers only)."""
    global _QUIET
    was, _QUIET = _QUIET, True
    try:
        yield
    finally:
        _QUIET = was


def main_process() -> bool:
    """This process is torchrun's rank 0, or not under torchrun at all: the one that prints and writes."""
    return os.environ.get("RANK", "0") == "0"


def quiet() -> bool:
    """No progress, notices or tables: --quiet, INDISTILL_QUIET=1, or a torchrun rank other than 0."""
    return _QUIET or os.environ.get("INDISTILL_QUIET") == "1" or not main_process()


def info(msg: str) -> None:
    if not quiet():
        console.print(msg)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {msg}")


def bar(enabled: bool = True) -> Progress:
    """A progress display on stderr; disabled (no output) when quiet or not the main rank."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, disable=not enabled or quiet(), transient=True,
    )


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    if quiet():
        return
    console.print(f"[bold]{title}[/bold]")
    t = Table()
    for i, c in enumerate(columns):
        numeric = i > 0 and all(isinstance(r[i], (int, float)) or r[i] in ("-", None) for r in rows)
        t.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    console.print(t)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
