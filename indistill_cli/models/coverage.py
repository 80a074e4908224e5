"""Which input pixels a model's output depends on: what the model actually sees of an image.

A CIFAR-style network with unpadded convolutions and floor pooling ignores the last rows and columns
of its input: the paper's 3-conv CNN fed 28x28 images uses only the top-left 22x22. The check is
exact and weight-independent: a NaN placed in one input row (or column) reaches the output iff that
row (column) is inside the receptive field, since NaN survives convolution, pooling, ReLU and
linear layers whatever the weights. One batch of H + W probe images answers for every row and column.

That holds for direct and im2col convolutions only: a Winograd or FFT convolution (cuDNN picks them on a
GPU, the more so with cudnn.benchmark) mixes every input of a tile into every output, so a NaN spreads
and the model would seem to see everything. The probe therefore runs on a CPU copy of the model in
fp32 and the usual memory layout, never on the model itself (its device, dtype and mode stay as they are).
"""

from __future__ import annotations

from typing import Any

import torch

# probe only CIFAR-scale inputs: at ImageNet sizes H + W forwards of a large model cost seconds, and
# such models pad their convolutions anyway
MAX_PROBE_PIXELS = 64 * 64


@torch.no_grad()
def seen_region(model: torch.nn.Module, in_channels: int, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(first row, last row, first col, last col) of the input the output depends on (inclusive).

    None when the input is too large to probe cheaply. A row or column that no NaN reaches from is
    outside the receptive field; the region is the span of those that do (a convnet's is a rectangle).
    """
    h, w = int(size[0]), int(size[1])
    if h * w > MAX_PROBE_PIXELS:
        return None
    probe = cpu_copy(model)
    x = torch.zeros(h + w, in_channels, h, w)
    for r in range(h):
        x[r, :, r, :] = float("nan")
    for c in range(w):
        x[h + c, :, :, c] = float("nan")
    out = probe(x)
    hit = torch.isnan(out.float().reshape(out.shape[0], -1)).any(dim=1)
    rows, cols = torch.nonzero(hit[:h]).flatten(), torch.nonzero(hit[h:]).flatten()
    if len(rows) == 0 or len(cols) == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An fp32, contiguous, eval-mode copy of `model` on the CPU (small: only CIFAR-scale models are probed)."""
    import copy

    return copy.deepcopy(model).to("cpu", torch.float32).to(memory_format=torch.contiguous_format).eval()


def image_box(input_size: tuple[int, int], stored: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where the stored image lies inside the model input (inclusive rows/cols): centred when padded,
    the whole input when resized (or equal)."""
    (H, W), (h, w) = input_size, stored
    if h <= H and w <= W:
        top, left = (H - h) // 2, (W - w) // 2
        return top, top + h - 1, left, left + w - 1
    return 0, H - 1, 0, W - 1


def describe(model: torch.nn.Module, spec: dict[str, Any], stored: tuple[int, int] | None = None) -> dict[str, Any]:
    """What the model sees of its images: the input region its output depends on, and how much of
    the stored image that covers (`stored` defaults to the input size itself)."""
    size = (int(spec["input_size"][0]), int(spec["input_size"][1]))
    stored = tuple(stored) if stored else size  # type: ignore[assignment]
    region = seen_region(model, int(spec["in_channels"]), size)
    out: dict[str, Any] = {"input": list(size), "image": list(stored)}
    if region is None:
        out["text"] = f"{size[0]}x{size[1]} input; receptive field not probed (input over 64x64 pixels)"
        return out
    r0, r1, c0, c1 = region
    b0, b1, b2, b3 = image_box(size, stored)  # type: ignore[arg-type]
    seen_h = max(0, min(r1, b1) - max(r0, b0) + 1)
    seen_w = max(0, min(c1, b3) - max(c0, b2) + 1)
    img_h, img_w = b1 - b0 + 1, b3 - b2 + 1
    frac = seen_h * seen_w / (img_h * img_w)
    out.update({"rows": [r0, r1], "cols": [c0, c1], "image_pixels_seen": [seen_h, seen_w], "fraction": frac})
    whole = "the whole image" if frac >= 1 else f"only {seen_h}x{seen_w} of the {img_h}x{img_w} image ({frac:.0%})"
    out["text"] = f"output depends on input rows {r0}-{r1}, cols {c0}-{c1} of {size[0]}x{size[1]}: {whole}"
    return out
