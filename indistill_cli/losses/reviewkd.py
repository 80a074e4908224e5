"""Knowledge review (ReviewKD): attention-based fusion of the student's levels, hierarchical context loss.

Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021 (arXiv:2104.09044).
Architecture, loss and defaults from the authors' code (github.com/dvlab-research/ReviewKD, CIFAR-100)
and mdistiller (``REVIEWKD_WEIGHT 5.0``, ``WARMUP_EPOCHS 20``, CE weight 1).

Levels: the paired taps plus the embedding (as a 1x1 map), shallow to deep. The teacher's taps are
read before their final ReLU (`:pre`), the student's as they are. A student level is transferred to
the teacher's width by an ABF module built deepest first: 1x1 conv + BN to `mid = min(512, embedding
width)` channels; every level but the deepest then fuses the deeper level's fused map (nearest-upsampled
to its size) with its own through a 2-channel per-pixel attention (1x1 conv + sigmoid over both),
resizes to the teacher's size (nearest) and goes through a 3x3 conv + BN to the teacher's channels;
the fused map is passed on to the next shallower level ("review": deep knowledge guides shallow
levels). The hierarchical context loss per level is
  [MSE(F_s, F_t) + sum_{k in 4,2,1, k < h} w_k MSE(P_k F_s, P_k F_t)] / (1 + sum of the w_k used),
P_k the adaptive average pool to k x k (`models.pooling`: deterministic under --deterministic) and w = 1/2, 1/4, 1/8 in that order; levels are summed. The term
ramps in as min((epoch + 1) / warmup, 1) (mdistiller's 1-based min(epoch / warmup, 1); 0 disables it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from indistill_cli.losses.base import EPOCHS, DistillLoss, KDBatch, ramp, teacher_view
from indistill_cli.losses.registry import register
from indistill_cli.models.pooling import adaptive_avg_pool2d


def _as_map(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, None, None] if x.dim() == 2 else x


class ABF(nn.Module):
    """Attention-based fusion of one student level with the deeper level's fused map."""

    def __init__(self, cin: int, mid: int, cout: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.att = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None,
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att is not None and deeper is not None:
            deeper = F.interpolate(deeper, x.shape[-2:], mode="nearest")
            z = self.att(torch.cat([x, deeper], dim=1))
            x = x * z[:, :1] + deeper * z[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def hcl(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """The hierarchical context loss of one level."""
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for k in (4, 2, 1):
        if k >= f_s.shape[2]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(adaptive_avg_pool2d(f_s, k), adaptive_avg_pool2d(f_t, k))
        total += weight
    return loss / total


@register("reviewkd", uses="taps", default_weight=5.0, ce_weight=1.0, preact="teacher", embedding=True,
          cite="Chen et al., CVPR 2021 (arXiv:2104.09044)")
class ReviewKD(DistillLoss):
    """Deep-to-shallow fused student levels regress the teacher's levels (multi-scale MSE)."""

    hparams = {"warmup": 20}
    ranges = {"warmup": EPOCHS}

    def setup(self) -> None:
        s_ch = [s[0] for s in self.s_shapes]
        mid = min(512, s_ch[-1])
        n = len(s_ch)
        self.abfs = nn.ModuleList(ABF(c, mid, t[0], i < n - 1) for i, (c, t) in enumerate(zip(s_ch, self.t_shapes)))
        self.out_sizes = [tuple(t[1:]) if len(t) == 3 else (1, 1) for t in self.t_shapes]

    def review(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF outputs, shallow to deep (computed deep to shallow)."""
        out: list[torch.Tensor] = []
        deeper = None
        for i in reversed(range(len(feats))):
            y, deeper = self.abfs[i](_as_map(feats[i]), deeper, self.out_sizes[i])
            out.insert(0, y)
        return out

    def forward(self, b: KDBatch) -> torch.Tensor:
        outs = self.review(b.student.feats)
        loss = sum(hcl(y, _as_map(teacher_view(t))) for y, t in zip(outs, b.teacher.feats, strict=True))
        return ramp(b.epoch, int(self.hp["warmup"])) * loss
