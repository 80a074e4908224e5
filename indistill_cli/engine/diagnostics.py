"""Diagnostics switched on by the environment, for the GPU check (benchmarks/gpu_check.sh) and for users
who suspect a slow or fragile step: they change nothing unless their variable is set.

- `INDISTILL_SYNC_CHECK=1`: every training step that is not a logging step runs under the dispatch-mode
  detector of `syncs`, and on CUDA also under `torch.cuda.set_sync_debug_mode("warn")` with its warnings
  counted. The non-finite guard then runs deferred, as it does on a GPU, so a CPU run measures the CUDA
  step. The summary's `sync_check` gives the host synchronisations per such step and which ops made them. The
  engine reads losses back only when logging, so the expected figure is 0.
- `INDISTILL_INJECT_NONFINITE=5,6,7`: the loss of those global steps (counted from 0 over the whole run)
  is multiplied by NaN, so the non-finite guard (`guard`, `--skip-nonfinite`) is exercised for real on
  any device.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch

from indistill_cli.errors import BadInput


def injected_steps() -> frozenset[int]:
    """The global steps whose loss `INDISTILL_INJECT_NONFINITE` turns into NaN (empty when unset)."""
    raw = os.environ.get("INDISTILL_INJECT_NONFINITE", "").strip()
    try:
        return frozenset(int(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise BadInput(f"INDISTILL_INJECT_NONFINITE must be comma-separated step numbers, got {raw!r}") from None


def poison(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The step's terms with a NaN loss (what a diverging batch gives), the other terms untouched."""
    return {**out, "loss": out["loss"] * float("nan")}


class SyncCheck:
    """Counts host synchronisations in the training steps it watches (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.steps = 0
        self.ops: Counter[str] = Counter()
        self.cuda_warnings = 0

    @staticmethod
    def wanted() -> bool:
        return os.environ.get("INDISTILL_SYNC_CHECK", "") not in ("", "0")

    @staticmethod
    def from_env(device: torch.device) -> "SyncCheck | None":
        return SyncCheck(device) if SyncCheck.wanted() else None

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        from indistill_cli.engine.syncs import SyncDetector

        detector = SyncDetector()
        with warnings.catch_warnings(record=True) as caught, detector:
            warnings.simplefilter("always")
            if self.cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                if self.cuda:
                    torch.cuda.set_sync_debug_mode("default")
        self.steps += 1
        self.ops.update(detector.found)
        self.cuda_warnings += sum("synchroniz" in str(w.message) for w in caught)

    def report(self) -> dict[str, Any]:
        n = max(self.steps, 1)
        out: dict[str, Any] = {"steps": self.steps, "syncs_per_step": round(sum(self.ops.values()) / n, 3),
                               "ops": dict(self.ops.most_common())}
        if self.cuda:
            out["cuda_sync_warnings_per_step"] = round(self.cuda_warnings / n, 3)
        return out
