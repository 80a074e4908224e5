"""Classification evaluation: loss, top-1/top-5 and per-class accuracy over a loader."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from indistill_cli.metrics import topk_correct
from indistill_cli.runtime import Runtime


@torch.inference_mode()
def classify(model: nn.Module, loader: Any, rt: Runtime, num_classes: int) -> dict[str, Any]:
    """Metrics of `model` on every batch of `loader` (model put in eval mode, restored after)."""
    was = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=rt.device)
    top = {1: 0, 5: 0}
    per_class_hit = torch.zeros(num_classes, dtype=torch.long, device=rt.device)
    per_class_n = torch.zeros(num_classes, dtype=torch.long, device=rt.device)
    n = 0
    for batch in loader:
        with rt.autocast():
            logits = model(batch.x)
        logits = logits.float()
        loss += F.cross_entropy(logits, batch.y, reduction="sum").double()
        for k, v in topk_correct(logits, batch.y, (1, 5)).items():
            top[k] = top.get(k, 0) + v
        hit = logits.argmax(1) == batch.y
        per_class_n += torch.bincount(batch.y, minlength=num_classes)
        per_class_hit += torch.bincount(batch.y[hit], minlength=num_classes)
        n += int(batch.y.shape[0])
    model.train(was)
    counts = torch.tensor([float(loss), top.get(1, 0), top.get(5, 0), n], dtype=torch.float64, device=rt.device)
    if rt.distributed:
        import torch.distributed as dist

        dist.all_reduce(counts)
        dist.all_reduce(per_class_hit)
        dist.all_reduce(per_class_n)
    total = max(float(counts[3]), 1.0)
    return {"loss": float(counts[0]) / total, "top1": float(counts[1]) / total, "top5": float(counts[2]) / total,
            "n": int(counts[3]),
            "per_class": (per_class_hit.double() / per_class_n.clamp(min=1).double()).tolist()}
