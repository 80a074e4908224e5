"""Datasets as device-resident uint8 tensors with batched augmentation, plus ImageFolder.

Small datasets (Fashion-MNIST, MNIST, CIFAR, synthetic, the embedded Fashion-MNIST subset) are held
whole as uint8 tensors, so one training step costs one gather for crop + flip on the whole batch
instead of thousands of per-image PIL calls. ImageFolder trees use a DataLoader with workers.
Local copies are found before any download; with no copy and no network the error names every place
that was looked in.
"""

from __future__ import annotations

import gzip
import lzma
import math
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from indistill_cli.errors import BadInput, did_you_mean

PACKAGE_DATA = Path(__file__).parent / "data_files"
SYSTEM_DIRS = [Path("/usr/share/datasets"), Path("/usr/local/share/datasets")]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class DataInfo:
    """What a model needs to know about its data; stored in checkpoints."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # what models are built for and fed (the served size)
    mean: list[float]
    std: list[float]
    classes: list[str]
    flip: bool = True  # horizontal flips are label-preserving (not for digits)
    pad: int = 4  # random-crop padding
    source_size: tuple[int, int] | None = None  # the stored images' size when it differs from image_size

    @property
    def stored_size(self) -> tuple[int, int]:
        return tuple(self.source_size or self.image_size)  # type: ignore[return-value]

    def serving(self) -> str:
        return serving_phrase(self.stored_size, self.image_size)

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels,
               "image_size": list(self.image_size), "mean": self.mean, "std": self.std, "classes": self.classes}
        if self.source_size and tuple(self.source_size) != tuple(self.image_size):
            out["source_size"] = list(self.source_size)
            out["serving"] = self.serving()
        return out


def serving_phrase(stored: Any, size: Any) -> str:
    """How stored images become model inputs, in one phrase (inspect and the logs show it)."""
    (h, w), (H, W) = stored, size
    if (h, w) == (H, W):
        return f"{h}x{w} images as they are"
    how = "zero-padded (centred)" if h <= H and w <= W else "resized"
    return f"{h}x{w} images {how} to {H}x{W}"


@dataclass
class Split:
    """A split held as tensors: uint8 images (N, C, H, W) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: torch.Tensor, name: str) -> Split:
        return Split(self.images[idx], self.labels[idx], name)


@dataclass
class Batch:
    x: torch.Tensor  # float, normalised, on the device
    y: torch.Tensor
    idx: torch.Tensor  # indices into the split (CRD's memory bank needs them)


@dataclass
class Dataset:
    info: DataInfo
    train: Any  # Split or FolderSplit
    val: Any | None
    test: Any
    source: str = ""
    splits: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Any:
        table = {"train": self.train, "val": self.val, "test": self.test}
        if name not in table:
            raise BadInput(f"unknown split '{name}'; choose train, val or test")
        if table[name] is None:
            raise BadInput(f"split '{name}' is empty (the validation split needs --val-fraction > 0)")
        return table[name]


# ----------------------------------------------------------------------------- readers

