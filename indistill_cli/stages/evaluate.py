"""`indistill evaluate`: top-1/top-5, loss and per-class accuracy of a checkpoint on a split, and with a
(pruned) teacher the information-flow view."""

from __future__ import annotations

from typing import Any

import torch

from indistill_cli import progress
from indistill_cli.data import check_compatible
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import load_checkpoint
from indistill_cli.metrics import agreement, classify, flow_mse
from indistill_cli.models import ModelSpec, create_model
from indistill_cli.pruning.targets import FlowPair, pairs_from_teacher
from indistill_cli.stages.base import Result, Stage
from indistill_cli.stages.commands import EvaluateSettings
from indistill_cli.stages.resolve import fed_by, frozen, resolve_model
from indistill_cli.stages.session import Session


def flow_report(student: torch.nn.Module, student_spec: ModelSpec, teacher_arg: str, s: Session, split: str,
                max_images: int, plot: str | None) -> dict[str, Any]:
    """The information-flow view: per paired tap MSE to the (pruned) teacher's target, and agreement."""
    ck = load_checkpoint(teacher_arg)
    if ck.role not in ("model", "pruned-teacher"):
        raise BadInput(f"--teacher {ck.source}: a {ck.role} checkpoint is not a teacher")
    check_compatible(s.ds.info, ck.spec, f"teacher {ck.source}")
    teacher = fed_by(frozen(create_model(ck).model, s.rt.device), ck.spec, student_spec, s.ds.info)
    student.eval()
    batches = s.first_images(split, student_spec, max_images)
    n = sum(int(b.shape[0]) for b in batches)
    out: dict[str, Any] = {"teacher": ck.spec.name, "teacher_checkpoint": ck.source, "flow_images": n,
                           "agreement": agreement(student, teacher, batches)}
    try:
        pairs = pairs_from_teacher(ck, student_spec)
    except BadInput as e:
        progress.warn(f"no per-tap MSE: {e}")
        pairs = []
    if pairs:
        vals = flow_mse(FlowPair(teacher, student, pairs), batches, s.rt)
        out["tap_mse"] = {f"{p.student_tap}<-{p.teacher_tap}": v for p, v in zip(pairs, vals)}
        progress.table(f"information flow vs {out['teacher']} ({split}, {n} images)", ["student <- teacher tap", "MSE"],
                       [[k, v] for k, v in out["tap_mse"].items()])
        if plot and s.rt.is_main:
            from indistill_cli.io.plots import plot_tap_bars

            plot_tap_bars(out["tap_mse"], plot, f"per-tap MSE to {out['teacher']} targets; "
                                                f"agreement {100 * out['agreement']:.1f}%")
            out["plot"] = plot
    progress.info(f"teacher-student agreement: {100 * out['agreement']:.2f}% of {n} images")
    return out


class Evaluate(Stage):
    name = "evaluate"
    s: EvaluateSettings

    def execute(self, s: Session) -> Result:
        c = self.s
        m = resolve_model(c.model, s.ds.info, "model", role=None)
        model = m.model.to(s.rt.device)
        if s.rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        r = classify(model, s.eval_loader(c.split, m.spec), s.rt, s.ds.info.num_classes)  # rank shards, all-reduced
        classes = s.ds.info.classes
        out = {"model": m.name, "checkpoint": m.ckpt.source if m.ckpt else None, "data": s.ds.info.name,
               "split": c.split, "n": r["n"], "top1": r["top1"], "top5": r["top5"], "loss": r["loss"],
               "per_class": {c_: a for c_, a in zip(classes, r["per_class"])}, "wall_s": round(self.wall(), 3)}
        progress.table(f"{m.name} on {s.ds.info.name} / {c.split} ({r['n']} images)", ["metric", "value"],
                       [["top-1", r["top1"]], ["top-5", r["top5"]], ["loss", r["loss"]]])
        if c.per_class:
            progress.table("per-class top-1", ["class", "accuracy"], [[k, a] for k, a in out["per_class"].items()])
        if c.teacher:
            out["flow"] = flow_report(model, m.spec, c.teacher, s, c.split, c.flow_images, c.plot)
        metrics = {k: out[k] for k in ("top1", "top5", "loss")}
        if "flow" in out:
            metrics.update({"agreement": out["flow"]["agreement"], "tap_mse": out["flow"].get("tap_mse", {})})
        return Result(out, entry={"metrics": metrics}, artifacts=[out["flow"]["plot"]] if out.get("flow", {}).get(
            "plot") else [])


def run_evaluate(settings: EvaluateSettings) -> dict[str, Any]:
    """Accuracy of `settings.model` on `settings.split` (and the flow view against `settings.teacher`)."""
    return Evaluate(settings).run()
