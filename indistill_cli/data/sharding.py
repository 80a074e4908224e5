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
