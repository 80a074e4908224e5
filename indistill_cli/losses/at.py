"""Attention transfer.

Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the
Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

Per tap pair the spatial attention map a(f) = normalize(mean_c |f|^p) (flattened,
L2-normalised per sample) is computed for student and teacher; the loss is
mean((a_s - a_t)^2), summed over pairs. Maps of different spatial size are
average-pooled to the smaller one (channels may differ: they are averaged out).
p = 2 from the paper; weight 1000 with CE weight 1 from RepDistiller
(``-b 1000``) and mdistiller (``AT.LOSS.FEAT_WEIGHT 1000``), which use the mean
instead of the paper's norm so the weight absorbs the scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from indistill_cli.losses.base import POSITIVE, DistillLoss, KDBatch, match_spatial, teacher_view
from indistill_cli.losses.registry import register


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """normalize(mean over channels of |f|^p), flattened to (N, H*W)."""
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


@register("at", uses="taps", default_weight=1000.0, ce_weight=1.0,
          cite="Zagoruyko & Komodakis, ICLR 2017 (arXiv:1612.03928)")
class AT(DistillLoss):
    """Match where the student and teacher put their activation energy."""

    hparams = {"p": 2.0}
    ranges = {"p": POSITIVE}  # p = 0 makes every map constant

    def forward(self, b: KDBatch) -> torch.Tensor:
        p = float(self.hp["p"])
        total = b.student.logits.new_zeros(())
        for f_s, f_t in zip(b.student.feats, b.teacher.feats, strict=True):
            if f_s.dim() != 4 or f_t.dim() != 4:
                raise ValueError("at needs 4-D (N, C, H, W) taps")
            f_s, f_t = match_spatial(f_s, teacher_view(f_t))
            total = total + (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
        return total
