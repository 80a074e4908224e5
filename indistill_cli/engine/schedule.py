"""The optimiser's settings, the learning-rate plan, and which epoch a run keeps (pure Python: the CLI
reads these declarations without importing torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from indistill_cli.errors import BadInput
from indistill_cli.optionspec import option


def check_epochs(epochs: int) -> None:
    """Every training run needs at least one epoch."""
    if epochs < 1:
        raise BadInput(f"--epochs must be at least 1, got {epochs}")


def parse_milestones(text: str) -> list[int]:
    """'150,180,210' -> [150, 180, 210]."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"--milestones must be comma-separated epochs, got '{text}'") from None


def show_milestones(milestones: list[int]) -> str:
    """[150, 180, 210] -> '150,180,210' (how the command line spells them)."""
    return ",".join(str(m) for m in milestones)


@dataclass
class OptimConfig:
    optimizer: str = option("sgd", help="sgd, adam or adamw.")
    lr: float = option(0.05, help="Base learning rate.", tunable=True)
    momentum: float = option(0.9, help="SGD momentum.")
    weight_decay: float = option(5e-4, "--weight-decay", "--wd", help="Weight decay.")
    nesterov: bool = option(False, help="Nesterov momentum (SGD).")
    schedule: str = option("cosine", help="none, cosine or multistep.")  # none | cosine | multistep
    # epochs where multistep multiplies lr by gamma
    milestones: list[int] = option(help="multistep epochs, comma separated, e.g. 150,180,210.", default_factory=list,
                                   cli_type=str, parse=parse_milestones, show=show_milestones)
    gamma: float = option(0.1, help="multistep lr factor.")
    warmup_epochs: int = option(0, help="Linear lr warmup epochs.")
    reset_each_epoch: bool = option(False, param="reset_optimizer_each_epoch", help="Re-create the optimiser every "
                                    "epoch (the reference code's habit).")
    # one lr plan across stages (warmup, then KD, as the reference runs its student): the plan spans
    # plan_epochs (0: this run's own epochs) and this run starts plan_offset epochs into it
    plan_epochs: int = option(0, help="Make the warmup the first part of ONE lr plan over this many student epochs "
                              "(warmup + KD, as the reference runs its student): the lr follows the plan and the "
                              "optimiser state is written to a sidecar that `distill --continue-plan` takes up. 0: "
                              "the warmup alone.")
    plan_offset: int = 0

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise BadInput(f"--optimizer must be sgd, adam or adamw, got '{self.optimizer}'")
        if self.schedule not in ("none", "cosine", "multistep"):
            raise BadInput(f"--schedule must be none, cosine or multistep, got '{self.schedule}'")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise BadInput(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise BadInput("--weight-decay must be >= 0")
        if self.plan_epochs < 0 or self.plan_offset < 0:
            raise BadInput("the lr plan's length and offset must be >= 0")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lr_factor(cfg: OptimConfig, t: float, epochs: int) -> float:
    """Multiplier of the base lr at fractional epoch t of this run (warmup, then the schedule).

    With a plan (cfg.plan_epochs), t is shifted by plan_offset and the schedule spans the plan, so
    a KD stage that continues a warmup's plan takes up the lr exactly where the warmup left it."""
    t += cfg.plan_offset
    epochs = cfg.plan_epochs or epochs
    if cfg.warmup_epochs and t < cfg.warmup_epochs:
        return (t + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(1e-9, epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - cfg.warmup_epochs) / span)))
    if cfg.schedule == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if t >= m)
    return 1.0


SELECT_KEYS = {"top1": "val_top1", "map": "val_map", "last": None}
SELECT_PHRASES = {"top1": "best epoch by validation top-1", "map": "best epoch by validation retrieval mAP",
                  "last": "last epoch"}


def resolve_select(requested: str, trains_head: bool, trains_embedding: bool, has_val: bool,
                   what: str = "this run") -> str:
    """--select: which epoch a run keeps. 'auto' picks what the run trains: validation top-1 when a loss
    reaches the classifier head, else validation retrieval mAP when one reaches the embedding, else
    the last epoch. An explicit choice that the run cannot support is refused, never silently used:
    top-1 of a head no loss trains would keep an arbitrary epoch."""
    if requested not in ("auto", *SELECT_KEYS):
        raise BadInput(f"--select must be auto, last, top1 or map, got '{requested}'")
    if requested == "auto":
        if not has_val:
            return "last"
        return "top1" if trains_head else "map" if trains_embedding else "last"
    if requested != "last" and not has_val:
        raise BadInput(f"--select {requested} needs a validation split (--val-fraction > 0); use --select last")
    if requested == "top1" and not trains_head:
        raise BadInput(f"--select top1: no loss in {what} reaches the classifier head (no CE, no logit method), so "
                       f"its top-1 is arbitrary; use --select map (validation retrieval mAP) or last")
    if requested == "map" and not trains_embedding and not trains_head:
        raise BadInput(f"--select map: no loss in {what} reaches the embedding; use --select last")
    return requested
