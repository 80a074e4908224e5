"""Classic logit distillation, with CTKD's learnable temperature as an option.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
NIPS 2014 Deep Learning Workshop (arXiv:1503.02531), 2015.

loss = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch.
The T^2 factor keeps gradient magnitudes comparable across temperatures
(paper, Sec. 2). Defaults: T = 4, KD weight 0.9 with CE weight 0.1 — the
CIFAR-100 recipe of RepDistiller (``-r 0.1 -a 0.9``) and mdistiller
(``KD.TEMPERATURE 4``, ``KD_WEIGHT 0.9``, ``CE_WEIGHT 0.1``).

``learnable_temperature = 1`` is CTKD (Li et al., AAAI 2023, see ``ctkd.py``): T is learned
adversarially through a gradient-reversal curriculum (``t_start``, ``t_end``, ``grl_epochs``,
``grl_max``, the parameter's lr multiplier ``temperature_lr``); ``temperature`` is then unused. The
CTKD script keeps KD's weights (``-r 0.1 -a 0.9``), so does this option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from indistill_cli.losses.base import EPOCHS, NON_NEGATIVE, POSITIVE, DistillLoss, KDBatch, Range, teacher_view
from indistill_cli.losses.ctkd import CurriculumTemperature
from indistill_cli.losses.registry import register


def kd_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """T^2 * KL(p_t || p_s) with batchmean reduction (T may be a learned tensor)."""
    log_p_s = F.log_softmax(s_logits / temperature, dim=1)
    log_p_t = F.log_softmax(t_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


CTKD_KEYS = ("learnable_temperature", "t_start", "t_end", "grl_epochs", "grl_max", "temperature_lr")


@register("kd", uses="logits", default_weight=0.9, ce_weight=0.1,
          cite="Hinton et al., NIPS-W 2014 (arXiv:1503.02531); CTKD: Li et al., AAAI 2023")
class KD(DistillLoss):
    """Match the teacher's temperature-softened class distribution."""

    hparams = {"temperature": 4.0, "learnable_temperature": 0, "t_start": 1.0, "t_end": 20.0, "grl_epochs": 10,
               "grl_max": 1.0, "temperature_lr": 1.0}
    # T = t_start + t_end * sigmoid(.) stays > 0; grl_max is the reversal's size, its sign CTKD's adversary
    ranges = {"temperature": POSITIVE, "learnable_temperature": Range(0, 1, integer=True), "t_start": POSITIVE,
              "t_end": NON_NEGATIVE, "grl_epochs": EPOCHS, "grl_max": NON_NEGATIVE, "temperature_lr": NON_NEGATIVE}

    @classmethod
    def recorded_hparams(cls, given: dict[str, float]) -> dict[str, float | int]:
        """Without the learnable temperature, CTKD's settings shape nothing: they are left out of the record."""
        hp = super().recorded_hparams(given)
        return hp if hp["learnable_temperature"] else {k: v for k, v in hp.items() if k not in CTKD_KEYS}

    def setup(self) -> None:
        self.ctkd: CurriculumTemperature | None = None
        if self.hp["learnable_temperature"]:
            self.ctkd = CurriculumTemperature(float(self.hp["t_start"]), float(self.hp["t_end"]),
                                              int(self.hp["grl_epochs"]), float(self.hp["grl_max"]))

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        return [(list(self.parameters()), float(self.hp["temperature_lr"]))]

    def temperature(self, epoch: int) -> float | torch.Tensor:
        return self.ctkd(epoch) if self.ctkd is not None else float(self.hp["temperature"])

    def forward(self, b: KDBatch) -> torch.Tensor:
        s, t = self.prep_logits(b.student.logits), self.prep_logits(teacher_view(b.teacher.logits))
        return kd_kl(s, t, self.temperature(b.epoch))
