"""Every option that more than one command takes, declared once, and the decorator that gives each
command its options by name.

The run options and the optimiser options are declared where they live (`stages.options.RunOptions`,
`engine.schedule.OptimConfig`: flag, help, default, whether a resume may change it); the CLI-only ones
(output, force, json, quiet, select) are declared here. A command lists the names it takes, in the
order `--help` shows them, using the groups below. A command changes a shared option's default
(`command(..., schedule="none")`) or its whole declaration (`command(..., lr=override(...))`); its own
options are the parameters its function declares.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from indistill_cli.engine.schedule import OptimConfig, parse_milestones
from indistill_cli.optionspec import KEY, declared
from indistill_cli.stages.options import RunOptions


@dataclasses.dataclass(frozen=True)
class Shared:
    annotation: Any  # Annotated[type, typer.Option(...)]
    default: Any


def _optional(t: Any) -> Any:
    """`X | None` as `Optional[X]`, the spelling Typer reads."""
    if isinstance(t, types.UnionType) and type(None) in t.__args__:
        return Optional[next(a for a in t.__args__ if a is not type(None))]  # noqa: UP007
    return t


def _from_fields(cls: type) -> dict[str, Shared]:
    """The command-line options a settings dataclass declares (`optionspec.option`), by parameter name."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in declared(cls):
        m = f.metadata[KEY]
        default = m["cli_default"]
        if default is dataclasses.MISSING:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        typ = m["cli_type"] or _optional(hints[f.name])
        out[m["param"] or f.name] = Shared(Annotated[typ, typer.Option(*m["flags"], help=m["help"])], default)
    return out


SHARED: dict[str, Shared] = {
    **_from_fields(RunOptions),
    **_from_fields(OptimConfig),
    "output": Shared(Annotated[str, typer.Option("--output", "-o", help="Output checkpoint (.safetensors) or - for "
                                                 "stdout.")], inspect.Parameter.empty),
    "select": Shared(Annotated[str, typer.Option(help="Which epoch to keep: auto (validation top-1 when a loss trains "
                                                 "the classifier head, else validation retrieval mAP when one trains "
                                                 "the embedding, else the last), top1, map or last.")], "auto"),
    "force": Shared(Annotated[bool, typer.Option(help="Overwrite an existing output.")], False),
    "json_out": Shared(Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")], False),
    "quiet": Shared(Annotated[bool, typer.Option("--quiet", "-q", help="No progress output on stderr.")], False),
}

# groups, in the order --help lists them
OPTIM = ("optimizer", "lr", "momentum", "weight_decay", "nesterov", "schedule", "milestones", "gamma", "warmup_epochs")
RUNTIME = ("seed", "device", "precision", "channels_last", "augment", "deterministic", "compile_student", "sync_bn")
SPLIT = ("val_fraction", "data_root", "image_size", "cache")
RESUMABLE = ("skip_nonfinite", "resume", "save_every", "state_dir", "strict")
OUTPUT = ("force", "json_out", "quiet")
RUN_PARAMS = {m.metadata[KEY]["param"] or m.name: m.name for m in declared(RunOptions)}  # parameter -> field
OPTIM_PARAMS = {f.name for f in declared(OptimConfig)}


def override(typ: Any, default: Any, *flags: str, help: str) -> Shared:
    """A command's own declaration of a shared option (another help text, type or default)."""
    return Shared(Annotated[typ, typer.Option(*flags, help=help)], default)


def command(app: typer.Typer, order: tuple[str, ...], command_name: str | None = None,
            **changes: Any) -> Callable[[Callable[..., Any]], Any]:
    """Register `fn` as a command whose parameters are `order`: the function's own (it declares them with
    their Typer annotations) and shared ones (from SHARED; `changes` gives a name a new default, or a new
    declaration with `override`). The function receives its own parameters by name, the shared ones in
    `**options`. `command_name`: the command's name when it is not the function's (`import`, a Python keyword)."""

    def deco(fn: Callable[..., Any]) -> Any:
        own = {n: p for n, p in inspect.signature(fn, eval_str=True).parameters.items() if p.kind != p.VAR_KEYWORD}
        hints = typing.get_type_hints(fn, include_extras=True)
        params = []
        for name in order:
            if name in own:
                params.append(own[name].replace(annotation=hints[name], kind=inspect.Parameter.KEYWORD_ONLY))
            else:  # shared, or declared with `override` in `changes` (then it arrives in **options too)
                change = changes[name] if name in changes else SHARED[name].default
                opt = change if isinstance(change, Shared) else Shared(SHARED[name].annotation, change)
                params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=opt.annotation,
                                                default=opt.default))
        missing = set(own) - set(order)
        assert not missing, f"{fn.__name__}: parameters {missing} not placed in the option order"

        def wrapper(**kw: Any) -> Any:
            return fn(**kw)

        wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        wrapper.__module__ = fn.__module__
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return app.command(command_name)(wrapper)

    return deco


def run_options(o: dict[str, Any], **fixed: Any) -> RunOptions:
    """The RunOptions of a command: the shared run options it was given (others keep their defaults)."""
    return RunOptions(**{**{field: o[param] for param, field in RUN_PARAMS.items() if param in o}, **fixed})


def optim_config(o: dict[str, Any], **fixed: Any) -> OptimConfig:
    """The OptimConfig of a command: the optimiser options it was given (milestones parsed from text)."""
    kw = {**{k: o[k] for k in OPTIM_PARAMS if k in o}, **fixed}
    if "milestones" in kw:
        kw["milestones"] = parse_milestones(kw["milestones"])
    return OptimConfig(**kw)
