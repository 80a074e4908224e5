"""Correlation congruence (CC).

Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, "Correlation Congruence for Knowledge Distillation",
ICCV 2019 (arXiv:1904.01802). The paper's form, as AberHu's Knowledge-Distillation-Zoo implements it
(whose CIFAR script gives the weight 100, gamma 0.4 and order P = 2).

Beyond matching instances, CC matches how the samples of a batch relate: with L2-normalised
embeddings f, the correlation matrix Psi_ij = k(f_i, f_j) uses the Gaussian RBF kernel approximated by
its order-P Taylor series, k(x, y) = sum_{p=0..P} e^{-2 gamma} (2 gamma)^p / p! (x.y)^p, and
  loss = ||Psi_t - Psi_s||_F^2 / B^2,
so the embeddings' widths may differ (no adapter). RepDistiller's CC code (from the authors) uses a
different, instance-pairwise form with trainable embeddings; we keep the paper's. The class-aware
batch sampler of the paper is not used (ordinary shuffled batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from indistill_cli.losses.base import COUNT, POSITIVE, DistillLoss, KDBatch, teacher_view
from indistill_cli.losses.registry import register


def correlation(f: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """Taylor-approximated Gaussian RBF kernel matrix (B, B) of the normalised rows of f."""
    f = F.normalize(f.flatten(1), dim=1)
    sim = f @ f.t()
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim.pow(p) for p in range(order + 1))


@register("cc", uses="embedding", default_weight=100.0, ce_weight=1.0,
          cite="Peng et al., ICCV 2019 (arXiv:1904.01802)")
class CC(DistillLoss):
    """Match the batch's sample-to-sample correlation matrix."""

    hparams = {"gamma": 0.4, "order": 2}
    ranges = {"gamma": POSITIVE, "order": COUNT}

    def forward(self, b: KDBatch) -> torch.Tensor:
        gamma, order = float(self.hp["gamma"]), int(self.hp["order"])
        psi_s = correlation(b.student.feats[0], gamma, order)
        psi_t = correlation(teacher_view(b.teacher.feats[0]), gamma, order)
        return (psi_s - psi_t).pow(2).mean()
