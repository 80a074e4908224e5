"""The model spec a checkpoint carries, typed: what a module is (architecture, width, constructor arguments,
input, classes, normalisation) and what it offers (taps with channels, strides and sizes; the embedding).

It is read from a checkpoint's JSON once, validated there (a forged spec must not make us allocate a giant
model, and a missing field is one clear line, not a KeyError three modules later), and written back to the
same JSON: `ModelSpec.from_dict(d).to_dict() == d` for every spec indistill has written, so checkpoints from
before this type existed keep loading and keep their bytes. Keys that are absent in the JSON (`args`,
`structural_prune`, a tap's `size`) stay absent. `models.create_model` is the one thing that turns a spec
into a module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from indistill_cli.errors import BadInput

SOURCES = {"timm": "timm", "tv": "torchvision"}  # name prefix -> where the architecture comes from
MAX_SIDE, MAX_CHANNELS, MAX_CLASSES, MAX_WIDTH = 8192, 64, 1_000_000, 16


class DataShape(NamedTuple):
    """What a model is built for: the data's channels, classes, served size and normalisation."""

    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass(frozen=True)
class TapSpec:
    """A feature-map tap: module name, channels, stride against the input, and (H, W) at the spec's size."""

    name: str
    channels: int
    stride: int
    size: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "channels": self.channels, "stride": self.stride}
        if self.size is not None:
            out["size"] = list(self.size)
        return out


@dataclass(frozen=True)
class EmbeddingSpec:
    """The pooled penultimate vector (retrieval, embedding methods): its tap name and dimension."""

    name: str
    dim: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim}


