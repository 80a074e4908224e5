"""The base of every command's settings dataclass, and everything derived from the one declaration.

A command's settings (`stages.commands`) are its own fields plus groups (`RunOptions`, `OptimConfig`),
each field declared once with `optionspec.option` (flag, help, tunable, role). `order` says which of
them the command offers and in which order `--help` lists them. From that one declaration come:

- the command's options (`cli.options.command` builds the Typer signature from `exposed()`);
- the config-file keys and their checks (`from_config`: unknown key, wrong type: one line);
- the resume key (`key()`), the history entry's options (`options()`) and the record of the command
  that made a checkpoint (`record()`), from which `inspect --command` (`argv()`) and `rerun`
  (`settings_from_record`) rebuild it.

Torch-free: the CLI reads it to build `--help`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from indistill_cli.errors import BadInput, did_you_mean
from indistill_cli.optionspec import GROUP, Flat, field_default, flats, get, groups_of, option, role_of, shaping

# the option groups several commands list, in the order --help shows them (parameter names)
OPTIM = ("optimizer", "lr", "momentum", "weight_decay", "nesterov", "schedule", "milestones", "gamma", "warmup_epochs")
RUNTIME = ("seed", "device", "precision", "channels_last", "augment", "deterministic", "compile_student", "sync_bn")
SPLIT = ("val_fraction", "data_root", "image_size", "cache")
RESUMABLE = ("skip_nonfinite", "resume", "save_every", "state_dir", "strict")
OUTPUT = ("force", "json_out", "quiet")
TRACKING = ("log", "log_dir")
CHECKS = ("expect_sha256",)
LOG_KINDS = ("tensorboard", "mlflow", "wandb", "csv")
RECORDED = ("shape", "input", "output")  # the roles a checkpoint's command record keeps


@dataclass(kw_only=True)
class StageSettings:
    """What every command may take besides its own options: how this invocation runs (role `run`)."""

    command: ClassVar[str] = ""
    order: ClassVar[tuple[str, ...]] = ()  # the options the command offers, in --help order
    sections: ClassVar[dict[str, tuple[str, ...]]] = {}  # config-file sections -> the options they hold
    output_field: ClassVar[str] = "output"  # the field naming what the command writes

    force: bool = option(False, help="Overwrite an existing output.", role="run")
    json_out: bool = option(False, "--json", help="Print a JSON summary on stdout.", role="run")
    quiet: bool = option(False, "--quiet", "-q", help="No progress output on stderr.", role="run")
    log: list[str] = option(dataclasses.MISSING, "--log", "--log-to", help="Log options, per-epoch metrics, final "
                            "metrics, plots and the output's sha256 to a tracker, repeatable: tensorboard, mlflow, "
                            "wandb (offline unless WANDB_MODE says otherwise) or csv. Needs pip install "
                            "'indistill[log]'. Under torchrun spell it --log-to (torchrun reads --log as its own, "
                            "ambiguous, option).",
                            role="run", default_factory=list, cli_type=typing.Optional[list[str]], cli_default=None)
    log_dir: str | None = option(None, help="Folder of the --log trackers' files (default: logs/ beside the output).",
                                 role="run")
    expect_sha256: list[str] = option(dataclasses.MISSING, "--expect-sha256", help="PATH=SHA256, repeatable: refuse "
                                      "to run unless the checkpoint at PATH has this sha256 (what `inspect --command` "
                                      "prints for a checkpoint's parents).", role="run", default_factory=list,
                                      cli_type=typing.Optional[list[str]], cli_default=None)

    # ------------------------------------------------------------------ the command's options
    @classmethod
    def exposed(cls) -> list[Flat]:
        """The options the command offers, in `order`."""
        by = {f.name: f for f in flats(cls)}
        unknown = [n for n in cls.order if n not in by]
        assert not unknown, f"{cls.__name__}.order names no option: {unknown}"
        return [by[n] for n in cls.order]

    @classmethod
    def key_of(cls, field_name: str) -> str:
        """The config key of the option a field of the settings (not of a group) is."""
        return next(f.key for f in cls.exposed() if f.path == (field_name,))

    @classmethod
    def build(cls, values: dict[str, Any]) -> Any:
        """The settings from the command's parameter values (as the command line spells them)."""
        own: dict[str, Any] = {}
        parts = {g.name: g.default_factory() for g in groups_of(cls)}  # type: ignore[misc]
        for f in cls.exposed():
            if f.name in values:
                v = f.from_cli(values[f.name])
                if len(f.path) == 1:
                    own[f.path[0]] = v
                else:
                    setattr(parts[f.path[0]], f.path[1], v)
        return cls(**own, **parts)

    def config(self, roles: tuple[str, ...] = RECORDED) -> dict[str, Any]:
        """The offered options of these roles as a config file holds them (key: the long option name)."""
        return {f.key: f.to_cli(get(self, f.path)) for f in self.exposed() if f.role in roles}

    @property
    def destination(self) -> str | None:
        """Where the command writes (its -o), when it writes."""
        return getattr(self, self.output_field, None)

    def run_options(self) -> Any:
        """The `RunOptions` the stage's session uses (a copy the stage may adjust)."""
        opts = getattr(self, "opts", None)
        return dataclasses.replace(opts) if opts is not None else None

    # ------------------------------------------------------------------ what identifies and records a run
    def key(self) -> dict[str, Any]:
        """What identifies the run for --resume: every field that shapes it (groups nested by name)."""
        out: dict[str, Any] = {"stage": self.command}
        for f in dataclasses.fields(self):
            if GROUP in f.metadata:
                out[f.name] = shaping(getattr(self, f.name))
            elif role_of(f) in ("shape", "input"):
                out[f.name] = getattr(self, f.name)
        return out

    def options(self) -> dict[str, Any]:
        """The history entry's options: every value that shapes the run, by field name (groups flattened);
        a stage adds what it resolved (e.g. `auto` choices)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if GROUP in f.metadata:
                out.update(shaping(getattr(self, f.name)))
            elif role_of(f) in ("shape", "input"):
                out[f.name] = getattr(self, f.name)
        return out

    def hidden(self) -> dict[str, Any]:
        """Values the command line cannot give (set by the program, e.g. the pipeline) that differ from the
        command's defaults, by attribute path: a rerun applies them too."""
        shown = {f.path for f in self.exposed()}
        defaults = {f.path: f.default for f in flats(type(self))}
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if GROUP in f.metadata:
                base = f.default_factory()  # type: ignore[misc]
                for g in dataclasses.fields(base):
                    path, v = (f.name, g.name), getattr(getattr(self, f.name), g.name)
                    if path not in shown and role_of(g) != "run" and v != getattr(base, g.name):
                        out[".".join(path)] = v
            elif (f.name,) not in shown and role_of(f) != "run":
                default = defaults.get((f.name,), field_default(f))
                if getattr(self, f.name) != default:
                    out[f.name] = getattr(self, f.name)
        return out

    def record(self) -> dict[str, Any]:
        """The command that made a checkpoint, for its history entry (`inspect --command`, `rerun`): its
        options, the values no option gives, the folder it ran in and the sha256 of every file it read."""
        return {"name": self.command, "config": self.config(), "hidden": self.hidden(), "cwd": os.getcwd(),
                "inputs": self.inputs()}

    def inputs(self) -> dict[str, str]:
        """sha256 of each file an input option names (a checkpoint path; not an architecture name or stdin)."""
        out: dict[str, str] = {}
        for f in self.exposed():
            values = get(self, f.path) if f.role == "input" else None
            for v in values if isinstance(values, list) else [values]:
                if isinstance(v, str) and v != "-" and os.path.isfile(v):
                    with open(v, "rb") as fh:
                        out[v] = hashlib.file_digest(fh, "sha256").hexdigest() if hasattr(hashlib, "file_digest") \
                            else hashlib.sha256(fh.read()).hexdigest()
        return out

    # ------------------------------------------------------------------ config files
    @classmethod
    def aliases(cls) -> dict[str, tuple[Flat, bool]]:
        """Config key (any long flag, `-` or `_`) -> (option, negated: a --no-X key)."""
        out: dict[str, tuple[Flat, bool]] = {}
        for f in cls.exposed():
            out[f.key] = (f, False)
            for flag in f.flags:
                pos, _, neg = flag.partition("/")
                if pos.startswith("--"):
                    out.setdefault(pos[2:], (f, False))
                if neg.startswith("--"):
                    out.setdefault(neg[2:], (f, True))
            if f.cli_type() is bool and (not f.flags or "/" in "".join(f.flags)):
                out.setdefault(f"no-{f.key}", (f, True))
        return out

    @classmethod
    def from_config(cls, data: dict[str, Any], where: Callable[[tuple[str, ...]], str]) -> dict[str, Any]:
        """A config file's mapping as the command's parameter values; an unknown key, a wrong type or a section
        that is not one is one line (`where(keys)` says the file and line). A command with `sections` also
        takes them under `stages:` (`stages: {teacher: {epochs: 20}}` is `teacher-epochs: 20`)."""
        names, out = cls.aliases(), {}
        for key, value in data.items():
            if _norm(key) == "stages" and cls.sections:
                for sec, sub, v in cls._sections(value, where):
                    f, neg = cls._section_option(sec, sub, where((key, sec, sub)))
                    out[f.name] = _checked(f, v, neg, f"{where((key, sec, sub))}: stages.{sec}.{sub}")
                continue
            hit = names.get(_norm(key))
            if hit is None:
                raise BadInput(f"{where((key,))}: unknown key '{key}' for `indistill {cls.command}`"
                               f"{did_you_mean(_norm(key), list(names))}")
            out[hit[0].name] = _checked(hit[0], value, hit[1], f"{where((key,))}: {key}")
        return out

    @classmethod
    def _sections(cls, value: Any, where: Callable[[tuple[str, ...]], str]) -> list[tuple[str, str, Any]]:
        """(section, key, value) of a `stages:` mapping, each section one the command has."""
        if not isinstance(value, dict):
            raise BadInput(f"{where(('stages',))}: stages: expected a mapping of {', '.join(cls.sections)} to options")
        out = []
        for sec, body in value.items():
            if _norm(sec) not in cls.sections:
                raise BadInput(f"{where(('stages', sec))}: unknown stage '{sec}' (sections: "
                               f"{', '.join(cls.sections)}){did_you_mean(_norm(sec), list(cls.sections))}")
            if not isinstance(body, dict):
                raise BadInput(f"{where(('stages', sec))}: stages.{sec}: expected a mapping of options")
            out += [(_norm(sec), sub, v) for sub, v in body.items()]
        return out

    @classmethod
    def _section_option(cls, section: str, key: str, where: str) -> tuple[Flat, bool]:
        names = cls.aliases()
        members = set(cls.sections[section])
        for cand in (f"{section}-{_norm(key)}", _norm(key)):
            if cand in names and names[cand][0].name in members:
                return names[cand]
        inside = list(dict.fromkeys(_strip_section(names[k][0].key, section) for k in names
                                    if names[k][0].name in members))
        raise BadInput(f"{where}: unknown key '{key}' in stages.{section} (it takes {', '.join(inside)})"
                       f"{did_you_mean(_norm(key), inside)}")

    def sectioned(self, values: dict[str, Any]) -> dict[str, Any]:
        """A flat config with the options of the command's sections grouped under `stages:`."""
        if not self.sections:
            return values
        by_key = {f.key: f.name for f in self.exposed()}
        out: dict[str, Any] = {}
        for k, v in values.items():
            sec = next((s for s, names in self.sections.items() if by_key.get(k) in names), None)
            if sec is None:
                out[k] = v
            else:
                out.setdefault("stages", {}).setdefault(sec, {})[_strip_section(k, sec)] = v
        return out


