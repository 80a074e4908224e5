"""Pre-activation ResNet-18 (He et al. 2016, "Identity mappings"), the InDistill paper's CIFAR teacher.

Widths 64/128/256/512, 3x3 stem, no max-pool, global average pool -> 512 -> linear. A final
BN+ReLU makes the last tap and the embedding activations (the paper's embedding is post-ReLU). As in
WRN, a stage's pre-activation (`:pre`) is the next stage's first `bn1` output (the final `bn` for the last).
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from indistill_cli.models.registry import register, scaled


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = None if (stride == 1 and cin == cout) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = self.relu(self.bn1(x))
        sc = x if self.shortcut is None else self.shortcut(o)
        return self.conv2(self.relu(self.bn2(self.conv1(o)))) + sc


class PreActResNet18(nn.Module):
    def __init__(self, widths: list[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", nn.Sequential(PreActBlock(cin, w, stride), PreActBlock(w, w, 1)))
            cin = w
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        self.tap_names = ["layer1", "layer2", "layer3", "relu"]
        self.preact_taps = {"layer1": "layer2.0.bn1", "layer2": "layer3.0.bn1", "layer3": "layer4.0.bn1",
                            "relu": "relu:in"}
        self.embedding_name = "pool"

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.fc(self.pool(self.relu(self.bn(x))))


@register("preact_resnet18", "preact-resnet", "Pre-activation ResNet-18 (64/128/256/512), the paper's teacher")
def build(width: float, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return PreActResNet18(scaled([64, 128, 256, 512], width), in_channels, num_classes)
