"""`indistill pipeline`: the whole InDistill chain as one resumable command.

Stages (each is exactly the standalone command's function with the same options, so a pipeline's
student equals the one the separate commands give with the same seed):
  teacher (train, when given a name) -> [auxiliary: train + PKT from the teacher] -> prune -> warmup
  -> distill -> evaluate -> retrieve.
Every output lands in one folder with a manifest; `--resume` skips a stage whose output exists and
whose options and parent checkpoints are unchanged, so an interrupted run redoes only what is missing.

The student's schedule: by default warmup and KD are ONE run of one optimiser and lr plan (the
reference: Adam 1e-3, then 1e-4 for the last seventh of the epochs): the warmup writes its optimiser
state and plan, and distill continues it (`--schedule-mode separate` restarts KD with its own
optimiser instead). The budget view is explicit: `--budget equal` counts the warmup's epochs inside
`--epochs` (the strict comparison with `--no-warmup`), `--budget added` runs them before an unchanged
KD schedule of `--epochs` (then compare with `--no-warmup --epochs E+W`, KD given those epochs too).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indistill_cli import progress
from indistill_cli.data import load_dataset
from indistill_cli.engine.schedule import OptimConfig
from indistill_cli.errors import BadInput
from indistill_cli.io import jsontext
from indistill_cli.io.atomic import atomic_write
from indistill_cli.io.checkpoint import load_checkpoint, looks_like_checkpoint
from indistill_cli.io.trackers import Tracker, check_available, open_trackers
from indistill_cli.models import make_spec
from indistill_cli.pruning.rebuild import build
from indistill_cli.stages.base import Stage
from indistill_cli.stages.commands import (DistillSettings, EvaluateSettings, PipelineSettings, PruneSettings,
                                           RetrieveSettings, TrainSettings, WarmupSettings,
                                           reference_student_optim)
from indistill_cli.stages.curriculum import epochs_per_tap
from indistill_cli.stages.distill import check_weights
from indistill_cli.stages.distiller import parse_methods
from indistill_cli.stages.options import RunOptions
from indistill_cli.stages.registry import stage_for
from indistill_cli.stages.settings import StageSettings

__all__ = ["MANIFEST", "PipelineSettings", "reference_student_optim", "run_pipeline", "with_milestone"]

MANIFEST = "pipeline.json"


def with_milestone(optim: OptimConfig, total: int) -> OptimConfig:
    """A multistep plan given no milestones gets the reference's: lr x gamma for the last seventh."""
    if optim.schedule != "multistep" or optim.milestones:
        return optim
    return OptimConfig(**{**optim.as_dict(), "milestones": [total - max(1, round(total / 7))]})


def budget_split(cfg: PipelineSettings, warm_epochs: int) -> tuple[int, int]:
    """(warmup epochs, KD epochs) of the student under the budget view; KD alone without warmup."""
    if not cfg.warmup:
        return 0, cfg.epochs
    if cfg.budget == "added":
        return warm_epochs, cfg.epochs
    if cfg.epochs <= warm_epochs:
        raise BadInput(f"--budget equal: --epochs {cfg.epochs} must exceed the warmup's {warm_epochs} "
                       f"epochs (they count inside it); raise --epochs or use --budget added")
    return warm_epochs, cfg.epochs - warm_epochs


def budget_line(cfg: PipelineSettings, warm: int, kd: int) -> str:
    """The one line that says which budget view a run (and its table) uses."""
    if not cfg.warmup:
        return f"budget: {kd} KD epochs, no warmup"
    view = "equal total epochs (warmup counted inside)" if cfg.budget == "equal" else \
        "warmup added before an unchanged KD schedule"
    return f"budget: {view}: {warm} warmup + {kd} KD = {warm + kd} student epochs, {cfg.schedule_mode} schedule"


@dataclass
class PlannedStage:
    """One stage of the chain: its settings (what it runs, and what --resume compares) and its parents."""

    name: str
    output: str  # file name inside the output folder
    epochs: int
    settings: StageSettings
    parents: list[str]  # file names (inside the output folder) or external paths this stage reads

    def stage(self, tracker: Tracker | None) -> Stage:
        return stage_for(self.settings, tracker)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def plan(cfg: PipelineSettings) -> list[PlannedStage]:
    """The stages to run, in order, each the standalone command's settings."""
    stages: list[PlannedStage] = []
    teacher = _teacher_stage(cfg, stages)
    source = _aux_stages(cfg, teacher, stages)  # the model the student learns from (the auxiliary when there is one)
    final = _student_stages(cfg, source, stages)
    _report_stages(cfg, final, stages)
    return stages


def _file(cfg: PipelineSettings, name: str) -> str:
    return str(Path(cfg.out) / name)


