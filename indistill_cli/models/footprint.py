"""What one image costs a model in activation memory, measured without allocating it.

The model is built on PyTorch's meta device (shapes only, no storage) and run once on a meta input;
forward hooks on the leaf modules add up their outputs. Sizes a user types (`--image-size`,
`--batch-size`) are checked against free memory with this before a real batch is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def activation_bytes(build: Callable[[], Any], in_channels: int, size: tuple[int, int]) -> tuple[int, int] | None:
    """(sum, largest) fp32 bytes of the leaf modules' outputs for one image; None when the model cannot run
    on the meta device (then nothing is known and nothing is refused)."""
    import torch

    sizes: list[int] = []

    def hook(_m: Any, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel())

    try:
        with torch.device("meta"):
            model = build()
        for m in model.modules():
            if not any(True for _ in m.children()):
                m.register_forward_hook(hook)
        with torch.no_grad():
            model.eval()(torch.empty(1, in_channels, *size, device="meta"))
    except Exception:  # noqa: BLE001 - a model that needs real data (or a plan that cannot replay on meta)
        return None
    return 4 * sum(sizes), 4 * max(sizes, default=0)
