"""Neuron selectivity transfer (NST).

Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", arXiv:1707.01219,
2017. Defaults from RepDistiller (``--distill nst -a 0 -b 50``) and mdistiller (``NST.LOSS.FEAT_WEIGHT
50``, CE weight 1), both with the polynomial kernel of degree 2 and c = 0 (the paper's best).

Each channel of a tap is one neuron's "selectivity pattern" over the positions: the map is reshaped
to C x HW and every row L2-normalised (eps 1e-10, the authors' value). The loss is the squared MMD
between the teacher's and the student's sets of rows with the kernel k(a, b) = (a.b + c)^d:
  mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{i,j} k(s_j, t_i),
averaged over the batch and summed over the tap pairs. Channel counts may differ (no adapter); the
larger map is average-pooled to the smaller. Zero when the student's rows equal the teacher's;
invariant to a positive scaling of any channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from indistill_cli.losses.base import ANY, COUNT, DistillLoss, KDBatch, match_spatial, teacher_view
from indistill_cli.losses.registry import register


def selectivity(f: torch.Tensor) -> torch.Tensor:
    """(N, C, HW) channel rows, each L2-normalised over the positions."""
    return F.normalize(f.flatten(2), dim=2, eps=1e-10)


def nst_mmd(f_s: torch.Tensor, f_t: torch.Tensor, degree: int, c: float) -> torch.Tensor:
    s, t = selectivity(f_s), selectivity(f_t)

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.transpose(1, 2) + c).pow(degree).mean()

    return k(t, t) + k(s, s) - 2.0 * k(s, t)


@register("nst", uses="taps", default_weight=50.0, ce_weight=1.0, cite="Huang & Wang, arXiv:1707.01219 (2017)")
class NST(DistillLoss):
    """Match the distribution of neuron selectivity patterns (squared MMD, polynomial kernel)."""

    hparams = {"degree": 2, "c": 0.0}
    ranges = {"degree": COUNT, "c": ANY}

    def forward(self, b: KDBatch) -> torch.Tensor:
        total = b.student.logits.new_zeros(())
        for f_s, f_t in zip(b.student.feats, b.teacher.feats, strict=True):
            f_s, f_t = match_spatial(f_s, teacher_view(f_t))
            total = total + nst_mmd(f_s, f_t, int(self.hp["degree"]), float(self.hp["c"]))
        return total
