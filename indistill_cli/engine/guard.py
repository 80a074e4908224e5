"""The non-finite guard: a step whose loss or gradient norm is NaN/inf changes nothing and is counted.

Up to `--skip-nonfinite` bad steps are skipped; one more and the run fails (leaving its last good
state). On CPU every step is checked on the host, where that is free, and a bad step is undone
(weights, optimiser and BatchNorm buffers untouched). On CUDA a per-step check would synchronise the
device, so flags accumulate there and are read at the logging cadence: a bad step is then detected,
not undone, and the last good state is the newest one saved.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from indistill_cli.engine.runtime import Runtime, agree


def describe_terms(out: dict[str, torch.Tensor], brief: bool = False) -> str:
    """'non-finite loss in term kd (loss=nan, ce=2.3, kd=nan)': which named term went bad."""
    vals = {k: float(v.detach().float()) for k, v in out.items() if not k.startswith("_")}
    shown = ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
    if brief:
        return shown
    bad = [k for k, v in vals.items() if k != "loss" and not math.isfinite(v)]
    if not bad:
        return f"non-finite loss ({shown})"
    return f"non-finite loss in term{'s' if len(bad) > 1 else ''} {', '.join(bad)} ({shown})"


class NonFiniteGuard:
    """Checks each step (`every_step`, CPU) or accumulates device flags (CUDA); counts bad steps in `bad`."""

    def __init__(self, rt: Runtime, trainable: nn.Module, tolerance: int, every_step: bool | None) -> None:
        self.rt, self.tolerance, self.bad = rt, tolerance, 0
        self.every_step = rt.device.type == "cpu" if every_step is None else every_step
        self.bufs = list(trainable.buffers()) if self.every_step else []  # restored when a step turns out bad
        self.backup = [b.detach().clone() for b in self.bufs]
        self.flags = None if self.every_step else torch.zeros((), dtype=torch.int64, device=rt.device)

    def remember(self) -> None:
        """Keep the buffers as they are before the step (BatchNorm statistics change in the forward)."""
        for b, c in zip(self.bufs, self.backup):
            c.copy_(b)

    def loss_is_bad(self, loss: torch.Tensor) -> bool:
        """Host check of the loss (every_step); under torchrun every rank skips (or stops at) the same step."""
        bad = not bool(torch.isfinite(loss.detach()))
        return agree(self.rt, bad, False)[0] if self.rt.distributed else bad

    def flag(self, loss: torch.Tensor, gnorm: torch.Tensor | None = None) -> None:
        """Device path: count the step if its loss (or gradient norm) is not finite, without a sync."""
        ok = torch.isfinite(loss.detach()) if gnorm is None else torch.isfinite(loss.detach()) & torch.isfinite(gnorm)
        self.flags += ~ok

    def undo(self, opt: torch.optim.Optimizer) -> bool:
        """Undo what a bad step changed; True when it is within the tolerance (then it is counted)."""
        for b, c in zip(self.bufs, self.backup):
            b.copy_(c)
        opt.zero_grad(set_to_none=True)
        if self.bad + 1 > self.tolerance:
            return False
        self.bad += 1
        return True

    def read_flags(self) -> int:
        """Device path: the bad steps flagged since the last read (all ranks' maximum), now counted."""
        if self.rt.distributed:
            import torch.distributed as dist

            dist.all_reduce(self.flags, op=dist.ReduceOp.MAX)
        n_bad = int(self.flags)
        if n_bad:
            self.flags.zero_()
            self.bad += n_bad
        return n_bad

    @property
    def exceeded(self) -> bool:
        return self.bad > self.tolerance


