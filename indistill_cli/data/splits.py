"""The validation split: carved from train once, the same way for tensor and folder datasets."""

from __future__ import annotations

from typing import Any

import torch

from indistill_cli.errors import BadInput


def per_class_share(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of round(n_c * fraction) items of each class c (at least one): the first of one fixed
    per-class order drawn from `seed`, so a smaller fraction's share lies inside a larger one's."""
    g = torch.Generator().manual_seed(seed)
    take = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        take.append(idx[: max(1, int(round(len(idx) * fraction)))])
    return torch.sort(torch.cat(take)).values


def carve_val(train: Any, fraction: float) -> tuple[Any, Any | None]:
    """(train without val, val): a fixed share per class (data seed 0), so every run selects on the same
    images. `train` is any split with `labels`, `len` and `subset(idx, name)` (tensor or folder)."""
    if fraction <= 0:
        return train, None
    if fraction >= 1:
        raise BadInput("--val-fraction must be in [0, 1)")
    val = per_class_share(train.labels, fraction, seed=0)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val] = False
    return train.subset(torch.nonzero(keep).flatten(), "train"), train.subset(val, "val")


def keep_fraction(train: Any, fraction: float) -> Any:
    """A fixed share of the training split (`--train-fraction`): round(n_c * fraction) images of each class c
    (at least one), the first of one fixed per-class order (data seed 1, apart from the validation split's), so
    the subset for 1% lies inside the one for 10%, inside the whole split. Validation and test are untouched:
    this runs on what `carve_val` left for training."""
    if not 0 < fraction <= 1:
        raise BadInput(f"--train-fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return train
    return train.subset(per_class_share(train.labels, fraction, seed=1), "train")
