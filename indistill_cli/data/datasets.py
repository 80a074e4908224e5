"""A dataset by name (built-in, synthetic or an image folder) with its splits, and a loader for any split.

Tensor sets keep their stored size; `info.image_size` is what models see (`serve_size`), and the loaders
pad (centred, zeros) or resize each batch to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indistill_cli.data.base import Dataset, DataInfo, Split, serve_size
from indistill_cli.data.builtin import NAMES, data_root, load_builtin
from indistill_cli.data.splits import carve_val
from indistill_cli.data.tensor_loader import TensorLoader
from indistill_cli.errors import BadInput, did_you_mean


def load_dataset(name: str, val_fraction: float = 0.1, root: str | Path | None = None,
                 image_size: int | None = None, seed: int = 0, download: bool = True, cache: str = "off",
                 strict: bool = False, device: Any = "cpu") -> Dataset:
    """Resolve a dataset name to tensors (or an ImageFolder) with train/val/test splits. `cache`, `strict`
    and `device` concern image folders: decode into memory (auto/ram; on the training device, where the
    decoded pixels will live) or stream (off); stop at an unreadable image."""
    root = Path(root) if root else data_root()
    if name.startswith("imagefolder:"):
        from indistill_cli.data.folder import load_imagefolder

        return load_imagefolder(Path(name.split(":", 1)[1]), val_fraction, image_size, cache, strict, device)
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
