"""A comprehensive overhaul of feature distillation (OFD).

Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019
(arXiv:1904.01866). Loss, connector and weight from the authors' code (github.com/clovaai/
overhaul-distillation: ``loss_distill.sum() / batch_size / 1000`` on CIFAR) and mdistiller
(``OFD.LOSS.FEAT_WEIGHT 0.001``, CE weight 1).

Both networks are read before their final ReLU (`:pre` taps), where the teacher's negative responses
still carry information. The teacher's map goes through the margin ReLU max(t, m_c), m_c the expected
value of a channel's negative responses; the student's through a connector (1x1 conv + BN,
N(0, sqrt(2/n)) init). The partial L2 distance (s - t')^2 counts an element only where s > t' or
t' > 0 (a student already below a negative teacher is left alone). Per tap it is summed over the
channels and positions and averaged over the batch; tap i of n is divided by 2^(n-1-i) (the deepest
counts most). The larger map is average-pooled to the smaller.

Margins: the paper computes m_c = E[x | x < 0] for x ~ N(mu, s^2) from the teacher's BN before the
ReLU, mu = beta_c, s = |gamma_c|: m = mu - s phi(mu/s) / Phi(-mu/s), or -3s when Phi(-mu/s) <= 0.001.
A hook-based tool has no such BN for every model (and a residual sum is not a BN output), so here mu
and s are each channel's mean and std of the teacher's pre-ReLU map over 512 fixed training images,
taken once before training (`calibrate`), with the same formula. The teacher runs in eval mode (the
authors keep it in train mode).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from indistill_cli.losses.base import DistillLoss, Feats, KDBatch, conv_bn, match_spatial, teacher_view
from indistill_cli.losses.registry import register


def ofd_margin(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E[x | x < 0] for x ~ N(mean, std^2) per channel; -3 std where P(x < 0) <= 0.001."""
    s = std.clamp_min(1e-12)
    z = mean / s
    cdf = 0.5 * torch.erfc(z / math.sqrt(2.0))  # P(x < 0) = Phi(-mean/std)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return torch.where(cdf > 0.001, mean - s * pdf / cdf.clamp_min(1e-12), -3.0 * s)


def partial_l2(s: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Elementwise (s - max(t, m))^2 where s > max(t, m) or max(t, m) > 0, else 0; m per channel."""
    t = torch.maximum(t, margin.view(1, -1, *([1] * (t.dim() - 2))).to(t.dtype))
    return (s - t).pow(2) * ((s > t) | (t > 0)).to(s.dtype)


@register("ofd", uses="taps", default_weight=0.001, ce_weight=1.0, preact="both",
          cite="Heo et al., ICCV 2019 (arXiv:1904.01866)", note="margins from the teacher's pre-ReLU statistics")
class OFD(DistillLoss):
    """Partial L2 between connected pre-ReLU student taps and margin-ReLU'd teacher taps."""

    def setup(self) -> None:
        self.connectors = nn.ModuleList(
            conv_bn(s[0], t[0], he_init=True) for s, t in zip(self.s_shapes, self.t_shapes))
        for i, t in enumerate(self.t_shapes):
            self.register_buffer(f"margin{i}", torch.full((t[0],), float("nan")))
        self.calibrated = False

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(len(self.t_shapes))]

    def calibrate(self, teacher: Feats) -> None:
        """Margins from the teacher's pre-ReLU maps (N, C, H, W) per channel over images and positions."""
        for m, f in zip(self.margins(), teacher.feats, strict=True):
            f = f.detach().double().transpose(0, 1).flatten(1)
            m.copy_(ofd_margin(f.mean(dim=1), f.std(dim=1)).to(m))
        self.calibrated = True

    def forward(self, b: KDBatch) -> torch.Tensor:
        if not self.calibrated:
            raise ValueError("ofd: margins not set; call calibrate() with the teacher's features first")
        n, total = len(self.connectors), b.student.logits.new_zeros(())
        for i, (conn, m, f_s, f_t) in enumerate(zip(self.connectors, self.margins(), b.student.feats,
                                                   b.teacher.feats, strict=True)):
            s, t = match_spatial(conn(f_s), teacher_view(f_t))
            total = total + partial_l2(s, t, m).sum() / s.shape[0] / 2.0 ** (n - 1 - i)
        return total

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self.calibrated = True  # margins restored with the state (a resumed run)
