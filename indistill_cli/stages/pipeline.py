"""`indistill pipeline`: the whole InDistill chain as one resumable command.

Stages (the links of `stages.chain`, the chain `study` runs too; each is exactly the standalone command's
settings, so a pipeline's student equals the one the separate commands give with the same seed):
  teacher (train, when given a name) -> [auxiliary: train + PKT from the teacher] -> prune -> warmup
  -> distill -> evaluate -> retrieve; the final table holds the test `Scores` (percent).
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
from pathlib import Path
from typing import Any

from indistill_cli import progress
from indistill_cli.data import load_dataset
from indistill_cli.errors import BadInput
from indistill_cli.io import jsontext
from indistill_cli.io.atomic import atomic_write
from indistill_cli.io.checkpoint import load_checkpoint, looks_like_checkpoint
from indistill_cli.io.trackers import Tracker, check_available, open_trackers
from indistill_cli.metrics.scores import Scores
from indistill_cli.models import create_model
from indistill_cli.stages.chain import (KD, Chain, Curriculum, Link, distill_link, planned, reference_links,
                                        reference_student_optim, warmup_link, with_milestone)
from indistill_cli.stages.commands import EvaluateSettings, PipelineSettings, RetrieveSettings
from indistill_cli.stages.curriculum import epochs_per_tap
from indistill_cli.stages.distill import check_weights
from indistill_cli.stages.distiller import parse_methods
from indistill_cli.stages.options import RunOptions

__all__ = ["MANIFEST", "PipelineSettings", "reference_student_optim", "run_pipeline", "with_milestone"]

MANIFEST = "pipeline.json"


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


PlannedStage = Link  # the pipeline's stages are the chain's links (settings: what runs and what --resume compares)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def chain_of(cfg: PipelineSettings) -> Chain:
    """The chain this pipeline runs: its reference models and their files in the output folder."""
    return Chain(cfg.teacher, cfg.student, cfg.out, cfg.teacher_epochs, cfg.teacher_optim, aux=cfg.aux,
                 aux_epochs=cfg.aux_epochs, aux_pkt_optim=cfg.aux_optim, criterion=cfg.criterion,
                 prune_mode=cfg.prune_mode)


def plan(cfg: PipelineSettings) -> list[PlannedStage]:
    """The stages to run, in order, each the standalone command's settings (the chain's links)."""
    if cfg.teacher == "-":
        raise BadInput("pipeline --teacher cannot be '-': give a checkpoint file or an architecture name")
    c = chain_of(cfg)
    stages = reference_links(c, cfg.opts, prune=cfg.prunes)
    final = _student_stages(cfg, c, stages)
    _report_stages(cfg, final, stages)
    return stages


def _file(cfg: PipelineSettings, name: str) -> str:
    return str(Path(cfg.out) / name)


def _student_stages(cfg: PipelineSettings, c: Chain, stages: list[PlannedStage]) -> str:
    """warmup (unless --no-warmup) -> distill, on one lr plan when continuous; returns the student."""
    warm_n, kd_n = budget_split(cfg, warmup_epochs(cfg) if cfg.warmup else 0)
    continuous = cfg.warmup and cfg.schedule_mode == "continuous"
    student_optim = with_milestone(cfg.optim, warm_n + kd_n if continuous else kd_n)
    student_in = cfg.student
    if cfg.warmup:
        warm = _file(cfg, "student_warm.safetensors")
        warm_optim = planned(cfg.optim, warm_n + kd_n) if continuous else cfg.warmup_optim
        stages.append(warmup_link(c, cfg.opts, warm, warm_optim, warm_n,
                                  Curriculum(cfg.a, cfg.b, cfg.epochs_per_tap), plot=_file(cfg, "flow.png")))
        student_in = warm
    final = _file(cfg, "student.safetensors")
    kd = KD(tuple(cfg.method), tuple(cfg.param), cfg.ce, cfg.select, cfg.prunes, cfg.keep_flow, cfg.keep_flow_decay)
    stages.append(distill_link(c, cfg.opts, student_in, final, kd, kd_n, student_optim, continuous))
    return final


def _report_stages(cfg: PipelineSettings, final: str, stages: list[PlannedStage]) -> None:
    """evaluate (with the flow view when warmed) and retrieve the final student."""
    o = cfg.opts
    eval_opts = RunOptions(**{**o.as_dict(), "augment": False})
    flow = _file(cfg, "teacher_pruned.safetensors") if cfg.prunes else None
    stages.append(PlannedStage("evaluate", "evaluate.json", 0, EvaluateSettings(
        model=final, split="test", teacher=flow, batch_size=o.eval_batch_size, opts=eval_opts), [final]))
    if cfg.retrieve:
        ret_opts = RunOptions(**{**o.as_dict(), "val_fraction": 0.0, "train_fraction": 1.0})
        stages.append(PlannedStage("retrieve", "retrieve.json", 0, RetrieveSettings(
            model=final, batch_size=o.eval_batch_size, opts=ret_opts), [final]))


def warmup_epochs(cfg: PipelineSettings) -> int:
    """The warmup's epochs for this student (its number of taps on the curriculum)."""
    if looks_like_checkpoint(cfg.student):
        taps = len(load_checkpoint(cfg.student).spec.taps)
    else:
        info = load_dataset(cfg.opts.data, cfg.opts.val_fraction, cfg.opts.data_root, cfg.opts.image_size).info
        taps = len(create_model(cfg.student, info.shape).spec.taps)
    return sum(epochs_per_tap(taps, cfg.a, cfg.b, cfg.epochs_per_tap))


def estimate(cfg: PipelineSettings, stages: list[PlannedStage]) -> dict[str, float]:
    """Seconds per training stage from a 3-step timing of each model on this machine (rough, +-50%)."""
    import torch

    ds = load_dataset(cfg.opts.data, cfg.opts.val_fraction, cfg.opts.data_root, cfg.opts.image_size,
                      train_fraction=cfg.opts.train_fraction)
    info, n = ds.info, len(ds.train)
    shape = (info.in_channels, *info.image_size)

    def model_of(name: str) -> Any:
        if looks_like_checkpoint(name):
            return create_model(load_checkpoint(name).spec).model
        return create_model(name, info.shape).model

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
    """The final student's test scores (`Scores`: percent) as one table."""
    final = Scores.from_stages(results.get("evaluate"), results.get("retrieve")).as_dict()
    progress.table(f"final student (test split, %); {budget}", ["metric", "value"],
                   [[k, f"{v:.2f}"] for k, v in final.items()])
    return final
