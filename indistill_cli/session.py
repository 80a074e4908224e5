"""The setup every training stage repeats: runtime, seed, dataset, loaders for a model.

One function so `train`, `warmup` and `distill` cannot drift apart in how they seed, split or batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from indistill_cli.data import Dataset, load_dataset, make_loader
from indistill_cli.errors import BadInput
from indistill_cli.runtime import Runtime, resolve_runtime, seed_everything


@dataclass
class RunOptions:
    """Options shared by every stage that trains (CLI flags of the same names)."""

    data: str = "fashion-mnist-mini"
    data_root: str | None = None
    val_fraction: float = 0.1
    image_size: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    augment: bool = True
    deterministic: bool = False
    skip_nonfinite: int = 0  # batches with a non-finite loss or gradient tolerated (skipped) before failing
    strict: bool = False  # ImageFolder: an unreadable image is an error instead of being skipped and counted
    resume: bool = False  # continue from the state an interrupted run left (see resume.py)
    save_every: float | None = None  # minutes between resume states (None: the default, 0: off)
    state_dir: str | None = None  # where the resume state lives (default OUT.resume/ beside the output)
    compile: bool = False  # torch.compile the student's training forward
    sync_bn: bool = False  # SyncBatchNorm in the student under torchrun (CUDA)

    def check(self) -> None:
        if self.batch_size < 1:
            raise BadInput(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise BadInput(f"--eval-batch-size must be at least 1, got {self.eval_batch_size}")
        if not 0 <= self.val_fraction < 1:
            raise BadInput(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.skip_nonfinite < 0:
            raise BadInput(f"--skip-nonfinite must be >= 0, got {self.skip_nonfinite}")

    def as_dict(self) -> dict[str, Any]:
        """The options that shape results (recorded in history); where state goes and resuming do not."""
        return {k: v for k, v in self.__dict__.items() if k not in ("resume", "save_every", "state_dir")}


@dataclass
class Session:
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

    @property
    def val_split(self) -> str | None:
        return "val" if self.ds.val is not None else None


def open_session(opts: RunOptions) -> Session:
    opts.check()
    rt = resolve_runtime(opts.device, opts.precision, opts.channels_last)
    seed_everything(opts.seed + rt.rank, opts.deterministic)
    ds = load_dataset(opts.data, opts.val_fraction, opts.data_root, opts.image_size, seed=opts.seed)
    return Session(rt, ds, opts)
