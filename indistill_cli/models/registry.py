"""One registry of model builders, and the model spec that checkpoints carry.

A spec is plain JSON: architecture name, width multiplier, input channels/size, classes, the ordered
taps (module name, channels, stride) and the embedding tap. Native families declare their taps;
timm/torchvision models get theirs derived by one probing forward pass, so any hub model works
unchanged (taps are forward hooks by module name, never a rewritten forward).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from indistill_cli.errors import BadInput, did_you_mean


@dataclass(frozen=True)
class Entry:
    name: str
    family: str
    summary: str
    build: Callable[..., Any]


REGISTRY: dict[str, Entry] = {}
EXTERNAL_PREFIXES = ("timm:", "tv:")


def register(name: str, family: str, summary: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"model {name} registered twice")
        REGISTRY[name] = Entry(name, family, summary, fn)
        return fn

    return deco


def scaled(widths: list[int], width: float) -> list[int]:
    """Channel widths times a multiplier, at least 1 each."""
    return [max(1, int(round(w * width))) for w in widths]


def parse_name(name: str) -> tuple[str, float]:
    """'resnet20-w0.5' -> ('resnet20', 0.5); external names keep their text and width 1."""
    if name.startswith(EXTERNAL_PREFIXES):
        if len(name.split(":", 1)[1]) == 0:
            raise BadInput(f"model '{name}': give a model name after the prefix, e.g. timm:resnet18")
        return name, 1.0
    m = re.fullmatch(r"(.+?)(?:-w(\d*\.?\d+))?", name)
    arch, width = m.group(1), float(m.group(2) or 1.0)
    if arch not in REGISTRY:
        hint = did_you_mean(arch, REGISTRY)
        raise BadInput(f"unknown architecture '{name}'{hint}; `indistill models` lists them, or use timm:NAME / tv:NAME")
    if not 0 < width <= 16:
        raise BadInput(f"model '{name}': width multiplier must be in (0, 16]")
    return arch, width


def spec_name(spec: dict[str, Any]) -> str:
    arch, w = spec.get("arch", "?"), spec.get("width", 1.0)
    return str(arch) if w == 1.0 or not isinstance(w, (int, float)) else f"{arch}-w{w:g}"


def _build_native(arch: str, width: float, in_channels: int, num_classes: int, input_size: int) -> Any:
    import inspect

    fn = REGISTRY[arch].build
    kwargs: dict[str, Any] = {}
    if "input_size" in inspect.signature(fn).parameters:
        kwargs["input_size"] = input_size
    return fn(width, in_channels, num_classes, **kwargs)


def _build_external(arch: str, in_channels: int, num_classes: int, pretrained: bool) -> Any:
    from indistill_cli.models import external

    return external.build(arch, in_channels, num_classes, pretrained)


def build_model(spec: dict[str, Any], pretrained: bool = False) -> Any:
    """A fresh module of the spec's architecture, with `tap_names` and `embedding_name` attributes set.

    A spec's `structural_prune` plan (a chained pruned teacher) is not applied here: plans belong to
    `pruning`, whose `rebuild.build` replays it on this module."""
    arch = spec["arch"]
    size = int(spec["input_size"][0])
    if arch.startswith(EXTERNAL_PREFIXES):
        model = _build_external(arch, spec["in_channels"], spec["num_classes"], pretrained)
    else:
        parse_name(arch)
        model = _build_native(arch, spec.get("width", 1.0), spec["in_channels"], spec["num_classes"], size)
    if spec.get("taps"):
        model.tap_names = [t["name"] for t in spec["taps"]]
        model.embedding_name = spec["embedding"]["name"]
    return model


def make_spec(name: str, in_channels: int, num_classes: int, input_size: tuple[int, int],
              norm: dict[str, list[float]] | None = None, pretrained: bool = False,
              seed: int | None = None) -> tuple[dict[str, Any], Any]:
    """Resolve a name against a dataset's shape: returns (spec, fresh model) with taps probed.

    With `seed`, the initial weights are a function of (name, shape, seed) alone: they are drawn from
    a generator seeded with `seed` inside a forked RNG, so whatever a command built or drew before
    (a teacher, a data split) the same seed gives the same student, and the caller's random streams
    are left exactly as they were. Paired comparisons start every arm of a seed from one student.
    """
    if seed is None:
        return _make_spec(name, in_channels, num_classes, input_size, norm, pretrained)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _make_spec(name, in_channels, num_classes, input_size, norm, pretrained)


def _make_spec(name: str, in_channels: int, num_classes: int, input_size: tuple[int, int],
               norm: dict[str, list[float]] | None, pretrained: bool) -> tuple[dict[str, Any], Any]:
    arch, width = parse_name(name)
    if arch.startswith("tv:"):
        in_channels = 3  # torchvision stems are RGB; grayscale data is repeated to 3 channels
    spec: dict[str, Any] = {
        "arch": arch, "width": width, "in_channels": in_channels, "num_classes": num_classes,
        "input_size": list(input_size), "norm": norm or {},
    }
    try:
        model = build_model(spec, pretrained=pretrained)
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - a builder rejecting the shape is the user's input
        raise BadInput(f"cannot build '{name}' for {in_channels}x{input_size[0]}x{input_size[1]} inputs: {e}") from None
    if arch.startswith(EXTERNAL_PREFIXES):
        from indistill_cli.models import external

        model.tap_names, model.embedding_name = external.derive_taps(model, arch, in_channels, input_size)
    spec["taps"], spec["embedding"] = probe_taps(model, in_channels, input_size)
    return spec, model


def probe_taps(model: Any, in_channels: int, input_size: tuple[int, int]) -> tuple[list[dict], dict]:
    """Run one dummy forward and record each tap's channels and stride, and the embedding size."""
    import torch

    from indistill_cli.models.taps import TapSet, as_vector

    names = list(model.tap_names) + [model.embedding_name]
    was_training = model.training
    model.eval()
    with torch.no_grad(), TapSet(model, names) as taps:
        model(torch.zeros(2, in_channels, *input_size))
        out = dict(taps.out)
    model.train(was_training)
    taps_info = []
    for n in model.tap_names:
        t = out[n]
        if t.dim() != 4:
            raise BadInput(f"tap '{n}' gives a {t.dim()}-D tensor; taps must be feature maps (N, C, H, W)")
        taps_info.append({"name": n, "channels": int(t.shape[1]), "stride": max(1, round(input_size[0] / int(t.shape[2]))),
                          "size": [int(t.shape[2]), int(t.shape[3])]})
    emb = as_vector(out[model.embedding_name])
    return taps_info, {"name": model.embedding_name, "dim": int(emb.shape[1])}


