"""CTKD's learnable temperature, an option of `kd` (``--param kd.learnable_temperature=1``).

Li, Li, Yang, Zhao, Song, Luo, Li & Yang, "Curriculum Temperature for Knowledge Distillation",
AAAI 2023 (arXiv:2211.16231); defaults from the authors' code (github.com/zhengli97/CTKD).

The KD temperature becomes tau = t_start + t_end * sigmoid(GRL(theta)) with one global parameter
theta (initialised to 1, so tau starts at 1 + 20 * sigmoid(1) = 15.62). The gradient-reversal layer
(GRL) is the identity forward and multiplies theta's gradient by lambda(e) <= 0 backward, so theta
ascends the KD loss (an adversarial, ever harder temperature) while the student descends it; the
curriculum raises |lambda| along a half cosine, lambda(e) = -grl_max * (1 - cos(pi * min(e, L) / L)) / 2
over the first L = grl_epochs = 10 epochs (e counted from 1, as the authors' loop), then -grl_max.
theta trains in the student's optimiser (as in the paper's code) at lr multiplier `temperature_lr`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class GradReverse(torch.autograd.Function):
    """Identity forward; the gradient times `lam` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.lam, None


def grl_lambda(epoch: int, epochs: int, grl_max: float) -> float:
    """The curriculum's lambda at 1-based `epoch`: 0 at epoch 0, -grl_max from `epochs` on."""
    if epochs <= 0:
        return -grl_max
    return -grl_max * (1.0 - math.cos(math.pi * min(epoch, epochs) / epochs)) / 2.0


class CurriculumTemperature(nn.Module):
    """The global learnable temperature; `forward(epoch)` takes the 0-based epoch of the KD run."""

    def __init__(self, t_start: float, t_end: float, epochs: int, grl_max: float) -> None:
        super().__init__()
        self.t_start, self.t_end, self.epochs, self.grl_max = t_start, t_end, epochs, grl_max
        self.global_t = nn.Parameter(torch.ones(()))

    def forward(self, epoch: int) -> torch.Tensor:
        lam = grl_lambda(epoch + 1, self.epochs, self.grl_max)
        return self.t_start + self.t_end * torch.sigmoid(GradReverse.apply(self.global_t, lam))
