"""Image files: what a folder's training images are (sizes and colour, from their headers), reading one
file (refusing decompression bombs before decoding), fitting it to the stored size, and decoding a whole
split once into a uint8 tensor with a thread pool.

Both folder paths use `read_image` and `fit_stored`, so a cached and a streamed folder give the model
the same evaluation inputs for the same file.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from indistill_cli import progress
from indistill_cli.errors import BadInput

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
PROBE_ALL = 50_000  # larger folders are surveyed from an evenly spaced sample of this many images
CHUNK = 256


def max_pixels() -> int:
    """The most pixels one image may have: PIL's own refusal threshold (twice its warning limit)."""
    from PIL import Image

    return 2 * int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def _pixels(n: int) -> str:
    return f"{n / 1e6:.0f} megapixels" if n >= 10**6 else f"{n:,} pixels"


def bomb(path: str, pixels: int | str) -> BadInput:
    """The error for an image over the limit; `pixels`: its count, or PIL's refusal (which states it)."""
    if isinstance(pixels, str):
        found = re.search(r"\((\d+) pixels\)", pixels)
        pixels = int(found.group(1)) if found else 0
    size = _pixels(pixels) if pixels else "more pixels than PIL accepts"
    return BadInput(f"{path}: {size}, over the {_pixels(max_pixels())} one image may have (a decompression "
                    f"bomb?); remove or shrink it")


@dataclass
class Unreadable:
    """A file that is not a readable image (skipped and counted, or an error with --strict)."""

    path: str


def read_image(path: str, mode: str) -> Any:
    """A file as a uint8 (C, H, W) tensor in `mode` ("L" or "RGB"; alpha dropped), or Unreadable. A file
    with more pixels than `max_pixels` raises BadInput before it is decoded."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2.functional import pil_to_tensor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: the limit is checked here
        try:
            with Image.open(path) as im:
                if im.width * im.height > max_pixels():
                    raise bomb(path, im.width * im.height)
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA")  # palette transparency: convert via RGBA (no PIL warning)
                return pil_to_tensor(im.convert(mode))
        except Image.DecompressionBombError as e:
            raise bomb(path, str(e)) from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            return Unreadable(path)


def fit_stored(img: torch.Tensor, stored: tuple[int, int]) -> torch.Tensor:
    """An image at the split's stored size: as it is when it has that size, else resized (shorter side to
    256/224 of it) and centre-cropped, the usual evaluation crop."""
    if tuple(img.shape[-2:]) == tuple(stored):
        return img
    from torchvision.transforms.v2 import functional as F

    img = F.resize(img, [int(math.ceil(min(stored) * 256 / 224))], antialias=True)
    return F.center_crop(img, list(stored))


@dataclass
class Survey:
    """What a folder's training images are, from their headers."""

    sizes: Counter  # (height, width) -> how many images
    gray: bool  # every image is grayscale
    probed: int  # images whose header was read
    total: int

    @property
    def common(self) -> tuple[int, int] | None:
        return next(iter(self.sizes)) if len(self.sizes) == 1 else None


def _header(path: str) -> tuple[int, int, str] | None:
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(path) as im:
                w, h, mode = im.width, im.height, im.mode
        except Image.DecompressionBombError as e:
            raise bomb(path, str(e)) from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            return None
    if w * h > max_pixels():
        raise bomb(path, w * h)
    return h, w, mode


def _pooled(fn: Callable[[list[Any]], list[Any]], items: list[Any], label: str) -> list[Any]:
    """fn over chunks of items on a thread pool (PIL decodes without the GIL), with a progress bar."""
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    out: list[Any] = []
    with ThreadPoolExecutor(max_workers=min(8, 2 * max(1, torch.get_num_threads()))) as pool, progress.bar() as bars:
        task = bars.add_task(label, total=len(items), status="")
        for part in pool.map(fn, chunks):
            out += part
            bars.advance(task, len(part))
    return out


def survey(paths: list[str], label: str) -> Survey:
    """Sizes and colour of the images (all of them, or an evenly spaced sample of a very large folder);
    a decompression bomb among them is BadInput."""
    step = max(1, math.ceil(len(paths) / PROBE_ALL))
    heads = [h for h in _pooled(lambda ps: [_header(p) for p in ps], paths[::step], label) if h is not None]
    return Survey(Counter((h, w) for h, w, _ in heads), bool(heads) and all(m in GRAY_MODES for *_, m in heads),
                  len(heads), len(paths))


def decode(paths: list[str], mode: str, stored: tuple[int, int], label: str) -> tuple[torch.Tensor, list[str]]:
    """Every file decoded once into a uint8 (N, C, H, W) tensor at `stored`; the unreadable ones' rows stay
    zero and their paths are returned (the caller drops or refuses them)."""
    c = 1 if mode == "L" else 3
    images = torch.zeros((len(paths), c, *stored), dtype=torch.uint8)

    def fill(chunk: list[tuple[int, str]]) -> list[str | None]:
        bad: list[str | None] = []
        for i, path in chunk:
            img = read_image(path, mode)
            if isinstance(img, Unreadable):
                bad.append(path)
            else:
                images[i] = fit_stored(img, stored)
                bad.append(None)
        return bad

    bad = _pooled(fill, list(enumerate(paths)), label)
    return images, [p for p in bad if p is not None]
