"""Contrastive representation distillation.

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

Student and teacher embeddings are projected by trainable linear heads to
``feat_dim`` and L2-normalised. Two memory banks (one per network, size
``num_data x feat_dim``) hold a momentum average of every training sample's
projection. For each sample the positive is the bank entry of the same dataset
index, and ``nce_k`` negatives are other entries; scores exp(<v, m> / T) / Z are
fed to the NCE objective of the paper (Eq. 18, the NCE form of the
RepDistiller/mdistiller ``ContrastLoss``), once with the teacher as anchor
against the student bank and once the other way round; the two are summed.

Defaults from the paper / RepDistiller / mdistiller ``CFG.CRD``: feat_dim 128,
nce_k 16384, temperature 0.07, momentum 0.5, weight 0.8 with CE weight 1.
Departures, all for small or reproducible runs:

* ``nce_k`` is clipped to ``num_data - 1``; negatives are drawn uniformly with
  replacement from the *other* samples (RepDistiller's in-memory sampler is
  uniform over all samples) using a private, seeded ``torch.Generator`` (hp
  ``seed``) on the banks' device (a CPU draw copied to a GPU every step would
  make the step wait), so runs are bitwise repeatable. Its state (and the device
  generator's, once there is one) is exposed by :meth:`extra_state_tensors` for
  checkpoints and resume.
* The normalisation constants Z (one per bank) are estimated on the first
  training batch as mean(score) * num_data, like RepDistiller, and kept in the
  ``z`` buffer so they survive a checkpoint. Under torchrun the mean is over
  every rank's batch (an all-reduce), so all ranks use the same Z.
* Banks and Z are only updated in training mode; evaluating the loss under
  ``eval()`` leaves them untouched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from indistill_cli.losses.base import DistillLoss, KDBatch, flat_dim, teacher_view
from indistill_cli.losses.registry import register

_EPS = 1e-7  # as RepDistiller's ContrastLoss


class Embed(nn.Module):
    """Linear projection followed by L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def nce_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """NCE loss for (N, 1 + K) normalised scores, positive in column 0.

    With noise probability Pn = 1 / num_data and K negatives:
    -(sum log P1/(P1 + K Pn) + sum log K Pn/(P0 + K Pn)) / N.
    """
    n, k = scores.shape[0], scores.shape[1] - 1
    k_pn = k / float(num_data)
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + k_pn + _EPS))
    log_d0 = torch.log(k_pn / (neg + k_pn + _EPS))
    return -(log_d1.sum() + log_d0.sum()) / n


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_mean(*scores: torch.Tensor) -> torch.Tensor:
    """Each tensor's mean over every rank's elements (sums and counts all-reduced: batches may differ)."""
    import torch.distributed as dist

    v = torch.stack([*(s.double().sum() for s in scores), scores[0].new_tensor(scores[0].numel(), dtype=torch.double)])
    dist.all_reduce(v)
    return v[:-1] / v[-1]


def _from_all_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Under torchrun, every rank's batch (concatenated in rank order), so that each rank applies the
    same bank updates and the banks stay identical across ranks (DDP does not broadcast them)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    world = dist.get_world_size()
    n = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(c) for c in sizes]  # batches may differ by a few samples (the last one)
    top = max(counts)
    out = []
    for t in tensors:
        padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)]))
    return tuple(out)


@register("crd", uses="embedding", default_weight=0.8, ce_weight=1.0,
          cite="Tian et al., ICLR 2020 (arXiv:1910.10699)")
