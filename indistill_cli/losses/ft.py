"""Factor transfer (FT): a paraphraser trained on the teacher, then a translator on the student.

Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer", NeurIPS 2018
(arXiv:1802.04977). Modules, losses and defaults from the authors' code
(github.com/Jangho-Kim/Factor-Transfer-pytorch: beta 500, paraphrase rate k = 0.5, L1 losses).

Both networks' last paired tap is compressed to a "factor" of k * C_t channels. The paraphraser is a
convolutional autoencoder on the teacher's map (encoder: 3x3 convs C_t -> C_t -> kC_t -> kC_t;
decoder: 3x3 transposed convs back to C_t; a LeakyReLU(0.1) after every layer, biases, no BN). The
translator maps the student's map to a factor (3x3 convs C_s -> C_s -> kC_t -> kC_t, LeakyReLU(0.1)); where
the two maps differ in size the larger is average-pooled to the smaller first (RepDistiller). With each
factor flattened and L2-normalised per sample, the loss is the mean absolute difference (p = 1), weight 500
with CE weight 1.

The paraphraser is trained first, as an autoencoder of the teacher's map (L1 reconstruction): the
`paraphraser` phase, run by `distill` before its main loop for `init_epochs` epochs (default 5, the
authors' code; RepDistiller uses 30 of 240 CIFAR epochs) at the run's optimiser and base lr, constant.
The student is not run in it. It is then frozen (its encoder gives the teacher's factor) while the
translator trains with the student (one optimiser, where the authors give it a second with the same
settings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from indistill_cli.losses.base import EPOCHS, POSITIVE, DistillLoss, KDBatch, Phase, match_spatial, teacher_view
from indistill_cli.losses.registry import register


def _stack(widths: list[int], transposed: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for cin, cout in zip(widths, widths[1:]):
        layers += [conv(cin, cout, 3, padding=1), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def factor_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Mean |normalize(F_s) - normalize(F_t)| with each sample's factor flattened."""
    return (F.normalize(f_s.flatten(1), dim=1) - F.normalize(f_t.flatten(1), dim=1)).abs().mean()


@register("ft", uses="taps", default_weight=500.0, ce_weight=1.0,
          cite="Kim et al., NeurIPS 2018 (arXiv:1802.04977)", note="reads the last tap pair")
class FT(DistillLoss):
    """Match the student's translated factor to the teacher's paraphrased factor."""

    hparams = {"rate": 0.5, "init_epochs": 5}
    ranges = {"rate": POSITIVE, "init_epochs": EPOCHS}  # the factor has max(1, round(rate * C_t)) channels

    def setup(self) -> None:
        if not self.s_shapes:
            raise ValueError("ft needs a tap pair")
        cs, ct = self.s_shapes[-1][0], self.t_shapes[-1][0]
        k = max(1, int(round(float(self.hp["rate"]) * ct)))
        self.encoder = _stack([ct, ct, k, k])
        self.decoder = _stack([k, k, ct, ct], transposed=True)
        self.translator = _stack([cs, cs, k, k])
        self.encoder.requires_grad_(False)  # the paraphraser trains in its own phase only
        self.decoder.requires_grad_(False)

    def reconstruction(self, b: KDBatch) -> torch.Tensor:
        t = teacher_view(b.teacher.feats[-1])
        return (self.decoder(self.encoder(t)) - t).abs().mean()

    def phases(self) -> list[Phase]:
        return [Phase("paraphraser", int(self.hp["init_epochs"]), self.reconstruction,
                      [self.encoder, self.decoder], needs_student=False)]

    def forward(self, b: KDBatch) -> torch.Tensor:
        f_s, f_t = match_spatial(b.student.feats[-1], teacher_view(b.teacher.feats[-1]))
        return factor_loss(self.translator(f_s), self.encoder(f_t))
