"""timm (`timm:NAME`) and torchvision (`tv:NAME`) models, used unchanged.

Taps come from timm's `feature_info` when the model has it, else from one probing forward pass:
the last, shallowest module at each spatial resolution. The embedding is the input of the final
classifier (`NAME:in`), i.e. the pooled pre-logit features.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from indistill_cli.errors import BadInput, did_you_mean


def build(arch: str, in_channels: int, num_classes: int, pretrained: bool) -> nn.Module:
    kind, name = arch.split(":", 1)
    if kind == "timm":
        import timm

        if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
            raise BadInput(f"unknown timm model '{name}'{did_you_mean(name, timm.list_models())}")
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels)
        except Exception as e:  # noqa: BLE001 - typically no network for weights
            raise BadInput(f"timm:{name}: cannot create ({_first_line(e)}){_offline_hint(pretrained)}") from None
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise BadInput(f"unknown torchvision model '{name}'{did_you_mean(name, names)}")
    try:
        weights = "DEFAULT" if pretrained else None
        model = torchvision.models.get_model(name, weights=weights)
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"tv:{name}: cannot create ({_first_line(e)}){_offline_hint(pretrained)}") from None
    _replace_classifier(model, num_classes)
    return model


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _offline_hint(pretrained: bool) -> str:
    if pretrained and os.environ.get("HF_HUB_OFFLINE"):
        return "; HF_HUB_OFFLINE is set, so pretrained weights cannot be fetched"
    return "; pretrained weights need network access" if pretrained else ""


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise BadInput("model has no final nn.Linear classifier to attach classes to")
    return found[-1]


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    """Swap torchvision's 1000-way head for one with the dataset's classes."""
    name, lin = _last_linear(model)
    if lin.out_features == num_classes:
        return
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(lin.in_features, num_classes, bias=lin.bias is not None))


def derive_taps(model: nn.Module, arch: str, in_channels: int, input_size: tuple[int, int]) -> tuple[list[str], str]:
    """Ordered tap module names and the embedding tap for a hub model."""
    emb = _last_linear(model)[0] + ":in"
    info = getattr(model, "feature_info", None)
    if info is not None and arch.startswith("timm:"):
        try:
            names = [d["module"] for d in info]
            mods = dict(model.named_modules())
            if names and all(n in mods for n in names):
                return names, emb
        except (TypeError, KeyError):
            pass
    return _probe_resolution_changes(model, in_channels, input_size), emb


def _probe_resolution_changes(model: nn.Module, in_channels: int, input_size: tuple[int, int]) -> list[str]:
    records: list[tuple[str, int, tuple[int, int]]] = []
    hooks = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            global_pool = "Pool" in type(_m).__name__ and isinstance(out, torch.Tensor) and out.shape[-1] == 1
            if isinstance(out, torch.Tensor) and out.dim() == 4 and not global_pool:
                records.append((name, name.count("."), (int(out.shape[2]), int(out.shape[3]))))

        hooks.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    taps: list[str] = []
    run: list[tuple[str, int, tuple[int, int]]] = []
    for rec in records + [("", -1, (-1, -1))]:
        if run and rec[2] != run[-1][2]:
            shallowest = min(r[1] for r in run)
            taps.append([r[0] for r in run if r[1] == shallowest][-1])
            run = []
        run.append(rec)
    # a module at a coarser level may close several resolution runs; keep first occurrences in order
    return list(dict.fromkeys(t for t in taps if t))
