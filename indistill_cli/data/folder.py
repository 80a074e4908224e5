"""ImageFolder datasets (ImageNet-style trees): decoded once into memory when they fit, else streamed.

Layout: PATH/train/CLASS/*.jpg plus PATH/val/ or PATH/test/ (either name). The training images' headers
decide the defaults: their own size when they share one (else 224), one channel when every image is
grayscale. A folder whose decoded images fit the memory budget (`--cache auto`, or `ram`) is decoded
once into uint8 tensors and served like the built-in sets (`TensorLoader`: device-side crop + flip);
otherwise images are decoded and augmented in DataLoader workers every epoch (random-resized crop + flip
for training, resize + centre crop for evaluation) and normalised on the device. Unreadable images are
skipped and counted, so one corrupt JPEG does not end a day-long run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from indistill_cli.data.base import Batch, Dataset, DataInfo, Split, serve_size, serving_phrase
from indistill_cli.data.images import Survey, Unreadable, decode, fit_stored, read_image, survey
from indistill_cli.data.memory import available, check_fits, gib, host_available
from indistill_cli.data.pixels import Normalise
from indistill_cli.data.sharding import ShardedLoader
from indistill_cli.data.splits import carve_val
from indistill_cli import progress
from indistill_cli.errors import BadInput

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
DEFAULT_SIZE = 224  # images of mixed sizes are served at this size unless --image-size says otherwise
CACHE_MODES = ("auto", "ram", "off")
AUTO_BUDGET = 2 * 2**30  # --cache auto decodes a folder into memory up to this (and half the free memory)

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


def _trees(path: Path) -> tuple[FolderSplit, FolderSplit]:
    """PATH/train and PATH/val (or PATH/test), scanned."""
    if not path.is_dir():
        raise BadInput(f"imagefolder:{path}: folder not found")
    train = scan(path / "train")
    test_dir = next((path / n for n in ("val", "test") if (path / n).is_dir()), None)
    if test_dir is None:
        raise BadInput(f"imagefolder:{path}: needs a val/ or test/ folder beside train/")
    return train, scan(test_dir, train.classes)


def _sizes(sv: Survey, image_size: int | None) -> tuple[tuple[int, int], tuple[int, int], str]:
    """(served, stored, what the images are and what models see): --image-size, else the images' own size when they share one
    (28x28 served at 32x32 like the built-in sets), else 224. Stored: their own size when it fits in the
    served one (padded per batch), else the served size (resized and centre-cropped once)."""
    common = sv.common
    sample = f" (a sample of {sv.probed:,})" if sv.probed < sv.total else ""
    colour = "grayscale" if sv.gray else "colour"
    if common:
        what = f"all {sv.total:,} training images are {common[0]}x{common[1]} {colour}{sample}"
    else:
        shown = ", ".join(f"{h}x{w}" for (h, w), _ in sv.sizes.most_common(2))
        what = f"training images differ in size ({len(sv.sizes)} sizes{sample}, e.g. {shown}), {colour}"
    if image_size is not None:
        served = serve_size((image_size, image_size), image_size)
    elif common:
        served = serve_size((max(common),) * 2, None)  # type: ignore[arg-type]
    else:
        served = (DEFAULT_SIZE, DEFAULT_SIZE)
    fits = common is not None and common[0] <= served[0] and common[1] <= served[1]
    stored = common if fits else served
    s = f"{served[0]}x{served[1]}"
    sees = serving_phrase(stored, served) if fits else \
        f"{common[0]}x{common[1]} images resized and centre-cropped to {s}" if common else \
        f"images resized and centre-cropped to {s}"
    return served, stored, f"{what}; models see {sees}"  # type: ignore[return-value]


def _decoded(part: FolderSplit, mode: str, stored: tuple[int, int], strict: bool) -> Split:
    """A split decoded once into uint8 tensors (unreadable images dropped and counted, or --strict)."""
    images, bad = decode([p for p, _ in part.items], mode, stored, f"decode {part.name}")
    unreadable(bad, part.name, strict)
    labels = part.labels
    if bad:
        gone = set(bad)
        keep = torch.tensor([p not in gone for p, _ in part.items])
        images, labels = images[keep], labels[keep]
    return Split(images, labels, part.name)


def _cache_plan(cache: str, nbytes: int, device: Any = "cpu") -> tuple[bool, str]:
    """(decode into memory?, the phrase saying which path and why). A decoded folder is served like the
    built-in sets: its pixels live on the training `device` (crop and flip run there, no per-batch copy),
    so on a GPU it must fit the GPU's free memory as well as the host's; a folder that does not is
    streamed (--cache off: DataLoader workers, pinned batches), which `auto` chooses by itself."""
    if cache not in CACHE_MODES:
        raise BadInput(f"--cache must be auto, ram or off, got '{cache}'")
    size = gib(nbytes)
    if cache == "off":
        return False, "streamed from disk every epoch (--cache off)"
    on_gpu = str(device).startswith("cuda")
    if cache == "ram":
        for where in ("cpu", device) if on_gpu else ("cpu",):
            on = f" on {device}" if where != "cpu" else ""
            check_fits(nbytes, f"decoding the image folder ({size} of uint8 pixels{on})",
                       "use --cache off to stream the images from disk instead", where)
        return True, f"decoded once into memory ({size}, --cache ram)"
    budget = min(AUTO_BUDGET, (host_available() or AUTO_BUDGET * 2) // 2,
                 (available(device) or AUTO_BUDGET * 2) // 2 if on_gpu else AUTO_BUDGET)
    if nbytes <= budget:
        return True, f"decoded once into memory ({size}; --cache off streams instead)"
    return False, (f"streamed from disk every epoch (decoded they would take {size}, over the {gib(budget)} of "
                   f"--cache auto; --cache ram decodes anyway)")


def load_imagefolder(path: Path, val_fraction: float, image_size: int | None = None, cache: str = "off",
                     strict: bool = False, device: Any = "cpu") -> Dataset:
    """PATH/train plus PATH/val (or PATH/test): sizes and channels from the training images' headers, the
    splits decoded into memory or streamed (`cache`, given the training `device`); one line on stderr says
    what was chosen."""
    train, test = _trees(path)
    sv = survey([p for p, _ in train.items], "read image headers")
    served, stored, what = _sizes(sv, image_size)
    gray = sv.gray
    mean, std = ([sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]) if gray else (IMAGENET_MEAN, IMAGENET_STD)
    nbytes = (len(train) + len(test)) * (1 if gray else 3) * stored[0] * stored[1]
    cached, how = _cache_plan(cache, nbytes, device)
    channels = f"{1 if gray else 3} channel{'' if gray else 's'}"
    progress.info(f"imagefolder:{path}: {what}, {channels}{'' if image_size else ' (--image-size N to change)'}; "
                  f"{how}")
    notes = {"images": what.split("; ")[0], "size": f"--image-size {image_size}" if image_size else
             ("the images' own" if sv.common else f"default {DEFAULT_SIZE}"), "channels": 1 if gray else 3,
             "cache": "ram" if cached else "stream", "decoded_bytes": nbytes}
    info = DataInfo(f"imagefolder:{path}", len(train.classes), 1 if gray else 3, served, mean, std, train.classes,
                    True, max(1, round(min(stored) / 8)), stored, notes)
    tr, val = carve_val(train, val_fraction)
    if cached:
        mode = "L" if gray else "RGB"
        tr, val, test = (_decoded(p, mode, stored, strict) if p is not None else None for p in (tr, val, test))
    return Dataset(info, tr, val, test, str(path))


class _Images(torch.utils.data.Dataset):
    def __init__(self, split: FolderSplit, stored: tuple[int, int], train: bool, mode: str = "RGB") -> None:
        from torchvision.transforms import v2

        self.items, self.mode, self.stored = split.items, mode, tuple(stored)
        self.tf = v2.Compose([v2.RandomResizedCrop(self.stored, antialias=True), v2.RandomHorizontalFlip()]) \
            if train else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        path, y = self.items[i]
        try:  # grayscale, RGB, RGBA and palette files all load as the model's channels (alpha dropped)
            img = read_image(path, self.mode)
        except BadInput as e:  # a decompression bomb: an error in the main process, not a worker's traceback
            return e
        if isinstance(img, Unreadable):
            return path  # unreadable: the loader counts it (or stops, with --strict)
        return (self.tf(img) if self.tf else fit_stored(img, self.stored)), y, i


def _collate(rows: list[Any]) -> Any:
    refused = next((r for r in rows if isinstance(r, BadInput)), None)
    if refused is not None:
        return None, [refused]
    good = [r for r in rows if not isinstance(r, str)]
    bad = [r for r in rows if isinstance(r, str)]
    if not good:
        return None, bad
    x = torch.stack([r[0] for r in good])
    return (x, torch.tensor([r[1] for r in good]), torch.tensor([r[2] for r in good])), bad


_REPORTED: set[str] = set()  # unreadable files already reported by this process (one warning each)


def unreadable(paths: list[str], split: str, strict: bool) -> None:
    """--strict: the first unreadable image is BadInput; else one warning naming how many were skipped."""
    if paths and strict:
        raise BadInput(f"{paths[0]}: unreadable image (--strict); remove or replace it, or drop --strict "
                       f"to skip unreadable images")
    new = [p for p in paths if p not in _REPORTED]
    if new:
        _REPORTED.update(new)
        progress.console.print(f"[yellow]warning:[/yellow] skipped {len(new)} unreadable image"
                               f"{'s' if len(new) > 1 else ''} in {split} (e.g. {new[0]}); --strict "
                               f"stops on them instead", soft_wrap=True)


class FolderLoader(ShardedLoader):
    """DataLoader-backed loader yielding the same `Batch` as the tensor path; skipped batches of a resumed
    run are not decoded."""

    def __init__(self, split: FolderSplit, info: DataInfo, batch_size: int, device: Any = "cpu", shuffle: bool = False,
                 augment: bool = False, seed: int = 0, drop_last: bool = False, model_channels: int | None = None,
                 model_size: tuple[int, int] | None = None, rank: int = 0, world: int = 1,
                 channels_last: bool = False, workers: int | None = None, strict: bool = False) -> None:
        super().__init__(len(split), batch_size, shuffle, seed, drop_last, rank, world)
        self.device = torch.device(device)
        size = tuple(model_size or info.image_size)
        # grayscale data or a 1-channel model: files are read as gray ("L"), repeated for an RGB model
        read_gray = info.in_channels == 1 or model_channels == 1
        repeat = model_channels if read_gray and model_channels and model_channels > 1 else 1
        self.ds = _Images(split, info.stored_size, augment, "L" if read_gray else "RGB")
        self.split_name, self.strict = split.name or "images", strict
        self.workers = workers if workers is not None else min(8, max(1, (torch.get_num_threads() or 2) - 1))
        self.skipped = 0
        # the tensor path's normalisation, so both paths produce identical floats
        self.to_float = Normalise(info.mean, info.std, self.device, size, repeat, channels_last,
                                  gray=model_channels == 1 and info.in_channels == 3)

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.ds, self.order().tolist()[skip * self.batch_size :]), batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers, collate_fn=_collate, drop_last=self.drop_last,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        bad_paths: list[str] = []
        for batch, bad in loader:
            if bad and isinstance(bad[0], BadInput):
                raise bad[0]
            if bad and self.strict:
                unreadable(bad, self.split_name, True)
            self.skipped += len(bad)
            bad_paths += bad
            if batch is None:
                continue
            x, y, i = (t.to(self.device, non_blocking=True) for t in batch)
            yield Batch(self.to_float(x), y, i)
        unreadable(bad_paths, self.split_name, False)
