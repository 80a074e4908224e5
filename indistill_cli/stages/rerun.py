"""The command that made a checkpoint, read back from its history: `inspect --command` prints it (and
`--config-out` writes its options as a config file), `rerun` runs it again and compares the tensors.

Every checkpoint a stage writes records, in its last history entry, the command (`StageSettings.record`):
its options, the values the program set that no option gives, the folder it ran in and the sha256 of each
input file. Reproduction runs on the recorded parents, refused when one changed (--expect-sha256).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from indistill_cli import progress
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import Checkpoint, load_checkpoint
from indistill_cli.io.configfile import dump_config, is_toml
from indistill_cli.io.history import environment
from indistill_cli.io.paths import sibling
from indistill_cli.stages.commands import EvaluateSettings, RerunSettings, RetrieveSettings, settings_from_record
from indistill_cli.stages.settings import StageSettings, argv, shell_line

REPRODUCIBLE = ("train", "import", "prune", "warmup", "distill")


def recorded(src: str) -> tuple[Checkpoint, dict[str, Any], StageSettings]:
    """The checkpoint, its last history entry and the settings of the command that made it."""
    ck = load_checkpoint(src)
    if not ck.history:
        raise BadInput(f"{ck.source}: has no history, so no command to show (not written by an indistill stage)")
    entry = ck.history[-1]
    rec = entry.get("command")
    if not isinstance(rec, dict):
        raise BadInput(f"{ck.source}: its last stage ({entry.get('stage')}, {entry.get('time', '?')}) was written "
                       f"before indistill recorded commands; `indistill inspect` shows the options it used")
    if rec.get("name") not in REPRODUCIBLE:
        raise BadInput(f"{ck.source}: recorded by `{rec.get('name')}`, which is not one rerun can repeat")
    return ck, entry, settings_from_record(rec)


def _elsewhere(rec: dict[str, Any]) -> str | None:
    """The folder the command ran in, when it is not this one (relative paths are relative to it)."""
    cwd = rec.get("cwd")
    return cwd if cwd and os.path.abspath(cwd) != os.getcwd() else None


def rebased(s: StageSettings, rec: dict[str, Any]) -> StageSettings:
    """The settings with relative input paths made absolute under the recorded folder (run from elsewhere)."""
    cwd = _elsewhere(rec)
    if cwd is None:
        return s
    for f in s.exposed():
        if f.role != "input" or len(f.path) != 1:
            continue
        v = getattr(s, f.path[0])
        fix = lambda p: os.path.join(cwd, p) if isinstance(p, str) and p in rec.get("inputs", {}) else p  # noqa: E731
        setattr(s, f.path[0], [fix(p) for p in v] if isinstance(v, list) else fix(v))
    return s


def expected(rec: dict[str, Any]) -> list[str]:
    """--expect-sha256 PATH=SHA256 for each input file the command read (paths as recorded)."""
    cwd = _elsewhere(rec)
    return [f"{os.path.join(cwd, p) if cwd else p}={sha}" for p, sha in (rec.get("inputs") or {}).items()]


def _default_output(entry_output: str | None) -> str:
    if not entry_output or entry_output == "-":
        return "rerun.safetensors"
    return sibling(entry_output, ".rerun.safetensors")


def _stdin_inputs(s: StageSettings) -> list[str]:
    return [f.key for f in s.exposed() if f.role == "input" and get_value(s, f.path) == "-"]


def get_value(s: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        s = getattr(s, p)
    return s


def show_command(src: str, output: str | None, config_out: str | None, as_json: bool = False) -> dict[str, Any]:
    """`inspect --command`: the command line that reproduces the checkpoint's last stage (on stdout unless
    `as_json`: then in the result), notes on stderr; `config_out`: its options as a config file too."""
    ck, entry, s = recorded(src)
    rec = entry["command"]
    out = output or _default_output(s.destination)
    config = {**s.config(), s.key_of(s.output_field): out, "expect-sha256": expected(rec)}
    words = argv(type(s), config)
    cwd = _elsewhere(rec)
    line = (f"cd {shell_line([cwd])} && " if cwd else "") + shell_line(words)
    notes = _notes(entry, s)
    result: dict[str, Any] = {"checkpoint": ck.source, "stage": entry.get("stage"), "argv": words, "line": line,
                              "cwd": rec.get("cwd"), "config": config, "hidden": rec.get("hidden") or {},
                              "notes": notes}
    if config_out:
        from indistill_cli.io.atomic import atomic_write

        text = dump_config(s.sectioned(config), is_toml(config_out),
                           f"indistill {s.command} --config {Path(config_out).name}  (from {ck.source})")
        atomic_write(config_out, text.encode())
        result["config_out"] = config_out
        result["config_line"] = shell_line(["indistill", s.command, "--config", config_out])
    for n in notes:
        progress.info(f"[dim]# {n}[/dim]")
    if not as_json:
        import sys

        sys.stdout.write(line + "\n" + (result["config_line"] + "\n" if config_out else ""))
        sys.stdout.flush()
    return result


def _notes(entry: dict[str, Any], s: StageSettings) -> list[str]:
    rec, env = entry["command"], entry.get("env") or {}
    notes = [f"{s.command} of {entry.get('time', '?')} on {entry.get('device', '?')}, indistill "
             f"{env.get('indistill', '?')}, torch {env.get('torch', '?')}"]
    now = environment()
    changed = [f"{k} {env.get(k)} -> {now.get(k)}" for k in ("indistill", "torch", "torchvision", "timm", "python")
               if env.get(k) and env.get(k) != now.get(k)]
    if changed:
        notes.append("versions differ from the recorded ones (" + ", ".join(changed) + "): bitwise equality is not "
                     "expected")
    if rec.get("hidden"):
        notes.append("set by the program, no option gives them (rerun applies them; the line cannot): "
                     + ", ".join(f"{k}={v}" for k, v in rec["hidden"].items()))
    if _stdin_inputs(s):
        notes.append(f"read {', '.join(_stdin_inputs(s))} from stdin: pipe the same checkpoint in again")
    return notes


# ------------------------------------------------------------------------------------------------ rerun


def rerun_checkpoint(r: RerunSettings) -> dict[str, Any]:
    """Run the recorded command again into `r.output` and compare its tensors with the checkpoint's."""
    ck, entry, s = recorded(r.checkpoint)
    rec = entry["command"]
    if r.output == "-":
        raise BadInput("-o -: rerun compares a file with the checkpoint; give a file name")
    if _stdin_inputs(s):
        raise BadInput(f"{ck.source}: its command read {', '.join(_stdin_inputs(s))} from stdin; rerun needs files "
                       f"(`inspect --command` shows the line to pipe into)")
    if s.command == "import" and not rec.get("inputs"):
        raise BadInput(f"{ck.source}: imported from the hub id {get_value(s, ('source',))}, whose published weights "
                       f"may have changed since; rerun repeats imports of files")
    s = rebased(s, rec)
    setattr(s, s.output_field, r.output)
    s.force, s.quiet, s.json_out, s.log, s.expect_sha256 = r.force, r.quiet, False, [], expected(rec)
    for n in _notes(entry, s):
        progress.info(f"[dim]# {n}[/dim]")
    progress.info("rerun: " + shell_line(argv(type(s), s.config())))
    from indistill_cli.stages.registry import stage_for

    summary = stage_for(s).run()
    new = load_checkpoint(r.output)
    diff = tensor_diff(_tensors(ck), _tensors(new))
    out = {"checkpoint": ck.source, "output": r.output, "stage": entry.get("stage"), "command": argv(type(s),
           s.config()), "sha256": summary.get("sha256"), **diff, "recorded_env": entry.get("env"),
           "env": environment(), "recorded_device": entry.get("device")}
    if not diff["bitwise_equal"]:
        out["quality"] = {"recorded": quality(ck.source, s, entry), "rerun": quality(r.output, s, entry)}
    report(out)
    return out


