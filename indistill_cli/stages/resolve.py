"""Model arguments: `--student`/`--teacher` take a checkpoint path, '-', or an architecture name; this is
the one place that decides which, and checks that the model fits the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from indistill_cli.data import DataInfo, check_compatible
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import Checkpoint, load_checkpoint, looks_like_checkpoint
from indistill_cli.models import ModelSpec, create_model
from indistill_cli.models.inputs import feed_from
from indistill_cli.stages.session import loader_norm


@dataclass
class Resolved:
    """A model given on the command line: the module, its spec, and the checkpoint it came from."""

    model: nn.Module
    spec: ModelSpec
    ckpt: Checkpoint | None  # None when built fresh from a name
    init_seed: int | None = None  # the seed a fresh model's weights were drawn with

    @property
    def name(self) -> str:
        return self.spec.name

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
    `distill` and `pipeline` given one --seed start from the same student (see `create_model`)."""
    if looks_like_checkpoint(arg):
        ckpt = load_checkpoint(arg)
        if ckpt.role == "embeddings" or (role is not None and ckpt.role != role):
            raise BadInput(_wrong_role(ckpt, what))
        check_compatible(info, ckpt.spec, f"{what} {ckpt.source}")
        return Resolved(create_model(ckpt).model, ckpt.spec, ckpt)
    if trained and not pretrained:
        raise BadInput(f"--{what} '{arg}' is an architecture name, but a {what} needs trained weights: train one "
                       f"with `indistill train {arg} --data ...` and pass the checkpoint, or add --pretrained for "
                       f"hub models on machines that reach the hub")
    spec, model = create_model(arg, info.shape, seed, pretrained=pretrained)
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


def fed_by(teacher: nn.Module, t_spec: ModelSpec, s_spec: ModelSpec, info: DataInfo) -> nn.Module:
    """A teacher given the student's batches: its input re-normalised / channel-adapted when the two models
    expect different inputs (models.inputs); unchanged when they expect the same."""
    data = (list(info.mean), list(info.std))
    feed_from(teacher, loader_norm(s_spec, info) or data, s_spec.in_channels, loader_norm(t_spec, info) or data,
              t_spec.in_channels)
    if tuple(t_spec.input_size) != tuple(s_spec.input_size):
        _check_runs_at(teacher, t_spec, s_spec)
    return teacher


def _check_runs_at(teacher: nn.Module, t_spec: ModelSpec, s_spec: ModelSpec) -> None:
    """A teacher built for another input size than the student's batches: one probing forward, so a model that
    cannot take that size (a ViT's fixed patch grid, a classifier sized for one map) is one line, not a
    traceback in the first training step. Convolutional teachers that take any size pass unchanged."""
    import torch

    p = next(iter(teacher.parameters()), None)
    x = torch.zeros(1, s_spec.in_channels, *s_spec.input_size, device=p.device if p is not None else None)
    try:
        with torch.no_grad():
            teacher(x)
    except Exception:  # noqa: BLE001 - any failure at this size is the size mismatch
        (h, w), (sh, sw) = t_spec.input_size, s_spec.input_size
        raise BadInput(f"teacher {t_spec.name} was built for {h}x{w} inputs and cannot run on the student's {sh}x{sw} "
                       f"batches; pass --image-size {h} (the teacher's size)") from None


def frozen(model: nn.Module, device: Any, channels_last: bool = False) -> nn.Module:
    """A teacher on the device in eval mode with no parameter requiring grad (it is never trained)."""
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    return model
