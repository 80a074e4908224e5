"""What a model costs to run: parameters, multiply-accumulates, and latency on this machine.

MACs come from `torch.utils.flop_counter.FlopCounterMode` (PyTorch's own counter: convolutions, linear
layers, matrix products; elementwise ops such as BatchNorm and ReLU are not counted) as FLOPs / 2.
Latency is the median and 90th percentile of timed runs after untimed warm-up runs.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn


def parameters(model: nn.Module) -> int:
    """Trainable parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on `x` (FLOPs counted by PyTorch, halved)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops()) // 2


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, warmup: int, runs: int,
            sync: Callable[[], None] | None = None, tick: Callable[[], None] | None = None) -> dict[str, float]:
    """Median and p90 of `runs` timed calls of fn(x) in milliseconds, after `warmup` untimed ones; `sync`
    waits for the device (CUDA) so a call's time is its work; `tick` after each call (a progress bar)."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            fn(x)
            if sync is not None:
                sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
            if tick is not None:
                tick()
    med = statistics.median(times)
    return {"median_ms": med, "p90_ms": percentile(times, 90), "runs": runs, "batch": int(x.shape[0]),
            "images_per_sec": int(x.shape[0]) / (med / 1e3)}
