"""Decoupled knowledge distillation.

Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.

KD is split into TCKD (KL between the binary target/non-target distributions
b = [p_gt, 1 - p_gt]) and NCKD (KL between the distributions over the
non-target classes only), re-weighted as alpha * TCKD + beta * NCKD, each
scaled by T^2 and averaged over the batch. Defaults alpha = 1, beta = 8, T = 4,
warmup = 20 epochs and CE weight 1 follow the paper's CIFAR-100 setting and
mdistiller's ``CFG.DKD``.

Warmup: the term is multiplied by ``min((epoch + 1) / warmup, 1)``. ``epoch`` is
0-based here, so this equals mdistiller's ``min(epoch / warmup, 1)`` with its
1-based epochs (epoch 0 already gets 1/warmup, epoch warmup-1 gets full weight).
``warmup = 0`` disables the ramp.

Numerics: everything is computed in log space (log-softmax / logsumexp) and the
target column is removed rather than masked, so no ``log(0)`` appears.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from indistill_cli.losses.base import EPOCHS, NON_NEGATIVE, POSITIVE, DistillLoss, KDBatch, ramp, teacher_view
from indistill_cli.losses.registry import register


def _split_logs(logits: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return log b (N, 2) = log [p_gt, 1 - p_gt] and the non-target logits (N, C-1).

    The non-target columns are gathered (columns 0..C-2, those at or past the label shifted by one), the
    same values in the same order as a boolean mask would pick, with no data-dependent output size (a
    mask makes a CUDA step wait for the device)."""
    n, c = logits.shape
    log_z = torch.logsumexp(logits, dim=1)
    log_p_gt = logits.gather(1, gt[:, None]).squeeze(1) - log_z
    cols = torch.arange(c - 1, device=logits.device).expand(n, c - 1)
    other = logits.gather(1, cols + (cols >= gt[:, None]).long())
    log_p_other = torch.logsumexp(other, dim=1) - log_z
    return torch.stack([log_p_gt, log_p_other], dim=1), other


def dkd_loss(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """alpha * TCKD + beta * NCKD (without warmup)."""
    gt = labels.reshape(-1).long()
    log_b_s, other_s = _split_logs(s_logits / temperature, gt)
    log_b_t, other_t = _split_logs(t_logits / temperature, gt)
    scale = temperature**2
    tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True) * scale
    nckd = (
        F.kl_div(
            F.log_softmax(other_s, dim=1),
            F.log_softmax(other_t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * scale
    )
    return alpha * tckd + beta * nckd


@register("dkd", uses="logits", default_weight=1.0, ce_weight=1.0,
          cite="Zhao et al., CVPR 2022 (arXiv:2203.08679)")
class DKD(DistillLoss):
    """Target-class and non-target-class KD with independent weights."""

    hparams = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20}
    ranges = {"alpha": NON_NEGATIVE, "beta": NON_NEGATIVE, "temperature": POSITIVE, "warmup": EPOCHS}

    def forward(self, b: KDBatch) -> torch.Tensor:
        loss = dkd_loss(
            self.prep_logits(b.student.logits),
            self.prep_logits(teacher_view(b.teacher.logits)),
            b.labels,
            float(self.hp["alpha"]),
            float(self.hp["beta"]),
            float(self.hp["temperature"]),
        )
        return ramp(b.epoch, int(self.hp["warmup"])) * loss
