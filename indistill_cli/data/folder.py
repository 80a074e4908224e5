"""ImageFolder datasets (ImageNet-style trees) streamed through a DataLoader with workers.

Layout: PATH/train/CLASS/*.jpg plus PATH/val/ or PATH/test/ (either name). Images are decoded and
augmented in worker processes (random-resized crop + flip for training, resize + centre crop for
evaluation), delivered as uint8 and normalised on the device like the tensor path. Unreadable images
are skipped and counted, so one corrupt JPEG does not end a day-long run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from indistill_cli.data.base import Batch, Dataset, DataInfo
from indistill_cli.data.pixels import Normalise
from indistill_cli.data.sharding import ShardedLoader
from indistill_cli.data.splits import carve_val
from indistill_cli.errors import BadInput

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class FolderSplit:
    items: list[tuple[str, int]]
    classes: list[str]
    name: str = ""

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.items], dtype=torch.long)

    def subset(self, idx: torch.Tensor, name: str) -> FolderSplit:
        return FolderSplit([self.items[i] for i in idx.tolist()], self.classes, name)


def scan(folder: Path, classes: list[str] | None = None) -> FolderSplit:
    if not folder.is_dir():
        raise BadInput(f"{folder}: image folder not found")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes or found
    if not classes:
        raise BadInput(f"{folder}: no class sub-folders (expected {folder}/CLASS/IMAGE)")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise BadInput(f"{folder}: class folders {unknown[:3]} do not exist in the training split")
    items = []
    for y, c in enumerate(classes):
        d = folder / c
        if d.is_dir():
            items += [(str(p), y) for p in sorted(d.rglob("*")) if p.suffix.lower() in EXTS and p.is_file()]
    if not items:
        raise BadInput(f"{folder}: no images found (looked for {', '.join(sorted(EXTS))})")
    return FolderSplit(items, classes, folder.name)


def load_imagefolder(path: Path, val_fraction: float, image_size: int) -> Dataset:
    """PATH/train plus PATH/val (or PATH/test) as a dataset served at `image_size`."""
    if not path.is_dir():
        raise BadInput(f"imagefolder:{path}: folder not found")
    train = scan(path / "train")
    test_dir = next((path / n for n in ("val", "test") if (path / n).is_dir()), None)
    if test_dir is None:
        raise BadInput(f"imagefolder:{path}: needs a val/ or test/ folder beside train/")
    test = scan(test_dir, train.classes)
    info = DataInfo(f"imagefolder:{path}", len(train.classes), 3, (image_size, image_size), IMAGENET_MEAN,
                    IMAGENET_STD, train.classes, True, 0)
    tr, val = carve_val(train, val_fraction)
    return Dataset(info, tr, val, test, str(path))


class _Images(torch.utils.data.Dataset):
    def __init__(self, split: FolderSplit, size: int, train: bool, mode: str = "RGB") -> None:
        from torchvision.transforms import v2

        self.items, self.mode = split.items, mode
        if train:
            self.tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
        else:
            self.tf = v2.Compose([v2.Resize(int(math.ceil(size * 256 / 224)), antialias=True), v2.CenterCrop(size)])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.v2.functional import pil_to_tensor

        path, y = self.items[i]
        try:  # grayscale, RGB, RGBA and palette files all load as the model's channels (alpha dropped)
            with Image.open(path) as im:
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA")  # palette transparency: convert via RGBA (no PIL warning)
                img = pil_to_tensor(im.convert(self.mode))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            return path  # unreadable: the loader counts it (or stops, with --strict)
        return self.tf(img), y, i


def _collate(rows: list[Any]) -> Any:
    good = [r for r in rows if not isinstance(r, str)]
    bad = [r for r in rows if isinstance(r, str)]
    if not good:
        return None, bad
    x = torch.stack([r[0] for r in good])
    return (x, torch.tensor([r[1] for r in good]), torch.tensor([r[2] for r in good])), bad


_REPORTED: set[str] = set()  # unreadable files already reported by this process (one warning each)


class FolderLoader(ShardedLoader):
    """DataLoader-backed loader yielding the same `Batch` as the tensor path; skipped batches of a resumed
    run are not decoded."""

    def __init__(self, split: FolderSplit, info: DataInfo, batch_size: int, device: Any = "cpu", shuffle: bool = False,
                 augment: bool = False, seed: int = 0, drop_last: bool = False, model_channels: int | None = None,
                 model_size: tuple[int, int] | None = None, rank: int = 0, world: int = 1,
                 channels_last: bool = False, workers: int | None = None, strict: bool = False) -> None:
        super().__init__(len(split), batch_size, shuffle, seed, drop_last, rank, world)
        self.device = torch.device(device)
        size = int((model_size or info.image_size)[0])
        gray = model_channels == 1  # a 1-channel model reads the folder as grayscale
        self.ds = _Images(split, size, augment, "L" if gray else "RGB")
        self.split_name, self.strict = split.name or "images", strict
        self.workers = workers if workers is not None else min(8, max(1, (torch.get_num_threads() or 2) - 1))
        self.skipped = 0
        # the tensor path's normalisation, so both paths produce identical floats
        self.to_float = Normalise(info.mean, info.std, self.device, (size, size), channels_last=channels_last,
                                  gray=gray)

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.ds, self.order().tolist()[skip * self.batch_size :]), batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers, collate_fn=_collate, drop_last=self.drop_last,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        bad_paths: list[str] = []
        for batch, bad in loader:
            self.skipped += len(bad)
            if bad and self.strict:
                raise BadInput(f"{bad[0]}: unreadable image (--strict); remove or replace it, or drop --strict "
                               f"to skip unreadable images")
            bad_paths += bad
            if batch is None:
                continue
            x, y, i = (t.to(self.device, non_blocking=True) for t in batch)
            yield Batch(self.to_float(x), y, i)
        new = [p for p in bad_paths if p not in _REPORTED]
        if new:
            from indistill_cli import progress

            _REPORTED.update(new)
            progress.console.print(f"[yellow]warning:[/yellow] skipped {len(new)} unreadable image"
                                   f"{'s' if len(new) > 1 else ''} in {self.split_name} (e.g. {new[0]}); --strict "
                                   f"stops on them instead", soft_wrap=True)