def _open(path: Path) -> bytes:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    return path.read_bytes()


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (MNIST's format; raw, .gz or .xz) as a uint8 tensor."""
    try:
        data = _open(path)
        magic, = struct.unpack(">I", data[:4])
        ndim = magic & 0xFF
        dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        if (magic >> 8) != 0x08 or len(data) != 4 + 4 * ndim + math.prod(dims):
            raise ValueError("bad magic or size")
    except (OSError, ValueError, struct.error, EOFError, lzma.LZMAError) as e:
        raise BadInput(f"{path}: not a valid IDX file ({e})") from None
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


IDX_NAMES = {"train": "train-{}-idx{}-ubyte", "test": "t10k-{}-idx{}-ubyte"}


def _find_idx(dirs: list[Path]) -> Path | None:
    for d in dirs:
        for ext in ("", ".gz", ".xz"):
            if (d / ("train-images-idx3-ubyte" + ext)).exists() and (d / ("t10k-labels-idx1-ubyte" + ext)).exists():
                return d
    return None


def _load_idx_dir(d: Path) -> tuple[Split, Split]:
    def one(split: str) -> Split:
        def path(kind: str, nd: int) -> Path:
            stem = IDX_NAMES[split].format(kind, nd)
            return next(d / (stem + e) for e in ("", ".gz", ".xz") if (d / (stem + e)).exists())

        x = read_idx(path("images", 3)).unsqueeze(1)
        y = read_idx(path("labels", 1)).long()
        if x.shape[0] != y.shape[0]:
            raise BadInput(f"{d}: {split} images and labels differ in count")
        return Split(x, y, split)

    return one("train"), one("test")


def _load_cifar_dir(d: Path, n_classes: int) -> tuple[Split, Split]:
    """The 'python version' CIFAR batches (this format is pickled numpy; we read nothing else that way)."""
    def read(files: list[str]) -> Split:
        xs, ys = [], []
        for f in files:
            try:
                with open(d / f, "rb") as fh:
                    entry = pickle.load(fh, encoding="latin1")
                xs.append(torch.as_tensor(entry["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
                ys.append(torch.as_tensor(entry["labels" if "labels" in entry else "fine_labels"]).long())
            except (OSError, pickle.UnpicklingError, KeyError, EOFError, ValueError, RuntimeError) as e:
                raise BadInput(f"{d / f}: not a readable CIFAR batch ({e})") from None
        return Split(torch.cat(xs), torch.cat(ys))

    if n_classes == 10:
        return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])
    return read(["train"]), read(["test"])


def data_root() -> Path:
    return Path(os.environ.get("INDISTILL_DATA", Path.home() / ".cache" / "indistill" / "data"))


# ----------------------------------------------------------------------------- registry

BUILTIN = {
    # name: (kind, classes, channels, size, mean, std, flip, local dir names, torchvision class)
    "fashion-mnist": ("idx", FASHION_CLASSES, 1, 28, [0.2860], [0.3530], True,
                      ["fashion-mnist", "FashionMNIST/raw", "fashion_mnist"], "FashionMNIST"),
    "mnist": ("idx", [str(i) for i in range(10)], 1, 28, [0.1307], [0.3081], False,
              ["mnist", "MNIST/raw"], "MNIST"),
    "cifar10": ("cifar", 10, 3, 32, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], True,
                ["cifar-10-batches-py", "cifar10/cifar-10-batches-py"], "CIFAR10"),
    "cifar100": ("cifar", 100, 3, 32, [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762], True,
                 ["cifar-100-python", "cifar100/cifar-100-python"], "CIFAR100"),
}
NAMES = ["fashion-mnist-mini", *BUILTIN, "imagefolder:PATH", "synthetic:CxHxW:CLASSES:N"]


def _candidates(root: Path, dirs: list[str]) -> list[Path]:
    out = [root / d for d in dirs]
    for s in SYSTEM_DIRS:
        out += [s / d for d in dirs]
    return out


def locate(name: str, root: Path | None = None) -> Path | None:
    """Where a local copy of a built-in dataset is, or None."""
    kind, *_, dirs, _tv = BUILTIN[name]
    for c in _candidates(root or data_root(), dirs):
        if kind == "idx" and _find_idx([c]):
            return c
        if kind == "cifar" and ((c / "data_batch_1").exists() or (c / "train").exists()):
            return c
    return None


def _download(name: str, root: Path) -> Path | None:
    """Let torchvision fetch the dataset into root; None when there is no network."""
    import torchvision

    kind, *_, dirs, tv = BUILTIN[name]
    try:
        getattr(torchvision.datasets, tv)(str(root), train=True, download=True)
        getattr(torchvision.datasets, tv)(str(root), train=False, download=True)
    except Exception:  # noqa: BLE001 - any failure here means "not available offline"
        return None
    return locate(name, root)


def _carve_val(train: Split, fraction: float) -> tuple[Split, Split | None]:
    """A fixed validation split (data seed 0, per class) so every run selects on the same images."""
    if fraction <= 0:
        return train, None
    if fraction >= 1:
        raise BadInput("--val-fraction must be in [0, 1)")
    g = torch.Generator().manual_seed(0)
    val_idx = []
    for c in torch.unique(train.labels):
        idx = torch.nonzero(train.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_idx.append(idx[: max(1, int(round(len(idx) * fraction)))])
    val = torch.sort(torch.cat(val_idx)).values
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val] = False
    return train.subset(torch.nonzero(keep).flatten(), "train"), train.subset(val, "val")


def _synthetic(spec: str, seed: int) -> tuple[DataInfo, Split, Split]:
    try:
        shape, k, n = spec.split(":")
        c, h, w = (int(v) for v in shape.lower().split("x"))
        k, n = int(k), int(n)
        assert c > 0 and h > 0 and w > 0 and k > 1 and n > 0
    except (ValueError, AssertionError):
        raise BadInput(f"synthetic:{spec}: expected synthetic:CxHxW:CLASSES:N, e.g. synthetic:3x32x32:10:5000") from None
    g = torch.Generator().manual_seed(seed)
    n_test = max(k, n // 5)
    images = torch.randint(0, 256, (n + n_test, c, h, w), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, k, (n + n_test,), generator=g)
    info = DataInfo(f"synthetic:{spec}", k, c, (h, w), [0.5] * c, [0.289] * c, [str(i) for i in range(k)])
    return info, Split(images[:n], labels[:n], "train"), Split(images[n:], labels[n:], "test")


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
    """Resolve a dataset name to tensors (or an ImageFolder) with train/val/test splits.

    Tensor sets keep their stored size; `info.image_size` is what models see (`serve_size`), and the
    loaders pad (centred, zeros) or resize each batch to it."""
    root = Path(root) if root else data_root()
    if name.startswith("imagefolder:"):
        from indistill_cli.folder_data import load_imagefolder

        return load_imagefolder(Path(name.split(":", 1)[1]), val_fraction, image_size or 224)
    if name.startswith("synthetic:"):
        info, train, test = _synthetic(name.split(":", 1)[1], seed)
        source = "synthetic"
    elif name == "fashion-mnist-mini":
        d = PACKAGE_DATA / "fashion_mnist_mini"
        train, test = _load_idx_dir(d)
        kind, classes, ch, size, mean, std, flip, *_ = BUILTIN["fashion-mnist"]
        info = DataInfo(name, 10, ch, (size, size), mean, std, classes, flip, 4)
        source = "embedded subset"
    elif name in BUILTIN:
        kind, classes, ch, size, mean, std, flip, dirs, _tv = BUILTIN[name]
        where = locate(name, root) or (_download(name, root) if download else None)
        if where is None:
            looked = ", ".join(str(p) for p in _candidates(root, dirs))
            raise BadInput(f"dataset '{name}' not found locally and could not be downloaded; looked in: {looked} "
                           f"(set INDISTILL_DATA or --data-root to a folder holding it)")
        train, test = _load_idx_dir(where) if kind == "idx" else _load_cifar_dir(where, classes)
        if isinstance(classes, int):
            classes = [str(i) for i in range(classes)]
        info = DataInfo(name, len(classes), ch, (size, size), mean, std, classes, flip, 4)
        source = str(where)
    else:
        raise BadInput(f"unknown dataset '{name}'{did_you_mean(name, NAMES)}; known: {', '.join(NAMES)}")
    stored = tuple(int(v) for v in train.images.shape[-2:])
    info.source_size, info.image_size = stored, serve_size(stored, image_size)  # type: ignore[assignment]
    train, val = _carve_val(train, val_fraction)
    train.name, test.name = "train", "test"
    return Dataset(info, train, val, test, source)


# ----------------------------------------------------------------------------- batching

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


class TensorLoader:
    """Batches of a tensor split: shuffled by (seed, epoch), augmented in one batched op.

    Images stay uint8 on `device` (the GPU when training there) and become normalised floats per batch.
    `model_channels` repeats grayscale to RGB for RGB models; `model_size` pads/resizes to the model.
    """

    def __init__(self, split: Split, info: DataInfo, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = False, augment: bool = False, seed: int = 0, drop_last: bool = False,
                 model_channels: int | None = None, model_size: tuple[int, int] | None = None,
                 rank: int = 0, world: int = 1, channels_last: bool = False) -> None:
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.info, self.batch_size, self.shuffle, self.augment = info, batch_size, shuffle, augment
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self._skip = 0
        self.rank, self.world = rank, world
        self.channels_last = channels_last
        c = info.in_channels
        self.repeat = (model_channels // c) if model_channels and model_channels != c else 1
        if model_channels and model_channels != c and (c != 1 or model_channels % c):
            raise BadInput(f"the model takes {model_channels}-channel input but {info.name} has {c} channels")
        self.model_size = tuple(model_size) if model_size else tuple(info.image_size)
        mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1).repeat(1, self.repeat, 1, 1)
        std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1).repeat(1, self.repeat, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), mean / std

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, n: int) -> None:
        """The next iteration starts after `n` batches (a resumed run), drawing their augmentation numbers."""
        self._skip = n

    def _order(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world > 1:  # each rank its own shard, equal sizes
            order = order[self.rank :: self.world][: self._per_rank(n)]
        return order

    def _per_rank(self, n: int) -> int:
        """Images of this rank's shard: equal on every rank when training (shuffle or drop_last), so
        every rank runs the same number of steps (DDP needs that); evaluation shards may differ by one."""
        own = len(range(self.rank, n, self.world))
        return min(own, n // self.world if self.drop_last or self.shuffle else math.ceil(n / self.world))

    def __len__(self) -> int:
        n = self._per_rank(len(self.labels)) if self.world > 1 else len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _plan(self) -> torch.Tensor:
        """This epoch's order and augmentation draws as one int64 (4, n) tensor on the device.

        Drawn once per epoch on CPU generators (the same numbers on any device for the same seed)
        and copied in one transfer, so the batches are slices of device tensors: no host-to-device
        copy and no synchronisation per step. Rows: sample index, crop row offset, crop column
        offset, flip (0/1).
        """
        order = self._order()
        n = len(order)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 7919 * (self.rank + 1))
        p = self.info.pad
        if self.augment:
            oy = torch.randint(0, 2 * p + 1, (n,), generator=g)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=g)
            fl = (torch.rand(n, generator=g) < 0.5).long() if self.info.flip else torch.zeros(n, dtype=torch.long)
            plan = torch.stack([order, oy, ox, fl])
        else:
            plan = order[None]
        if self.device.type == "cuda":
            return plan.pin_memory().to(self.device, non_blocking=True)
        return plan.to(self.device)

    def __iter__(self) -> Iterator[Batch]:
        plan = self._plan()  # the whole epoch's draws, so skipped batches (resume) consume theirs too
        skip, self._skip = self._skip, 0
        n = plan.shape[1]
        end = n - n % self.batch_size if self.drop_last else n
        flips = plan[3].bool() if self.augment else None
        for start in range(skip * self.batch_size, end, self.batch_size):
            idx = plan[0, start : start + self.batch_size]
            x = self.images[idx]
            if self.augment:
                sl = slice(start, start + self.batch_size)
                x = crop_flip(x, self.info.pad, plan[1, sl], plan[2, sl], flips[sl])
            yield Batch(self.to_float(x), self.labels[idx], idx)

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalised float at the model's channels and size."""
        if self.repeat > 1:
            x = x.repeat(1, self.repeat, 1, 1)
        x = x.float()
        if tuple(x.shape[-2:]) != self.model_size:  # before normalising: padding is black (pixel 0), not the mean
            x = fit_size(x, self.model_size)
        x = x.mul_(self.scale).sub_(self.shift)
        # the layout the run chose, whatever the gather left (crop_flip's output is NHWC-strided)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


def make_loader(split: Any, info: DataInfo, batch_size: int, **kw: Any) -> Any:
    """A loader for either kind of split (tensor or folder)."""
    strict = kw.pop("strict", False)  # only folder data can hold unreadable images
    if isinstance(split, Split):
        return TensorLoader(split, info, batch_size, **kw)
    from indistill_cli.folder_data import FolderLoader

    return FolderLoader(split, info, batch_size, strict=strict, **kw)


def check_compatible(info: DataInfo, spec: dict[str, Any], what: str) -> None:
    """A model must have the dataset's classes; channel counts must be reconcilable."""
    for key in ("num_classes", "in_channels"):
        if not isinstance(spec.get(key), int):
            raise BadInput(f"{what}: model spec lacks '{key}' (or it is not an integer)")
    if spec["num_classes"] != info.num_classes:
        raise BadInput(f"{what} has {spec['num_classes']} classes but {info.name} has {info.num_classes}")
    mc, dc = spec["in_channels"], info.in_channels
    folder = info.name.startswith("imagefolder:")  # image files decode to either: gray for 1-channel models
    if mc != dc and not (dc == 1 and mc == 3) and not (folder and mc == 1):
        raise BadInput(f"{what} takes {mc}-channel images but {info.name} has {dc} channels")