def _norm(key: str) -> str:
    return str(key).strip().replace("_", "-")


def _strip_section(key: str, section: str) -> str:
    return key[len(section) + 1:] if key.startswith(f"{section}-") else key


def _kind(t: Any) -> tuple[Any, bool]:
    """(the value type, whether None is allowed) of an option's command-line type."""
    args = typing.get_args(t)
    if (typing.get_origin(t) in (typing.Union, types.UnionType)) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return t, False


def _scalar(t: Any, v: Any, what: str) -> Any:
    if t is bool:
        if isinstance(v, bool):
            return v
        raise BadInput(f"{what}: expected true or false, got {v!r}")
    if t is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        raise BadInput(f"{what}: expected a whole number, got {v!r}")
    if t is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        raise BadInput(f"{what}: expected a number, got {v!r}")
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return str(v)
    raise BadInput(f"{what}: expected text, got {v!r}")


def _checked(f: Flat, value: Any, negated: bool, what: str) -> Any:
    """A config value as the option's command-line value, or one line saying what is wrong with it."""
    t, optional = _kind(f.cli_type())
    if value is None:
        if optional:
            return None
        raise BadInput(f"{what}: needs a value (null given)")
    if typing.get_origin(t) is list:
        (item,) = typing.get_args(t)
        return [_scalar(item, v, what) for v in (value if isinstance(value, list) else [value])]
    if t is str and isinstance(value, list):  # a comma-separated option given as a list: [3, 4, 5] -> "3,4,5"
        return ",".join(_scalar(str, v, what) for v in value)
    v = _scalar(t, value, what)
    return (not v) if negated else v


# ---------------------------------------------------------------------------------- the reproducing command


def argv(cls: type[StageSettings], config: dict[str, Any], changed_only: bool = True) -> list[str]:
    """The command line that gives these settings (`config` as `record()` keeps it): values equal to the
    command's defaults are left out when `changed_only`."""
    by_key = {f.key: f for f in cls.exposed()}
    args, opts = [], []
    for key, value in config.items():
        f = by_key.get(key)
        if f is None or value is None or (changed_only and value == f.cli_default()
                                          and f.default is not dataclasses.MISSING):
            continue
        if f.spec["argument"]:
            args += [str(v) for v in (value if isinstance(value, list) else [value])]
            continue
        flag = next((x.split("/")[0] for x in f.flags if x.startswith("--")), f"--{f.key}")
        if isinstance(value, bool):
            if value or (not f.flags or "/" in "".join(f.flags)):
                opts.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            for v in value:
                opts += [flag, str(v)]
        else:
            opts += [flag, repr(value) if isinstance(value, float) else str(value)]
    return ["indistill", cls.command, *args, *opts]


def shell_line(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)
