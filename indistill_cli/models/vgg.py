"""CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015) as RepDistiller defines vgg8..vgg19.

Five stages of conv-BN-ReLU; stages 1-4 end in a 2x2 max-pool, applied before the stage's last ReLU
(they commute exactly), so that ReLU's input is the stage output's pre-activation (the `:pre` tap).
Taps are the stage outputs (the tensor fed to the next stage); the embedding is the pooled 512-d vector.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from indistill_cli.models.registry import register, scaled

CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class VGG(nn.Module):
    def __init__(self, cfg: list[list[int]], in_channels: int, num_classes: int) -> None:
        super().__init__()
        cin = in_channels
        self.preact_taps: dict[str, str] = {}
        for s, widths in enumerate(cfg):
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            if s < len(cfg) - 1:
                layers.insert(len(layers) - 1, nn.MaxPool2d(2))
            self.add_module(f"stage{s}", nn.Sequential(*layers))
            self.preact_taps[f"stage{s}"] = f"stage{s}.{len(layers) - 1}:in"
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        self.tap_names = [f"stage{s}" for s in range(len(cfg))]
        self.embedding_name = "pool"

    def forward(self, x: Tensor) -> Tensor:
        for name in self.tap_names:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x))


def _make(name: str):
    def build(width: float, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
        return VGG([scaled(s, width) for s in CFG[name]], in_channels, num_classes)

    return build


register("vgg8", "vgg", "CIFAR VGG8 with BatchNorm")(_make("vgg8"))
register("vgg11", "vgg", "CIFAR VGG11 with BatchNorm")(_make("vgg11"))
register("vgg13", "vgg", "CIFAR VGG13 with BatchNorm")(_make("vgg13"))
register("vgg16", "vgg", "CIFAR VGG16 with BatchNorm")(_make("vgg16"))
register("vgg19", "vgg", "CIFAR VGG19 with BatchNorm")(_make("vgg19"))
