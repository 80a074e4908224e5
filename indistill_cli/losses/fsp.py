"""Flow of solution procedure (FSP), with its two-stage recipe.

Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
Transfer Learning", CVPR 2017. Recipe and loss from RepDistiller (``--distill fsp``: the FSP loss
alone trains the student's feature layers for ``init_epochs``, then plain CE, its main loop giving
FSP no weight) and the paper (stage 1 FSP, stage 2 the task).

The FSP matrix of two feature maps (the larger average-pooled to the smaller) is
G(F1, F2)_ij = mean over positions of F1_i * F2_j (C1 x C2): how a stage transforms its input. Here
the maps are consecutive paired taps (tap l -> tap l+1). The loss is sum over pairs of
mean_{n,i,j} (G_s - G_t)^2. G needs equal channel counts: where a student tap is narrower than the
teacher's, a 1x1 conv + BN connector maps it first (the author's TF2 re-implementation does so;
RepDistiller refuses). The connectors train during the initialisation only.

Stage 1 is the `init` phase, run by `distill` before its main loop: `init_epochs` epochs (default 4:
RepDistiller's 30 of 240 CIFAR epochs, scaled to distill's default 30) of the FSP loss alone, at the
run's optimiser and base lr, constant (RepDistiller's). Stage 2 is the main loop: CE (and any other
method given), FSP adding nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from indistill_cli.losses.base import (EPOCHS, DistillLoss, KDBatch, Phase, consecutive_connectors, match_spatial,
                                       no_term, teacher_view)
from indistill_cli.losses.registry import register


def fsp_matrix(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """(N, C1, C2): mean over positions of f1_i * f2_j, the larger map pooled to the smaller."""
    f1, f2 = match_spatial(f1, f2)
    return f1.flatten(2) @ f2.flatten(2).transpose(1, 2) / (f1.shape[2] * f1.shape[3])


def fsp_loss(s_maps: list[torch.Tensor], t_maps: list[torch.Tensor]) -> torch.Tensor:
    total = s_maps[0].new_zeros(())
    for i in range(len(s_maps) - 1):
        g_s, g_t = fsp_matrix(s_maps[i], s_maps[i + 1]), fsp_matrix(t_maps[i], t_maps[i + 1])
        total = total + (g_s - g_t).pow(2).mean()
    return total


@register("fsp", uses="taps", default_weight=1.0, ce_weight=1.0, cite="Yim et al., CVPR 2017",
          note="stage 1 = its init phase; connectors where widths differ")
class FSP(DistillLoss):
    """Initialise the student to reproduce the teacher's stage-to-stage flow matrices."""

    hparams = {"init_epochs": 4}
    ranges = {"init_epochs": EPOCHS}

    def setup(self) -> None:
        self.connectors = consecutive_connectors(self).requires_grad_(False)  # trained in the init phase only

    def fsp(self, b: KDBatch) -> torch.Tensor:
        s_maps = [c(f) for c, f in zip(self.connectors, b.student.feats, strict=True)]
        return fsp_loss(s_maps, [teacher_view(f) for f in b.teacher.feats])

    def phases(self) -> list[Phase]:
        return [Phase("init", int(self.hp["init_epochs"]), self.fsp, [self.connectors], trains_student=True)]

    def forward(self, b: KDBatch) -> torch.Tensor:
        return no_term(b)  # the transfer is the init phase; the main loop is CE