def _teacher_stage(cfg: PipelineSettings, stages: list[PlannedStage]) -> str:
    """The teacher checkpoint: given, or trained here from an architecture name."""
    if looks_like_checkpoint(cfg.teacher):
        if cfg.teacher == "-":
            raise BadInput("pipeline --teacher cannot be '-': give a checkpoint file or an architecture name")
        return cfg.teacher
    teacher = _file(cfg, "teacher.safetensors")
    stages.append(PlannedStage("teacher", "teacher.safetensors", cfg.teacher_epochs, TrainSettings(
        model=cfg.teacher, output=teacher, epochs=cfg.teacher_epochs, optim=cfg.teacher_optim, opts=cfg.opts,
        force=True), []))
    return teacher


def _aux_stages(cfg: PipelineSettings, teacher: str, stages: list[PlannedStage]) -> str:
    """--aux: a CE-trained auxiliary, then PKT from the teacher; returns the student's source."""
    if not cfg.aux:
        return teacher
    aux_ce, aux, o = _file(cfg, "aux_ce.safetensors"), _file(cfg, "aux.safetensors"), cfg.opts
    stages.append(PlannedStage("aux-train", "aux_ce.safetensors", cfg.aux_epochs, TrainSettings(
        model=cfg.aux, output=aux_ce, epochs=cfg.aux_epochs, optim=cfg.teacher_optim, opts=o, force=True), []))
    stages.append(PlannedStage("aux-pkt", "aux.safetensors", cfg.aux_epochs, DistillSettings(
        teacher=teacher, student=aux_ce, output=aux, method=["pkt"], ce=0.0, epochs=cfg.aux_epochs,
        optim=cfg.aux_optim, opts=o, force=True), [teacher, aux_ce]))
    return aux


def _student_stages(cfg: PipelineSettings, source: str, stages: list[PlannedStage]) -> str:
    """prune -> warmup (unless --no-warmup) -> distill, on one lr plan when continuous; returns the student."""
    o, p = cfg.opts, (lambda name: _file(cfg, name))
    warm_n, kd_n = budget_split(cfg, warmup_epochs(cfg) if cfg.warmup else 0)
    continuous = cfg.warmup and cfg.schedule_mode == "continuous"
    student_optim = with_milestone(cfg.optim, warm_n + kd_n if continuous else kd_n)
    pruned, student_in = p("teacher_pruned.safetensors"), cfg.student
    if cfg.prunes:
        stages.append(PlannedStage("prune", "teacher_pruned.safetensors", 0, PruneSettings(
            teacher=source, like=cfg.student, output=pruned, data=o.data, criterion=cfg.criterion,
            mode=cfg.prune_mode, opts=o, force=True), [source]))
    if cfg.warmup:
        warm = p("student_warm.safetensors")
        warm_optim = OptimConfig(**{**student_optim.as_dict(), "plan_epochs": warm_n + kd_n}) if continuous \
            else cfg.warmup_optim
        stages.append(PlannedStage("warmup", "student_warm.safetensors", warm_n, WarmupSettings(
            teacher=pruned, student=cfg.student, output=warm, optim=warm_optim, opts=o, a=cfg.a, b=cfg.b,
            epochs_per_tap=cfg.epochs_per_tap, plot=p("flow.png"), force=True), [pruned]))
        student_in = warm
    final = p("student.safetensors")
    stages.append(PlannedStage("distill", "student.safetensors", kd_n, DistillSettings(
        teacher=source, student=student_in, output=final, method=list(cfg.method), param=list(cfg.param), ce=cfg.ce,
        epochs=None if continuous else kd_n, optim=student_optim, opts=o, force=True,
        flow_teacher=pruned if cfg.prunes else None, select=cfg.select, continue_plan=continuous,
        keep_flow=cfg.keep_flow, keep_flow_decay=cfg.keep_flow_decay), [source, student_in]))
    return final


def _report_stages(cfg: PipelineSettings, final: str, stages: list[PlannedStage]) -> None:
    """evaluate (with the flow view when warmed) and retrieve the final student."""
    o = cfg.opts
    eval_opts = RunOptions(**{**o.as_dict(), "augment": False})
    flow = _file(cfg, "teacher_pruned.safetensors") if cfg.prunes else None
    stages.append(PlannedStage("evaluate", "evaluate.json", 0, EvaluateSettings(
        model=final, split="test", teacher=flow, batch_size=o.eval_batch_size, opts=eval_opts), [final]))
    if cfg.retrieve:
        ret_opts = RunOptions(**{**o.as_dict(), "val_fraction": 0.0})
        stages.append(PlannedStage("retrieve", "retrieve.json", 0, RetrieveSettings(
            model=final, batch_size=o.eval_batch_size, opts=ret_opts), [final]))


