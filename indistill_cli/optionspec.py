"""How a settings dataclass declares the command-line option behind each field, without importing typer.

A command's settings are one dataclass (`stages.commands`); shared parts are nested groups (`RunOptions`,
`OptimConfig`). Each field says with `option(...)` its flags, help, whether a resumed run may change it
(`tunable`) and its `role`:

    shape   shapes the result: in the resume key, the history entry and the reproducing command
    input   a model the run reads (a checkpoint path or an architecture name): in the key and the command
    output  where a result goes (-o, --plot, sidecars): recorded, but a rerun writes elsewhere
    run     how this invocation runs (--force, --resume, --quiet, --log ...): in none of them

`flats(cls)` flattens a settings class (its own fields, then each group's, a group's fields optionally
renamed with a prefix) into the parameters a command offers, so the CLI options, the config-file keys,
the resume key, the history record and `inspect --command` are all read from the same declarations.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any

KEY = "cli"
GROUP = "group"
ROLES = ("shape", "input", "output", "run")


def option(default: Any = dataclasses.MISSING, *flags: str, help: str, tunable: bool = False,
           param: str | None = None, cli_type: Any = None, cli_default: Any = dataclasses.MISSING,
           default_factory: Any = dataclasses.MISSING, argument: bool = False, role: str = "shape",
           parse: Callable[[Any], Any] | None = None, show: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field that is also a command-line option.

    `flags`: the option's names (default: --field-name); `param`: the command's parameter name when it
    differs from the field's; `argument`: a positional argument; `cli_type`/`cli_default`: how the
    command line spells the value when that differs from the field, with `parse` (command line ->
    field) and `show` (field -> command line), e.g. comma-separated milestones for a list of ints."""
    assert role in ROLES, role
    meta = {KEY: {"flags": flags, "help": help, "tunable": tunable, "param": param, "cli_type": cli_type,
                  "cli_default": cli_default, "argument": argument, "role": role, "parse": parse, "show": show}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def group(factory: Callable[[], Any], prefix: str = "", help: dict[str, str] | None = None,
          flags: dict[str, tuple[str, ...]] | None = None) -> Any:
    """A field holding a nested settings group (e.g. `RunOptions`) whose options the command offers as its
    own. `factory` gives the command's defaults; `prefix` renames the group's options (`teacher_` turns
    --lr into --teacher-lr); `help` and `flags` replace a field's help text or flags for this command."""
    meta = {"prefix": prefix, "help": help or {}, "flags": flags or {}}
    return dataclasses.field(default_factory=factory, metadata={GROUP: meta})


def declared(cls: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if KEY in f.metadata]


def tunable(*classes: type) -> frozenset[str]:
    """Names of the fields a resumed run may change (`option(..., tunable=True)`)."""
    return frozenset(f.name for cls in classes for f in declared(cls) if f.metadata[KEY]["tunable"])


def role_of(f: dataclasses.Field) -> str:
    """A field's role; a plain field (no `option`) shapes the result."""
    return f.metadata[KEY]["role"] if KEY in f.metadata else "shape"


def _optional(t: Any) -> Any:
    """`X | None` as `Optional[X]`, the spelling Typer reads."""
    import types

    if isinstance(t, types.UnionType) and type(None) in t.__args__:
        return typing.Optional[next(a for a in t.__args__ if a is not type(None))]  # noqa: UP007
    return t


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default (its factory called), or MISSING: what the CLI shows and a config may omit."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Flat:
    """One option of a command: a field of its settings, or of one of their groups."""

    name: str  # the command's parameter name (e.g. lr, teacher_lr, compile_student)
    path: tuple[str, ...]  # attributes from the settings object to the value: ("optim", "lr")
    field: dataclasses.Field
    hint: Any  # the field's type
    default: Any  # in the command's defaults (MISSING: required)
    help: str
    flags: tuple[str, ...]

    @property
    def spec(self) -> dict[str, Any]:
        return self.field.metadata[KEY]

    @property
    def role(self) -> str:
        return self.spec["role"]

    @property
    def key(self) -> str:
        """The config-file key: the long option name (`--batch-size` -> batch-size)."""
        long = next((f for f in self.flags if f.startswith("--")), None)
        return long[2:].split("/")[0] if long else self.name.replace("_", "-")

    def cli_type(self) -> Any:
        return self.spec["cli_type"] or _optional(self.hint)

    def cli_default(self) -> Any:
        if self.spec["cli_default"] is not dataclasses.MISSING:
            return self.spec["cli_default"]
        return self.to_cli(self.default)

    def to_cli(self, value: Any) -> Any:
        """The field's value as the command line (and a config file) spells it."""
        if value is dataclasses.MISSING:
            return value
        show = self.spec["show"]
        return show(value) if show is not None and value is not None else value

    def from_cli(self, value: Any) -> Any:
        """A command-line value as the field holds it (None: the field's default when it has another)."""
        if value is None and self.default is not None and self.default is not dataclasses.MISSING:
            return _copy(self.default)
        parse = self.spec["parse"]
        return parse(value) if parse is not None and value is not None else value


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v


def _prefixed(flags: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    if not prefix:
        return flags
    dash = prefix.replace("_", "-")
    return tuple(f"--{dash}{f[2:]}" for f in flags if f.startswith("--"))


@functools.lru_cache(maxsize=None)
def flats(cls: type) -> tuple[Flat, ...]:
    """Every option a settings class offers: its own fields, then each group's (own names shadow a group's)."""
    hints = typing.get_type_hints(cls)
    own, groups = [], []
    for f in dataclasses.fields(cls):
        if KEY in f.metadata:
            m = f.metadata[KEY]
            own.append(Flat(m["param"] or f.name, (f.name,), f, hints[f.name], field_default(f), m["help"], m["flags"]))
        elif GROUP in f.metadata:
            groups.append(f)
    taken = {fl.name for fl in own}
    out = list(own)
    for g in groups:
        inst, meta = g.default_factory(), g.metadata[GROUP]  # type: ignore[misc]
        ghints = typing.get_type_hints(type(inst))
        for f in declared(type(inst)):
            m = f.metadata[KEY]
            name = meta["prefix"] + (m["param"] or f.name)
            if name in taken:
                continue
            flags = meta["flags"].get(f.name, m["flags"])
            flags = _prefixed(flags or (f"--{f.name.replace('_', '-')}",), meta["prefix"]) if meta["prefix"] else flags
            out.append(Flat(name, (g.name, f.name), f, ghints[f.name], getattr(inst, f.name),
                            meta["help"].get(f.name, m["help"]), flags))
            taken.add(name)
    return tuple(out)


def groups_of(cls: type) -> list[dataclasses.Field]:
    """The fields of a settings class that hold groups."""
    return [f for f in dataclasses.fields(cls) if GROUP in f.metadata]


def get(obj: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        obj = getattr(obj, p)
    return obj


def shaping(obj: Any) -> dict[str, Any]:
    """A settings group's values that shape a result (roles shape and input), by field name."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if role_of(f) in ("shape", "input")}
