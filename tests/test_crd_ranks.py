"""CRD under torchrun: the normalisers Z are estimated from every rank's first batch (an all-reduce), so
the ranks use the same Z; run for real on two gloo processes (torch.distributed, spawned here)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from indistill_cli import losses
from indistill_cli.losses.base import Feats, KDBatch

NUM_DATA, N = 64, 8


def _crd():
    torch.manual_seed(0)  # the same projections and banks on every rank (DDP would broadcast them)
    return losses.get("crd")([(6,)], [(10,)], 5, NUM_DATA, nce_k=16.0, feat_dim=8.0, seed=1.0).train()


def _batch(rank: int) -> KDBatch:
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    s, t = torch.randn(N, 6, generator=g), torch.randn(N, 10, generator=g)
    return KDBatch(Feats(torch.zeros(N, 5), [s]), Feats(torch.zeros(N, 5), [t]), torch.zeros(N, dtype=torch.long),
                   torch.arange(N) + N * rank, 0)


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss = _crd()
        scores = {}
        estimate = loss._normalisers

        def record(out_s, out_t):  # this rank's first scores, to check Z against all of them
            scores.setdefault("s", out_s.detach().clone())
            scores.setdefault("t", out_t.detach().clone())
            return estimate(out_s, out_t)

        loss._normalisers = record
        loss(_batch(rank))
        first = loss.z.clone()
        loss(_batch(rank + world))  # a second step keeps Z (and makes no collective of its own for it)
        torch.save({"z": first, "z2": loss.z.clone(), **scores}, Path(out) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_crd_normalisers_are_the_same_on_every_rank(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert not torch.equal(r0["s"], r1["s"])  # the ranks saw different scores...
    assert torch.equal(r0["z"], r1["z"])  # ...and use the same Z
    assert torch.equal(r0["z2"], r0["z"]) and torch.equal(r1["z2"], r1["z"])
    expect = torch.stack([torch.cat([r0["s"], r1["s"]]).double().mean(),
                          torch.cat([r0["t"], r1["t"]]).double().mean()]) * NUM_DATA
    torch.testing.assert_close(r0["z"].double(), expect, rtol=1e-6, atol=0)
    # one process: Z from its own batch, exactly as before (mean of the scores)
    single = _crd()
    single(_batch(0))
    torch.testing.assert_close(single.z.double(), torch.stack([r0["s"].mean(), r0["t"].mean()]).double() * NUM_DATA,
                               rtol=0, atol=0)
