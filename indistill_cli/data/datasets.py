"""A dataset by name (built-in, synthetic or an image folder) with its splits, and a loader for any split.

Tensor sets keep their stored size; `info.image_size` is what models see (`serve_size`), and the loaders
pad (centred, zeros) or resize each batch to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indistill_cli.data.base import Dataset, DataInfo, Split
from indistill_cli.data.builtin import NAMES, data_root, load_builtin
from indistill_cli.data.splits import carve_val
from indistill_cli.data.tensor_loader import TensorLoader
from indistill_cli.errors import BadInput, did_you_mean

# CIFAR-style native families (cnn3 with unpadded convs above all) are built for 32x32: a 28x28 set is
# served zero-padded to 32x32 by default (as LeNet-style setups do), so cnn3 sees the whole image and
# its taps are 15/6/2 as in the paper instead of 13/5/1 over the top-left 22x22 pixels.
SERVE_28_AT = 32


def serve_size(stored: tuple[int, int], requested: int | None) -> tuple[int, int]:
    """The size models see: --image-size when given, 32 for 28x28 sets, else the stored size."""
    if requested is not None:
        if not 8 <= requested <= 4096:
            raise BadInput(f"--image-size must be between 8 and 4096 pixels, got {requested}")
        return (requested, requested)
    if tuple(stored) == (28, 28):
        return (SERVE_28_AT, SERVE_28_AT)
    return tuple(stored)  # type: ignore[return-value]


def load_dataset(name: str, val_fraction: float = 0.1, root: str | Path | None = None,
                 image_size: int | None = None, seed: int = 0, download: bool = True) -> Dataset:
    """Resolve a dataset name to tensors (or an ImageFolder) with train/val/test splits."""
    root = Path(root) if root else data_root()
    if name.startswith("imagefolder:"):
        from indistill_cli.data.folder import load_imagefolder

        return load_imagefolder(Path(name.split(":", 1)[1]), val_fraction, image_size or 224)
    found = load_builtin(name, root, seed, download)
    if found is None:
        raise BadInput(f"unknown dataset '{name}'{did_you_mean(name, NAMES)}; known: {', '.join(NAMES)}")
    info, train, test, source = found
    stored = tuple(int(v) for v in train.images.shape[-2:])
    info.source_size, info.image_size = stored, serve_size(stored, image_size)  # type: ignore[assignment]
    train, val = carve_val(train, val_fraction)
    train.name, test.name = "train", "test"
    return Dataset(info, train, val, test, source)


def make_loader(split: Any, info: DataInfo, batch_size: int, **kw: Any) -> Any:
    """A loader for either kind of split (tensor or folder)."""
    strict = kw.pop("strict", False)  # only folder data can hold unreadable images
    if isinstance(split, Split):
        return TensorLoader(split, info, batch_size, **kw)
    from indistill_cli.data.folder import FolderLoader

    return FolderLoader(split, info, batch_size, strict=strict, **kw)
