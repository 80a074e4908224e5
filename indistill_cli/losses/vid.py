"""Variational information distillation (VID).

Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation for Knowledge Transfer",
CVPR 2019 (arXiv:1904.05835). Defaults from RepDistiller (``--distill vid -a 0 -b 1``, regressor and
variance as in its ``VIDLoss``) and mdistiller (``VID.LOSS.FEAT_WEIGHT 1``, CE weight 1).

Maximising a variational lower bound on the mutual information between teacher and student taps:
the teacher's map is modelled as a Gaussian around a regression of the student's,
  mu = R(student tap), sigma_c^2 = softplus(alpha_c) + eps (one variance per teacher channel),
  loss = mean over (n, c, h, w) of 1/2 [(t - mu)^2 / sigma_c^2 + log sigma_c^2]
(the negative log-likelihood without the constant 1/2 log 2 pi), summed over the tap pairs. R is three
1x1 convolutions without bias, C_s -> C_t -> C_t -> C_t with ReLUs between; alpha starts where
sigma^2 = `init_var` = 5 and trains with R in the student's optimiser (as RepDistiller; mdistiller
leaves the variance fixed). The loss goes negative once sigma^2 < 1. The larger map is average-pooled
to the smaller.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from indistill_cli.losses.base import POSITIVE, DistillLoss, KDBatch, match_spatial, teacher_view
from indistill_cli.losses.registry import register


def vid_nll(mu: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean Gaussian NLL (no constant) of t around mu with per-channel variance softplus(alpha) + eps."""
    var = (F.softplus(alpha) + eps).view(1, -1, *([1] * (t.dim() - 2)))
    return 0.5 * ((t - mu).pow(2) / var + var.log()).mean()


def regressor(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(cout, cout, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(cout, cout, 1, bias=False))


@register("vid", uses="taps", default_weight=1.0, ce_weight=1.0, cite="Ahn et al., CVPR 2019 (arXiv:1904.05835)")
class VID(DistillLoss):
    """Maximise a variational bound on the teacher/student mutual information per tap."""

    hparams = {"init_var": 5.0, "eps": 1e-5}
    ranges = {"init_var": POSITIVE, "eps": POSITIVE}  # and init_var > eps (check_hparams)

    @classmethod
    def check_hparams(cls, given: dict[str, float]) -> None:
        super().check_hparams(given)
        hp = {**cls.hparams, **given}
        if not hp["init_var"] > hp["eps"]:
            raise ValueError(f"init_var={hp['init_var']:g}: must be > eps ({hp['eps']:g}): the variance "
                             f"softplus(alpha) + eps starts at init_var")

    def setup(self) -> None:
        self.regressors = nn.ModuleList(regressor(s[0], t[0]) for s, t in zip(self.s_shapes, self.t_shapes))
        eps, init = float(self.hp["eps"]), float(self.hp["init_var"])
        start = math.log(math.expm1(init - eps))  # softplus^-1(init - eps): sigma^2 starts at init_var
        self.alpha = nn.ParameterList(nn.Parameter(torch.full((t[0],), start)) for t in self.t_shapes)

    def forward(self, b: KDBatch) -> torch.Tensor:
        total = b.student.logits.new_zeros(())
        for reg, alpha, f_s, f_t in zip(self.regressors, self.alpha, b.student.feats, b.teacher.feats, strict=True):
            f_s, f_t = match_spatial(f_s, teacher_view(f_t))
            total = total + vid_nll(reg(f_s), f_t, alpha.to(f_t.dtype), float(self.hp["eps"]))
        return total
