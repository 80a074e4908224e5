"""The non-finite guard: a step whose loss or gradient norm is NaN/inf changes nothing and is counted.

Up to `--skip-nonfinite` bad steps are skipped; one more and the run fails (leaving its last good
state). Either way a skipped step changes nothing: weights, optimiser state (Adam moments and step
count, SGD momentum), buffers (BatchNorm statistics and num_batches_tracked, CRD's memory banks) and
the epoch's logged sums and image count are as if the batch had never been seen.

- every_step (the CPU default): the loss and gradient norm are checked on the host, where that is
  free, and a bad step returns before the optimiser runs (its buffers are restored).
- deferred (CUDA): a per-step check would synchronise the device, so the step's verdict stays on the
  device. The optimiser is a fused one that takes it as `found_inf` (the GradScaler contract: the
  kernel skips the update and Adam's step count is restored), buffers are put back with
  `torch.where`, the sums are masked, and the bad steps are counted there and read at the logging
  cadence, where one past the tolerance stops the run. A periodic save happens only at that cadence,
  after the count is read, so the newest state saved never holds a bad batch's values.
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
    """Checks each step (`every_step`, CPU) or keeps the verdict on the device (deferred, CUDA); counts
    bad steps in `bad`. `ok` is the deferred mode's verdict on the latest step (a device bool)."""

    def __init__(self, rt: Runtime, trainable: nn.Module, tolerance: int, every_step: bool | None) -> None:
        self.rt, self.tolerance, self.bad = rt, tolerance, 0
        self.every_step = rt.device.type == "cpu" if every_step is None else every_step
        self.bufs = list(trainable.buffers())  # restored when a step turns out bad
        self.backup = [b.detach().clone() for b in self.bufs]
        self.flags = None if self.every_step else torch.zeros((), dtype=torch.int64, device=rt.device)
        self.ok: torch.Tensor | None = None

    def remember(self) -> None:
        """Keep the buffers as they are before the step (BatchNorm statistics change in the forward)."""
        for b, c in zip(self.bufs, self.backup):
            c.copy_(b)

    def loss_is_bad(self, loss: torch.Tensor) -> bool:
        """Host check of the loss (every_step); under torchrun every rank skips (or stops at) the same step."""
        bad = not bool(torch.isfinite(loss.detach()))
        return agree(self.rt, bad, False)[0] if self.rt.distributed else bad

    def flag(self, loss: torch.Tensor, gnorm: torch.Tensor | None = None) -> torch.Tensor:
        """Deferred path: this step's verdict without a sync. Counts the step if its loss (or gradient
        norm) is not finite, keeps `ok` and returns the optimiser's `found_inf` (float, 1.0 = skip the
        update). Under torchrun the verdict is every rank's (a device all-reduce, no host wait), so all
        ranks skip the same steps."""
        ok = torch.isfinite(loss.detach())
        if gnorm is not None:
            ok = ok & torch.isfinite(gnorm.to(ok.device))
        found_inf = (~ok).float()
        if self.rt.distributed:
            import torch.distributed as dist

            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)
            ok = found_inf == 0
        self.ok = ok
        self.flags += found_inf.long()
        return found_inf

    def keep_if_ok(self) -> None:
        """Deferred path: put the buffers back where the step was bad (`torch.where`: no sync)."""
        for b, c in zip(self.bufs, self.backup):
            b.copy_(torch.where(self.ok, b, c))

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


