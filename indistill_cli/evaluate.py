"""`indistill evaluate`: top-1/top-5, loss and per-class accuracy of a checkpoint on a split."""

from __future__ import annotations

import time
from typing import Any

import torch

from indistill_cli import progress
from indistill_cli.common import resolve_model
from indistill_cli.evaluation import classify
from indistill_cli.session import RunOptions, open_session


def run_evaluate(model_arg: str, split: str, opts: RunOptions, per_class: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    s = open_session(opts)
    m = resolve_model(model_arg, s.ds.info, "model", role=None)
    model = m.model.to(s.rt.device)
    if s.rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    r = classify(model, s.eval_loader(split, m.spec, shard=False), s.rt, s.ds.info.num_classes)
    classes = s.ds.info.classes
    out = {"model": m.name, "checkpoint": m.ckpt.source if m.ckpt else None, "data": s.ds.info.name, "split": split,
           "n": r["n"], "top1": r["top1"], "top5": r["top5"], "loss": r["loss"],
           "per_class": {c: a for c, a in zip(classes, r["per_class"])}, "wall_s": round(time.perf_counter() - t0, 3)}
    progress.table(f"{m.name} on {s.ds.info.name} / {split} ({r['n']} images)", ["metric", "value"],
                   [["top-1", r["top1"]], ["top-5", r["top5"]], ["loss", r["loss"]]])
    if per_class:
        progress.table("per-class top-1", ["class", "accuracy"], [[c, a] for c, a in out["per_class"].items()])
    return out
