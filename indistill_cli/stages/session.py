"""The setup every training stage repeats: runtime, seed, dataset, loaders for a model.

One function so `train`, `warmup` and `distill` cannot drift apart in how they seed, split or batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from indistill_cli.data import Dataset, load_dataset, make_loader
from indistill_cli.engine.runtime import Runtime, resolve_runtime, seed_everything
from indistill_cli.stages.options import RunOptions


@dataclass
class Session:
    """A run's runtime, dataset and options, and its loaders for a model spec."""

    rt: Runtime
    ds: Dataset
    opts: RunOptions

    def train_loader(self, spec: dict[str, Any]) -> Any:
        n = len(self.ds.train)
        return make_loader(self.ds.train, self.ds.info, self.opts.batch_size, device=self.rt.device, shuffle=True,
                           augment=self.opts.augment, seed=self.opts.seed,
                           drop_last=n // self.rt.world > self.opts.batch_size,
                           model_channels=spec["in_channels"], model_size=tuple(spec["input_size"]),
                           rank=self.rt.rank, world=self.rt.world, channels_last=self.rt.channels_last,
                           strict=self.opts.strict)

    def eval_loader(self, split: str, spec: dict[str, Any], shard: bool = True) -> Any:
        return make_loader(self.ds.split(split), self.ds.info, self.opts.eval_batch_size, device=self.rt.device,
                           model_channels=spec["in_channels"], model_size=tuple(spec["input_size"]),
                           rank=self.rt.rank if shard else 0, world=self.rt.world if shard else 1,
                           channels_last=self.rt.channels_last, strict=self.opts.strict)

    def first_images(self, split: str, spec: dict[str, Any], max_images: int) -> list[Any]:
        """The first `max_images` images of a split as model-ready batches, the same on every rank."""
        out, n = [], 0
        for b in self.eval_loader(split, spec, shard=False):
            out.append(b.x[: max_images - n])
            n += out[-1].shape[0]
            if n >= max_images:
                break
        return out

    @property
    def val_split(self) -> str | None:
        return "val" if self.ds.val is not None else None


def open_session(opts: RunOptions) -> Session:
    opts.check()
    rt = resolve_runtime(opts.device, opts.precision, opts.channels_last)
    seed_everything(opts.seed + rt.rank, opts.deterministic)
    ds = load_dataset(opts.data, opts.val_fraction, opts.data_root, opts.image_size, seed=opts.seed)
    return Session(rt, ds, opts)
