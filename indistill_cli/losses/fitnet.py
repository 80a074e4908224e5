"""FitNets hint learning.

Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep
Nets", ICLR 2015.

A trainable regressor maps the student's hint tap to the teacher's channel
count and the loss is the MSE to the teacher tap. The paper's regressor is a
conv layer; here it is a 1x1 conv followed by BatchNorm (RepDistiller's and
mdistiller's ``ConvReg`` use conv + BN(+ReLU); we drop the ReLU so signed
teacher taps remain reachable). Spatial mismatch is resolved by average-pooling
the larger map to the smaller size instead of a strided/transposed conv.
Several tap pairs are allowed: their MSEs are summed.

Defaults: weight 100 with CE weight 1, the single-stage CIFAR-100 recipe of
RepDistiller (``--distill hint -a 0 -b 100``) and mdistiller
(``FITNET.LOSS.FEAT_WEIGHT 100``, ``CE_WEIGHT 1``), not the paper's two-stage
training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from indistill_cli.losses.base import DistillLoss, KDBatch, conv_bn, match_spatial, teacher_view
from indistill_cli.losses.registry import register


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """(N, D) vectors become (N, D, 1, 1) maps so one regressor type fits all."""
    return x[:, :, None, None] if x.dim() == 2 else x


@register("fitnet", uses="taps", default_weight=100.0, ce_weight=1.0,
          cite="Romero et al., ICLR 2015 (arXiv:1412.6550)",
          note="single stage (RepDistiller), 1x1 conv + BN regressor")
class FitNet(DistillLoss):
    """MSE between regressed student taps and teacher taps."""

    def setup(self) -> None:
        if not self.s_shapes:
            raise ValueError("fitnet needs at least one tap pair")
        self.regressors = nn.ModuleList(conv_bn(s[0], t[0]) for s, t in zip(self.s_shapes, self.t_shapes))

    def forward(self, b: KDBatch) -> torch.Tensor:
        total = b.student.logits.new_zeros(())
        for reg, f_s, f_t in zip(self.regressors, b.student.feats, b.teacher.feats, strict=True):
            f_s, f_t = match_spatial(_as_map(f_s), _as_map(teacher_view(f_t)))
            total = total + F.mse_loss(reg(f_s), f_t)
        return total
