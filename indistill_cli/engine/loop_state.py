"""What a fit has accumulated, where it is, and saving/restoring both with the run's resumable state.

A resumed CPU run is bitwise identical to an uninterrupted one because everything the loop carries
(history rows, best-so-far model, counters, the lr, optimiser and grad-scaler state, the partial epoch
sums, every rank's RNG streams, the stages' own bookkeeping) goes into the state and comes back.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.engine import resume
from indistill_cli.engine.runtime import Runtime


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class LoopState:
    """The fit's results so far."""

    history: list[dict[str, float]]  # one row per epoch
    best_state: dict[str, torch.Tensor]
    best_val: float | None = None
    best_epoch: int = -1
    train_time: float = 0.0
    train_images: int = 0
    lr: float = 0.0


@dataclass
class Position:
    """Where a fit is: epoch (0-based), steps done in it, the epoch's partial sums, images and seconds."""

    epoch: int = 0
    step: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    seen: int = 0
    elapsed: float = 0.0


class ResumePoint:
    """Writes and reads the resumable state of one fit through its `resume.RunState`."""

    def __init__(self, state: resume.RunState, rt: Runtime, trainable: nn.Module) -> None:
        self.state, self.rt, self.trainable = state, rt, trainable

    def save(self, loop: LoopState, bad: int, opt: torch.optim.Optimizer, scaler: Any, pos: Position,
             collective: bool = True) -> bool:
        """Write a state at `pos`; False when there is nowhere to write.

        `collective`: every rank calls this at the same step (agreed stop/save), so RNG states can be
        gathered; a divergence seen by one rank alone saves without collectives."""
        state, rt = self.state, self.rt
        if state.dir is None:
            return False
        rng, ranks = resume.capture_rng(rt.device), None
        cpu_sums = {k: v.detach().cpu() for k, v in pos.sums.items()}
        if rt.distributed and collective:  # each rank's RNG streams and epoch sums, kept by rank 0
            import torch.distributed as dist

            ranks = [None] * rt.world
            dist.all_gather_object(ranks, {"rng": rng, "sums": cpu_sums, "seen": pos.seen})
        if not state.is_main:  # rank 0 writes the (replicated) model and optimiser
            state.last_save = time.monotonic()
            return True
        tensors = resume.module_tensors(self.trainable)
        if loop.best_epoch >= 0:
            tensors.update({f"best/{k}": v for k, v in loop.best_state.items()})
        record = {"epoch": pos.epoch, "step": pos.step, "history": loop.history, "best_val": loop.best_val,
                  "best_epoch": loop.best_epoch, "train_time": loop.train_time, "train_images": loop.train_images,
                  "bad_batches": bad, "seen": pos.seen, "lr": loop.lr, "epoch_time": pos.elapsed,
                  "hooks": {name: get() for name, get, _ in state.hooks}}
        side = {"loop": json.dumps(record, default=float), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {}, "sums": cpu_sums, "rng": rng}
        if ranks is not None:
            side["rng_ranks"] = ranks
        state.save(resume.cpu_copy(tensors), side)
        return True

    def load(self, loop: LoopState, opt: torch.optim.Optimizer, scaler: Any, label: str) -> tuple[Position, int]:
        """Restore the newest state into `loop`, the optimiser and the scaler (with --resume); returns where
        to start and the bad steps counted so far (a fresh start when there is nothing to resume)."""
        state, rt = self.state, self.rt
        state.add_key("world", rt.world)  # the data shards depend on it
        loaded = state.load()
        if loaded is None:
            return Position(), 0
        tensors, side = loaded
        resume.load_module_tensors(self.trainable, tensors)
        rec = json.loads(side["loop"])
        opt.load_state_dict(side["optimizer"])
        if scaler is not None and side.get("scaler"):
            scaler.load_state_dict(side["scaler"])
        loop.history, loop.best_val, loop.best_epoch = rec["history"], rec["best_val"], rec["best_epoch"]
        if loop.best_epoch >= 0:
            loop.best_state = {k[len("best/"):]: v.to(rt.device) for k, v in tensors.items() if k.startswith("best/")}
        loop.train_time, loop.train_images, loop.lr = rec["train_time"], rec["train_images"], rec["lr"]
        pos = Position(rec["epoch"], rec["step"], {k: v.to(rt.device) for k, v in side["sums"].items()}, rec["seen"],
                       rec.get("epoch_time", 0.0))
        for name, _, set_ in state.hooks:
            if name in rec["hooks"]:
                set_(rec["hooks"][name])
        per_rank = side.get("rng_ranks") or []
        mine = per_rank[rt.rank] if rt.distributed and rt.rank < len(per_rank) else None
        if mine is not None:  # this rank's own streams and partial sums
            pos.sums, pos.seen = {k: v.to(rt.device) for k, v in mine["sums"].items()}, mine["seen"]
        resume.restore_rng(mine["rng"] if mine is not None else side["rng"], rt.device)  # last: no draws after it
        state.resumed_from = (pos.epoch, pos.step)
        progress.info(f"resuming {label} at epoch {pos.epoch + 1} step {pos.step} (state in {state.where()})")
        return pos, rec["bad_batches"]
