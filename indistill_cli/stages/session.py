"""The setup every training stage repeats: runtime, seed, dataset, loaders for a model.

One function so `train`, `warmup` and `distill` cannot drift apart in how they seed, split or batch.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from indistill_cli.data import DataInfo, Dataset, load_dataset, make_loader
from indistill_cli.data.memory import check_fits
from indistill_cli.engine.runtime import Runtime, resolve_runtime, seed_everything
from indistill_cli.models import ModelSpec, create_model
from indistill_cli.models.footprint import activation_bytes
from indistill_cli.stages.options import RunOptions


def loader_norm(spec: ModelSpec, info: DataInfo) -> tuple[list[float], list[float]] | None:
    """The normalisation a model's inputs need when it is not the data's: the one its spec records (an imported
    or hub-pretrained model's weights expect theirs); None for a model trained on this data's."""
    if spec.mean and spec.std and (spec.mean, spec.std) != (list(info.mean), list(info.std)):
        return spec.mean, spec.std
    return None


@functools.lru_cache(maxsize=16)
def _footprint(spec_json: str) -> tuple[int, int] | None:
    spec = ModelSpec.from_dict(json.loads(spec_json))
    return activation_bytes(lambda: create_model(spec).model, spec.in_channels, spec.input_size)


def check_batch(spec: ModelSpec, batch: int, training: bool, device: Any) -> None:
    """Refuse a batch whose activations cannot fit in free memory, before one is made: the cost of one image
    (models.footprint) times the batch; half the leaf outputs while training (in-place ops, autocast), twice
    the largest one when only evaluating."""
    per = _footprint(json.dumps(spec.to_dict(), sort_keys=True))
    if per is None:
        return
    need = batch * (per[0] // 2 if training else 2 * per[1])
    c, (h, w) = spec.in_channels, spec.input_size
    kind, opt = ("a training", "--batch-size") if training else ("an evaluation", "--eval-batch-size")
    check_fits(need, f"{kind} batch of {batch} {c}x{h}x{w} images through {spec.name} (activations, at least)",
               f"lower {opt} or --image-size", device)


@dataclass
class Session:
    """A run's runtime, dataset and options, and its loaders for a model spec."""

    rt: Runtime
    ds: Dataset  # None in a stage that reads no dataset (Stage.loads_data)
    opts: RunOptions
    on_epoch: Callable[[int, dict[str, float]], None] | None = None  # each epoch's row, to the trackers (--log)

    def train_loader(self, spec: ModelSpec) -> Any:
        n = len(self.ds.train)
        check_batch(spec, min(self.opts.batch_size, max(1, n // self.rt.world)), True, self.rt.device)
        return make_loader(self.ds.train, self.ds.info, self.opts.batch_size, device=self.rt.device, shuffle=True,
                           augment=self.opts.augment, seed=self.opts.seed,
                           drop_last=n // self.rt.world > self.opts.batch_size,
                           model_channels=spec.in_channels, model_size=spec.input_size,
                           rank=self.rt.rank, world=self.rt.world, channels_last=self.rt.channels_last,
                           strict=self.opts.strict, model_norm=loader_norm(spec, self.ds.info))

    def eval_loader(self, split: str, spec: ModelSpec, shard: bool = True) -> Any:
        check_batch(spec, min(self.opts.eval_batch_size, len(self.ds.split(split))), False, self.rt.device)
        return make_loader(self.ds.split(split), self.ds.info, self.opts.eval_batch_size, device=self.rt.device,
                           model_channels=spec.in_channels, model_size=spec.input_size,
                           rank=self.rt.rank if shard else 0, world=self.rt.world if shard else 1,
                           channels_last=self.rt.channels_last, strict=self.opts.strict,
                           model_norm=loader_norm(spec, self.ds.info))

    def first_images(self, split: str, spec: ModelSpec, max_images: int) -> list[Any]:
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


def open_session(opts: RunOptions, data: bool = True) -> Session:
    """The runtime (device, precision, seeds) and, with `data`, the dataset `opts` name."""
    opts.check()
    rt = resolve_runtime(opts.device, opts.precision, opts.channels_last)
    seed_everything(opts.seed + rt.rank, opts.deterministic)
    ds = load_dataset(opts.data, opts.val_fraction, opts.data_root, opts.image_size, seed=opts.seed, cache=opts.cache,
                      strict=opts.strict, device=rt.device, train_fraction=opts.train_fraction) if data else None
    return Session(rt, ds, opts)  # type: ignore[arg-type]
