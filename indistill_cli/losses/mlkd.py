"""Multi-level logit distillation (MLKD), the single-view variant.

Jin, Wang & Lin, "Multi-Level Logit Distillation", CVPR 2023 (CVF open access); the terms, masks and
weights follow the authors' code (github.com/Jin-Ying/Multi-Level-Logit-Distillation, ``KD_ours.py``).

At each temperature T in {T0, 3, 5, 2, 6} (T0 = `temperature` = 4), with P = softmax(z / T):
  KD_T: T^2 KL(P_t || P_s), batch mean (instance level);
  CC_T: sum((P_t^T P_t - P_s^T P_s)^2) / C (class level: the C x C class-correlation matrices);
  BC_T: sum((P_t P_t^T - P_s P_s^T)^2) / B (batch level: the B x B sample-similarity matrices).
The authors' masks weigh terms by their fraction of ones: rho_b = mean[teacher max-prob <= its batch
median], rho_c = mean[teacher class-sum prob <= its median over classes] (at T = 1; each term is
already a scalar, so the mask scales rather than selects). Their loss, on a weak (crop + flip) and a
strong (RandAugment + Cutout) view of each image, is
  rho_b sum_T KD_T(weak) + sum_T KD_T(strong) + rho_c sum_T CC_T(weak) + rho_b sum_T BC_T(weak).

**Single-view variant (ours, labelled as such):** the engine serves one augmented view per image, so
the strong view's KD terms are taken on the same (weak) view, giving
  (rho_b + 1) sum_T KD_T + rho_c sum_T CC_T + rho_b sum_T BC_T.
The published recipe's second, strongly augmented view (two more forward passes per step) is left
out; expect less than the paper's gain. Weight 0.9 with CE weight 0.1 (the authors' CIFAR configs).

Scale: CC and BC grow like B^2 / C (the authors' CIFAR-100 setting has B = 64, C = 100); with 10 classes and
batch 128 they are some 40x larger, which an adaptive optimiser (Adam) absorbs but SGD at lr 0.05 does not
(the student collapses): lower the weight or the lr there.
"""

from __future__ import annotations

import torch

from indistill_cli.losses.base import POSITIVE, DistillLoss, KDBatch, teacher_view
from indistill_cli.losses.kd import kd_kl
from indistill_cli.losses.registry import register

EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def class_correlation(p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """CC: sum of squared differences of the C x C class-correlation matrices, / C."""
    return (p_t.t() @ p_t - p_s.t() @ p_s).pow(2).sum() / p_s.shape[1]


def batch_correlation(p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """BC: sum of squared differences of the B x B sample-similarity matrices, / B."""
    return (p_t @ p_t.t() - p_s @ p_s.t()).pow(2).sum() / p_s.shape[0]


def mask_fractions(t_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rho_b, rho_c): the fractions of samples and classes at or below the median teacher confidence."""
    p = t_logits.softmax(dim=1)
    conf, class_conf = p.max(dim=1).values, p.sum(dim=0)
    rho_b = (conf <= torch.quantile(conf, 0.5)).float().mean()
    rho_c = (class_conf <= torch.quantile(class_conf, 0.5)).float().mean()
    return rho_b, rho_c


def mlkd_single_view(s: torch.Tensor, t: torch.Tensor, temperatures: tuple[float, ...]) -> torch.Tensor:
    rho_b, rho_c = mask_fractions(t)
    kd = cc = bc = s.new_zeros(())
    for temp in temperatures:
        p_s, p_t = (s / temp).softmax(dim=1), (t / temp).softmax(dim=1)
        kd = kd + kd_kl(s, t, temp)
        cc = cc + class_correlation(p_s, p_t)
        bc = bc + batch_correlation(p_s, p_t)
    return (rho_b + 1.0) * kd + rho_c * cc + rho_b * bc


@register("mlkd", uses="logits", default_weight=0.9, ce_weight=0.1,
          cite="Jin et al., CVPR 2023", note="single-view variant: no strongly augmented second view")
class MLKD(DistillLoss):
    """Instance-, class- and batch-level logit matching at five temperatures (one augmented view)."""

    hparams = {"temperature": 4.0}
    ranges = {"temperature": POSITIVE}

    def forward(self, b: KDBatch) -> torch.Tensor:
        s, t = self.prep_logits(b.student.logits), self.prep_logits(teacher_view(b.teacher.logits))
        return mlkd_single_view(s, t, (float(self.hp["temperature"]), *EXTRA_TEMPERATURES))
