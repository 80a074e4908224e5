"""`peak_memory_mb` per stage: every stage starts the CUDA allocator's peak afresh, so in a pipeline (one
process, several stages) each reports its own peak, not the largest of all stages so far. The CUDA calls
are stood in for by a fake allocator on CPU; the stage skeleton's call is recorded for real."""

from __future__ import annotations

import pytest
import torch
from stage_helpers import _ok

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cuda_peak_is_reset_for_each_stage(monkeypatch):
    from indistill_cli.engine.runtime import peak_memory_mb, reset_peak_memory

    alloc = {"now": 512 * 2**20, "peak": 3000 * 2**20}  # an earlier stage peaked at 3000 MiB
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: alloc.update(peak=alloc["now"]))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: alloc["peak"])
    cuda = torch.device("cuda", 0)
    assert peak_memory_mb(cuda) == 3000
    reset_peak_memory(cuda)
    assert peak_memory_mb(cuda) == 512
    reset_peak_memory(torch.device("cpu"))  # nothing to reset there (VmHWM is the process's)
    assert alloc["peak"] == 512 * 2**20


def test_every_stage_resets_the_peak_when_it_begins(monkeypatch, tmp_path):
    from indistill_cli.stages import base

    calls: list[torch.device] = []
    monkeypatch.setattr(base, "reset_peak_memory", calls.append)
    out = tmp_path / "m.safetensors"
    s = _ok("train", "cnn3-w0.5", "-o", out, "--epochs", "1", "--val-fraction", "0.9")
    assert calls == [torch.device("cpu")] and s["peak_memory_mb"] > 0
    _ok("prune", out, "--like", "cnn3-w0.25", "-o", tmp_path / "p.safetensors", "--val-fraction", "0.9")
    assert len(calls) == 2
