"""Classic logit distillation.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
NIPS 2014 Deep Learning Workshop (arXiv:1503.02531), 2015.

loss = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch.
The T^2 factor keeps gradient magnitudes comparable across temperatures
(paper, Sec. 2). Defaults: T = 4, KD weight 0.9 with CE weight 0.1 — the
CIFAR-100 recipe of RepDistiller (``-r 0.1 -a 0.9``) and mdistiller
(``KD.TEMPERATURE 4``, ``KD_WEIGHT 0.9``, ``CE_WEIGHT 0.1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from indistill_cli.losses.base import DistillLoss, KDBatch, teacher_view
from indistill_cli.losses.registry import register


def kd_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_t || p_s) with batchmean reduction."""
    log_p_s = F.log_softmax(s_logits / temperature, dim=1)
    log_p_t = F.log_softmax(t_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register("kd", uses="logits", default_weight=0.9, ce_weight=0.1)
class KD(DistillLoss):
    """Match the teacher's temperature-softened class distribution."""

    hparams = {"temperature": 4.0}

    def forward(self, b: KDBatch) -> torch.Tensor:
        return kd_kl(b.student.logits, teacher_view(b.teacher.logits), float(self.hp["temperature"]))