def load_state(model: Any, state: dict[str, Any], where: str) -> None:
    """Load weights strictly; any disagreement with the spec is one clear error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    bad_dtype = [k for k in own if k in state and k not in bad and own[k].dtype != state[k].dtype
                 and not (own[k].is_floating_point() and state[k].is_floating_point())]
    if missing or unexpected or bad or bad_dtype:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if bad:
            k = bad[0]
            parts.append(f"{len(bad)} with wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        if bad_dtype:
            parts.append(f"{len(bad_dtype)} with wrong dtype (e.g. {bad_dtype[0]})")
        raise BadInput(f"{where}: weights do not match the model spec: " + "; ".join(parts))
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)


def check_spec(spec: dict[str, Any], where: str) -> None:
    """A spec with the keys a model needs, and plausible sizes before building: a forged spec must not make
    us allocate a giant model."""
    for key in ("arch", "in_channels", "num_classes", "input_size", "taps", "embedding"):
        if key not in spec:
            raise BadInput(f"{where}: model spec lacks '{key}'")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(spec["arch"], str):
        raise BadInput(f"{where}: model spec 'arch' must be a name, got {spec['arch']!r}")
    if not (is_int(spec["in_channels"]) and 1 <= spec["in_channels"] <= 64):
        raise BadInput(f"{where}: model spec 'in_channels' must be an integer in [1, 64], got {spec['in_channels']!r}")
    if not (is_int(spec["num_classes"]) and 1 <= spec["num_classes"] <= 1_000_000):
        raise BadInput(f"{where}: model spec 'num_classes' must be an integer in [1, 1000000], "
                       f"got {spec['num_classes']!r}")
    size = spec["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) and 1 <= v <= 8192 for v in size)):
        raise BadInput(f"{where}: model spec 'input_size' must be [H, W] with 1..8192 pixels, got {size!r}")
    width = spec.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 16:
        raise BadInput(f"{where}: model spec 'width' must be a number in (0, 16], got {width!r}")


def list_models() -> list[Entry]:
    return sorted(REGISTRY.values(), key=lambda e: (e.family, e.name))
