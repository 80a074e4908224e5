"""What every stage shares: resolving model arguments, history entries, writing outputs.

`--student`/`--teacher` take a checkpoint path, '-', or an architecture name; this is the one place
that decides which, and checks that the model fits the data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from indistill_cli.checkpoint import Checkpoint, load_checkpoint, looks_like_checkpoint, save_checkpoint
from indistill_cli.data import DataInfo, check_compatible
from indistill_cli.errors import BadInput
from indistill_cli.models import make_spec, model_from_checkpoint, spec_name


@dataclass
class Resolved:
    model: nn.Module
    spec: dict[str, Any]
    ckpt: Checkpoint | None  # None when built fresh from a name
    init_seed: int | None = None  # the seed a fresh model's weights were drawn with

    @property
    def name(self) -> str:
        return spec_name(self.spec)

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.ckpt.history) if self.ckpt else []

    def parent(self) -> dict[str, str]:
        if self.ckpt is None:
            return {"arch": self.name} if self.init_seed is None else {"arch": self.name, "init_seed": self.init_seed}
        return {"path": self.ckpt.source, "sha256": self.ckpt.sha256}


def resolve_model(arg: str, info: DataInfo, what: str = "student", trained: bool = False,
                  pretrained: bool = False, role: str | None = "model", seed: int | None = None) -> Resolved:
    """A checkpoint (verified, fitted to the data) or a fresh model from an architecture name.

    A fresh model's weights depend on (architecture, data shape, `seed`) only, so `train`, `warmup`,
    `distill` and `pipeline` given one --seed start from the same student (see `make_spec`)."""
    if looks_like_checkpoint(arg):
        ckpt = load_checkpoint(arg)
        if ckpt.role == "embeddings" or (role is not None and ckpt.role != role):
            raise BadInput(_wrong_role(ckpt, what))
        check_compatible(info, ckpt.spec, f"{what} {ckpt.source}")
        return Resolved(model_from_checkpoint(ckpt), ckpt.spec, ckpt)
    if trained and not pretrained:
        raise BadInput(f"--{what} '{arg}' is an architecture name, but a {what} needs trained weights: train one "
                       f"with `indistill train {arg} --data ...` and pass the checkpoint, or add --pretrained for "
                       f"hub models on machines that reach the hub")
    spec, model = make_spec(arg, info.in_channels, info.num_classes, info.image_size,
                            {"mean": info.mean, "std": info.std}, pretrained=pretrained, seed=seed)
    return Resolved(model, spec, None, seed)


def _wrong_role(ckpt: Checkpoint, what: str) -> str:
    """A checkpoint of the wrong kind where a model is expected (e.g. a pruned teacher as --student)."""
    if ckpt.role == "embeddings":
        return (f"{ckpt.source}: is an embeddings file (from `indistill retrieve --export`), not a model, so it "
                f"cannot be the {what}; embeddings files go to `indistill retrieve --index`")
    if ckpt.role == "pruned-teacher":
        return (f"{ckpt.source}: is a pruned-teacher checkpoint (from `indistill prune`), not a {what}; pass the "
                f"{what}'s own checkpoint or an architecture name (a pruned teacher goes to `warmup --teacher`)")
    return f"{ckpt.source}: is a {ckpt.role} checkpoint, expected a model checkpoint for the {what}"


def check_output(dest: str, force: bool) -> None:
    """Refuse early (before any training) to clobber a checkpoint without --force."""
    if dest == "-":
        import sys

        if sys.stdout.isatty():
            raise BadInput("-o - writes a binary checkpoint to stdout, which is a terminal: redirect it or give a file")
        return
    p = Path(dest)
    if p.is_dir():
        raise BadInput(f"-o {dest}: is a directory; give a file name such as {dest.rstrip('/')}/model.safetensors")
    if p.exists() and not force:
        raise BadInput(f"-o {dest}: exists; pass --force to overwrite it")
    if not p.parent.exists():
        raise BadInput(f"-o {dest}: folder {p.parent} does not exist")


def history_entry(stage: str, options: dict[str, Any], parents: list[dict[str, str]], metrics: dict[str, Any],
                  wall_s: float, data: str | None = None, **extra: Any) -> dict[str, Any]:
    from indistill_cli.runtime import environment

    entry = {"stage": stage, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": data,
             "seed": options.get("seed"), "options": options, "parents": parents, "metrics": metrics,
             "wall_s": round(wall_s, 3), "env": environment()}
    entry.update(extra)
    return entry


def write_model(dest: str, model_state: dict[str, Any], spec: dict[str, Any], history: list[dict[str, Any]],
                info: dict[str, Any] | None = None, role: str = "model", extras: dict[str, Any] | None = None) -> str:
    ckpt = Checkpoint(role=role, spec=spec, state=model_state, extras=extras or {}, history=history, info=info or {})
    return save_checkpoint(ckpt, dest)
