"""The work at the end of every epoch: the epoch's means, validation, best-epoch selection, the log line."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.engine.loop_state import LoopState, snapshot
from indistill_cli.engine.runtime import Runtime

COUNTED = "_images"  # the sums key of the images whose steps counted (deferred guard; else the host count)


class EpochEnd:
    """Turns an epoch's sums into a history row and keeps the best epoch by `select` (max or min)."""

    def __init__(self, rt: Runtime, label: str, select: str | None, select_mode: str,
                 validate: Callable[[int], dict[str, float]] | None,
                 on_epoch: Callable[[int, dict[str, float]], None] | None) -> None:
        self.rt, self.label, self.select, self.select_mode = rt, label, select, select_mode
        self.validate, self.on_epoch = validate, on_epoch

    def finish(self, loop: LoopState, keep: nn.Module, epoch: int, sums: dict[str, torch.Tensor], seen: int,
               dt: float) -> None:
        if COUNTED in sums:  # one read at the epoch's end (the deferred guard counts on the device)
            sums = dict(sums)
            seen = int(sums.pop(COUNTED))
        loop.train_time += dt
        loop.train_images += seen
        row: dict[str, float] = {"epoch": epoch + 1, "lr": loop.lr, "img_per_s": seen / max(dt, 1e-9)}
        row.update(self.reduce(sums, seen))
        if self.validate is not None:
            row.update(self.validate(epoch))
        loop.history.append(row)
        if self.select and self.select in row:
            v = row[self.select]
            best = loop.best_val
            if best is None or (v > best if self.select_mode == "max" else v < best):
                loop.best_val, loop.best_epoch, loop.best_state = v, epoch + 1, snapshot(keep)
        if self.on_epoch is not None:
            self.on_epoch(epoch, row)
        if self.rt.is_main and not progress.quiet():
            progress.console.print(f"{self.label} " + "  ".join(
                f"{k} {progress.fmt(v)}" for k, v in row.items() if k != "lr"))

    def reduce(self, sums: dict[str, torch.Tensor], seen: int) -> dict[str, float]:
        """Epoch means of the logged terms (all-reduced across ranks)."""
        keys = sorted(sums)
        if not keys:
            return {}
        dev = self.rt.device
        vec = torch.stack([sums[k].to(dev) for k in keys] + [torch.tensor(float(seen), device=dev)])
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
