"""Wide ResNets (Zagoruyko & Komodakis 2016) in the CIFAR form RepDistiller uses.

wrn_D_K: pre-activation blocks, (D-4)/6 per group, widths 16, 16K, 32K, 64K. Taps are the group
outputs; the last one is taken after the final BN+ReLU so every tap is an activation. Blocks are
pre-activation, so a group output reaches a ReLU only through the next BN: its pre-activation (`:pre`,
as mdistiller defines it for WRN) is that BN's output, the next group's first `bn1`, or the final `bn`.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from indistill_cli.models.blocks import add_stages, blocks_per_stage, kaiming_convs
from indistill_cli.models.registry import register, scaled


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = self.relu1(self.bn1(x))
        y = self.conv2(self.relu2(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widths: list[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        n = blocks_per_stage(depth, 4, "WRN")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        cin = add_stages(self, WideBlock, widths, n, "block")
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        self.tap_names = ["block1", "block2", "relu"]
        self.preact_taps = {"block1": "block2.0.bn1", "block2": "block3.0.bn1", "relu": "relu:in"}
        self.embedding_name = "pool"
        kaiming_convs(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.relu(self.bn(x))))


def _make(depth: int, k: int):
    def build(width: float, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
        return WideResNet(depth, scaled([16, 16 * k, 32 * k, 64 * k], width), in_channels, num_classes)

    return build


register("wrn_16_1", "wrn", "Wide ResNet-16-1")(_make(16, 1))
register("wrn_16_2", "wrn", "Wide ResNet-16-2")(_make(16, 2))
register("wrn_40_1", "wrn", "Wide ResNet-40-1")(_make(40, 1))
register("wrn_40_2", "wrn", "Wide ResNet-40-2")(_make(40, 2))
