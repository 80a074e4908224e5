"""Information flow as a number: the MSE between a student's tap maps and the teacher's targets.

`mse` is the warmup's loss term and the unit of the paper's information-flow curves; `flow_mse` measures
it per tap over fixed batches (student in eval mode), all-reduced under torchrun. `flow` is any object
with `student`, `pairs`, `targets(x, upto)` and `student_maps(x, upto)` (`pruning.targets.FlowPair`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from indistill_cli.models.taps import match_spatial


def mse(student_map: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over batch and all feature elements, after matching spatial size."""
    s, t = match_spatial(student_map.float(), target.float())
    if s.shape != t.shape:
        raise ValueError(f"tap shapes differ beyond spatial size: {tuple(s.shape)} vs {tuple(t.shape)}")
    return F.mse_loss(s, t)


@torch.no_grad()
def flow_mse(flow: Any, batches: list[torch.Tensor], rt: Any = None) -> list[float]:
    """Per-tap MSE (student eval mode) over fixed batches: the paper's information-flow curves.

    Under torchrun (`rt` distributed) every rank holds the same fixed batches and evaluates every
    world-th image of them, and the sums are all-reduced: each rank gets the same numbers as one
    process would (eval mode, so batch composition does not matter), for 1/world of the work.
    """
    was = flow.student.training
    flow.student.eval()
    last = len(flow.pairs) - 1
    rank, world = (rt.rank, rt.world) if rt is not None and rt.distributed else (0, 1)
    device = batches[0].device if batches else torch.device("cpu")
    sums = torch.zeros(len(flow.pairs) + 1, dtype=torch.float64, device=device)  # last: image count
    for x in batches:
        x = x[rank::world] if world > 1 else x
        b = x.shape[0]
        if b == 0:
            continue
        t = flow.targets(x, last)
        s = flow.student_maps(x, last)
        for i, (sm, tm) in enumerate(zip(s, t)):
            sums[i] += mse(sm, tm).double() * b
        sums[-1] += b
    flow.student.train(was)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    vals = sums.cpu()
    return (vals[:-1] / max(float(vals[-1]), 1.0)).tolist()
