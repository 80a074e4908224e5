"""Batches of a split held as tensors: shuffled by (seed, epoch), augmented in one batched op, on the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from indistill_cli.data.base import Batch, DataInfo, Split
from indistill_cli.data.pixels import Normalise, crop_flip
from indistill_cli.data.sharding import ShardedLoader
from indistill_cli.errors import BadInput


class TensorLoader(ShardedLoader):
    """Batches of a tensor split: shuffled by (seed, epoch), augmented in one batched op.

    Images stay uint8 on `device` (the GPU when training there) and become normalised floats per batch.
    `model_channels` repeats grayscale to RGB for RGB models; `model_size` pads/resizes to the model.
    A resumed run's skipped batches still draw their augmentation numbers (see `_plan`).
    """

    def __init__(self, split: Split, info: DataInfo, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = False, augment: bool = False, seed: int = 0, drop_last: bool = False,
                 model_channels: int | None = None, model_size: tuple[int, int] | None = None,
                 rank: int = 0, world: int = 1, channels_last: bool = False,
                 model_norm: tuple[list[float], list[float]] | None = None) -> None:
        super().__init__(len(split), batch_size, shuffle, seed, drop_last, rank, world)
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.info, self.augment = info, augment
        c = info.in_channels
        gray = model_channels == 1 and c == 3 and info.name.startswith("imagefolder:")  # colour files, gray model
        repeat = (model_channels // c) if model_channels and model_channels != c and not gray else 1
        if model_channels and model_channels != c and not gray and (c != 1 or model_channels % c):
            raise BadInput(f"the model takes {model_channels}-channel input but {info.name} has {c} channels")
        mean, std = model_norm or (info.mean, info.std)  # a model's own normalisation wins over the data's
        self.to_float = Normalise(mean, std, self.device, tuple(model_size or info.image_size), repeat,
                                  channels_last, gray, per_model=model_norm is not None)

    def _plan(self) -> torch.Tensor:
        """This epoch's order and augmentation draws as one int64 (4, n) tensor on the device.

        Drawn once per epoch on CPU generators (the same numbers on any device for the same seed)
        and copied in one transfer, so the batches are slices of device tensors: no host-to-device
        copy and no synchronisation per step. Rows: sample index, crop row offset, crop column
        offset, flip (0/1).
        """
        order = self.order()
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
