"""The InDistill paper's 3-conv CNN family (the auxiliary teacher and the student).

3 x [conv3x3 unpadded with bias -> BN -> ReLU -> max-pool 2] at widths 16/32/64 (x width), flatten,
fc 128 (x width) + ReLU = the embedding, fc classes. `cnn3` is the auxiliary (16/32/64, 128-d);
`cnn3-w0.5` the student (8/16/32, 64-d). Taps: the three block outputs.

Each block pools before its ReLU (max-pool and ReLU commute exactly, values and gradients alike), so
the ReLU's input is the block's pre-activation at the tap's resolution: the `:pre` tap.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from indistill_cli.models.registry import register, scaled


class CNN3(nn.Module):
    def __init__(self, widths: list[int], emb: int, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        cin = in_channels
        for i, w in enumerate(widths):
            block = nn.Sequential(nn.Conv2d(cin, w, 3), nn.BatchNorm2d(w), nn.MaxPool2d(2), nn.ReLU(inplace=True))
            self.add_module(f"block{i + 1}", block)
            cin = w
        with torch.no_grad():
            size = input_size
            for _ in widths:
                size = (size - 2) // 2
        if size < 1:
            raise ValueError(f"cnn3 needs inputs of at least 22 pixels, got {input_size}")
        self.flatten = nn.Flatten()
        self.embed = nn.Sequential(nn.Linear(cin * size * size, emb), nn.ReLU(inplace=True))
        self.fc = nn.Linear(emb, num_classes)
        self.tap_names = ["block1", "block2", "block3"]
        self.preact_taps = {name: f"{name}.3:in" for name in self.tap_names}
        self.embedding_name = "embed"

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(self.embed(self.flatten(x)))


@register("cnn3", "cnn", "InDistill 3-conv CNN, widths 16/32/64, 128-d embedding (-w0.5: the student)")
def build(width: float, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return CNN3(scaled([16, 32, 64], width), scaled([128], width)[0], in_channels, num_classes, input_size)
