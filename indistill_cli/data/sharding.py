"""Which samples each torchrun rank reads: one rule for every loader.

Training shards are equal in size on every rank (the remainder is dropped), so every rank runs the same
number of steps: DDP's collectives would otherwise wait forever for the rank with one step more.
Evaluation shards keep every sample (they may differ by one), so each image is scored exactly once.
"""

from __future__ import annotations

import math

import torch


def shard_size(n: int, rank: int, world: int, equal: bool) -> int:
    """How many of `n` samples rank `rank` of `world` reads."""
    own = len(range(rank, n, world))
    return min(own, n // world) if equal else min(own, math.ceil(n / world))


def shard(order: torch.Tensor, rank: int, world: int, equal: bool) -> torch.Tensor:
    """Rank `rank`'s share of an epoch's sample order: every world-th sample from `rank`, cut to
    `shard_size` (equal sizes when `equal`, i.e. for training)."""
    if world <= 1:
        return order
    return order[rank::world][: shard_size(len(order), rank, world, equal)]


class ShardedLoader:
    """What both loaders share: this epoch's sample order (shuffled by (seed, epoch) when training), this
    rank's shard of it, resuming after the batches already done, and the number of batches."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool, rank: int,
                 world: int) -> None:
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.rank, self.world, self.epoch, self._skip = rank, world, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, n: int) -> None:
        """The next iteration starts after `n` batches (a resumed run)."""
        self._skip = n

    @property
    def equal_shards(self) -> bool:
        return self.shuffle or self.drop_last  # training: every rank the same number of steps

    def order(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.n)
        return shard(order, self.rank, self.world, self.equal_shards)

    def __len__(self) -> int:
        n = shard_size(self.n, self.rank, self.world, self.equal_shards)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
