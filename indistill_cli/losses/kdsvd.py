"""Self-supervised knowledge distillation using singular value decomposition (KD-SVD).

Lee, Kim & Song, "Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018
(arXiv:1807.06819). The loss as RepDistiller's ``KDSVD`` (k = 1, the student keeping k + 3 vectors)
and mdistiller (``KDSVD.K 1``, feature weight 1, CE weight 1).

Each tap's map, as a matrix X (HW x C), is summarised by its top right singular vectors (in channel
space) scaled by the teacher's normalised singular values: the teacher keeps k, the student k + 3, of
which each teacher vector takes the one with the largest |cosine| (sign-aligned). For consecutive taps
l-1, l the Gaussian "RBF" map G[c, c', j] = exp(-(V_l[c, j] - V_{l-1}[c', j])^2 / 8) relates the two
taps' vectors; the loss is sum over consecutive pairs of sum (G_s - G_t)^2 / B (non-finite entries
zeroed). Being built from normalised, sign-aligned vectors it is invariant to any nonzero scaling of
the student's maps. Channel counts must match per tap: a narrower student tap goes through a 1x1 conv
+ BN connector, trained with the student (the author's TF2 re-implementation; RepDistiller refuses).

Numerics: the vectors are the top eigenvectors of X^T X in float64, and the backward uses only the
kept vectors' terms, with near-degenerate eigenvalue pairs' terms dropped (the paper's own truncated
SVD gradient removes them too): the full SVD gradient is NaN wherever two unused singular values tie,
e.g. the zeros of a low-rank map.

Host sync: on CUDA `torch.linalg.eigh` reads the solver's status back to the host, so a KD-SVD step
waits for the device at each decomposition (every tap, student and teacher). It stays: the method is
the eigendecomposition, and torch offers no variant that skips the check (tests/test_host_sync.py
names it as the one sync allowed in a step).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from indistill_cli.losses.base import COUNT, DistillLoss, KDBatch, consecutive_connectors, teacher_view
from indistill_cli.losses.registry import register


class TopEigh(torch.autograd.Function):
    """Top-k eigenpairs (descending) of symmetric matrices (..., C, C); backward through those k only."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        lam, vec = torch.linalg.eigh(a)
        ctx.save_for_backward(lam, vec)
        ctx.k = k
        return lam[..., -k:].flip(-1), vec[..., -k:].flip(-1)

    @staticmethod
    def backward(ctx: Any, g_lam: torch.Tensor | None, g_vec: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        lam, vec = ctx.saved_tensors
        k = ctx.k
        gl, gv = torch.zeros_like(lam), torch.zeros_like(vec)
        if g_lam is not None:
            gl[..., -k:] = g_lam.flip(-1)
        if g_vec is not None:
            gv[..., -k:] = g_vec.flip(-1)
        diff = lam.unsqueeze(-2) - lam.unsqueeze(-1)  # [i, j] = lam_j - lam_i
        tol = 1e-10 * lam.abs().amax(dim=-1, keepdim=True).unsqueeze(-1).clamp_min(1e-30)
        inv = torch.where(diff.abs() > tol, 1.0 / torch.where(diff == 0, torch.ones_like(diff), diff),
                          torch.zeros_like(diff))
        inner = (vec.transpose(-2, -1) @ gv) * inv + torch.diag_embed(gl)
        ga = vec @ inner @ vec.transpose(-2, -1)
        return (ga + ga.transpose(-2, -1)) / 2, None


def top_singular(f: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised top-n singular values (B, n), top-n right singular vectors (B, C, n)) of each map."""
    x = f.flatten(2).double()  # (B, C, HW): x x^T = X^T X for X = (HW x C)
    n = min(n, x.shape[1])
    lam, vec = TopEigh.apply(x @ x.transpose(1, 2), n)
    return F.normalize(lam.clamp_min(0).sqrt(), dim=1), F.normalize(vec, dim=1)


def align(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student vector of largest |cosine|, sign-matched: (B, C, k_t)."""
    cos = v_s.transpose(1, 2) @ v_t  # (B, k_s, k_t)
    best = cos.abs().amax(dim=1, keepdim=True)
    mask = torch.where(cos.abs() == best, torch.sign(cos), torch.zeros_like(cos)).detach()
    return v_s @ mask


def kdsvd_loss(s_maps: list[torch.Tensor], t_maps: list[torch.Tensor], k: int) -> torch.Tensor:
    total, prev = s_maps[0].new_zeros((), dtype=torch.float64), None
    for f_s, f_t in zip(s_maps, t_maps, strict=True):
        s_t, v_t = top_singular(f_t, k)
        _, v_s = top_singular(f_s, k + 3)
        v_s = align(v_s, v_t) * s_t.unsqueeze(1)
        v_t = v_t * s_t.unsqueeze(1)
        if prev is not None:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - prev[0].unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - prev[1].unsqueeze(1)).pow(2) / 8)
            sq = (rbf_s - rbf_t).pow(2)
            total = total + torch.where(torch.isfinite(sq), sq, torch.zeros_like(sq)).sum() / f_s.shape[0]
        prev = (v_s, v_t)
    return total.to(s_maps[0].dtype)


@register("kdsvd", uses="taps", default_weight=1.0, ce_weight=1.0, cite="Lee et al., ECCV 2018 (arXiv:1807.06819)",
          note="connectors where widths differ")
class KDSVD(DistillLoss):
    """Match how the dominant singular directions of consecutive taps relate."""

    hparams = {"k": 1}
    ranges = {"k": COUNT}

    def setup(self) -> None:
        self.connectors = consecutive_connectors(self)

    def forward(self, b: KDBatch) -> torch.Tensor:
        s_maps = [c(f) for c, f in zip(self.connectors, b.student.feats, strict=True)]
        return kdsvd_loss(s_maps, [teacher_view(f) for f in b.teacher.feats], int(self.hp["k"]))
