"""A command's options come from its settings dataclass (`stages.commands`); this turns one into a Typer
command, and adds what every command takes: `--config FILE`, `--print-config` and `--config-format`.

    @command(app, TrainSettings)
    def train(s: TrainSettings) -> Any:   # the docstring is the --help text
        return Train(s).run()

The settings' `order` lists the options, their declarations give flags, help and defaults. `--config`
is read first (an eager option) into click's `default_map`, so a flag given on the command line wins
over the file; the file's keys are checked against the settings (`StageSettings.from_config`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from indistill_cli.engine.schedule import OptimConfig
from indistill_cli.optionspec import KEY, declared
from indistill_cli.stages.options import RunOptions
from indistill_cli.stages.settings import OPTIM, OUTPUT, RESUMABLE, RUNTIME, SPLIT, StageSettings  # noqa: F401

RUN_PARAMS = {m.metadata[KEY]["param"] or m.name: m.name for m in declared(RunOptions)}  # parameter -> field
OPTIM_PARAMS = {f.metadata[KEY]["param"] or f.name for f in declared(OptimConfig)}
ORIGINS = "indistill.config"  # ctx.meta key: parameter -> where the config file set it


def _parameter(f: Any) -> inspect.Parameter:
    """One option of a settings class as a Typer parameter."""
    info = typer.Argument(help=f.help) if f.spec["argument"] else typer.Option(*f.flags, help=f.help)
    default = f.cli_default()
    default = inspect.Parameter.empty if default is dataclasses.MISSING else default
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[f.cli_type(), info],
                             default=default)


def _config_callback(settings: type[StageSettings]) -> Callable[..., Any]:
    """Reads --config before every other option and makes its values click's defaults (flags still win)."""

    def load(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
        if not value or ctx.resilient_parsing:
            return value
        from indistill_cli.cli.app import fail
        from indistill_cli.errors import BadInput
        from indistill_cli.io.configfile import read_config

        try:
            data, where = read_config(value)
            values = settings.from_config(data, where)
        except BadInput as e:
            fail(str(e), 2)
        ctx.default_map = {**(ctx.default_map or {}), **values}
        ctx.meta[ORIGINS] = {name: _origin(data, where, settings, name) for name in values}
        return value

    return load


def _origin(data: dict[str, Any], where: Callable[[tuple[str, ...]], str], settings: type[StageSettings],
            name: str) -> str:
    """'KEY in FILE line N' for the parameter `name` a config file set (its key found again, sections too)."""
    aliases = settings.aliases()
    for key in data:
        hit = aliases.get(str(key).replace("_", "-"))
        if hit and hit[0].name == name:
            return f"{key} in {where((key,))}"
    for sec, body in (data.get("stages") or {}).items() if isinstance(data.get("stages"), dict) else ():
        for sub in body if isinstance(body, dict) else ():
            if name in settings.sections.get(str(sec).replace("_", "-"), ()):
                f = next(f for f in settings.exposed() if f.name == name)
                if f.key in (f"{sec}-{str(sub).replace('_', '-')}", str(sub).replace("_", "-")):
                    return f"stages.{sec}.{sub} in {where(('stages', sec, sub))}"
    return "the config file"


def _invocation(settings: type[StageSettings]) -> list[inspect.Parameter]:
    """--config, --print-config, --config-format: every command's, after its own options."""
    kw = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter("config", kw, default=None, annotation=Annotated[Optional[str], typer.Option(
            "--config", is_eager=True, callback=_config_callback(settings),
            help="YAML or TOML file of options (keys: the long option names, - or _); flags given here win.")]),
        inspect.Parameter("print_config", kw, default=False, annotation=Annotated[bool, typer.Option(
            "--print-config", help="Print the resolved options as a config file (for --config) and exit.")]),
        inspect.Parameter("config_format", kw, default="yaml", annotation=Annotated[str, typer.Option(
            "--config-format", help="yaml or toml: the format --print-config writes.")]),
    ]


def command(app: typer.Typer, settings: type[StageSettings]) -> Callable[[Callable[..., Any]], Any]:
    """Register `fn(settings_object)` as the command `settings.command`, its options those `settings`
    offers (plus --config, --print-config, --config-format); its docstring is the --help text."""

    def deco(fn: Callable[..., Any]) -> Any:
        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        params += [_parameter(f) for f in settings.exposed()] + _invocation(settings)

        def wrapper(ctx: typer.Context, config: Optional[str] = None, print_config: bool = False,
                    config_format: str = "yaml", **kw: Any) -> Any:
            from indistill_cli.cli.app import run

            origins = _flag_origins(ctx, settings)

            def body() -> Any:
                s = settings.build(kw)
                if print_config:
                    return _print_config(s, config_format)
                return fn(s)

            quiet = kw.get("quiet", False) or (kw.get("json_out", False) and "quiet" not in settings.order)
            run(body, kw.get("json_out", False) and not print_config, quiet,
                kw.get(settings.output_field) if isinstance(kw.get(settings.output_field), str) else None, origins)

        wrapper.__name__ = wrapper.__qualname__ = settings.command
        wrapper.__doc__, wrapper.__module__ = fn.__doc__, fn.__module__
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return app.command(settings.command)(wrapper)

    return deco


def _flag_origins(ctx: typer.Context, settings: type[StageSettings]) -> dict[str, str]:
    """flag -> where the config file set it, for the options whose value came from the file (an error about
    `--epochs` then also names the file and line that gave it)."""
    set_by = ctx.meta.get(ORIGINS, {})
    out = {}
    for f in settings.exposed():
        if f.name in set_by and ctx.get_parameter_source(f.name).name == "DEFAULT_MAP":
            for flag in f.flags or (f"--{f.key}",):
                for part in flag.split("/"):
                    out[part] = set_by[f.name]
    return out


def _print_config(s: StageSettings, fmt: str) -> None:
    """--print-config: the resolved options (all but how this invocation runs, unless changed) on stdout."""
    import sys

    from indistill_cli.errors import BadInput
    from indistill_cli.io.configfile import dump_config

    if fmt not in ("yaml", "toml"):
        raise BadInput(f"--config-format must be yaml or toml, got '{fmt}'")
    values = s.config()
    defaults = {f.key: f.cli_default() for f in s.exposed()}
    values.update({k: v for k, v in s.config(("run",)).items()
                   if v != defaults[k] and k not in ("json", "quiet")})
    text = dump_config(s.sectioned(values), fmt == "toml", f"indistill {s.command} --config FILE")
    sys.stdout.write(text)
    sys.stdout.flush()
