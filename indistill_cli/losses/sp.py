"""Similarity-preserving distillation.

Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

Per tap pair the batch Gram matrix G = f f^T of the flattened features is
row-wise L2-normalised and the loss is ||G_s - G_t||_F^2 / N^2, summed over
pairs. Only (N, N) matrices are compared, so channel and spatial sizes may
differ freely. Weight 3000 with CE weight 1 from the paper's CIFAR-10 gamma,
RepDistiller (``-b 3000``) and mdistiller (``SP.LOSS.FEAT_WEIGHT 3000``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from indistill_cli.losses.base import DistillLoss, KDBatch, teacher_view
from indistill_cli.losses.registry import register


def similarity(f: torch.Tensor) -> torch.Tensor:
    """Row-normalised batch Gram matrix (N, N)."""
    f = f.flatten(1)
    return F.normalize(f @ f.t(), dim=1)


@register("sp", uses="taps", default_weight=3000.0, ce_weight=1.0,
          cite="Tung & Mori, ICCV 2019 (arXiv:1907.09682)")
class SP(DistillLoss):
    """Inputs similar for the teacher should be similar for the student."""

    def forward(self, b: KDBatch) -> torch.Tensor:
        total = b.student.logits.new_zeros(())
        for f_s, f_t in zip(b.student.feats, b.teacher.feats, strict=True):
            n = f_s.shape[0]
            diff = similarity(f_s) - similarity(teacher_view(f_t))
            total = total + diff.pow(2).sum() / (n * n)
        return total