def _tensors(ck: Checkpoint) -> dict[str, Any]:
    return {**ck.state, **{f"@{k}": v for k, v in ck.extras.items()}}


def tensor_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Bitwise equality of two tensor sets and, per tensor, the largest absolute difference."""
    import torch

    rows = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            rows.append({"tensor": name, "equal": False, "max_abs_diff": None, "note": "in one checkpoint only"})
            continue
        x, y = a[name], b[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            rows.append({"tensor": name, "equal": False, "max_abs_diff": None,
                         "note": f"{tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}"})
            continue
        d = float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
        rows.append({"tensor": name, "equal": bool(torch.equal(x, y)), "max_abs_diff": d})
    differing = [r for r in rows if not r["equal"]]
    finite = [r["max_abs_diff"] for r in rows if r["max_abs_diff"] is not None]
    return {"bitwise_equal": not differing, "tensors": len(rows), "differing": len(differing),
            "max_abs_diff": max(finite) if finite else None,
            "per_tensor": sorted(rows, key=lambda r: -(r["max_abs_diff"] or 0.0))}


def quality(path: str, s: StageSettings, entry: dict[str, Any]) -> dict[str, Any]:
    """Top-1 and cosine retrieval mAP of a checkpoint on the recorded dataset's test split."""
    from indistill_cli.stages.evaluate import run_evaluate
    from indistill_cli.stages.retrieve import run_retrieve

    opts = s.run_options()
    opts = dataclasses.replace(opts, data=entry.get("data") or opts.data, augment=False, resume=False,
                               state_dir=None)
    with progress.silenced():
        ev = run_evaluate(EvaluateSettings(model=path, per_class=False, batch_size=opts.eval_batch_size, opts=opts))
        rt = run_retrieve(RetrieveSettings(model=path, metric="cosine", batch_size=opts.eval_batch_size,
                                           opts=dataclasses.replace(opts, val_fraction=0.0)))
    return {"data": ev["data"], "top1": ev["top1"], "map": rt["metrics"]["cosine"]["map"]}


def report(out: dict[str, Any]) -> None:
    """The verdict on stderr: equal, or the largest differences and what they cost."""
    if out["bitwise_equal"]:
        progress.info(f"[green]bitwise equal[/green]: all {out['tensors']} tensors of {out['output']} equal those of "
                      f"{out['checkpoint']}")
        return
    progress.info(f"[yellow]not bitwise equal[/yellow]: {out['differing']} of {out['tensors']} tensors differ, max "
                  f"|diff| {progress.fmt(out['max_abs_diff'])}")
    progress.table("largest differences", ["tensor", "max |diff|", "note"],
                   [[r["tensor"], r["max_abs_diff"] if r["max_abs_diff"] is not None else "-", r.get("note", "")]
                    for r in out["per_tensor"][:8] if not r["equal"]])
    q = out["quality"]
    progress.table(f"quality on {q['recorded']['data']} test", ["checkpoint", "top-1", "mAP (cosine)"],
                   [[out["checkpoint"], q["recorded"]["top1"], q["recorded"]["map"]],
                    [out["output"], q["rerun"]["top1"], q["rerun"]["map"]]])
