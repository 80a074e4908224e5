"""`indistill evaluate`: top-1/top-5, loss and per-class accuracy of a checkpoint on a split."""

from __future__ import annotations

import time
from typing import Any

import torch

from indistill_cli import progress
from indistill_cli.common import resolve_model
from indistill_cli.evaluation import classify
from indistill_cli.session import RunOptions, open_session


@torch.inference_mode()
def agreement(student: torch.nn.Module, teacher: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    """Share of images on which student and teacher predict the same class."""
    same = n = 0
    for x in batches:
        same += int((student(x).argmax(1) == teacher(x).argmax(1)).sum())
        n += int(x.shape[0])
    return same / max(n, 1)


def flow_report(student: torch.nn.Module, student_spec: dict[str, Any], teacher_arg: str, s: Any, split: str,
                max_images: int, plot: str | None) -> dict[str, Any]:
    """The information-flow view: per paired tap MSE to the (pruned) teacher's target, and agreement."""
    from indistill_cli.checkpoint import load_checkpoint
    from indistill_cli.data import check_compatible
    from indistill_cli.errors import BadInput
    from indistill_cli.flow import FlowPair, flow_mse, pairs_from_teacher
    from indistill_cli.models import model_from_checkpoint, spec_name

    ck = load_checkpoint(teacher_arg)
    if ck.role not in ("model", "pruned-teacher"):
        raise BadInput(f"--teacher {ck.source}: a {ck.role} checkpoint is not a teacher")
    check_compatible(s.ds.info, ck.spec, f"teacher {ck.source}")
    teacher = model_from_checkpoint(ck).to(s.rt.device).eval()
    student.eval()
    batches, n = [], 0
    for b in s.eval_loader(split, student_spec, shard=False):
        batches.append(b.x[: max_images - n])
        n += batches[-1].shape[0]
        if n >= max_images:
            break
    out: dict[str, Any] = {"teacher": spec_name(ck.spec), "teacher_checkpoint": ck.source, "flow_images": n,
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
            from indistill_cli.plots import plot_tap_bars

            plot_tap_bars(out["tap_mse"], plot, f"per-tap MSE to {out['teacher']} targets; "
                                                f"agreement {100 * out['agreement']:.1f}%")
            out["plot"] = plot
    progress.info(f"teacher-student agreement: {100 * out['agreement']:.2f}% of {n} images")
    return out


def run_evaluate(model_arg: str, split: str, opts: RunOptions, per_class: bool = True, teacher: str | None = None,
                 flow_images: int = 2000, plot: str | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    s = open_session(opts)
    m = resolve_model(model_arg, s.ds.info, "model", role=None)
    model = m.model.to(s.rt.device)
    if s.rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    r = classify(model, s.eval_loader(split, m.spec), s.rt, s.ds.info.num_classes)  # rank shards, all-reduced
    classes = s.ds.info.classes
    out = {"model": m.name, "checkpoint": m.ckpt.source if m.ckpt else None, "data": s.ds.info.name, "split": split,
           "n": r["n"], "top1": r["top1"], "top5": r["top5"], "loss": r["loss"],
           "per_class": {c: a for c, a in zip(classes, r["per_class"])}, "wall_s": round(time.perf_counter() - t0, 3)}
    progress.table(f"{m.name} on {s.ds.info.name} / {split} ({r['n']} images)", ["metric", "value"],
                   [["top-1", r["top1"]], ["top-5", r["top5"]], ["loss", r["loss"]]])
    if per_class:
        progress.table("per-class top-1", ["class", "accuracy"], [[c, a] for c, a in out["per_class"].items()])
    if teacher:
        out["flow"] = flow_report(model, m.spec, teacher, s, split, flow_images, plot)
    return out
