"""What every dataset and loader shares: the data's description, splits held as tensors, batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from indistill_cli.errors import BadInput
from indistill_cli.io.spec import DataShape, ModelSpec


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
    notes: dict[str, Any] | None = None  # how an image folder's size, channels and cache were decided

    @property
    def stored_size(self) -> tuple[int, int]:
        return tuple(self.source_size or self.image_size)  # type: ignore[return-value]

    def serving(self) -> str:
        return serving_phrase(self.stored_size, self.image_size)

    @property
    def shape(self) -> DataShape:
        """What a model built for this data needs to know (models.create_model)."""
        return DataShape(self.in_channels, self.num_classes, tuple(self.image_size), self.mean, self.std)

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels,
               "image_size": list(self.image_size), "mean": self.mean, "std": self.std, "classes": self.classes}
        if self.source_size and tuple(self.source_size) != tuple(self.image_size):
            out["source_size"] = list(self.source_size)
            out["serving"] = self.serving()
        if self.notes:
            out["folder"] = self.notes
        return out


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


def check_compatible(info: DataInfo, spec: ModelSpec, what: str) -> None:
    """A model must have the dataset's classes; channel counts must be reconcilable."""
    if spec.num_classes != info.num_classes:
        raise BadInput(f"{what} has {spec.num_classes} classes but {info.name} has {info.num_classes}")
    mc, dc = spec.in_channels, info.in_channels
    folder = info.name.startswith("imagefolder:")  # image files decode to either: gray for 1-channel models
    if mc != dc and not (dc == 1 and mc == 3) and not (folder and mc == 1):
        raise BadInput(f"{what} takes {mc}-channel images but {info.name} has {dc} channels")
