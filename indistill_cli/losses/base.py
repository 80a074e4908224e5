"""Base class shared by every distillation term, plus small tensor helpers.

A :class:`DistillLoss` is one knowledge-distillation term: ``forward`` takes one
:class:`KDBatch` and returns a scalar. The trainer combines it with cross-entropy as
``ce_weight * CE + weight * loss(batch)``; the recipe of the method's paper (what it
reads, its weight, the CE weight) is given when the class is registered
(``registry.register``), so the CLI can offer sane defaults without the user
knowing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from indistill_cli.models.taps import match_spatial  # noqa: F401 - re-exported for the methods

USES = ("logits", "embedding", "taps")


@dataclass
class Feats:
    """What one network produced for a batch.

    ``feats`` depends on the loss's ``uses``: ``[]`` for "logits",
    ``[embedding (N, D)]`` for "embedding", one map per tap pair for "taps".
    """

    logits: torch.Tensor
    feats: list[torch.Tensor]


@dataclass
class KDBatch:
    """What every KD method sees for one batch."""

    student: Feats  # student logits + the features of its paired taps (or embedding)
    teacher: Feats  # the teacher's
    labels: torch.Tensor
    index: torch.Tensor | None  # sample indices into the training split (CRD's memory bank)
    epoch: int


class DistillLoss(nn.Module):
    """One KD term. Subclasses set the class attributes, implement `forward(b: KDBatch)`, and build any
    trainable parts (regressors, embedders, memory banks) in `setup()`, which runs at the end of __init__."""

    name: ClassVar[str]
    uses: ClassVar[str]  # "logits" | "embedding" | "taps"; these three are set by registry.register
    default_weight: ClassVar[float]
    ce_weight: ClassVar[float]
    hparams: ClassVar[dict[str, float | int]] = {}

    def __init__(
        self,
        s_shapes: list[tuple[int, ...]],
        t_shapes: list[tuple[int, ...]],
        num_classes: int,
        num_data: int,
        **hp: float | int,
    ) -> None:
        super().__init__()
        unknown = sorted(set(hp) - set(self.hparams))
        if unknown:
            valid = ", ".join(sorted(self.hparams)) or "(none)"
            raise ValueError(
                f"unknown hyper-parameter(s) {unknown} for loss {self.name!r}; valid: {valid}"
            )
        if len(s_shapes) != len(t_shapes):
            raise ValueError(
                f"{self.name}: {len(s_shapes)} student feature shapes but "
                f"{len(t_shapes)} teacher feature shapes; they must be paired"
            )
        self.s_shapes = [tuple(s) for s in s_shapes]
        self.t_shapes = [tuple(t) for t in t_shapes]
        self.num_classes = num_classes
        self.num_data = num_data
        self.hp: dict[str, float | int] = {
            k: _coerce(self.name, k, v, hp.get(k, v)) for k, v in self.hparams.items()
        }
        self.setup()

    def setup(self) -> None:
        """Build the method's own modules and buffers (none by default); shapes and hp are set."""

    def forward(self, b: KDBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_state_tensors(self) -> dict[str, torch.Tensor]:
        """State beyond parameters/buffers that a checkpoint must keep."""
        return {}

    def load_extra_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state_tensors` returned."""
        if state:
            raise ValueError(f"{self.name} keeps no extra state, got keys {sorted(state)}")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hp.items())


def _coerce(loss: str, key: str, default: float | int, value: float | int) -> float | int:
    """Give ``value`` the type of the default (CLI values may arrive as floats)."""
    if isinstance(default, int) and not isinstance(default, bool):
        if float(value) != int(value):
            raise ValueError(f"{loss}: hyper-parameter {key!r} must be an integer, got {value}")
        return int(value)
    return float(value)


def teacher_view(x: torch.Tensor) -> torch.Tensor:
    """Detach a teacher tensor; clone it if it is an inference tensor.

    Inference tensors cannot be saved for backward, and a detached normal
    tensor guarantees no gradient ever reaches the teacher.
    """
    x = x.detach()
    return x.clone() if x.is_inference() else x


def flat_dim(shape: tuple[int, ...]) -> int:
    """Number of features in one sample of the given per-sample shape."""
    n = 1
    for d in shape:
        n *= int(d)
    return n