def warmup_epochs(cfg: PipelineSettings) -> int:
    """The warmup's epochs for this student (its number of taps on the curriculum)."""
    if looks_like_checkpoint(cfg.student):
        taps = len(load_checkpoint(cfg.student).spec["taps"])
    else:
        info = load_dataset(cfg.opts.data, cfg.opts.val_fraction, cfg.opts.data_root, cfg.opts.image_size).info
        taps = len(make_spec(cfg.student, info.in_channels, info.num_classes, info.image_size)[0]["taps"])
    return sum(epochs_per_tap(taps, cfg.a, cfg.b, cfg.epochs_per_tap))


def estimate(cfg: PipelineSettings, stages: list[PlannedStage]) -> dict[str, float]:
    """Seconds per training stage from a 3-step timing of each model on this machine (rough, +-50%)."""
    import torch

    ds = load_dataset(cfg.opts.data, cfg.opts.val_fraction, cfg.opts.data_root, cfg.opts.image_size)
    info, n = ds.info, len(ds.train)
    shape = (info.in_channels, *info.image_size)

    def model_of(name: str) -> Any:
        if looks_like_checkpoint(name):
            return build(load_checkpoint(name).spec)
        return make_spec(name, info.in_channels, info.num_classes, info.image_size)[1]

    def ips(model: Any, train: bool = True) -> float:
        bs = min(cfg.opts.batch_size, 64)
        x = torch.randn(bs, model_in(model), *shape[1:])
        model.train(train)
        times = []
        for i in range(4):
            t = time.perf_counter()
            if train:
                model(x).sum().backward()
            else:
                with torch.no_grad():
                    model(x)
            times.append(time.perf_counter() - t)
        return bs / max(min(times[1:]), 1e-6)

    def model_in(model: Any) -> int:
        conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        return conv.in_channels if conv is not None else shape[0]

    t_model, s_model = model_of(cfg.teacher), model_of(cfg.student)
    s_ips, t_inf = ips(s_model), ips(t_model, train=False)
    out: dict[str, float] = {}
    for st in stages:
        if st.name == "teacher":
            out[st.name] = st.epochs * n / ips(t_model)
        elif st.name in ("aux-train", "aux-pkt") and cfg.aux:
            a_ips = ips(model_of(cfg.aux))
            out[st.name] = st.epochs * n * (1 / a_ips + (1 / t_inf if st.name == "aux-pkt" else 0))
        elif st.name in ("warmup", "distill"):
            out[st.name] = st.epochs * n * (1 / s_ips + 1 / t_inf)
    return out


def _load_manifest(d: Path) -> dict[str, Any]:
    try:
        return jsontext.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):  # unreadable, not JSON, or nested absurdly deep
        return {"stages": {}}


def run_pipeline(cfg: PipelineSettings) -> dict[str, Any]:
    """Run the stages not up to date (all, without --resume), then the final table."""
    cfg.check()
    check_weights(cfg.ce, cfg.keep_flow, cfg.keep_flow_decay)  # before the teacher trains, not after
    parse_methods(cfg.method, cfg.param)
    check_available(cfg.log)
    d = _out_dir(cfg)
    stages = plan(cfg)
    manifest = _load_manifest(d) if cfg.opts.resume else {"stages": {}}
    est = estimate(cfg, stages)
    warm_n = next((s.epochs for s in stages if s.name == "warmup"), 0)
    kd_n = next(s.epochs for s in stages if s.name == "distill")
    budget = budget_line(cfg, warm_n, kd_n)
    rows = [[i + 1, s.name, s.output, s.epochs, f"{est[s.name] / 60:.1f} min" if s.name in est else "< 1 min"]
            for i, s in enumerate(stages)]
    progress.table(f"pipeline: {cfg.teacher} -> {cfg.student} on {cfg.opts.data}"
                   f"{'' if cfg.warmup else ' (no InDistill warmup)'} -> {d}/  (estimated {sum(est.values()) / 60:.1f} "
                   f"min on this machine)", ["#", "stage", "output", "epochs", "estimate"], rows)
    progress.info(budget)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    tracker, ok = _open_tracker(cfg, d), False
    try:
        for i, s in enumerate(stages):
            results[s.name] = _run_stage(cfg, d, manifest, s, f"{i + 1}/{len(stages)}", tracker)
        final = _final_table(results, budget)
        _plot_student_flow(cfg, d, stages)
        if tracker is not None:
            student, flow = d / "student.safetensors", d / "flow.png"
            tracker.final(final, str(student), _file_sha(student), [str(flow)] if flow.exists() else [])
        ok = True
    finally:
        if tracker is not None:
            tracker.close(ok)
    return {"out_dir": str(d), "stages": [s.name for s in stages], "estimate_s": est, "results": results, "final": final,
            "budget": {"view": cfg.budget if cfg.warmup else "no-warmup", "warmup_epochs": warm_n, "kd_epochs": kd_n,
                       "schedule": cfg.schedule_mode if cfg.warmup else "single", "line": budget},
            "wall_s": round(time.perf_counter() - t0, 2)}


