"""DIST: relation-based logit matching (inter- and intra-class Pearson correlation).

Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022
(arXiv:2205.10536); defaults from the authors' CIFAR-100 config (github.com/hunto/DIST_KD,
``dist_cifar.yaml``: ``kd: dist_t4``, CE weight 1, KD weight 2).

With P = softmax(z / tau) for both networks (B x C), rho(a, b) the Pearson correlation (the cosine of
the mean-centred vectors, 1e-8 added to the norms' product):
  inter = 1 - mean over samples of rho(P_s[b, :], P_t[b, :])   (each sample's class ranking)
  intra = 1 - mean over classes of rho(P_s[:, c], P_t[:, c])   (each class's ranking of the batch)
  loss  = tau^2 * (beta * inter + gamma * intra), tau = 4, beta = gamma = 1.
Matching correlations instead of the exact distribution (KL) relaxes the match where the teacher is
much stronger than the student. The intra-class term depends on the batch (a batch of one gives 1).
"""

from __future__ import annotations

import torch

from indistill_cli.losses.base import NON_NEGATIVE, POSITIVE, DistillLoss, KDBatch, teacher_view
from indistill_cli.losses.registry import register


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of matching rows of a and b, shape (rows,)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float, beta: float,
              gamma: float) -> torch.Tensor:
    p_s, p_t = (s_logits / tau).softmax(dim=1), (t_logits / tau).softmax(dim=1)
    inter = 1.0 - pearson_rows(p_s, p_t).mean()
    intra = 1.0 - pearson_rows(p_s.t(), p_t.t()).mean()
    return tau**2 * (beta * inter + gamma * intra)


@register("dist", uses="logits", default_weight=2.0, ce_weight=1.0,
          cite="Huang et al., NeurIPS 2022 (arXiv:2205.10536)")
class DIST(DistillLoss):
    """Match the teacher's class and batch rankings (correlations), not its exact probabilities."""

    hparams = {"tau": 4.0, "beta": 1.0, "gamma": 1.0}
    ranges = {"tau": POSITIVE, "beta": NON_NEGATIVE, "gamma": NON_NEGATIVE}

    def forward(self, b: KDBatch) -> torch.Tensor:
        s, t = self.prep_logits(b.student.logits), self.prep_logits(teacher_view(b.teacher.logits))
        return dist_loss(s, t, float(self.hp["tau"]), float(self.hp["beta"]), float(self.hp["gamma"]))
