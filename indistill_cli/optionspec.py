"""How a settings dataclass declares the command-line option behind each field, without importing typer.

`RunOptions` (stages) and `OptimConfig` (engine) mark their fields with `option(...)`: flags, help text,
and whether a resumed run may change the value (`tunable`). `cli.options` turns the marked fields into
Typer options, so a new shared option is one field in one of those dataclasses, and the resume check's
tunable set is read from the same declarations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

KEY = "cli"


def option(default: Any = dataclasses.MISSING, *flags: str, help: str, tunable: bool = False,
           param: str | None = None, cli_type: Any = None, cli_default: Any = dataclasses.MISSING,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is also a command-line option.

    `flags`: the option's names (default: --field-name); `param`: the command's parameter name when it
    differs from the field's; `cli_type`/`cli_default`: how the command line spells the value when that
    differs from the field (e.g. comma-separated milestones for a list of ints)."""
    meta = {KEY: {"flags": flags, "help": help, "tunable": tunable, "param": param, "cli_type": cli_type,
                  "cli_default": cli_default}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if KEY in f.metadata]


def tunable(*classes: type) -> frozenset[str]:
    """Names of the fields a resumed run may change (`option(..., tunable=True)`)."""
    return frozenset(f.name for cls in classes for f in declared(cls) if f.metadata[KEY]["tunable"])
