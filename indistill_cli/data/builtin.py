"""The built-in datasets: where local copies are found, how their files are read, and the embedded subset.

Fashion-MNIST, MNIST, CIFAR-10/100, synthetic tensors and the embedded Fashion-MNIST subset are held
whole as uint8 tensors. Local copies are found before any download; with no copy and no network the
error names every place that was looked in.
"""

from __future__ import annotations

import gzip
import lzma
import math
import os
import pickle
import struct
from pathlib import Path

import torch

from indistill_cli.data.base import DataInfo, Split
from indistill_cli.data.memory import check_fits
from indistill_cli.errors import BadInput

MAX_CLASSES = 1_000_000  # as many as a model spec may declare
PACKAGE_DATA = Path(__file__).parent.parent / "data_files"
SYSTEM_DIRS = [Path("/usr/share/datasets"), Path("/usr/local/share/datasets")]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


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


def _synthetic(spec: str, seed: int) -> tuple[DataInfo, Split, Split]:
    try:
        shape, k, n = spec.split(":")
        c, h, w = (int(v) for v in shape.lower().split("x"))
        k, n = int(k), int(n)
        assert c > 0 and h > 0 and w > 0 and k > 1 and n > 0
    except (ValueError, AssertionError):
        raise BadInput(f"synthetic:{spec}: expected synthetic:CxHxW:CLASSES:N, e.g. synthetic:3x32x32:10:5000") from None
    if k > MAX_CLASSES:
        raise BadInput(f"synthetic:{spec}: {k} classes; at most {MAX_CLASSES:,} are supported")
    n_test = max(k, n // 5)
    check_fits((n + n_test) * c * h * w, f"synthetic:{spec}: {n + n_test:,} images of {c}x{h}x{w} (train + test)",
               "ask for fewer or smaller images")
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n + n_test, c, h, w), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, k, (n + n_test,), generator=g)
    info = DataInfo(f"synthetic:{spec}", k, c, (h, w), [0.5] * c, [0.289] * c, [str(i) for i in range(k)])
    return info, Split(images[:n], labels[:n], "train"), Split(images[n:], labels[n:], "test")


def load_builtin(name: str, root: Path, seed: int, download: bool) -> tuple[DataInfo, Split, Split, str] | None:
    """(info, train, test, source) of a built-in or synthetic set at its stored size; None for other names."""
    if name.startswith("synthetic:"):
        info, train, test = _synthetic(name.split(":", 1)[1], seed)
        return info, train, test, "synthetic"
    if name == "fashion-mnist-mini":
        train, test = _load_idx_dir(PACKAGE_DATA / "fashion_mnist_mini")
        kind, classes, ch, size, mean, std, flip, *_ = BUILTIN["fashion-mnist"]
        return DataInfo(name, 10, ch, (size, size), mean, std, classes, flip, 4), train, test, "embedded subset"
    if name not in BUILTIN:
        return None
    kind, classes, ch, size, mean, std, flip, dirs, _tv = BUILTIN[name]
    where = locate(name, root) or (_download(name, root) if download else None)
    if where is None:
        looked = ", ".join(str(p) for p in _candidates(root, dirs))
        raise BadInput(f"dataset '{name}' not found locally and could not be downloaded; looked in: {looked} "
                       f"(set INDISTILL_DATA or --data-root to a folder holding it)")
    train, test = _load_idx_dir(where) if kind == "idx" else _load_cifar_dir(where, classes)
    if isinstance(classes, int):
        classes = [str(i) for i in range(classes)]
    return DataInfo(name, len(classes), ch, (size, size), mean, std, classes, flip, 4), train, test, str(where)
