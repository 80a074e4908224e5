"""Adaptive average pooling whose backward is deterministic on CUDA.

ATen's `adaptive_avg_pool2d` backward on CUDA accumulates with atomicAdd and has no deterministic kernel:
under `--deterministic` (torch.use_deterministic_algorithms) the first backward through it raises. With
that flag set, maps are pooled by exact equivalents instead: `avg_pool2d` when the sizes divide (the same
windows), else the average as two small averaging matrices applied by matmul (the same bins as adaptive
pooling, rows floor(i*H/h) to ceil((i+1)*H/h)), whose backward is two matmuls. Without the flag the ATen op
runs, so default results stay bitwise what they were (its sum / kh / kw rounds differently from both
equivalents). A 1x1 output is ATen's `mean` in every mode (ATen itself routes it there).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F


def averaging_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in): row i averages inputs floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out)-1 (adaptive pooling's
    bins); built on `like`'s device and dtype without a host round trip."""
    i = torch.arange(n_out, device=like.device)
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    j = torch.arange(n_in, device=like.device)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def _fp_as_given(device: torch.device) -> Any:
    """Autocast off (the matmuls keep the input's dtype, as the pooling op would)."""
    return torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else nullcontext()


def adaptive_avg_pool2d(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """F.adaptive_avg_pool2d(x, size), with a deterministic backward when deterministic algorithms are on."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if not torch.are_deterministic_algorithms_enabled() or (h, w) == (1, 1):
        return F.adaptive_avg_pool2d(x, (h, w))
    in_h, in_w = int(x.shape[-2]), int(x.shape[-1])
    if in_h % h == 0 and in_w % w == 0:
        return F.avg_pool2d(x, (in_h // h, in_w // w))
    with _fp_as_given(x.device):
        return averaging_matrix(in_h, h, x) @ x @ averaging_matrix(in_w, w, x).T
