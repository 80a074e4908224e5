"""Construction steps the residual families share (same module order, so the same initial weights)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn


def blocks_per_stage(depth: int, extra: int, family: str) -> int:
    """Residual families of depth 6n + extra have n blocks per stage."""
    if (depth - extra) % 6:
        raise ValueError(f"{family} depth must be 6n+{extra}")
    return (depth - extra) // 6


def add_stages(net: nn.Module, block: Callable[[int, int, int], nn.Module], widths: list[int], n: int,
               prefix: str) -> int:
    """Stages `prefix1..` of `n` blocks each at widths[1:], the first block of every stage but the first
    striding by 2; returns the last stage's width."""
    cin = widths[0]
    for i, w in enumerate(widths[1:]):
        blocks = [block(cin if j == 0 else w, w, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
        net.add_module(f"{prefix}{i + 1}", nn.Sequential(*blocks))
        cin = w
    return cin


def kaiming_convs(net: nn.Module) -> None:
    """He-normal (fan_out) initialisation of every convolution, as the CIFAR reference code does."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
