"""Probabilistic knowledge transfer (PKT) on embeddings.

Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018. Both variants turn a batch of embeddings into conditional
probabilities P(j|i) = K(i, j) / sum_j K(i, j) and match teacher and student.

``pkt`` — the "combined" PKT of InDistill (Sarridis, Koutlis, Kordopatis-Zilos,
Kompatsiaris & Papadopoulos, "InDistill: Information flow-preserving knowledge
distillation for model compression", arXiv:2205.10003, 2022; the authors'
reference code github.com/gsarridis/InDistill, ``methods/pkt.py``): a cosine
kernel K = (cos + 1) / 2 (x normalised by ||x|| + 1e-6) and a distance kernel
K = 1 / (1 + sqrt(||xi - xj||^2 + 1e-6)); for each kernel the symmetric
(Jeffreys) divergence mean_{ij} (Pt - Ps) (log Pt - log Ps) over all N^2
entries; the two are summed. The reference takes plain logs; we clamp P at
1e-12 before the log, which only changes the value when a probability is below
1e-12 (the cosine kernel of two exactly opposite vectors is 0, where the plain
log would give NaN). Weight 1 as in the InDistill reference (which trains with
this term alone); CE weight 1 as RepDistiller/mdistiller keep CE alongside PKT.

``pkt-cosine`` — the original ECCV 2018 loss as in the authors' code
(github.com/passalis/probabilistic_kt, reused by RepDistiller): cosine kernel
only, KL(Pt || Ps) = mean_{ij} Pt log((Pt + 1e-7) / (Ps + 1e-7)). Because the
mean runs over N^2 entries the value is tiny, hence the weight 30000 (with CE
weight 1) used by RepDistiller (``-b 30000``) and mdistiller
(``PKT.LOSS.FEAT_WEIGHT 30000``) on CIFAR-100.
"""

from __future__ import annotations

import torch

from indistill_cli.losses.base import DistillLoss, KDBatch, teacher_view
from indistill_cli.losses.registry import register

LOG_CLAMP = 1e-12


def cosine_kernel(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(cos(xi, xj) + 1) / 2 with x / (||x|| + eps)."""
    x = x.flatten(1)
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    return (x @ x.t() + 1.0) / 2.0


def distance_kernel(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 / (1 + sqrt(||xi - xj||^2 + eps)); squared distances via the Gram trick."""
    x = x.flatten(1)
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(0.0)
    return 1.0 / (1.0 + torch.sqrt(d2 + eps))


def row_normalise(k: torch.Tensor) -> torch.Tensor:
    return k / k.sum(dim=1, keepdim=True)


def jeffreys(p_t: torch.Tensor, p_s: torch.Tensor) -> torch.Tensor:
    """mean over entries of (Pt - Ps)(log Pt - log Ps)."""
    log_t = p_t.clamp_min(LOG_CLAMP).log()
    log_s = p_s.clamp_min(LOG_CLAMP).log()
    return ((p_t - p_s) * (log_t - log_s)).mean()


def pkt_combined(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    cos = jeffreys(row_normalise(cosine_kernel(t, 1e-6)), row_normalise(cosine_kernel(s, 1e-6)))
    dist = jeffreys(row_normalise(distance_kernel(t)), row_normalise(distance_kernel(s)))
    return cos + dist


def pkt_cosine(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    p_s = row_normalise(cosine_kernel(s, eps))
    p_t = row_normalise(cosine_kernel(t, eps))
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


class _PKTBase(DistillLoss):
    """Shared forward of both PKT variants: the divergence `kernel_loss` between embedding batches."""

    @staticmethod
    def kernel_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, b: KDBatch) -> torch.Tensor:
        return self.kernel_loss(b.student.feats[0], teacher_view(b.teacher.feats[0]))


@register("pkt", uses="embedding", default_weight=1.0, ce_weight=1.0,
          cite="Passalis & Tefas, ECCV 2018; InDistill's combined form (arXiv:2205.10003)")
class PKT(_PKTBase):
    """InDistill's combined cosine + distance-kernel PKT (symmetric divergence)."""

    kernel_loss = staticmethod(pkt_combined)


@register("pkt-cosine", uses="embedding", default_weight=30000.0, ce_weight=1.0,
          cite="Passalis & Tefas, ECCV 2018 (arXiv:1803.10837)")
class PKTCosine(_PKTBase):
    """Original PKT: KL between cosine-kernel conditional probabilities."""

    kernel_loss = staticmethod(pkt_cosine)