class CRD(DistillLoss):
    """NCE between projected student/teacher embeddings with memory-bank negatives."""

    hparams = {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "seed": 0}

    memory_s: torch.Tensor
    memory_t: torch.Tensor
    z: torch.Tensor

    def setup(self) -> None:
        if len(self.s_shapes) != 1:
            raise ValueError("crd expects exactly one embedding per network")
        if self.num_data < 2:
            raise ValueError("crd needs a training set of at least 2 samples")
        dim = int(self.hp["feat_dim"])
        self.embed_s = Embed(flat_dim(self.s_shapes[0]), dim)
        self.embed_t = Embed(flat_dim(self.t_shapes[0]), dim)
        self.nce_k = min(int(self.hp["nce_k"]), self.num_data - 1)
        self._gen = torch.Generator().manual_seed(int(self.hp["seed"]))  # the banks' start; CPU draws
        self._dev_gen: torch.Generator | None = None  # draws on a GPU (made at the first one)
        self._dev_state: torch.Tensor | None = None  # its state from a checkpoint, until it is made
        self._z_known = False  # host-side: Z was estimated (or loaded): no more all-reduces for it
        stdv = 1.0 / math.sqrt(dim / 3)
        for name in ("memory_s", "memory_t"):
            bank = torch.rand(self.num_data, dim, generator=self._gen) * (2 * stdv) - stdv
            self.register_buffer(name, bank)
        self.register_buffer("z", torch.full((2,), -1.0))  # Z for (student, teacher) scores

    def extra_state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"rng_state": self._gen.get_state()}
        dev = self._dev_gen.get_state() if self._dev_gen is not None else self._dev_state
        if dev is not None:
            out["device_rng_state"] = dev
        return out

    def load_extra_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        unknown = set(state) - {"rng_state", "device_rng_state"}
        if unknown:
            raise ValueError(f"crd: unexpected extra state keys {sorted(unknown)}")
        if "rng_state" in state:
            self._gen.set_state(state["rng_state"].detach().cpu().to(torch.uint8))
        if "device_rng_state" in state:
            self._dev_state = state["device_rng_state"].detach().cpu().to(torch.uint8)
            if self._dev_gen is not None:
                self._dev_gen.set_state(self._dev_state)

    def generator(self, device: torch.device) -> torch.Generator:
        """The sampler's generator on `device`: the CPU one there (numbers as ever), else one made there
        once, seeded alike (or set to the state a checkpoint carried)."""
        if device.type == "cpu":
            return self._gen
        if self._dev_gen is None or self._dev_gen.device != device:
            self._dev_gen = torch.Generator(device=device).manual_seed(int(self.hp["seed"]))
            if self._dev_state is not None:
                self._dev_gen.set_state(self._dev_state)
        return self._dev_gen

    def sample_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """(N, nce_k) indices drawn uniformly from [0, num_data) minus each row's own index, on the
        index's device."""
        draw = torch.randint(0, self.num_data - 1, (index.numel(), self.nce_k),
                             generator=self.generator(index.device), device=index.device)
        return draw + (draw >= index[:, None]).long()

    def _scores(self, bank: torch.Tensor, cand: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """exp(<bank[cand], v> / T) for every candidate, shape (N, 1 + K)."""
        w = bank[cand].to(v.dtype)  # a copy: later in-place bank updates leave the graph alone
        return torch.exp(torch.bmm(w, v[:, :, None]).squeeze(2) / float(self.hp["nce_t"]))

    def forward(self, b: KDBatch) -> torch.Tensor:
        if b.index is None:
            raise ValueError("crd needs the dataset indices of the batch (index=None given)")
        idx = b.index.reshape(-1).to(device=self.memory_s.device, dtype=torch.long)
        v_s = self.embed_s(b.student.feats[0])
        v_t = self.embed_t(teacher_view(b.teacher.feats[0]))
        cand = torch.cat([idx[:, None], self.sample_negatives(idx)], dim=1)
        out_s = self._scores(self.memory_t, cand, v_s)  # student anchor, teacher bank
        out_t = self._scores(self.memory_s, cand, v_t)  # teacher anchor, student bank
        z = self._normalisers(out_s, out_t)
        loss = nce_loss(out_s / z[0], self.num_data) + nce_loss(out_t / z[1], self.num_data)
        if self.training:
            self._update_banks(idx, v_s, v_t)
        return loss

    @torch.no_grad()
    def _normalisers(self, out_s: torch.Tensor, out_t: torch.Tensor) -> torch.Tensor:
        """Z constants; estimated from this batch while unset (stored when training). Branch-free on the
        device, so a step never reads a tensor back to the host (no GPU sync, CUDA-graph friendly). Under
        torchrun the first training step's estimate is the mean over all ranks' batches (a host-side flag
        says when that step is over, the same on every rank)."""
        if self.training and not self._z_known and _world() > 1:
            est = _global_mean(out_s, out_t).to(self.z) * self.num_data
        else:
            est = torch.stack([out_s.mean(), out_t.mean()]).to(self.z) * self.num_data
        z = torch.where(self.z < 0, est, self.z)
        if self.training:
            self.z.copy_(z)
            self._z_known = True
        return z

    @torch.no_grad()
    def _update_banks(self, idx: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        idx, v_s, v_t = _from_all_ranks(idx, v_s.detach(), v_t.detach())
        m = float(self.hp["nce_m"])
        for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            mixed = bank.index_select(0, idx) * m + v.detach().to(bank) * (1.0 - m)
            bank.index_copy_(0, idx, F.normalize(mixed, dim=1))
