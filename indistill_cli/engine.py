"""The one training loop, shared by `train`, `warmup` and `distill`.

A stage supplies a `step(batch, epoch) -> {name: tensor}` (the key "loss" is optimised, other keys
are logged; keys starting with "_" are counts such as "_correct") and a `validate(epoch)`. The
engine owns everything else: optimiser and schedule, autocast, the progress display, best-on-
validation selection, the NaN guard, throughput and peak memory. Losses are read back to the host
only every `log_every` steps, so a GPU is never synchronised per step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.errors import BadInput, RunFailure
from indistill_cli.runtime import Runtime, peak_memory_mb


@dataclass
class OptimConfig:
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"  # none | cosine | multistep
    milestones: list[int] = field(default_factory=list)  # epochs where multistep multiplies lr by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0
    reset_each_epoch: bool = False  # the InDistill reference re-creates Adam every epoch

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise BadInput(f"--optimizer must be sgd, adam or adamw, got '{self.optimizer}'")
        if self.schedule not in ("none", "cosine", "multistep"):
            raise BadInput(f"--schedule must be none, cosine or multistep, got '{self.schedule}'")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise BadInput(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise BadInput("--weight-decay must be >= 0")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def make_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: OptimConfig, t: float, epochs: int) -> float:
    """Multiplier of the base lr at fractional epoch t (warmup, then the schedule)."""
    if cfg.warmup_epochs and t < cfg.warmup_epochs:
        return (t + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(1e-9, epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - cfg.warmup_epochs) / span)))
    if cfg.schedule == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if t >= m)
    return 1.0


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one row per epoch: train losses, val metrics, lr, img/s
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    final_metrics: dict[str, float]
    images_per_sec: float
    peak_memory_mb: float
    wall_s: float


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Engine:
    """Runs epochs of a step function over a loader with one optimiser over `trainable`."""

    def __init__(self, rt: Runtime, cfg: OptimConfig, epochs: int, log_every: int = 20,
                 select: str | None = None, select_mode: str = "max", label: str = "train",
                 skip_nonfinite: int = 0) -> None:
        if epochs < 1:
            raise BadInput(f"--epochs must be at least 1, got {epochs}")
        cfg.validate()
        self.rt, self.cfg, self.epochs, self.log_every = rt, cfg, epochs, max(1, log_every)
        self.select, self.select_mode, self.label = select, select_mode, label
        self.skip_nonfinite = skip_nonfinite

    def fit(self, trainable: nn.Module, keep: nn.Module, step: Callable[[Any, int], dict[str, torch.Tensor]],
            loader: Any, validate: Callable[[int], dict[str, float]] | None = None,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> FitResult:
        """Train `trainable`'s parameters; `keep` is the module whose best/last state is returned."""
        rt, cfg = self.rt, self.cfg
        params = [p for p in trainable.parameters() if p.requires_grad]
        opt = make_optimizer(params, cfg)
        scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" else None
        steps_per_epoch = max(1, len(loader))
        history: list[dict[str, float]] = []
        best_val, best_epoch, best_state = None, -1, _snapshot(keep)
        train_time, train_images, bad_batches = 0.0, 0, 0
        t_start = time.perf_counter()
        with progress.bar(rt.is_main) as bars:
            task = bars.add_task(self.label, total=self.epochs * steps_per_epoch, status="")
            for epoch in range(self.epochs):
                if cfg.reset_each_epoch and epoch > 0:
                    opt = make_optimizer(params, cfg)
                loader.set_epoch(epoch)
                trainable.train()
                sums: dict[str, torch.Tensor] = {}
                seen = 0
                t0 = time.perf_counter()
                for i, batch in enumerate(loader):
                    lr = cfg.lr * lr_factor(cfg, epoch + i / steps_per_epoch, self.epochs)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    with rt.autocast():
                        out = step(batch, epoch)
                    loss = out["loss"]
                    check = rt.device.type == "cpu" or (i + 1) % self.log_every == 0
                    if check and not torch.isfinite(loss.detach()):
                        bad_batches += 1
                        if bad_batches > self.skip_nonfinite:
                            terms = ", ".join(f"{k}={float(v):.4g}" for k, v in out.items() if not k.startswith("_"))
                            raise RunFailure(f"non-finite loss at epoch {epoch + 1} step {i + 1} ({terms}); "
                                             f"try a lower --lr or --precision fp32")
                        opt.zero_grad(set_to_none=True)
                        continue
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        opt.step()
                    n = int(batch.y.shape[0])
                    seen += n
                    for k, v in out.items():
                        v = v.detach().float() * (1 if k.startswith("_") else n)
                        sums[k] = sums[k] + v if k in sums else v
                    if (i + 1) % self.log_every == 0 or i + 1 == steps_per_epoch:
                        el = time.perf_counter() - t0
                        bars.update(task, completed=epoch * steps_per_epoch + i + 1, status=(
                            f"epoch {epoch + 1}/{self.epochs} loss {float(sums['loss']) / max(seen, 1):.4f} "
                            f"{seen / max(el, 1e-9):.0f} img/s"))
                if rt.device.type == "cuda":
                    torch.cuda.synchronize(rt.device)
                dt = time.perf_counter() - t0
                train_time += dt
                train_images += seen
                row: dict[str, float] = {"epoch": epoch + 1, "lr": lr, "img_per_s": seen / max(dt, 1e-9)}
                row.update(self._reduce(sums, seen))
                if validate is not None:
                    row.update(validate(epoch))
                history.append(row)
                if self.select and self.select in row:
                    v = row[self.select]
                    better = best_val is None or (v > best_val if self.select_mode == "max" else v < best_val)
                    if better:
                        best_val, best_epoch, best_state = v, epoch + 1, _snapshot(keep)
                if on_epoch is not None:
                    on_epoch(epoch, row)
                if rt.is_main and not progress.quiet():
                    progress.console.print(f"{self.label} " + "  ".join(
                        f"{k} {progress.fmt(v)}" for k, v in row.items() if k != "lr"))
        if not self.select or best_epoch < 0:
            best_state, best_epoch = _snapshot(keep), self.epochs
        return FitResult(history, best_state, best_epoch, history[-1] if history else {},
                         train_images * rt.world / max(train_time, 1e-9), peak_memory_mb(rt.device),
                         time.perf_counter() - t_start)

    def _reduce(self, sums: dict[str, torch.Tensor], seen: int) -> dict[str, float]:
        """Epoch means of the logged terms (all-reduced across ranks)."""
        keys = sorted(sums)
        if not keys:
            return {}
        vec = torch.stack([sums[k].to(self.rt.device) for k in keys] + [torch.tensor(float(seen), device=self.rt.device)])
        if self.rt.distributed:
            import torch.distributed as dist

            dist.all_reduce(vec)
        total = float(vec[-1])
        out = {}
        for k, v in zip(keys, vec[:-1].tolist()):
            if k.startswith("_correct"):
                out["train_acc"] = v / max(total, 1)
            elif not k.startswith("_"):
                out[f"train_{k}"] = v / max(total, 1)
        return out


def clone_module(m: nn.Module) -> nn.Module:
    return copy.deepcopy(m)
