"""Relational knowledge distillation (distance + angle).

Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.

Distance-wise: pairwise Euclidean distances of the batch embeddings, each
divided by the mean distance over distinct pairs (i != j), compared with the
Huber loss (smooth L1, delta 1) averaged over all N^2 entries.
Angle-wise: for every anchor j the cosines <e(ti - tj), e(tk - tj)> of the unit
difference vectors (N^3 entries, degenerate ones are 0), compared with smooth
L1 averaged over all entries. Both follow the authors' code (lenscloth/RKD),
which RepDistiller and mdistiller reuse.

Defaults: distance weight 25 and angle weight 50 (paper's classification
setting; mdistiller ``RKD.DISTANCE_WEIGHT``/``ANGLE_WEIGHT``); the term weight is
1 with CE weight 1 (RepDistiller ``-b 1``, mdistiller ``RKD.LOSS``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from indistill_cli.losses.base import NON_NEGATIVE, DistillLoss, KDBatch, teacher_view
from indistill_cli.losses.registry import register

_EPS = 1e-12


def normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """Pairwise distances (N, N) divided by their mean over i != j; 0 on the diagonal."""
    n = e.shape[0]
    sq = (e * e).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (e @ e.t())).clamp_min(_EPS).sqrt()
    off = 1.0 - torch.eye(n, dtype=e.dtype, device=e.device)
    d = d * off  # multiply (not index-assign) so the diagonal gets zero gradient
    return d / (d.sum() / (n * (n - 1))).clamp_min(_EPS)


def angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at anchor j between (ti - tj) and (tk - tj), shape (N, N, N)."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [j, i] = e_i - e_j
    return diff @ diff.transpose(1, 2)


@register("rkd", uses="embedding", default_weight=1.0, ce_weight=1.0,
          cite="Park et al., CVPR 2019 (arXiv:1904.05068)")
class RKD(DistillLoss):
    """Transfer the geometry (distances and angles) of the teacher's embedding."""

    hparams = {"distance_weight": 25.0, "angle_weight": 50.0}
    ranges = {"distance_weight": NON_NEGATIVE, "angle_weight": NON_NEGATIVE}

    def forward(self, b: KDBatch) -> torch.Tensor:
        e_s = b.student.feats[0].flatten(1)
        e_t = teacher_view(b.teacher.feats[0]).flatten(1)
        if e_s.shape[0] < 2:  # no pairs: nothing relational to transfer
            return e_s.sum() * 0.0
        loss_d = F.smooth_l1_loss(normalised_distances(e_s), normalised_distances(e_t))
        loss_a = F.smooth_l1_loss(angles(e_s), angles(e_t))
        return self.hp["distance_weight"] * loss_d + self.hp["angle_weight"] * loss_a
