"""What a stage records in the checkpoints it writes: one history entry per stage, and the write itself."""

from __future__ import annotations

import time
from typing import Any

from indistill_cli.io.checkpoint import Checkpoint, save_checkpoint
from indistill_cli.io.spec import ModelSpec


def environment() -> dict[str, str]:
    """Versions recorded in every checkpoint's history."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from indistill_cli import __version__

    def v(name: str) -> str:  # metadata, not an import: torchvision/timm imports cost seconds
        try:
            return version(name)
        except PackageNotFoundError:
            return "missing"

    return {"indistill": __version__, "torch": torch.__version__, "torchvision": v("torchvision"),
            "timm": v("timm"), "python": platform.python_version()}


def history_entry(stage: str, options: dict[str, Any], parents: list[dict[str, str]], metrics: dict[str, Any],
                  wall_s: float, data: str | None = None, **extra: Any) -> dict[str, Any]:
    """One stage's record: options, seed, parents' hashes, metrics, wall time, versions (+ stage extras)."""
    entry = {"stage": stage, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": data,
             "seed": options.get("seed"), "options": options, "parents": parents, "metrics": metrics,
             "wall_s": round(wall_s, 3), "env": environment()}
    entry.update(extra)
    return entry


def flow_curves(history: list[dict[str, Any]]) -> tuple[dict[str, list[float]], int]:
    """A student's per-tap validation MSE to the pruned teacher over its whole training, from its history:
    the warmup's curves, then the KD stage's (first point dropped: it is the warmup's last), on one axis of
    student epochs; and how many of those epochs were warmup (0 without one)."""
    warm = next((h.get("curves") for h in history if h.get("stage") == "warmup" and h.get("curves")), None)
    kd = next((h.get("curves") for h in reversed(history) if h.get("stage") == "distill" and h.get("curves")), None)
    if warm is None:
        return dict(kd or {}), 0
    n_warm = len(next(iter(warm.values()))) - 1
    if kd is None:
        return dict(warm), n_warm
    return {k: list(v) + list(kd.get(k, [])[1:]) for k, v in warm.items()}, n_warm


def write_model(dest: str, model_state: dict[str, Any], spec: ModelSpec, history: list[dict[str, Any]],
                info: dict[str, Any] | None = None, role: str = "model", extras: dict[str, Any] | None = None) -> str:
    """Write a model checkpoint (a path or '-'); returns the sha256 of its bytes."""
    ckpt = Checkpoint(role=role, spec=spec, state=model_state, extras=extras or {}, history=history, info=info or {})
    return save_checkpoint(ckpt, dest)
