"""CIFAR ResNets (He et al. 2016, sec. 4.2) as RepDistiller/mdistiller define them.

resnetN: three stages of BasicBlocks at widths 16/32/64, N = 6n+2; resnet8x4 / resnet32x4 use
widths 32/64/128/256 with a 32-wide stem. Taps are the stage outputs (after the block's ReLU), the
embedding is the pooled vector fed to the classifier. A stage's pre-activation (`:pre`) is the residual
sum its last block's ReLU receives (that ReLU's last call in the block).
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from indistill_cli.models.blocks import add_stages, blocks_per_stage, kaiming_convs
from indistill_cli.models.registry import register, scaled


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: list[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        n = blocks_per_stage(depth, 2, "CIFAR ResNet")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = add_stages(self, BasicBlock, widths, n, "layer")
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        self.tap_names = [f"layer{i + 1}" for i in range(len(widths) - 1)]
        self.preact_taps = {name: f"{name}.{n - 1}.relu:in" for name in self.tap_names}
        self.embedding_name = "pool"
        kaiming_convs(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for name in self.tap_names:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x))


def _make(depth: int, base: list[int]):
    def build(width: float, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
        return CifarResNet(depth, scaled(base, width), in_channels, num_classes)

    return build


register("resnet8", "cifar-resnet", "CIFAR ResNet-8, widths 16/32/64")(_make(8, [16, 16, 32, 64]))
register("resnet14", "cifar-resnet", "CIFAR ResNet-14, widths 16/32/64")(_make(14, [16, 16, 32, 64]))
register("resnet20", "cifar-resnet", "CIFAR ResNet-20, widths 16/32/64")(_make(20, [16, 16, 32, 64]))
register("resnet32", "cifar-resnet", "CIFAR ResNet-32, widths 16/32/64")(_make(32, [16, 16, 32, 64]))
register("resnet44", "cifar-resnet", "CIFAR ResNet-44, widths 16/32/64")(_make(44, [16, 16, 32, 64]))
register("resnet56", "cifar-resnet", "CIFAR ResNet-56, widths 16/32/64")(_make(56, [16, 16, 32, 64]))
register("resnet110", "cifar-resnet", "CIFAR ResNet-110, widths 16/32/64")(_make(110, [16, 16, 32, 64]))
register("resnet8x4", "cifar-resnet", "CIFAR ResNet-8, 4x wide (32/64/128/256)")(_make(8, [32, 64, 128, 256]))
register("resnet32x4", "cifar-resnet", "CIFAR ResNet-32, 4x wide (32/64/128/256)")(_make(32, [32, 64, 128, 256]))
