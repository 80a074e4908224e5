"""Logit standardisation in front of KD and DKD: the registered variants `kd-ls` and `dkd-ls`.

Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024
(arXiv:2403.01427); defaults from the authors' code (github.com/sunshangquan/logit-standardization-KD).

Before the temperature softmax, both logit vectors are z-scored per sample:
Z(z) = (z - mean_c z) / (std_c z + 1e-7), with the unbiased std (the authors' code). The KD term is
then invariant to any per-sample shift and positive scale of either network's logits, so the student
matches the teacher's logit *relations*, not their range. CE still reads the raw logits.

Why variants, not a switch on kd/dkd: the paper changes the recipe with the pre-process, so each
variant carries its own defaults. `kd-ls`: T = 2, KD weight 9, CE weight 0.1 (``--logit-stand
--base-temp 2 --kd-weight 9``). `dkd-ls`: T = 2, alpha and beta x9 (9 and 72), CE weight 1, DKD's
warm-up kept. Every other hyper-parameter is the wrapped method's (`kd-ls` takes CTKD's learnable
temperature too, the paper's CTKD+LS).
"""

from __future__ import annotations

import torch

from indistill_cli.losses.dkd import DKD
from indistill_cli.losses.kd import KD
from indistill_cli.losses.registry import register

EPS = 1e-7


def z_score(z: torch.Tensor) -> torch.Tensor:
    """Per-sample (z - mean) / (unbiased std + 1e-7) over the classes."""
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + EPS)


class _Standardized:
    """Mixin: the wrapped logit method compares z-scored logits."""

    def prep_logits(self, z: torch.Tensor) -> torch.Tensor:
        return z_score(z)


@register("kd-ls", uses="logits", default_weight=9.0, ce_weight=0.1,
          cite="Sun et al., CVPR 2024 (arXiv:2403.01427) on Hinton et al.")
class KDLS(_Standardized, KD):
    """KD on z-scored logits."""

    hparams = {**KD.hparams, "temperature": 2.0}


@register("dkd-ls", uses="logits", default_weight=1.0, ce_weight=1.0,
          cite="Sun et al., CVPR 2024 (arXiv:2403.01427) on Zhao et al.")
class DKDLS(_Standardized, DKD):
    """DKD on z-scored logits."""

    hparams = {**DKD.hparams, "alpha": 9.0, "beta": 72.0, "temperature": 2.0}