@dataclass(frozen=True)
class ModelSpec:
    """One model, as checkpoints record it (see the module docstring)."""

    arch: str  # "resnet20", "timm:vit_tiny_patch16_224", "tv:resnet18" (width not included)
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    taps: tuple[TapSpec, ...]
    embedding: EmbeddingSpec
    width: float = 1.0  # native families' channel multiplier
    norm: dict[str, list[float]] = field(default_factory=dict)  # {"mean": [...], "std": [...]} the weights expect
    args: dict[str, Any] | None = None  # constructor arguments beyond the name (e.g. a ViT's patch_size)
    structural_prune: list[dict[str, Any]] | None = None  # a chained pruned teacher's replayable plan

    @property
    def source(self) -> str:
        """native, timm or torchvision: who builds the architecture."""
        prefix, sep, _ = self.arch.partition(":")
        return SOURCES.get(prefix, "native") if sep else "native"

    @property
    def name(self) -> str:
        """The name a user types: arch, `-wX` when scaled, `,key=value` constructor arguments."""
        base = self.arch if self.width == 1.0 else f"{self.arch}-w{self.width:g}"
        return base + "".join(f",{k}={v}" for k, v in sorted((self.args or {}).items()))

    @property
    def tap_names(self) -> list[str]:
        return [t.name for t in self.taps]

    def tap(self, name: str) -> TapSpec:
        return next(t for t in self.taps if t.name == name)

    @property
    def mean(self) -> list[float] | None:
        return list(self.norm["mean"]) if self.norm.get("mean") else None

    @property
    def std(self) -> list[float] | None:
        return list(self.norm["std"]) if self.norm.get("std") else None

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form checkpoints hold (the same keys and values indistill has always written)."""
        out: dict[str, Any] = {
            "arch": self.arch, "width": self.width, "in_channels": self.in_channels, "num_classes": self.num_classes,
            "input_size": list(self.input_size), "norm": {k: list(v) if isinstance(v, (list, tuple)) else v
                                                          for k, v in self.norm.items()},
            "taps": [t.to_dict() for t in self.taps], "embedding": self.embedding.to_dict(),
        }
        if self.args is not None:
            out["args"] = dict(self.args)
        if self.structural_prune is not None:
            out["structural_prune"] = [dict(s) for s in self.structural_prune]
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "model spec") -> ModelSpec:
        """Validate a spec read from JSON; every defect is one BadInput line naming `where` and the field."""
        return _parse(d, where)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _need(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise BadInput(f"{where}: model spec {message}")


def _size(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_int(x) and 1 <= x <= MAX_SIDE for x in v)


def _tap(t: Any, where: str) -> TapSpec:
    _need(isinstance(t, dict) and isinstance(t.get("name"), str) and _is_int(t.get("channels"))
          and _is_int(t.get("stride")), where, f"tap {t!r} needs a name, integer channels and stride")
    _need(1 <= t["channels"] <= 1 << 20, where, f"tap '{t['name']}' has {t['channels']!r} channels")
    size = t.get("size")
    _need(size is None or (isinstance(size, list) and len(size) == 2 and all(_is_int(x) and x >= 0 for x in size)),
          where, f"tap '{t['name']}' size must be [H, W], got {size!r}")
    return TapSpec(t["name"], t["channels"], t["stride"], tuple(size) if size is not None else None)


def _norm(n: Any, where: str) -> dict[str, Any]:
    _need(isinstance(n, dict), where, f"'norm' must be an object, got {n!r}")
    for key, v in n.items():
        _need(key in ("mean", "std") and (v is None or (isinstance(v, list) and all(_is_num(x) for x in v))),
              where, f"'norm' holds mean and std lists of numbers, got {key}={v!r}")
    _need(not n.get("std") or all(x > 0 for x in n["std"]), where, f"'norm' std must be positive, got {n.get('std')}")
    return dict(n)


def _parse(d: Any, where: str) -> ModelSpec:
    _need(isinstance(d, dict), where, "is not a JSON object")
    for key in ("arch", "in_channels", "num_classes", "input_size", "taps", "embedding"):
        _need(key in d, where, f"lacks '{key}'")
    _need(isinstance(d["arch"], str) and bool(d["arch"]), where, f"'arch' must be a name, got {d['arch']!r}")
    _need(_is_int(d["in_channels"]) and 1 <= d["in_channels"] <= MAX_CHANNELS, where,
          f"'in_channels' must be an integer in [1, {MAX_CHANNELS}], got {d['in_channels']!r}")
    _need(_is_int(d["num_classes"]) and 1 <= d["num_classes"] <= MAX_CLASSES, where,
          f"'num_classes' must be an integer in [1, {MAX_CLASSES}], got {d['num_classes']!r}")
    _need(_size(d["input_size"]), where, f"'input_size' must be [H, W] with 1..{MAX_SIDE} pixels, "
                                         f"got {d['input_size']!r}")
    width = d.get("width", 1.0)
    _need(_is_num(width) and 0 < width <= MAX_WIDTH, where, f"'width' must be a number in (0, {MAX_WIDTH}], "
                                                            f"got {width!r}")
    _need(isinstance(d["taps"], list), where, f"'taps' must be a list, got {d['taps']!r}")
    emb = d["embedding"]
    _need(isinstance(emb, dict) and isinstance(emb.get("name"), str) and _is_int(emb.get("dim")), where,
          f"'embedding' needs a name and an integer dim, got {emb!r}")
    args = d.get("args")
    _need(args is None or (isinstance(args, dict) and all(isinstance(v, (int, float, str, bool)) for v in args.values())),
          where, f"'args' must map names to numbers or strings, got {args!r}")
    plan = d.get("structural_prune")
    _need(plan is None or (isinstance(plan, list) and all(isinstance(s, dict) for s in plan)), where,
          "'structural_prune' must be a list of steps")
    return ModelSpec(d["arch"], d["in_channels"], d["num_classes"], (d["input_size"][0], d["input_size"][1]),
                     tuple(_tap(t, where) for t in d["taps"]), EmbeddingSpec(emb["name"], emb["dim"]), width,
                     _norm(d.get("norm", {}), where), dict(args) if args is not None else None,
                     [dict(s) for s in plan] if plan is not None else None)
