"""timm (`timm:NAME`) and torchvision (`tv:NAME`) models, used unchanged: the two hub sources.

Taps are declared here, once per source. timm: the modules its `feature_info` names (the same ones
`forward_intermediates` returns); for token models (ViT, DeiT: many blocks of one width and stride) four
evenly spaced blocks, the last included. A tap whose output is not a feature map gets a layout that makes
it one: patch tokens (N, L, C) without their class/distillation/register tokens, reshaped to the patch grid
(N, C, H, W); channels-last maps (Swin's NHWC) transposed. torchvision (and timm models without
`feature_info`): the last, shallowest module at each spatial resolution, found by one probing forward. The
embedding is the classifier's input (`NAME:in`), i.e. the pre-logits vector.

timm models are built at the spec's input size (`img_size`) where the architecture takes one, so a ViT
or Swin runs on 32-pixel images; `,key=value` after a name passes constructor arguments
(`timm:vit_tiny_patch16_224,patch_size=4`).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn as nn

from indistill_cli.errors import BadInput, did_you_mean
from indistill_cli.io.spec import ModelSpec
from indistill_cli.models.source import Source
from indistill_cli.models.taps import MapLayout

IMAGENET_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # torchvision's published weights
TOKEN_TAPS = 4  # taps chosen among a token model's blocks


def first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def offline_hint(pretrained: bool) -> str:
    if pretrained and (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")):
        return "; HF_HUB_OFFLINE is set, so pretrained weights cannot be fetched"
    return "; pretrained weights need network access" if pretrained else ""


class TimmSource(Source):
    prefix = "timm"

    def check(self, arch: str, width: float, args: dict[str, Any] | None) -> None:
        import timm

        name = arch.split(":", 1)[1]
        if name.startswith("hf-hub:"):
            return
        if not timm.is_model(name.split(".")[0]):
            raise BadInput(f"unknown timm model '{name}'{did_you_mean(name, timm.list_models())}")

    def build(self, spec: ModelSpec, pretrained: bool) -> nn.Module:
        import timm

        name = spec.arch.split(":", 1)[1]
        kw = {"pretrained": pretrained, "num_classes": spec.num_classes, "in_chans": spec.in_channels,
              **(spec.args or {})}
        try:
            try:
                return timm.create_model(name, img_size=tuple(spec.input_size), **kw)
            except TypeError as e:
                if "img_size" not in str(e):
                    raise
                return timm.create_model(name, **kw)  # a CNN: any input size, no img_size argument
        except TypeError as e:
            raise BadInput(f"timm:{name}: {first_line(e)} (check the ,key=value arguments)") from None
        except Exception as e:  # noqa: BLE001 - no network for weights, a size the family cannot take, ...
            raise BadInput(f"timm:{name}: cannot create ({first_line(e)}){offline_hint(pretrained)}") from None

    def declare(self, model: nn.Module, spec: ModelSpec) -> None:
        model.embedding_name = spec.embedding.name if spec.taps else _classifier(model) + ":in"
        names = list(spec.tap_names) or _feature_modules(model)
        if names is None:
            model.tap_names = probe_resolution_changes(model, spec)
            return
        model.tap_names = names
        model.tap_layouts = _layouts(model, spec, names)

    def adapt_foreign(self, model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
        """timm's own filter for the family (ViT/DeiT: position embedding and patch kernel resampled to this
        size, original-repository layouts converted; Swin: relative position tables), when it has one."""
        import importlib

        fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
        if fn is None:
            return state
        try:
            return dict(fn(dict(state), model))
        except Exception:  # noqa: BLE001 - a layout the filter does not know: the keys are reported as they are
            return state

    def weights_norm(self, model: nn.Module) -> dict[str, list[float]] | None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if cfg.get("mean") and cfg.get("std"):
            return {"mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]]}
        return None

    def load_hint(self, spec: ModelSpec, filename: str) -> str:
        args = {"num_classes": spec.num_classes, "in_chans": spec.in_channels, **(spec.args or {})}
        if _takes_img_size(spec.arch):
            args["img_size"] = spec.input_size[0] if spec.input_size[0] == spec.input_size[1] else tuple(spec.input_size)
        kw = ", ".join(f"{k}={v!r}" for k, v in args.items())
        return f"import timm; m = timm.create_model('{spec.arch.split(':', 1)[1]}', {kw}, checkpoint_path='{filename}')"

    def default_size(self, model: nn.Module | None, arch: str) -> int | None:
        import timm

        try:
            cfg = getattr(model, "pretrained_cfg", None) or timm.models.get_pretrained_cfg(arch.split(":", 1)[1]).to_dict()
            return int(cfg["input_size"][-1])
        except Exception:  # noqa: BLE001 - an hf-hub name, a model without a default configuration
            return None


class TorchvisionSource(Source):
    prefix = "tv"

    def check(self, arch: str, width: float, args: dict[str, Any] | None) -> None:
        import torchvision

        names = torchvision.models.list_models()
        name = arch.split(":", 1)[1]
        if name not in names:
            raise BadInput(f"unknown torchvision model '{name}'{did_you_mean(name, names)}")

    def in_channels(self, data_channels: int) -> int:
        return 3  # torchvision stems are RGB; grayscale data is repeated to 3 channels

    def build(self, spec: ModelSpec, pretrained: bool) -> nn.Module:
        import torchvision

        name = spec.arch.split(":", 1)[1]
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **(spec.args or {}))
        except Exception as e:  # noqa: BLE001
            raise BadInput(f"tv:{name}: cannot create ({first_line(e)}){offline_hint(pretrained)}") from None
        _replace_classifier(model, spec.num_classes)
        return model

    def declare(self, model: nn.Module, spec: ModelSpec) -> None:
        model.embedding_name = spec.embedding.name if spec.taps else last_linear(model)[0] + ":in"
        model.tap_names = list(spec.tap_names) or probe_resolution_changes(model, spec)

    def weights_norm(self, model: nn.Module) -> dict[str, list[float]] | None:
        return {k: list(v) for k, v in IMAGENET_NORM.items()}

    def load_hint(self, spec: ModelSpec, filename: str) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in (spec.args or {}).items())
        return (f"import torchvision; from safetensors.torch import load_file; m = torchvision.models.get_model("
                f"'{spec.arch.split(':', 1)[1]}', num_classes={spec.num_classes}{kw}); "
                f"m.load_state_dict(load_file('{filename}'))")

    def default_size(self, model: nn.Module | None, arch: str) -> int | None:
        return 299 if "inception" in arch else 224


def _takes_img_size(arch: str) -> bool:
    """Whether the timm architecture is built for an input size (ViT, Swin, LeViT take `img_size`): tried on
    the meta device, where building allocates nothing."""
    import timm

    try:
        with torch.device("meta"):
            timm.create_model(arch.split(":", 1)[1], pretrained=False, num_classes=1, img_size=224)
    except TypeError:
        return False
    except Exception:  # noqa: BLE001 - a family that cannot be built on meta: say img_size, harmless if refused
        return True
    return True


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise BadInput("model has no final nn.Linear classifier to attach classes to")
    return found[-1]


def _classifier(model: nn.Module) -> str:
    """The module timm names as the classifier (the first of a distilled pair), else the last Linear."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier")
    name = name[0] if isinstance(name, (list, tuple)) else name
    mods = dict(model.named_modules())
    if isinstance(name, str) and isinstance(mods.get(name), nn.Linear):
        return name
    return last_linear(model)[0]


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    """Swap torchvision's 1000-way head for one with the dataset's classes."""
    name, lin = last_linear(model)
    if lin.out_features == num_classes:
        return
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(lin.in_features, num_classes, bias=lin.bias is not None))


