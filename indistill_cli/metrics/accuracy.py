"""Classification metrics: top-k counts, evaluation over a loader (loss, top-1/top-5, per-class accuracy,
and the validation retrieval mAP that checkpoint selection uses when a run trains the embedding but not
the head), and teacher-student agreement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from indistill_cli.metrics.retrieval import check_ks, retrieval_metrics
from indistill_cli.models.taps import TapSet, as_vector


def topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Count samples whose label is among the top-k logits, for each requested k.

    A k larger than the number of classes is clipped (every sample is then correct), so
    small datasets can still report "top-5". Keys are the requested ks.
    """
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    ks = check_ks(ks)
    num_classes = logits.shape[1]
    if logits.shape[0] == 0 or num_classes == 0:
        return {k: 0 for k in ks}
    max_k = min(max(ks), num_classes)
    top = logits.topk(max_k, dim=1).indices
    hit = top == labels.to(top.device).view(-1, 1)
    return {k: int(hit[:, : min(k, num_classes)].any(dim=1).sum()) for k in ks}


@torch.inference_mode()
def classify(model: nn.Module, loader: Any, rt: Any, num_classes: int,
             embedding: str | None = None) -> dict[str, Any]:
    """Metrics of `model` on every batch of `loader` (model put in eval mode, restored after), in fp32 whatever
    the run's training precision: checkpoint selection, `evaluate` and `compare` read the same figures.

    With `embedding` (a tap name) also "map": exact cosine mAP of that embedding with the loader's
    images searching each other (leave-one-out), computed in the same pass."""
    was = model.training
    model.eval()
    taps = TapSet(model, [embedding]) if embedding else None
    embs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    loss = torch.zeros((), dtype=torch.float64, device=rt.device)
    top = {1: 0, 5: 0}
    per_class_hit = torch.zeros(num_classes, dtype=torch.long, device=rt.device)
    per_class_n = torch.zeros(num_classes, dtype=torch.long, device=rt.device)
    n = 0
    for batch in loader:
        logits = model(batch.x).float()  # fp32 (no autocast): the same checkpoint gives the same figures anywhere
        if taps is not None:
            embs.append(as_vector(taps.out.pop(embedding)).float())
            labels.append(batch.y)
        loss += F.cross_entropy(logits, batch.y, reduction="sum").double()
        for k, v in topk_correct(logits, batch.y, (1, 5)).items():
            top[k] = top.get(k, 0) + v
        hit = logits.argmax(1) == batch.y
        per_class_n += torch.bincount(batch.y, minlength=num_classes)
        per_class_hit += torch.bincount(batch.y[hit], minlength=num_classes)
        n += int(batch.y.shape[0])
    model.train(was)
    if taps is not None:
        taps.close()
    counts = torch.tensor([float(loss), top.get(1, 0), top.get(5, 0), n], dtype=torch.float64, device=rt.device)
    if rt.distributed:
        import torch.distributed as dist

        dist.all_reduce(counts)
        dist.all_reduce(per_class_hit)
        dist.all_reduce(per_class_n)
    total = max(float(counts[3]), 1.0)
    out = {"loss": float(counts[0]) / total, "top1": float(counts[1]) / total, "top5": float(counts[2]) / total,
           "n": int(counts[3]),
           "per_class": (per_class_hit.double() / per_class_n.clamp(min=1).double()).tolist()}
    if taps is not None:
        out["map"] = _self_map(torch.cat(embs), torch.cat(labels), rt)
    return out


def _self_map(emb: torch.Tensor, labels: torch.Tensor, rt: Any) -> float:
    """Leave-one-out cosine mAP of a split searched in itself (every rank's shard gathered first)."""
    if rt.distributed:
        import torch.distributed as dist

        parts: list[Any] = [None] * rt.world
        dist.all_gather_object(parts, (emb.cpu(), labels.cpu()))
        emb, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if emb.shape[0] < 2:
        return float("nan")
    return float(retrieval_metrics(emb, labels, emb, labels, "cosine", ks=(1,), exclude_self=True)["map"])


@torch.inference_mode()
def agreement(student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor]) -> float:
    """Share of images on which student and teacher predict the same class."""
    same = n = 0
    for x in batches:
        same += int((student(x).argmax(1) == teacher(x).argmax(1)).sum())
        n += int(x.shape[0])
    return same / max(n, 1)
