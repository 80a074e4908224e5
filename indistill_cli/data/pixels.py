"""Pixels to model inputs: batched crop + flip, padding/resizing to the model's size, normalisation.

`Normalise` is the one conversion from uint8 images to the floats a model sees, used by the tensor and
the folder loader alike, so both paths give identical inputs for identical images.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def crop_flip(images: torch.Tensor, pad: int, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip of a whole batch in one gather.

    oy/ox are the crop offsets into the padded image (0..2*pad) and flip a bool per image; the result
    equals cropping padded[i, :, oy:oy+H, ox:ox+W] and flipping it where flip[i].
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = oy[:, None] + ar_h[None, :]
    cols_fwd = ox[:, None] + ar_w[None, :]
    cols = torch.where(flip[:, None], ox[:, None] + (w - 1 - ar_w)[None, :], cols_fwd)
    b = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def fit_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pad (centred) a smaller image, or resize a larger one, to the model's input size."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h <= size[0] and w <= size[1]:
        top, left = (size[0] - h) // 2, (size[1] - w) // 2
        return F.pad(x, (left, size[1] - w - left, top, size[0] - h - top))
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights of PIL's convert("L")


class Normalise:
    """uint8 (N, C, H, W) -> normalised float at the model's channels (`repeat`: grayscale to RGB), size and
    memory layout. `gray`: a 1-channel model reading RGB files: the data's mean/std averaged to one channel,
    and RGB pixels (the cached folder path) turned to luma. `per_model`: mean/std are already given per model
    channel (a model that declares its own normalisation), so they are not repeated with the pixels."""

    def __init__(self, mean: list[float], std: list[float], device: Any, model_size: tuple[int, int],
                 repeat: int = 1, channels_last: bool = False, gray: bool = False, per_model: bool = False) -> None:
        m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=device).view(1, -1, 1, 1)
        if gray:
            m, s = m.mean(1, keepdim=True), s.mean(1, keepdim=True)
        if not per_model:
            m, s = m.repeat(1, repeat, 1, 1), s.repeat(1, repeat, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * s), m / s
        self.repeat, self.model_size, self.channels_last = repeat, tuple(model_size), channels_last
        self.luma = torch.tensor(LUMA, device=device).view(1, 3, 1, 1) if gray else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.repeat(1, self.repeat, 1, 1)
        x = x.float()
        if self.luma is not None and x.shape[1] == 3:  # RGB pixels for a 1-channel model: luma, as PIL's "L"
            x = (x * self.luma).sum(1, keepdim=True)
        if tuple(x.shape[-2:]) != self.model_size:  # before normalising: padding is black (pixel 0), not the mean
            x = fit_size(x, self.model_size)
        x = x.mul_(self.scale).sub_(self.shift)
        # the layout the run chose, whatever the gather left (crop_flip's output is NHWC-strided)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
