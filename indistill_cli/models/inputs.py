"""A frozen model fed another model's batches: its input turned into what it was trained on.

In `distill`, `warmup` and the flow view one batch feeds the student and the teacher. The loader prepares it
for the student (its channels, its normalisation); a teacher that expects other statistics (an imported
ImageNet model before a student trained on the data's own) or other channels (an RGB teacher, a grayscale
student) gets the batch re-normalised, channels repeated (gray to RGB) or turned to luma (RGB to gray), by a
forward pre-hook, so its module names and taps are untouched. Nothing is added when the two agree.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

LUMA = (0.299, 0.587, 0.114)  # as the loaders turn RGB files to gray (PIL's "L")


class InputAdapter:
    """x (normalised as `given`, `given_c` channels) -> x as the model expects (`own`, `own_c` channels)."""

    def __init__(self, given: tuple[list[float], list[float]], given_c: int, own: tuple[list[float], list[float]],
                 own_c: int) -> None:
        self.given, self.own, self.given_c, self.own_c = given, own, given_c, own_c
        self._cache: dict[Any, tuple[torch.Tensor, ...]] = {}

    def _consts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (x.device, x.dtype)
        if key not in self._cache:
            def col(v: list[float]) -> torch.Tensor:
                return torch.tensor(v, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)

            self._cache[key] = (col(self.given[0]), col(self.given[1]), col(self.own[0]), col(self.own[1]),
                                col(list(LUMA)))
        return self._cache[key]

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        gm, gs, om, os_, luma = self._consts(x)
        pixels = x * gs + gm  # back to [0, 1]
        if self.given_c == 1 and self.own_c > 1:
            pixels = pixels.expand(-1, self.own_c, -1, -1)
        elif self.given_c == 3 and self.own_c == 1:
            pixels = (pixels * luma).sum(1, keepdim=True)
        return ((pixels - om) / os_, *args[1:])


def _at(norm: tuple[list[float], list[float]], channels: int) -> tuple[list[float], list[float]]:
    """Mean/std for `channels` channels: RGB statistics averaged for one channel, as the loaders do."""
    mean, std = [float(v) for v in norm[0]], [float(v) for v in norm[1]]
    if channels == 1 and len(mean) > 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    return mean, std


def feed_from(model: nn.Module, given: tuple[list[float], list[float]], given_c: int,
              own: tuple[list[float], list[float]], own_c: int) -> Any:
    """Adapt `model`'s input when `given` batches are not what it expects; the hook handle, or None."""
    given, own = _at(given, given_c), _at(own, own_c)
    if (given, given_c) == (own, own_c):
        return None
    return model.register_forward_pre_hook(InputAdapter(given, given_c, own, own_c))
