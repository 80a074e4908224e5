"""The student's optimiser and lr plan handed from `warmup` to `distill`: one continuous schedule.

The reference trains its student as one run of one Adam: warmup epochs, then KD, then a 10x lower
rate for the last epochs. Restarting a fresh optimiser at a higher rate after the warmup can undo the
warmed alignment within an epoch. So `warmup --plan-epochs N` writes, beside its checkpoint, a
sidecar `OUT.plan.safetensors` (pickle-free) with the optimiser's per-parameter state by name, the
plan (optimiser, lr, schedule over N epochs) and how many epochs of it are done; `distill
--continue-plan` reads it and runs the rest of the plan with the same optimiser state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from indistill_cli.errors import BadInput
from indistill_cli.io import jsontext
from indistill_cli.io.atomic import atomic_write
from indistill_cli.io.paths import sibling

FORMAT = "indistill-plan/1"


def plan_path(checkpoint: str) -> str:
    """`warm.safetensors` -> `warm.plan.safetensors`."""
    return sibling(checkpoint, ".plan.safetensors")


def save_plan(path: str, state: dict[str, dict[str, torch.Tensor]], optim: dict[str, Any], done: int,
              student_sha256: str) -> None:
    """Write the sidecar: `state/<param>/<key>` tensors; the plan (the optimiser options as a plain dict)
    and position as metadata."""
    from safetensors.torch import save

    tensors = {f"state/{n}/{k}": v.contiguous() for n, st in state.items() for k, v in st.items()}
    plan = {**optim, "plan_offset": 0}
    meta = {"format": FORMAT, "optim": json.dumps(plan), "done_epochs": str(done), "student_sha256": student_sha256}
    atomic_write(path, save(tensors, metadata=meta))


def load_plan(path: str, student_sha256: str | None) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], int]:
    """(optimiser state by parameter name, the plan's optimiser options, epochs done); checks it belongs to
    this student. The caller turns the options into its optimiser config (and reports their errors)."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise BadInput(f"--continue-plan: no plan sidecar at {path}; run `indistill warmup ... --plan-epochs N` "
                       f"to write one (or give its path with --plan)")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        plan: dict[str, Any] = jsontext.loads(meta["optim"])
        done = int(meta["done_epochs"])
        if not isinstance(plan, dict):
            raise ValueError("the plan is not a JSON object")
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{path}: not a readable plan sidecar ({e})") from None
    if student_sha256 is not None and meta.get("student_sha256") != student_sha256:
        raise BadInput(f"{path}: belongs to another checkpoint than this student (sha256 differs); continue the "
                       f"plan from the warmup output it was written with")
    state: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        _, name_key = k.split("/", 1)
        name, key = name_key.rsplit("/", 1)
        state.setdefault(name, {})[key] = v
    return state, plan, done