def _feature_modules(model: nn.Module) -> list[str] | None:
    """timm's feature modules (None when the model has no usable feature_info); for a token model whose
    blocks all share one width and stride, TOKEN_TAPS of them, evenly spaced, ending with the last."""
    try:
        info = [(d["module"], d.get("num_chs"), d.get("reduction")) for d in getattr(model, "feature_info", None) or []]
    except (TypeError, KeyError):
        return None
    mods = dict(model.named_modules())
    if not info or not all(n in mods for n, _, _ in info):
        return None
    names = [n for n, _, _ in info]
    if len(info) > TOKEN_TAPS and len({(c, r) for _, c, r in info}) == 1:
        n = len(names)
        names = [names[int(math.floor((j + 1) * n / TOKEN_TAPS + 0.5)) - 1] for j in range(TOKEN_TAPS)]
    return names


def _probing_forward(model: nn.Module, spec: ModelSpec, hooks: list[Any]) -> None:
    """One eval-mode forward of zeros at the spec's size for `hooks` to record; removes them and restores the
    model's mode whatever happens (the model is the user's: a probe must leave it as it was)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, spec.in_channels, *spec.input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)


def _layouts(model: nn.Module, spec: ModelSpec, names: list[str]) -> dict[str, MapLayout]:
    """How each tap's raw output becomes (N, C, H, W), from one probing forward at the spec's size."""
    raw: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: raw.__setitem__(n, out[0] if isinstance(out, (tuple, list)) else out)) for n in names]
    _probing_forward(model, spec, hooks)
    nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    out: dict[str, MapLayout] = {}
    for n in names:
        t = raw.get(n)
        if t is None:
            continue
        if t.dim() == 4 and nhwc:
            out[n] = MapLayout("nhwc")
        elif t.dim() == 3:
            out[n] = MapLayout("tokens", _grid(int(t.shape[1]) - (prefix if n.startswith("blocks") else 0),
                                               spec.input_size, n), prefix if n.startswith("blocks") else 0)
    return out


def _grid(tokens: int, size: tuple[int, int], name: str) -> tuple[int, int]:
    """The (H, W) patch grid of `tokens` patch tokens for an input of `size` (aspect ratio kept)."""
    h = max(1, round(math.sqrt(tokens * size[0] / size[1])))
    if tokens % h:
        raise BadInput(f"tap '{name}': {tokens} tokens do not form a grid for {size[0]}x{size[1]} inputs")
    return h, tokens // h


def probe_resolution_changes(model: nn.Module, spec: ModelSpec) -> list[str]:
    """The last, shallowest module at each spatial resolution of one probing forward (4-D outputs only)."""
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
    _probing_forward(model, spec, hooks)
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
