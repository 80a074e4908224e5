"""Activation boundaries (AB), with its initialisation stage.

Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons", AAAI 2019 (arXiv:1811.03233). Loss, connectors and scale from the authors' code
(github.com/bhheo/AB_distillation) and RepDistiller (``--distill abound``).

AB transfers where each neuron switches on: with the pre-ReLU taps of both networks (`:pre`) and the
student's through a connector (1x1 conv + BN, the identity when the widths match; N(0, sqrt(2/n))
init), the hinge-squared loss with margin mu = 1 per element is
  (s + mu)^2 [s > -mu and t <= 0] + (s - mu)^2 [s <= mu and t > 0],
zero once the student's response is beyond the margin on the teacher's side of the boundary. It is
summed over elements, divided by the batch size, weighted 2^(i - n + 1) for tap i of n (deepest 1,
then 1/2, 1/4) and scaled by `init_scale` = 3/1000 (the authors' CIFAR scale).

The method is an initialisation: the `init` phase (run by `distill` before its main loop) trains the
student's layers up to the last tap and the connectors on this loss alone for `init_epochs` epochs
(default 4: RepDistiller's 30 of 240 CIFAR epochs scaled to distill's default 30), at the run's
optimiser and base lr, constant; the connectors are then dropped. The main loop is RepDistiller's
(CE, AB adding nothing); add `-m kd` for the authors' CIFAR-10 recipe (KD after the initialisation).
"""

from __future__ import annotations

import torch

from indistill_cli.losses.base import (EPOCHS, NON_NEGATIVE, DistillLoss, KDBatch, Phase, connectors, match_spatial,
                                       no_term, teacher_view)
from indistill_cli.losses.registry import register


def ab_elementwise(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    """The hinge-squared activation-boundary loss per element (student s, teacher t, both pre-ReLU)."""
    on, off = (t > 0).to(s.dtype), (t <= 0).to(s.dtype)
    return ((s + margin).pow(2) * ((s > -margin).to(s.dtype) * off)
            + (s - margin).pow(2) * ((s <= margin).to(s.dtype) * on))


@register("ab", uses="taps", default_weight=1.0, ce_weight=1.0, preact="both",
          cite="Heo et al., AAAI 2019 (arXiv:1811.03233)", note="its init phase; then CE (RepDistiller)")
class AB(DistillLoss):
    """Initialise the student so its neurons switch on and off where the teacher's do."""

    hparams = {"margin": 1.0, "init_epochs": 4, "init_scale": 0.003}
    ranges = {"margin": NON_NEGATIVE, "init_epochs": EPOCHS, "init_scale": NON_NEGATIVE}

    def setup(self) -> None:
        self.connectors = connectors(self.s_shapes, self.t_shapes, he_init=True)
        self.connectors.requires_grad_(False)  # trained in the init phase only, then dropped

    def boundaries(self, b: KDBatch) -> torch.Tensor:
        n, total = len(b.student.feats), b.student.logits.new_zeros(())
        for i, (conn, f_s, f_t) in enumerate(zip(self.connectors, b.student.feats, b.teacher.feats, strict=True)):
            s, t = match_spatial(conn(f_s), teacher_view(f_t))
            total = total + 2.0 ** (i - n + 1) * ab_elementwise(s, t, float(self.hp["margin"])).sum() / s.shape[0]
        return float(self.hp["init_scale"]) * total

    def phases(self) -> list[Phase]:
        return [Phase("init", int(self.hp["init_epochs"]), self.boundaries, [self.connectors], trains_student=True)]

    def forward(self, b: KDBatch) -> torch.Tensor:
        return no_term(b)  # the transfer is the init phase; the main loop is CE