def _open_tracker(cfg: PipelineSettings, d: Path) -> Tracker | None:
    """--log: one run for the pipeline (rank 0 only), its stages its children; named after the folder."""
    if not cfg.log or not progress.main_process():
        return None
    log_dir = cfg.log_dir or str(d / "logs")
    t = open_trackers(cfg.log, log_dir, d.resolve().name)
    t.params(cfg.config(), "pipeline")
    progress.info(f"logging to {', '.join(cfg.log)} in {log_dir}/ (one run per stage under {d.resolve().name})")
    return t


def _out_dir(cfg: PipelineSettings) -> Path:
    """The output folder: new, or an earlier pipeline's with --resume."""
    d = Path(cfg.out)
    if d.exists() and not d.is_dir():
        raise BadInput(f"--out {d}: exists and is not a folder")
    if d.exists() and any(d.iterdir()) and not cfg.opts.resume and (d / MANIFEST).exists():
        raise BadInput(f"--out {d}: holds an earlier pipeline; pass --resume to continue it or choose another folder")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run_stage(cfg: PipelineSettings, d: Path, manifest: dict[str, Any], s: PlannedStage, which: str,
               tracker: Tracker | None = None) -> dict[str, Any]:
    """One stage, or its recorded summary when --resume finds its output up to date (same settings, same
    parents); updates the manifest. With a tracker, the stage is one child run of the pipeline's."""
    out = d / s.output
    parents = {pp: _file_sha(Path(pp)) for pp in s.parents}
    key = _digest({"options": s.settings.key(), "parents": parents})
    rec = manifest["stages"].get(s.name)
    if cfg.opts.resume and rec and rec.get("key") == key and out.exists() and rec.get("sha256") == _file_sha(out):
        progress.info(f"[bold]stage {which} {s.name}[/bold]: up to date, skipped")
        return rec.get("summary", {})
    if not progress.quiet():  # --quiet, or a torchrun rank other than 0
        progress.console.rule(f"stage {which}: {s.name}")
    ts = time.perf_counter()
    child, ok = (tracker.child(s.name) if tracker is not None else None), False
    try:
        summary = s.stage(child).run()
        ok = True
    finally:
        if child is not None:
            child.close(ok)
    main = progress.main_process()  # under torchrun only rank 0 writes
    if s.output.endswith(".json") and main:
        atomic_write(out, (json.dumps(summary, indent=1, default=str) + "\n").encode())
    small = {k: v for k, v in summary.items() if k not in ("epochs", "curves", "per_class")}
    manifest["stages"][s.name] = {"key": key, "sha256": _file_sha(out), "output": s.output,
                                  "wall_s": round(time.perf_counter() - ts, 2), "summary": small}
    if main:
        atomic_write(d / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())
    return small


def _plot_student_flow(cfg: PipelineSettings, d: Path, stages: list[PlannedStage]) -> None:
    """flow.png: the student's per-tap MSE to the pruned teacher through warmup and KD (the paper's Figure 4
    for this run; a `--no-warmup` run draws the KD stage alone, for comparison)."""
    student = d / "student.safetensors"
    if not progress.main_process() or not student.exists() or "prune" not in [s.name for s in stages]:
        return
    from indistill_cli.io.checkpoint import load_checkpoint
    from indistill_cli.io.history import flow_curves
    from indistill_cli.io.plots import plot_flow

    curves, n_warm = flow_curves(load_checkpoint(str(student)).history)
    if curves:
        spans = [("warmup", 1, n_warm)] if n_warm else []
        plot_flow(curves, d / "flow.png", f"per-tap MSE to the pruned teacher: {cfg.student}"
                  f"{', warmup + KD' if n_warm else ', KD without warmup'}", spans)


def _final_table(results: dict[str, Any], budget: str) -> dict[str, Any]:
    ev, rt = results.get("evaluate", {}), results.get("retrieve", {})
    mets = rt.get("metrics", {})
    final = {"top1": ev.get("top1"), "top5": ev.get("top5"),
             "map_cosine": mets.get("cosine", {}).get("map"), "map_euclidean": mets.get("euclidean", {}).get("map"),
             "p@100_cosine": mets.get("cosine", {}).get("precision@100")}
    progress.table(f"final student (test split); {budget}", ["metric", "value"],
                   [[k, v] for k, v in final.items() if v is not None])
    return final
